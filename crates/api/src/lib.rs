//! The fleetforge API (`fleetforge.dev/v1alpha1`): Kubernetes resource types only, no I/O.
