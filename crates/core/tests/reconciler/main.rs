//! The managed reconciler's behaviour on the real kube-apiserver, with the
//! nop provider as the cloud: each test runs its own engine, watching only
//! its temporary namespace, against its own ProviderConfig.

mod harness;

mod accounts;
mod day2;
mod failures;
mod lifecycle;
