//! The one error policy: per object, exponential backoff with jitter and a
//! cap, never shorter than the Retry-After an error carries; a success
//! starts the object over.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Bounds of the backoff.
#[derive(Debug, Clone, Copy)]
pub struct BackoffSettings {
    /// The first delay.
    pub min: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

/// Backoff state per object key.
#[derive(Debug)]
pub struct Backoffs<Key> {
    settings: BackoffSettings,
    by_key: Mutex<HashMap<Key, ExponentialBackoff>>,
}

impl<Key: Hash + Eq + Clone> Backoffs<Key> {
    /// No object failing yet.
    pub fn new(settings: BackoffSettings) -> Self {
        Self {
            settings,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// The delay before `key`'s next attempt after one more failure.
    pub fn next(&self, key: &Key, retry_after: Option<Duration>) -> Duration {
        let delay = {
            let mut by_key = self.by_key.lock().expect("backoffs");
            let backoff = by_key.entry(key.clone()).or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(self.settings.min)
                    .with_max_delay(self.settings.max)
                    .with_factor(2.0)
                    .with_jitter()
                    .without_max_times()
                    .build()
            });
            // backon's jitter adds up to the delay again: the cap is a cap.
            backoff
                .next()
                .unwrap_or(self.settings.max)
                .min(self.settings.max)
        };
        retry_after.map_or(delay, |after| delay.max(after))
    }

    /// `key` succeeded: its next failure starts from the first delay.
    pub fn reset(&self, key: &Key) {
        self.by_key.lock().expect("backoffs").remove(key);
    }

    /// How many objects are backing off.
    pub fn len(&self) -> usize {
        self.by_key.lock().expect("backoffs").len()
    }

    /// Whether no object is backing off.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `base` moved randomly by up to `fraction` of itself either way, so that
/// objects created together do not poll together.
pub fn jittered(base: Duration, fraction: f64) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    // SplitMix64 finaliser: a well-mixed 64-bit value from the counter.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(1.0 + fraction * (2.0 * unit - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BackoffSettings {
        BackoffSettings {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }

    #[test]
    fn delays_grow_are_jittered_and_capped() {
        let backoffs = Backoffs::new(settings());
        let delays: Vec<Duration> = (0..12).map(|_| backoffs.next(&"a", None)).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
        assert!(delays[3] > delays[0], "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(2)),
            "capped: {delays:?}"
        );
        assert!(delays[11] == Duration::from_secs(2), "{delays:?}");
        // Another key has its own state.
        assert!(backoffs.next(&"b", None) < Duration::from_millis(300));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let backoffs = Backoffs::new(settings());
        assert_eq!(
            backoffs.next(&"a", Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_success_starts_over() {
        let backoffs = Backoffs::new(settings());
        for _ in 0..8 {
            backoffs.next(&"a", None);
        }
        backoffs.reset(&"a");
        assert!(backoffs.is_empty());
        assert!(backoffs.next(&"a", None) < Duration::from_millis(300));
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let base = Duration::from_secs(60);
        let samples: Vec<Duration> = (0..1000).map(|_| jittered(base, 0.1)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(54) && *d <= Duration::from_secs(66))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 900,
            "jitter should spread polls: {} distinct",
            distinct.len()
        );
    }
}
