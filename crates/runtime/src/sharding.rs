//! Who owns which shard, decided through `coordination.k8s.io/v1` Leases,
//! the coordination API every replica already talks to.
//!
//! Each replica holds a membership Lease, renewed every retry period; the
//! live members (a Lease renewed within its duration) are the same set for
//! everyone, and [`crate::shards::assign`] maps every shard to one of them.
//! Ownership itself is one Lease per shard, taken by compare-and-swap on its
//! resourceVersion, so two replicas can never both hold one:
//!
//! - a shard assigned to this replica is taken when its Lease is free,
//!   released or expired;
//! - a shard assigned elsewhere is revoked here (no new pass enters it),
//!   kept renewed while the passes inside finish, then released, so its new
//!   owner can take it at once;
//! - a replica that cannot renew for the renew deadline stops acting on
//!   everything it holds, before anyone may take it over (the lease
//!   duration): a replica that dies loses its share within the lease
//!   duration, and one that joins takes a share within a few periods.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::shards::{SHARD_LABEL, Shards, assign, fnv1a};

/// Labels the Leases of one group of replicas.
pub const GROUP_LABEL: &str = "fleetforge.dev/shard-group";
/// `member` or `shard`.
pub const ROLE_LABEL: &str = "fleetforge.dev/lease-role";

/// Timing of the Leases, as client-go's leader election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long a holder keeps acting without a renewal.
    pub renew_deadline: Duration,
    /// Pause between rounds.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: String,
}

/// `fleetforge_shard_owned{shard}` (1 for each shard this replica owns),
/// `fleetforge_shard_members` and `fleetforge_shard_rebalances_total`
/// (shards taken or given up).
#[derive(Debug, Default)]
pub struct ShardMetrics {
    owned: Family<ShardLabels, Gauge>,
    members: Gauge,
    rebalances: Counter,
}

impl ShardMetrics {
    /// Registers the metrics.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        registry.register(
            "fleetforge_shard_owned",
            "1 for each shard this replica owns",
            metrics.owned.clone(),
        );
        registry.register(
            "fleetforge_shard_members",
            "Replicas sharing the fleet, as this one sees them",
            metrics.members.clone(),
        );
        registry.register(
            "fleetforge_shard_rebalances",
            "Shards this replica took or gave up",
            metrics.rebalances.clone(),
        );
        Arc::new(metrics)
    }
}

/// One replica's part in a group of replicas sharing `shards`.
#[derive(Debug)]
pub struct Membership {
    api: Api<Lease>,
    group: String,
    identity: String,
    timing: Timing,
    shards: Arc<Shards>,
    metrics: Arc<ShardMetrics>,
    /// When each held shard Lease was last renewed.
    renewed: HashMap<u32, Instant>,
}

/// A Lease's name from any text: lowercase letters, digits and `-`, with
/// a hash so that two identities never share one.
fn lease_name(group: &str, role: &str, part: &str) -> String {
    let clean: String = part
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!(
        "{group}-{role}-{}-{:08x}",
        clean.trim_matches('-'),
        fnv1a(part) as u32
    )
}

fn shard_lease_name(group: &str, shard: u32) -> String {
    format!("{group}-shard-{shard}")
}

/// Whether `spec` is held by someone whose renewal has not expired.
fn held(spec: &LeaseSpec, now: Timestamp) -> Option<&str> {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?.0;
    let seconds = i64::from(spec.lease_duration_seconds?);
    (renewed + SignedDuration::from_secs(seconds) >= now).then_some(holder)
}

impl Membership {
    /// The member `identity` of the group `group` (the Leases' name
    /// prefix) in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        group: &str,
        identity: &str,
        timing: Timing,
        shards: Arc<Shards>,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            group: group.to_string(),
            identity: identity.to_string(),
            timing,
            shards,
            metrics,
            renewed: HashMap::new(),
        }
    }

    /// Takes part until `stopped` completes, then hands every shard back
    /// (after the passes inside finish) and leaves the group, so the
    /// others take over at once.
    pub async fn run(mut self, stopped: impl std::future::Future<Output = ()>) {
        let Some(count) = self.shards.count() else {
            return;
        };
        let mut stopped = std::pin::pin!(stopped);
        loop {
            if let Err(e) = self.round(count).await {
                tracing::warn!(group = %self.group, "sharding: {e}");
            }
            self.expire_unrenewed();
            tokio::select! {
                () = tokio::time::sleep(self.timing.retry_period) => {}
                () = &mut stopped => break,
            }
        }
        self.leave().await;
    }

    /// One round: renew membership, read the group, take, renew and give
    /// up shards.
    async fn round(&mut self, count: u32) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        self.renew_membership(now).await?;
        let leases = self
            .api
            .list(&ListParams::default().labels(&format!("{GROUP_LABEL}={}", self.group)))
            .await?
            .items;
        let mut members: Vec<String> = leases
            .iter()
            .filter(|l| l.labels().get(ROLE_LABEL).map(String::as_str) == Some("member"))
            .filter_map(|l| held(l.spec.as_ref()?, now).map(str::to_string))
            .collect();
        if !members.contains(&self.identity) {
            members.push(self.identity.clone());
        }
        members.sort();
        members.dedup();
        self.metrics
            .members
            .set(i64::try_from(members.len()).unwrap_or(i64::MAX));
        let desired = assign(count, &members);
        let by_shard: BTreeMap<String, Lease> = leases
            .into_iter()
            .filter(|l| l.labels().get(ROLE_LABEL).map(String::as_str) == Some("shard"))
            .map(|l| (l.name_any(), l))
            .collect();
        for (shard, owner) in (0..count).zip(desired) {
            let name = shard_lease_name(&self.group, shard);
            let lease = by_shard.get(&name);
            if let Err(e) = self
                .settle(shard, owner == Some(self.identity.as_str()), lease, now)
                .await
            {
                tracing::warn!(group = %self.group, shard, "sharding: {e}");
            }
        }
        Ok(())
    }

    /// Brings one shard's Lease in line with who should own it.
    async fn settle(
        &mut self,
        shard: u32,
        ours_to_have: bool,
        lease: Option<&Lease>,
        now: Timestamp,
    ) -> Result<(), kube::Error> {
        let spec = lease.and_then(|l| l.spec.as_ref());
        let holder = spec.and_then(|s| held(s, now));
        let we_hold = holder == Some(self.identity.as_str()) && self.renewed.contains_key(&shard);
        if we_hold && ours_to_have {
            if self.write(shard, lease, now, true).await? {
                self.renewed.insert(shard, Instant::now());
                self.own(shard);
            } else {
                self.lost(shard);
            }
        } else if we_hold {
            // Handed to another replica: no new pass; those inside finish
            // before the Lease goes.
            if self.shards.revoke(shard) {
                tracing::info!(
                    shard,
                    "shard goes to another replica once its passes finish"
                );
            }
            let draining = self.shards.in_flight(shard) > 0;
            if self.write(shard, lease, now, draining).await? && draining {
                self.renewed.insert(shard, Instant::now());
            } else {
                self.renewed.remove(&shard);
                self.metrics.rebalances.inc();
                self.metrics.owned.remove(&ShardLabels {
                    shard: shard.to_string(),
                });
                tracing::info!(shard, "gave the shard up");
            }
        } else {
            // Someone else's (or a Lease that says so): never act on it.
            self.lost(shard);
            if ours_to_have && holder.is_none() && self.write(shard, lease, now, true).await? {
                self.renewed.insert(shard, Instant::now());
                self.own(shard);
                self.metrics.rebalances.inc();
                tracing::info!(shard, "took the shard");
            }
        }
        Ok(())
    }

    /// Acts on `shard` from now on (again, after a drain it was given back
    /// before it ended).
    fn own(&self, shard: u32) {
        if self.shards.grant(shard) {
            self.metrics
                .owned
                .get_or_create(&ShardLabels {
                    shard: shard.to_string(),
                })
                .set(1);
        }
    }

    fn lost(&mut self, shard: u32) {
        if self.renewed.remove(&shard).is_some() | self.shards.revoke(shard) {
            tracing::warn!(shard, "another replica holds the shard");
            self.metrics.owned.remove(&ShardLabels {
                shard: shard.to_string(),
            });
        }
    }

    /// A shard held longer than the renew deadline without a renewal is
    /// no longer acted on: another replica may take it once its Lease
    /// expires.
    fn expire_unrenewed(&mut self) {
        let deadline = self.timing.renew_deadline;
        let stale: Vec<u32> = self
            .renewed
            .iter()
            .filter(|(_, at)| at.elapsed() > deadline)
            .map(|(shard, _)| *shard)
            .collect();
        for shard in stale {
            tracing::error!(
                shard,
                "could not renew the shard's Lease in time: stopping work on it"
            );
            self.lost(shard);
        }
    }

    /// Takes or renews (`hold`) or releases the Lease of `shard`; false
    /// when another write came first.
    async fn write(
        &self,
        shard: u32,
        lease: Option<&Lease>,
        now: Timestamp,
        hold: bool,
    ) -> Result<bool, kube::Error> {
        let name = shard_lease_name(&self.group, shard);
        let mut lease = lease
            .cloned()
            .unwrap_or_else(|| self.new_lease(&name, "shard"));
        lease
            .labels_mut()
            .insert(SHARD_LABEL.to_string(), shard.to_string());
        self.stamp(&mut lease, now, hold);
        self.put(lease).await
    }

    fn new_lease(&self, name: &str, role: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(
                    [
                        (GROUP_LABEL.to_string(), self.group.clone()),
                        (ROLE_LABEL.to_string(), role.to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec::default()),
        }
    }

    /// Marks `lease` as held by this replica from `now`, or released.
    fn stamp(&self, lease: &mut Lease, now: Timestamp, hold: bool) {
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !hold {
            spec.holder_identity = None;
            spec.renew_time = None;
            return;
        }
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds =
            Some(i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(15));
    }

    /// Creates or replaces `lease` (a compare-and-swap on its
    /// resourceVersion); false on a conflict.
    async fn put(&self, lease: Lease) -> Result<bool, kube::Error> {
        let result = if lease.resource_version().is_some() {
            self.api
                .replace(&lease.name_any(), &PostParams::default(), &lease)
                .await
        } else {
            self.api.create(&PostParams::default(), &lease).await
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn renew_membership(&self, now: Timestamp) -> Result<(), kube::Error> {
        let name = lease_name(&self.group, "member", &self.identity);
        let mut lease = match self.api.get_opt(&name).await? {
            Some(lease) => lease,
            None => self.new_lease(&name, "member"),
        };
        self.stamp(&mut lease, now, true);
        self.put(lease).await.map(|_| ())
    }

    /// Gives every shard back once its passes finish (at most the renew
    /// deadline) and leaves the group.
    async fn leave(&mut self) {
        let held: Vec<u32> = self.renewed.keys().copied().collect();
        for &shard in &held {
            self.shards.revoke(shard);
        }
        let waited = Instant::now();
        while held.iter().any(|&s| self.shards.in_flight(s) > 0)
            && waited.elapsed() < self.timing.renew_deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for shard in held {
            let name = shard_lease_name(&self.group, shard);
            if let Ok(Some(lease)) = self.api.get_opt(&name).await
                && lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.as_deref())
                    == Some(self.identity.as_str())
            {
                let _ = self
                    .write(shard, Some(&lease), Timestamp::now(), false)
                    .await;
            }
        }
        let member = lease_name(&self.group, "member", &self.identity);
        let _ = self.api.delete(&member, &DeleteParams::default()).await;
        tracing::info!(group = %self.group, "left the group of replicas");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_distinct_per_identity() {
        let a = lease_name("fleetforge", "member", "fleetforge-7d9f_12");
        let b = lease_name("fleetforge", "member", "fleetforge-7d9f-12");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.len() <= 253);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
    }

    #[test]
    fn a_lease_is_held_until_its_duration_has_passed_since_the_renewal() {
        let now = Timestamp::now();
        let spec = |holder: Option<&str>, ago: i64| LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(ago))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert_eq!(held(&spec(Some("a"), 3), now), Some("a"));
        assert_eq!(held(&spec(Some("a"), 16), now), None);
        assert_eq!(held(&spec(None, 3), now), None);
        assert_eq!(held(&spec(Some(""), 3), now), None);
    }
}
