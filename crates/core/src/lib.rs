//! The fleetforge engine: one generic managed reconciler that drives every kind through a provider trait.
