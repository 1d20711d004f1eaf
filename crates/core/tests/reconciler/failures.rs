//! Provider failures, throttling, the account rate limit and the poll.

use super::harness::*;

#[tokio::test]
async fn provider_failures_become_conditions_and_back_off() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        let faults = json!({
            "nop.fleetforge.dev/fail-create": "1000",
            "nop.fleetforge.dev/fail-kind": "QuotaExceeded",
        });
        h.create("web", json!({}), faults).await;
        let failed = h
            .wait_for_condition("web", condition::SYNCED, "False", "QuotaExceeded")
            .await;
        assert!(message_of(&failed, condition::SYNCED).contains("injected create failure"));
        h.wait_for_event("web", "QuotaExceeded").await;
        let annotations = failed.annotations();
        assert!(annotations.contains_key(annotation::CREATE_FAILED));
        assert!(!annotations.contains_key(annotation::CREATE_PENDING));

        let cloud = h.cloud().await;
        let before = cloud.calls.snapshot().1;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let attempts = cloud.calls.snapshot().1 - before;
        // Backoff from 200 ms doubling to 2 s allows about 5 attempts in 6 s;
        // a hot loop would make hundreds.
        assert!(
            (1..=8).contains(&attempts),
            "{attempts} create attempts in 6 s"
        );
        assert!(cloud.names().is_empty());
    })
    .await;
}

#[tokio::test]
async fn throttling_is_honoured() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({})).await;
        // Retry-After (3 s) is far longer than the engine's own backoff
        // (200 ms doubling to 2 s): ignoring it would make 5 or more
        // attempts in the 5 s watched, honouring it 2 at most.
        let faults = json!({
            "nop.fleetforge.dev/fail-observe": "1000",
            "nop.fleetforge.dev/fail-kind": "Throttled",
            "nop.fleetforge.dev/retry-after": "3s",
        });
        h.create("web", json!({}), faults).await;
        h.wait_for_condition("web", condition::SYNCED, "False", "Throttled")
            .await;
        let cloud = h.cloud().await;
        let before = cloud.calls.snapshot().0;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let attempts = cloud.calls.snapshot().0 - before;
        assert!(
            attempts <= 2,
            "{attempts} observe attempts in 5 s despite Retry-After 3 s"
        );
        assert!(attempts >= 1, "the engine stopped retrying: {attempts}");
    })
    .await;
}

#[tokio::test]
async fn the_account_rate_limit_holds_across_clusters() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(
            client,
            ns,
            json!({"rateLimit": {"qps": 5, "burst": 2}, "pollInterval": "30s"}),
        )
        .await;
        let started = Instant::now();
        for i in 0..6 {
            h.create(&format!("c{i}"), json!({}), json!({})).await;
        }
        for i in 0..6 {
            h.wait_for_condition(&format!("c{i}"), condition::READY, "True", "Available")
                .await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let (observes, creates, updates, deletes) = h.cloud().await.calls.snapshot();
        let calls = (observes + creates + updates + deletes) as f64;
        assert!(
            calls <= 2.0 + 5.0 * elapsed * 1.1,
            "{calls} calls in {elapsed:.1} s exceed 5 per second with a burst of 2"
        );
    })
    .await;
}

#[tokio::test]
async fn each_cluster_is_read_once_per_poll_interval() {
    with_temp_ns(|client, ns| async move {
        let h = Harness::start(client, ns, json!({"pollInterval": "2s"})).await;
        h.create("web", json!({}), json!({})).await;
        h.wait_for_condition("web", condition::READY, "True", "Available")
            .await;
        let cloud = h.cloud().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = cloud.observes_of("web");
        let version_before = h.clusters().get("web").await.unwrap().resource_version();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let reads = cloud.observes_of("web") - before;
        // Polling a converged cluster writes nothing (lastObserved is
        // refreshed only every ten poll intervals, 20 s here).
        let after = h.clusters().get("web").await.unwrap();
        if after.resource_version() != version_before {
            let status = serde_json::to_string_pretty(&after.status).unwrap();
            panic!("a converged cluster was rewritten while polling; status now:\n{status}");
        }
        // 10 s at one read per 2 s (jittered by 10%): at most 6. The lower
        // bound only shows that polling happens on a busy machine.
        assert!(
            (2..=6).contains(&reads),
            "{reads} reads in 10 s with a 2 s poll interval"
        );
    })
    .await;
}
