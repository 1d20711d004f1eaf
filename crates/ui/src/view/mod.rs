//! View models: what each page shows, computed from the objects the
//! watches hold by pure functions (aggregation, filtering, sorting,
//! paging), so that they are tested as tables with no server, browser or
//! API server. Rendering them to HTML is `page`'s job; keeping them
//! current is `cache`'s.

pub mod cluster;
pub mod environments;
pub mod fleet;
pub mod rollouts;
pub mod selector;
pub mod tools;

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

/// Where the watch of one kind in one scope stands, as a page tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The first list has not answered yet.
    Loading,
    /// Listed and watched: the objects shown are current.
    Ready,
    /// The API server refused the caller (403): they may not list this
    /// kind here, so the page shows none of it and says so.
    Forbidden(String),
    /// The API server does not serve the kind (its CRD is not installed).
    NotServed(String),
    /// Listing failed for another reason; retried with backoff.
    Failing(String),
}

/// One watch's scope (a namespace, or all of them) and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeAccess {
    /// The namespace watched, or `None` for all namespaces.
    pub namespace: Option<String>,
    /// Where that watch stands.
    pub access: Access,
}

impl ScopeAccess {
    /// "in all namespaces" or "in namespace X", for sentences.
    pub fn scope_text(&self) -> String {
        match &self.namespace {
            None => "in all namespaces".to_string(),
            Some(namespace) => format!("in namespace {namespace}"),
        }
    }
}

/// The objects of one kind the caller may see, and how each scope's
/// watch stands.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    /// The objects, in no particular order.
    pub items: Vec<Arc<T>>,
    /// One entry per watched scope.
    pub access: Vec<ScopeAccess>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            access: Vec::new(),
        }
    }
}

impl<T> Listing<T> {
    /// A listing of `items` whose every scope is [`Access::Ready`] (tests).
    pub fn ready(items: Vec<T>) -> Self {
        Self {
            items: items.into_iter().map(Arc::new).collect(),
            access: vec![ScopeAccess {
                namespace: None,
                access: Access::Ready,
            }],
        }
    }

    /// Whether every scope has listed at least once.
    pub fn loaded(&self) -> bool {
        self.access.iter().all(|a| a.access != Access::Loading)
    }
}

/// A condition's status, as `kubectl get` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Readiness {
    /// `True`.
    True,
    /// `False`.
    False,
    /// Absent or `Unknown`.
    Unknown,
}

impl Readiness {
    /// Of the condition `type_` in `conditions`.
    pub fn of(conditions: &[Condition], type_: &str) -> Self {
        match conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
        {
            Some("True") => Readiness::True,
            Some("False") => Readiness::False,
            _ => Readiness::Unknown,
        }
    }

    /// `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::True => "True",
            Readiness::False => "False",
            Readiness::Unknown => "Unknown",
        }
    }
}

/// An age as `kubectl get` prints it: `45s`, `12m`, `5h`, `3d`.
pub fn age(created: Option<Timestamp>, now: Timestamp) -> String {
    let Some(created) = created else {
        return "-".to_string();
    };
    let seconds = now.as_second().saturating_sub(created.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Time left as a clock that visibly counts down: `1d 02h 03m 04s`,
/// `7h 59m 12s`, `4m 09s`, `12s`. The page's script ticks it with the
/// same format.
pub fn countdown(seconds: i64) -> String {
    let s = seconds.max(0);
    let (days, hours, minutes, secs) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours:02}h {minutes:02}m {secs:02}s")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m {secs:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// Pages of `per_page` over `count` items: (the page asked for, clamped
/// to those that exist, counted from 1; the number of pages, at least 1).
pub fn clamp_page(page: usize, per_page: usize, count: usize) -> (usize, usize) {
    let pages = count.div_ceil(per_page.max(1)).max(1);
    (page.clamp(1, pages), pages)
}

/// Whether every word of `text` (lowercased, split on whitespace) occurs
/// in one of `fields`, case-insensitively.
pub fn matches_text(text: &str, fields: &[&str]) -> bool {
    let haystack = fields.join("\u{1f}").to_lowercase();
    text.to_lowercase()
        .split_whitespace()
        .all(|word| haystack.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = at(1_000_000);
        let cases = [
            (None, "-"),
            (Some(0), "0s"),
            (Some(119), "119s"),
            (Some(120), "2m"),
            (Some(7199), "119m"),
            (Some(7200), "2h"),
            (Some(2 * 86400 - 1), "47h"),
            (Some(3 * 86400), "3d"),
            (Some(-30), "0s"),
        ];
        for (ago, want) in cases {
            let created = ago.map(|a| at(1_000_000 - a));
            assert_eq!(age(created, now), want, "{ago:?}s ago");
        }
    }

    #[test]
    fn countdowns_show_seconds() {
        let cases = [
            (-1, "0s"),
            (59, "59s"),
            (249, "4m 09s"),
            (7 * 3600 + 59 * 60 + 12, "7h 59m 12s"),
            (86400 + 2 * 3600 + 3 * 60 + 4, "1d 02h 03m 04s"),
        ];
        for (seconds, want) in cases {
            assert_eq!(countdown(seconds), want, "{seconds}s");
        }
    }

    #[test]
    fn pages_are_clamped_to_those_that_exist() {
        let cases = [
            // (page, per page, items) -> (page, pages)
            ((1, 50, 0), (1, 1)),
            ((1, 50, 50), (1, 1)),
            ((2, 50, 51), (2, 2)),
            ((9, 50, 120), (3, 3)),
            ((0, 50, 120), (1, 3)),
            ((1, 0, 10), (1, 10)),
        ];
        for ((page, per_page, count), want) in cases {
            assert_eq!(clamp_page(page, per_page, count), want);
        }
    }

    #[test]
    fn text_matches_every_word_anywhere() {
        let fields = ["platform/dev-1", "local", "Ready"];
        assert!(matches_text("", &fields));
        assert!(matches_text("dev", &fields));
        assert!(matches_text("DEV ready", &fields));
        assert!(!matches_text("dev failed", &fields));
        // Words do not match across field boundaries.
        assert!(!matches_text("1local", &fields));
    }
}
