//! The `fleetforge` binary.
fn main() {}
