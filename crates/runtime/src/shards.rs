//! Sharing the fleet between replicas.
//!
//! The objects that grow with a fleet (Clusters, with their ProviderConfigs,
//! and the per-target ToolTargets) are split into a fixed number of shards
//! by a key: an object's shard is [`shard_of`] its key. Each replica owns
//! some shards ([`crate::sharding`] decides which, through Leases) and acts
//! only on objects of shards it owns: every pass of a sharded controller
//! first [`Shards::enter`]s its object's shard, and a shard being handed to
//! another replica is released only once the passes that entered it have
//! finished. So at no moment do two replicas act on one object.
//!
//! A replica also watches only the shards it owns, where the API can
//! select them: sharded objects carry [`SHARD_LABEL`], and informers
//! follow [`Shards::selection`]. The replica that runs the fleet-wide
//! controllers (ToolInstalls, profiles, rollouts, which must see every
//! target) watches everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::Stream;
use tokio::sync::watch;

/// The label that carries an object's shard, for watches to select by.
pub const SHARD_LABEL: &str = "fleetforge.dev/shard";

/// FNV-1a of `text`: the same number on every replica and every build
/// (the standard library's hasher promises neither).
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shard of an object whose shard key is `key`, of `count` shards.
pub fn shard_of(key: &str, count: u32) -> u32 {
    u32::try_from(fnv1a(key) % u64::from(count.max(1))).unwrap_or(0)
}

/// The shard an object's [`SHARD_LABEL`] names, for objects whose shard is
/// their target's (written by the controller that makes them).
pub fn by_label<K: kube::Resource>(obj: &K, count: u32) -> Option<u32> {
    obj.meta()
        .labels
        .as_ref()?
        .get(SHARD_LABEL)?
        .parse()
        .ok()
        .filter(|shard| *shard < count)
}

/// A well-mixed weight of `member` for `shard` (splitmix64's finaliser).
fn weight(shard: u32, member: &str) -> u64 {
    let mut x = fnv1a(member) ^ u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which member each of `count` shards belongs to: rendezvous (highest
/// random weight) hashing with bounded loads. Each shard goes to the member
/// that weighs most for it among those still under an even share
/// (`count / members`, rounded up), so every replica computes the same
/// answer from the same members, shares differ by at most one or so, and a
/// member that joins or leaves moves few shards besides its own. None when
/// there are no members.
pub fn assign(count: u32, members: &[String]) -> Vec<Option<&str>> {
    if members.is_empty() {
        return vec![None; count as usize];
    }
    let cap = count.div_ceil(u32::try_from(members.len()).unwrap_or(u32::MAX));
    let mut load = vec![0u32; members.len()];
    (0..count)
        .map(|shard| {
            let chosen = (0..members.len())
                .filter(|&m| load[m] < cap)
                .max_by_key(|&m| (weight(shard, &members[m]), members[m].as_str()))?;
            load[chosen] += 1;
            Some(members[chosen].as_str())
        })
        .collect()
}

/// What an informer of sharded objects watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every object (one replica alone, or the one that runs the
    /// fleet-wide controllers).
    All,
    /// The objects of these shards.
    Shards(BTreeSet<u32>),
}

impl Selection {
    /// The label selector that watches this selection; None for all.
    pub fn label_selector(&self) -> Option<String> {
        match self {
            Self::All => None,
            // `none` is no shard's value: an empty set still parses and
            // selects nothing.
            Self::Shards(shards) => Some(format!(
                "{SHARD_LABEL} in (none{})",
                shards.iter().map(|s| format!(",{s}")).collect::<String>()
            )),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    owned: BTreeSet<u32>,
    in_flight: HashMap<u32, usize>,
    everything: bool,
}

/// The shards this replica owns now, and the passes inside each.
#[derive(Debug)]
pub struct Shards {
    /// None when the process is not sharded (one replica does it all).
    count: Option<u32>,
    state: Mutex<State>,
    owned: watch::Sender<BTreeSet<u32>>,
    selection: watch::Sender<Selection>,
}

impl Shards {
    /// Not sharded: this replica owns every object.
    pub fn whole() -> Arc<Self> {
        Arc::new(Self {
            count: None,
            state: Mutex::default(),
            owned: watch::channel(BTreeSet::new()).0,
            selection: watch::channel(Selection::All).0,
        })
    }

    /// `count` shards, none owned until granted.
    pub fn new(count: u32) -> Arc<Self> {
        Arc::new(Self {
            count: Some(count.max(1)),
            state: Mutex::default(),
            owned: watch::channel(BTreeSet::new()).0,
            selection: watch::channel(Selection::Shards(BTreeSet::new())).0,
        })
    }

    /// How many shards there are, when sharded.
    pub fn count(&self) -> Option<u32> {
        self.count
    }

    /// The shard of `key` (0 when not sharded).
    pub fn shard(&self, key: &str) -> u32 {
        self.count.map_or(0, |count| shard_of(key, count))
    }

    /// Enters `shard` for one pass, if this replica owns it: the shard is
    /// not released while the returned guard lives. Not sharded, every
    /// pass enters.
    pub fn enter(self: &Arc<Self>, shard: u32) -> Option<Entered> {
        if self.count.is_none() {
            return Some(Entered { shards: None });
        }
        let mut state = self.state.lock().expect("shards");
        if !state.owned.contains(&shard) {
            return None;
        }
        *state.in_flight.entry(shard).or_default() += 1;
        Some(Entered {
            shards: Some((self.clone(), shard)),
        })
    }

    /// Whether this replica owns `shard` now (always, when not sharded).
    pub fn owns(&self, shard: u32) -> bool {
        self.count.is_none() || self.state.lock().expect("shards").owned.contains(&shard)
    }

    /// The shards owned now.
    pub fn owned(&self) -> BTreeSet<u32> {
        self.state.lock().expect("shards").owned.clone()
    }

    /// Passes inside `shard` now.
    pub fn in_flight(&self, shard: u32) -> usize {
        let state = self.state.lock().expect("shards");
        state.in_flight.get(&shard).copied().unwrap_or(0)
    }

    /// This replica now owns `shard`; returns whether that is news.
    pub fn grant(&self, shard: u32) -> bool {
        self.change(|state| state.owned.insert(shard))
    }

    /// This replica no longer acts on `shard` (passes inside finish);
    /// returns whether it owned it.
    pub fn revoke(&self, shard: u32) -> bool {
        self.change(|state| state.owned.remove(&shard))
    }

    /// From now on this replica watches every object, whichever shards it
    /// owns (it runs the fleet-wide controllers).
    pub fn watch_everything(&self) {
        self.change(|state| !std::mem::replace(&mut state.everything, true));
    }

    fn change(&self, change: impl FnOnce(&mut State) -> bool) -> bool {
        if self.count.is_none() {
            return false;
        }
        let mut state = self.state.lock().expect("shards");
        let changed = change(&mut state);
        if changed {
            self.owned.send_replace(state.owned.clone());
            self.selection.send_replace(if state.everything {
                Selection::All
            } else {
                Selection::Shards(state.owned.clone())
            });
        }
        changed
    }

    /// What informers of sharded objects should watch, as it changes.
    pub fn selection(&self) -> watch::Receiver<Selection> {
        self.selection.subscribe()
    }

    /// A tick whenever this replica gains a shard, for
    /// `Controller::reconcile_all_on`: objects of a gained shard may have
    /// been in the cache all along, unchanged.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        let owned = self.owned.subscribe();
        futures::stream::unfold(
            (owned, BTreeSet::new()),
            |(mut owned, mut before)| async move {
                loop {
                    owned.changed().await.ok()?;
                    let now = owned.borrow_and_update().clone();
                    let gained = now.difference(&before).next().is_some();
                    before = now;
                    if gained {
                        return Some(((), (owned, before)));
                    }
                }
            },
        )
    }
}

/// One pass inside a shard; see [`Shards::enter`].
#[derive(Debug)]
pub struct Entered {
    shards: Option<(Arc<Shards>, u32)>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Some((shards, shard)) = &self.shards {
            let mut state = shards.state.lock().expect("shards");
            if let Some(n) = state.in_flight.get_mut(shard) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("fleetforge-{i}_1")).collect()
    }

    fn owners(count: u32, members: &[String]) -> Vec<String> {
        assign(count, members)
            .into_iter()
            .map(|m| m.unwrap().to_string())
            .collect()
    }

    #[test]
    fn shards_spread_evenly_and_every_replica_computes_the_same() {
        for n in 1..=6 {
            let members = members(n);
            let mut reversed = members.clone();
            reversed.reverse();
            assert_eq!(owners(32, &members), owners(32, &reversed));
            let cap = 32usize.div_ceil(n);
            let shares: Vec<usize> = members
                .iter()
                .map(|m| owners(32, &members).iter().filter(|o| *o == m).count())
                .collect();
            assert!(
                shares.iter().all(|s| *s <= cap && *s + n >= cap),
                "{n} members: {shares:?}"
            );
        }
        assert_eq!(assign(4, &[]), vec![None; 4]);
    }

    #[test]
    fn a_member_that_joins_or_leaves_moves_few_shards_besides_its_own() {
        let three = members(3);
        let four = members(4);
        let before = owners(64, &three);
        let after = owners(64, &four);
        let taken = after.iter().filter(|a| *a == &four[3]).count();
        let moved_between_old = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a != b && *a != &four[3])
            .count();
        assert!(taken >= 14, "the new member got {taken} of 64");
        assert!(
            moved_between_old <= 64 / 4,
            "{moved_between_old} shards moved between members that stayed"
        );
        let without_first: Vec<String> = four[1..].to_vec();
        let moved = after
            .iter()
            .zip(owners(64, &without_first))
            .filter(|(a, b)| **a != *b && **a != four[0])
            .count();
        assert!(moved <= 64 / 4, "{moved} shards moved besides the leaver's");
    }

    #[test]
    fn keys_have_a_stable_shard() {
        // Fixed values: a change of hash would move every object when
        // replicas of two builds run side by side.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(shard_of("a", 1), 0);
        assert!((0..1000).all(|i| shard_of(&format!("pc-{i}"), 32) < 32));
    }

    #[test]
    fn a_pass_enters_only_owned_shards_and_is_counted_until_it_ends() {
        let shards = Shards::new(8);
        let shard = shards.shard("account-a");
        assert!(shards.enter(shard).is_none());
        assert!(shards.grant(shard));
        assert!(!shards.grant(shard), "granting twice is no news");
        let pass = shards.enter(shard).expect("owned");
        assert_eq!(shards.in_flight(shard), 1);
        assert!(shards.revoke(shard));
        assert!(
            shards.enter(shard).is_none(),
            "a revoked shard lets no new pass in"
        );
        assert_eq!(shards.in_flight(shard), 1, "the pass inside finishes");
        drop(pass);
        assert_eq!(shards.in_flight(shard), 0);
    }

    #[test]
    fn the_selection_follows_owned_shards_until_everything_is_watched() {
        let shards = Shards::new(8);
        let selection = shards.selection();
        assert_eq!(
            selection.borrow().label_selector().as_deref(),
            Some("fleetforge.dev/shard in (none)")
        );
        shards.grant(3);
        shards.grant(1);
        assert_eq!(
            selection.borrow().label_selector().as_deref(),
            Some("fleetforge.dev/shard in (none,1,3)")
        );
        shards.watch_everything();
        assert_eq!(*selection.borrow(), Selection::All);
        let whole = Shards::whole();
        assert!(whole.enter(5).is_some());
        assert!(whole.owns(5));
        assert_eq!(*whole.selection().borrow(), Selection::All);
    }

    #[tokio::test]
    async fn gaining_a_shard_ticks_and_losing_one_does_not() {
        use futures::StreamExt;
        let shards = Shards::new(8);
        let mut gained = Box::pin(shards.gained());
        shards.grant(2);
        gained.next().await.unwrap();
        shards.revoke(2);
        shards.grant(5);
        gained.next().await.unwrap();
        shards.revoke(5);
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), gained.next()).await;
        assert!(nothing.is_err(), "a loss is no tick");
    }
}
