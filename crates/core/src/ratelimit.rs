//! Client-side rate limits, one token bucket per ProviderConfig, shared by
//! every object of that account.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetforge_api::provider_config::RateLimit;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Token buckets by ProviderConfig name.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, (RateLimit, Arc<DefaultDirectRateLimiter>)>>,
}

impl RateLimits {
    /// Waits until the account `config_name` may make one more call.
    /// Without a `limit`, calls are not limited.
    pub async fn acquire(&self, config_name: &str, limit: Option<&RateLimit>) {
        let Some(limit) = limit else {
            return;
        };
        let bucket = self.bucket(config_name, limit);
        bucket.until_ready().await;
    }

    /// The bucket for `config_name`, rebuilt when its limit changed.
    fn bucket(&self, config_name: &str, limit: &RateLimit) -> Arc<DefaultDirectRateLimiter> {
        let mut buckets = self.buckets.lock().expect("rate-limit map poisoned");
        if let Some((known, bucket)) = buckets.get(config_name)
            && known == limit
        {
            return bucket.clone();
        }
        let bucket = Arc::new(RateLimiter::direct(quota(limit)));
        buckets.insert(config_name.to_string(), (limit.clone(), bucket.clone()));
        bucket
    }
}

/// The governor quota for a limit: one token every 1/qps seconds, up to
/// `burst` saved.
fn quota(limit: &RateLimit) -> Quota {
    let period = Duration::from_secs_f64(1.0 / limit.qps.max(0.001));
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .expect("a positive period")
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn calls_beyond_the_burst_wait_for_tokens() {
        let limits = RateLimits::default();
        let limit = RateLimit {
            qps: 20.0,
            burst: 5,
        };
        let started = Instant::now();
        for _ in 0..15 {
            limits.acquire("aws-prod", Some(&limit)).await;
        }
        // 5 immediately, then 10 more at 20 per second: about 0.5 s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    }

    #[tokio::test]
    async fn accounts_have_separate_buckets_and_no_limit_means_none() {
        let limits = RateLimits::default();
        // One token per 20 s: a call that waited on another account's
        // bucket would take 20 s, far beyond any scheduling delay of a busy
        // machine (the bound below), so this cannot pass by luck or fail
        // by load.
        let limit = RateLimit {
            qps: 0.05,
            burst: 1,
        };
        let started = Instant::now();
        limits.acquire("a", Some(&limit)).await;
        limits.acquire("b", Some(&limit)).await;
        for _ in 0..100 {
            limits.acquire("c", None).await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}
