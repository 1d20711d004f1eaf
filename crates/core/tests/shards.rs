//! Shard ownership through Leases on a real API server: members split the
//! shards between them, never own one at the same moment, take over the
//! shards of a member that leaves at once and of one that dies once its
//! Leases expire.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetforge_runtime::sharding::{Membership, ShardMetrics, Timing};
use fleetforge_runtime::shards::Shards;
use fleetforge_testenv::with_temp_ns;
use tokio::sync::watch;

const SHARDS: u32 = 8;

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(300),
    }
}

struct Member {
    shards: Arc<Shards>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn join(client: &kube::Client, namespace: &str, identity: &str) -> Member {
    let shards = Shards::new(SHARDS);
    let membership = Membership::new(
        client.clone(),
        namespace,
        "group",
        identity,
        timing(),
        shards.clone(),
        Arc::new(ShardMetrics::default()),
    );
    let (stop, mut stopping) = watch::channel(false);
    let task = tokio::spawn(membership.run(async move {
        let _ = stopping.wait_for(|s| *s).await;
    }));
    Member { shards, stop, task }
}

/// Waits until `done` holds over the members' owned shards, checking all
/// along that no shard is owned by two of them at once.
async fn until(
    members: &[&Member],
    what: &str,
    done: impl Fn(&[BTreeSet<u32>]) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let owned: Vec<BTreeSet<u32>> = members.iter().map(|m| m.shards.owned()).collect();
        for (i, a) in owned.iter().enumerate() {
            for b in &owned[i + 1..] {
                assert!(a.is_disjoint(b), "a shard owned twice: {owned:?}");
            }
        }
        if done(&owned) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all(owned: &[BTreeSet<u32>]) -> bool {
    owned.iter().map(BTreeSet::len).sum::<usize>() == SHARDS as usize
}

#[tokio::test]
async fn members_share_shards_and_take_over_from_one_that_leaves_or_dies() {
    with_temp_ns(|client, ns| async move {
        let a = join(&client, &ns, "a");
        until(&[&a], "a alone owns every shard", |o| {
            o[0].len() == SHARDS as usize
        })
        .await;

        // b joins: the shards split, each handed over only after a gives
        // it up.
        let b = join(&client, &ns, "b");
        until(&[&a, &b], "a and b share", |o| {
            all(o) && o.iter().all(|s| !s.is_empty())
        })
        .await;

        let c = join(&client, &ns, "c");
        until(&[&a, &b, &c], "a, b and c share", |o| {
            all(o) && o.iter().all(|s| !s.is_empty())
        })
        .await;

        // c leaves cleanly: its shards are taken at once, well before they
        // would expire.
        c.stop.send(true).unwrap();
        c.task.await.unwrap();
        let handover = until(&[&a, &b], "c's shards taken", all).await;
        assert!(handover < timing().lease_duration, "took {handover:?}");

        // b dies without a word: a takes its shards once they expire.
        let held_by_b = b.shards.owned();
        assert!(!held_by_b.is_empty());
        b.task.abort();
        // A dead member acts on nothing; here its Shards still say it owns
        // what it held, so only a's count is checked from now on.
        let takeover = until(&[&a], "b's shards taken", |o| o[0].len() == SHARDS as usize).await;
        assert!(
            takeover <= timing().lease_duration + Duration::from_secs(2),
            "took {takeover:?}"
        );
        a.stop.send(true).unwrap();
        a.task.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_shard_is_handed_over_only_after_the_passes_inside_it_end() {
    with_temp_ns(|client, ns| async move {
        let a = join(&client, &ns, "a");
        until(&[&a], "a owns every shard", |o| {
            o[0].len() == SHARDS as usize
        })
        .await;
        // A pass inside every shard, as a slow provider call would be.
        let passes: Vec<_> = (0..SHARDS).map(|s| a.shards.enter(s).unwrap()).collect();
        let b = join(&client, &ns, "b");
        // b gets nothing while every shard has a pass inside.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(b.shards.owned().is_empty(), "{:?}", b.shards.owned());
        // a admits no new pass in the shards it gives up.
        let leaving: Vec<u32> = (0..SHARDS).filter(|s| !a.shards.owns(*s)).collect();
        assert!(!leaving.is_empty(), "nothing is handed over");
        assert!(a.shards.enter(leaving[0]).is_none());
        drop(passes);
        until(&[&a, &b], "handed over once the passes ended", |o| {
            all(o) && !o[1].is_empty()
        })
        .await;
        for member in [a, b] {
            member.stop.send(true).unwrap();
            member.task.await.unwrap();
        }
    })
    .await;
}
