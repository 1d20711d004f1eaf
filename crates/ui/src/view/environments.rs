//! The environments page: owner, type, phase, time left, asleep or awake,
//! estimate; the signed-in person's own first, then by what expires
//! soonest. And the one write the fleet view makes: a new time to live
//! for an environment someone extends.

use std::collections::HashMap;
use std::time::Duration;

use fleetforge_api::Environment;
use fleetforge_api::environment::{EnvironmentPhase, EnvironmentType};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use super::{countdown, matches_text};

/// One Environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.owner`.
    pub owner: String,
    /// `virtual` or `dedicated`.
    pub kind: &'static str,
    /// The phase (`Pending` until one is reported).
    pub phase: String,
    /// `spec.ttl`.
    pub ttl: String,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// When it will be deleted.
    pub expires_at: Option<Timestamp>,
    /// Asleep (or asked to sleep).
    pub sleeping: bool,
    /// The estimate, as `2 vCPU, 8Gi`.
    pub estimate: String,
    /// Whether the signed-in person owns it.
    pub mine: bool,
}

impl EnvironmentRow {
    /// The row of an Environment, for the person `user` (their
    /// Kubernetes user name, if known).
    pub fn from_environment(env: &Environment, user: Option<&str>) -> Self {
        let status = env.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or_default();
        let estimate = status
            .estimate
            .map(|e| {
                let vcpu = e.vcpu.map(|q| q.0);
                let memory = e.memory.map(|q| q.0);
                match (vcpu, memory) {
                    (Some(v), Some(m)) => format!("{v} vCPU, {m}"),
                    (Some(v), None) => format!("{v} vCPU"),
                    (None, Some(m)) => m,
                    (None, None) => String::new(),
                }
            })
            .unwrap_or_default();
        Self {
            namespace: env.namespace().unwrap_or_default(),
            name: env.name_any(),
            owner: env.spec.owner.clone(),
            kind: match env.spec.kind {
                EnvironmentType::Virtual => "virtual",
                EnvironmentType::Dedicated => "dedicated",
            },
            phase: format!("{phase:?}"),
            ttl: env.spec.ttl.clone(),
            created: env.creation_timestamp().map(|t| t.0),
            expires_at: status.expires_at.map(|t| t.0),
            sleeping: phase == EnvironmentPhase::Sleeping || env.spec.sleep,
            estimate,
            mine: user.is_some_and(|u| u == env.spec.owner),
        }
    }

    /// Seconds until it expires (negative once past), if known.
    pub fn seconds_left(&self, now: Timestamp) -> Option<i64> {
        self.expires_at.map(|at| at.as_second() - now.as_second())
    }

    /// Time left for people: `2h 05m 00s`, `expired`, `-` when not known.
    pub fn time_left(&self, now: Timestamp) -> String {
        match self.seconds_left(now) {
            None => "-".to_string(),
            Some(s) if s <= 0 => "expired".to_string(),
            Some(s) => countdown(s),
        }
    }
}

/// What a person asked of the environments table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentsQuery {
    /// Words that must occur in namespace/name, owner, type or phase.
    pub text: String,
    /// Only this namespace.
    pub namespace: String,
    /// Only the signed-in person's (`mine=yes`).
    pub mine_only: bool,
    /// The action just done (`done=extend|delete`), after its redirect.
    pub done: String,
    /// The environment it was done to (`env=NAMESPACE/NAME`).
    pub env: String,
}

impl EnvironmentsQuery {
    /// Reads the query from URL parameters.
    pub fn from_params(params: &HashMap<String, String>) -> Self {
        let get = |key: &str| params.get(key).map(|v| v.trim().to_string());
        Self {
            text: get("q").unwrap_or_default(),
            namespace: get("ns").unwrap_or_default(),
            mine_only: get("mine").as_deref() == Some("yes"),
            done: get("done").unwrap_or_default(),
            env: get("env").unwrap_or_default(),
        }
    }

    /// What the action just done did, in words (fixed sentences: the URL
    /// chooses among them, it cannot put words on the page).
    pub fn done_text(&self) -> Option<String> {
        match self.done.as_str() {
            "extend" => Some(format!("Extended {}.", self.env)),
            "delete" => Some(format!("Deleting {} and everything in it.", self.env)),
            _ => None,
        }
    }
}

/// Counts the page leads with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvironmentCounts {
    /// All shown.
    pub total: usize,
    /// The signed-in person's.
    pub mine: usize,
    /// Asleep.
    pub sleeping: usize,
    /// Expiring within a day (and not yet expired).
    pub expiring_today: usize,
}

/// The rows `query` asks for, the signed-in person's first, then the
/// soonest to expire, then by name; and counts over them.
pub fn environments(
    envs: &[&Environment],
    user: Option<&str>,
    query: &EnvironmentsQuery,
    now: Timestamp,
) -> (Vec<EnvironmentRow>, EnvironmentCounts) {
    let mut rows: Vec<EnvironmentRow> = envs
        .iter()
        .map(|e| EnvironmentRow::from_environment(e, user))
        .filter(|r| query.namespace.is_empty() || r.namespace == query.namespace)
        .filter(|r| !query.mine_only || r.mine)
        .filter(|r| {
            matches_text(
                &query.text,
                &[
                    &format!("{}/{}", r.namespace, r.name),
                    &r.owner,
                    r.kind,
                    &r.phase,
                ],
            )
        })
        .collect();
    rows.sort_by(|a, b| {
        b.mine
            .cmp(&a.mine)
            .then_with(|| match (a.expires_at, b.expires_at) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .then_with(|| a.namespace.cmp(&b.namespace))
            .then_with(|| a.name.cmp(&b.name))
    });
    let counts = EnvironmentCounts {
        total: rows.len(),
        mine: rows.iter().filter(|r| r.mine).count(),
        sleeping: rows.iter().filter(|r| r.sleeping).count(),
        expiring_today: rows
            .iter()
            .filter(|r| r.seconds_left(now).is_some_and(|s| s > 0 && s <= 86400))
            .count(),
    };
    (rows, counts)
}

/// The `spec.ttl` that makes an environment created at `created` and
/// expiring at `expires_at` live `by` longer than it would now, or, when
/// it has already expired, `by` from `now`. A Go duration in whole
/// minutes (`9h30m`), as `fleetforge env extend` takes.
pub fn extended_ttl(
    created: Timestamp,
    expires_at: Timestamp,
    by: Duration,
    now: Timestamp,
) -> Result<String, String> {
    let by = SignedDuration::try_from(by).map_err(|e| e.to_string())?;
    let from = if expires_at > now { expires_at } else { now };
    let until = from.checked_add(by).map_err(|e| e.to_string())?;
    let minutes = (until.as_second() - created.as_second() + 59) / 60;
    if minutes <= 0 {
        return Err("the new expiry is not after the creation".to_string());
    }
    Ok(match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    })
}

/// The extensions the page offers.
pub const EXTENSIONS: [(&str, Duration); 3] = [
    ("1h", Duration::from_secs(3600)),
    ("4h", Duration::from_secs(4 * 3600)),
    ("1d", Duration::from_secs(86400)),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn mk_env(name: &str, owner: &str, expires: Option<&str>, phase: &str) -> Environment {
        serde_json::from_value(json!({
            "apiVersion": "fleetforge.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": name, "namespace": "platform", "creationTimestamp": "2026-12-01T08:00:00Z"},
            "spec": {"type": "virtual", "owner": owner, "ttl": "8h"},
            "status": {"phase": phase, "expiresAt": expires,
                       "estimate": {"vcpu": "200m", "memory": "256Mi"}},
        }))
        .unwrap()
    }

    #[test]
    fn own_environments_first_then_soonest_to_expire() {
        let envs = [
            mk_env("late", "bob", Some("2026-12-01T20:00:00Z"), "Ready"),
            mk_env("soon", "bob", Some("2026-12-01T11:00:00Z"), "Sleeping"),
            mk_env("mine-late", "alice", Some("2026-12-02T20:00:00Z"), "Ready"),
            mk_env("mine-soon", "alice", Some("2026-12-01T12:00:00Z"), "Ready"),
            mk_env("unknown", "carol", None, "Pending"),
        ];
        let refs: Vec<&Environment> = envs.iter().collect();
        let now = at("2026-12-01T10:00:00Z");
        let (rows, counts) = environments(&refs, Some("alice"), &Default::default(), now);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mine-soon", "mine-late", "soon", "late", "unknown"]);
        assert_eq!(
            counts,
            EnvironmentCounts {
                total: 5,
                mine: 2,
                sleeping: 1,
                expiring_today: 3
            }
        );
        assert_eq!(rows[0].time_left(now), "2h 00m 00s");
        assert_eq!(rows[4].time_left(now), "-");
        assert_eq!(rows[0].time_left(at("2026-12-01T13:00:00Z")), "expired");
        assert_eq!(rows[0].estimate, "200m vCPU, 256Mi");
        assert!(rows[2].sleeping);

        let mine_only = EnvironmentsQuery {
            mine_only: true,
            ..Default::default()
        };
        let (rows, _) = environments(&refs, Some("alice"), &mine_only, now);
        assert_eq!(rows.len(), 2);
        let (rows, counts) = environments(&refs, None, &Default::default(), now);
        assert_eq!(counts.mine, 0);
        assert_eq!(rows[0].name, "soon", "without a user, soonest first");
        let text = EnvironmentsQuery {
            text: "carol".into(),
            ..Default::default()
        };
        assert_eq!(environments(&refs, None, &text, now).0.len(), 1);
    }

    #[test]
    fn extending_adds_to_what_is_left() {
        let created = at("2026-12-01T08:00:00Z");
        let hour = Duration::from_secs(3600);
        let cases = [
            // (expires, now, by) -> ttl
            ("2026-12-01T16:00:00Z", "2026-12-01T10:00:00Z", hour, "9h"),
            (
                "2026-12-01T16:30:00Z",
                "2026-12-01T10:00:00Z",
                4 * hour,
                "12h30m",
            ),
            // Already expired (not yet deleted): from now.
            ("2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z", hour, "3h"),
            // Seconds round up to the next minute, never shortening.
            (
                "2026-12-01T08:20:30Z",
                "2026-12-01T08:10:00Z",
                Duration::from_secs(60),
                "22m",
            ),
        ];
        for (expires, now, by, want) in cases {
            let ttl = extended_ttl(created, at(expires), by, at(now)).unwrap();
            assert_eq!(ttl, want, "expires {expires}, now {now}, by {by:?}");
            let parsed: kube::core::Duration = ttl.parse().unwrap();
            assert!(Duration::from(parsed) >= by);
        }
    }
}
