//! Which page a URL is, how it renders from a person's fleet, and how an
//! open page is kept current: a Server-Sent Events stream per page that
//! re-renders the page's live part after changes (at once after a quiet
//! spell, then at most once per debounce interval while changes keep
//! coming; sent only when it differs from the last).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use fleetforge_api::tool_target::TargetKind;
use futures::Stream;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::cache::{Fleet, Store, follow};
use crate::page::{self, Page, Viewer};
use crate::view::cluster::{ClusterDetail, recent_events};
use crate::view::environments::EnvironmentsQuery;
use crate::view::fleet::FleetQuery;
use crate::view::tools::ToolsQuery;
use crate::view::{Access, Listing};

/// Events shown on a cluster's page.
const EVENTS_SHOWN: usize = 20;
/// Ages on an open page are refreshed at least this often.
const TICK: Duration = Duration::from_secs(30);

/// A page and what it was asked for.
#[derive(Debug, Clone)]
pub enum View {
    /// `/`.
    Fleet(FleetQuery),
    /// `/clusters/NS/NAME` or `/virtualclusters/NS/NAME`.
    Object {
        /// Cluster or VirtualCluster.
        kind: TargetKind,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `/tools`.
    Tools(ToolsQuery),
    /// `/tooltargets/NS/NAME`.
    ToolTarget {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `/environments`.
    Environments(EnvironmentsQuery),
    /// `/rollouts`.
    Rollouts,
}

/// Percent-decodes one path segment.
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl View {
    /// The view of `path` (as the browser asked for it) with `params`.
    pub fn parse(path: &str, params: &HashMap<String, String>) -> Option<Self> {
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode)
            .collect::<Option<_>>()?;
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        Some(match segments[..] {
            [] => View::Fleet(FleetQuery::from_params(params)),
            ["tools"] => View::Tools(ToolsQuery::from_params(params)),
            ["environments"] => View::Environments(EnvironmentsQuery::from_params(params)),
            ["rollouts"] => View::Rollouts,
            ["clusters", namespace, name] => View::Object {
                kind: TargetKind::Cluster,
                namespace: namespace.into(),
                name: name.into(),
            },
            ["virtualclusters", namespace, name] => View::Object {
                kind: TargetKind::VirtualCluster,
                namespace: namespace.into(),
                name: name.into(),
            },
            ["tooltargets", namespace, name] => View::ToolTarget {
                namespace: namespace.into(),
                name: name.into(),
            },
            _ => return None,
        })
    }
}

/// The Events about an object, or why there are none.
pub type Events = Result<Vec<Event>, Access>;

fn events_selector(kind: TargetKind, name: &str) -> String {
    format!(
        "involvedObject.kind={},involvedObject.name={name}",
        kind.as_str()
    )
}

/// The Events about an object, listed once (for a page's first rendering).
pub async fn list_events(fleet: &Fleet, kind: TargetKind, namespace: &str, name: &str) -> Events {
    let api: Api<Event> = Api::namespaced(fleet.client.clone(), namespace);
    match api
        .list(&ListParams::default().fields(&events_selector(kind, name)))
        .await
    {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            Err(Access::Forbidden(status.message))
        }
        Err(e) => Err(Access::Failing(e.to_string())),
    }
}

/// Renders `view` from `fleet` for `viewer`; `events` only for object
/// views.
pub fn render(view: &View, fleet: &Fleet, viewer: &Viewer, events: &Events) -> Page {
    let now = Timestamp::now();
    match view {
        View::Fleet(query) => page::fleet::render(
            &fleet.clusters.listing(),
            &fleet.virtual_clusters.listing(),
            query,
            now,
        ),
        View::Object {
            kind,
            namespace,
            name,
        } => {
            let targets = fleet.tool_targets.listing();
            let in_namespace: Vec<_> = targets
                .items
                .iter()
                .filter(|t| &t.namespace == namespace)
                .map(|t| t.as_ref())
                .collect();
            let detail = match kind {
                TargetKind::Cluster => find(&fleet.clusters.listing(), namespace, name)
                    .map(|c| ClusterDetail::of_cluster(&c, &in_namespace)),
                TargetKind::VirtualCluster => {
                    find(&fleet.virtual_clusters.listing(), namespace, name)
                        .map(|v| ClusterDetail::of_virtual_cluster(&v, &in_namespace))
                }
            };
            let rows = match events {
                Ok(events) => Ok(recent_events(events, EVENTS_SHOWN)),
                Err(access) => Err(access),
            };
            page::cluster::render(
                kind.as_str(),
                namespace,
                name,
                detail.as_ref(),
                rows.as_ref().map(|r| r.as_slice()).map_err(|a| *a),
                now,
            )
        }
        View::Tools(query) => page::tools::render(
            &fleet.tool_targets.listing(),
            &fleet.tool_installs.listing(),
            query,
        ),
        View::ToolTarget { namespace, name } => {
            let targets = fleet.tool_targets.listing();
            let found = targets
                .items
                .iter()
                .find(|t| &t.namespace == namespace && &t.name == name);
            page::tools::tool_target(namespace, name, found.map(|t| t.as_ref()))
        }
        View::Environments(query) => {
            let done = query.done_text().map(page::environments::Outcome::Done);
            page::environments::render(
                &fleet.environments.listing(),
                viewer,
                query,
                done.as_ref(),
                now,
            )
        }
        View::Rollouts => page::rollouts::render(&fleet.rollouts.listing()),
    }
}

fn find<K: kube::ResourceExt>(listing: &Listing<K>, namespace: &str, name: &str) -> Option<Arc<K>> {
    listing
        .items
        .iter()
        .find(|o| o.namespace().as_deref() == Some(namespace) && o.name_any() == name)
        .cloned()
}

/// A short fingerprint of a rendering, to send only what changed.
pub fn fingerprint(html: &str) -> String {
    let mut hasher = DefaultHasher::new();
    html.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The Events of an object page: their store, its change counter, and the
/// watch filling it (stopped with the page's stream).
type EventWatch = (
    Arc<Store<Event>>,
    watch::Receiver<u64>,
    tokio::task::JoinHandle<()>,
);

struct Follow {
    fleet: Arc<Fleet>,
    view: View,
    viewer: Viewer,
    changes: watch::Receiver<u64>,
    events: Option<EventWatch>,
    last: String,
    first: bool,
    debounce: Duration,
    rendered: tokio::time::Instant,
}

impl Drop for Follow {
    fn drop(&mut self) {
        if let Some((_, _, task)) = &self.events {
            task.abort();
        }
    }
}

impl Follow {
    /// Waits for a change (or the tick). A change after a quiet spell is
    /// rendered at once; one within the debounce interval of the last
    /// rendering waits for the rest of it, so that a burst of changes
    /// costs one rendering per interval.
    async fn next_change(&mut self) -> bool {
        let events_changed = async {
            match &mut self.events {
                Some((_, changes, _)) => changes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let alive = tokio::select! {
            changed = self.changes.changed() => changed.is_ok(),
            changed = events_changed => changed,
            _ = tokio::time::sleep(TICK) => true,
        };
        tokio::time::sleep_until(self.rendered + self.debounce).await;
        self.changes.mark_unchanged();
        if let Some((_, changes, _)) = &mut self.events {
            changes.mark_unchanged();
        }
        alive
    }

    fn render(&self) -> String {
        let events = match &self.events {
            Some((store, _, _)) => {
                let listing = store.listing();
                match listing.access.first().map(|a| &a.access) {
                    Some(Access::Ready) | None => {
                        Ok(listing.items.iter().map(|e| e.as_ref().clone()).collect())
                    }
                    Some(other) => Err(other.clone()),
                }
            }
            None => Ok(Vec::new()),
        };
        render(&self.view, &self.fleet, &self.viewer, &events).live
    }
}

/// The stream of renderings of `view`'s live part, from its current one
/// on; `since` is the fingerprint of what the page already shows.
pub fn follow_view(
    fleet: Arc<Fleet>,
    view: View,
    viewer: Viewer,
    since: String,
    debounce: Duration,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let events = match &view {
        View::Object {
            kind,
            namespace,
            name,
        } => {
            let store = Arc::new(Store::new(&[Some(namespace.clone())]));
            let (sender, receiver) = watch::channel(0u64);
            let task = tokio::spawn(follow(
                Api::<Event>::namespaced(fleet.client.clone(), namespace),
                watcher::Config::default().fields(&events_selector(*kind, name)),
                store.clone(),
                0,
                |mut event: Event| {
                    event.metadata.managed_fields = None;
                    event
                },
                sender,
            ));
            Some((store, receiver, task))
        }
        _ => None,
    };
    let mut changes = fleet.subscribe();
    changes.mark_unchanged();
    let state = Follow {
        fleet,
        view,
        viewer,
        changes,
        events,
        last: since,
        first: true,
        debounce,
        rendered: tokio::time::Instant::now(),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if !state.first && !state.next_change().await {
                return None;
            }
            if state.first {
                if state.events.is_some() {
                    // The events' first list is on its way: give it the
                    // debounce interval, as any other change.
                    tokio::time::sleep(state.debounce).await;
                }
                state.first = false;
            }
            let html = state.render();
            state.rendered = tokio::time::Instant::now();
            let print = fingerprint(&html);
            if print != state.last {
                state.last = print.clone();
                let event = SseEvent::default().event("live").id(print).data(html);
                return Some((Ok(event), state));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paths_name_their_pages() {
        let cases = [
            ("/", "Fleet"),
            ("", "Fleet"),
            ("/tools", "Tools"),
            ("/environments/", "Environments"),
            ("/rollouts", "Rollouts"),
            ("/clusters/platform/dev-1", "Object Cluster platform dev-1"),
            ("/virtualclusters/a/b%20c", "Object VirtualCluster a b c"),
            ("/tooltargets/p/t", "ToolTarget p t"),
        ];
        for (path, want) in cases {
            let view = View::parse(path, &params(&[])).unwrap_or_else(|| panic!("{path}"));
            let got = match view {
                View::Fleet(_) => "Fleet".to_string(),
                View::Tools(_) => "Tools".to_string(),
                View::Environments(_) => "Environments".to_string(),
                View::Rollouts => "Rollouts".to_string(),
                View::Object {
                    kind,
                    namespace,
                    name,
                } => format!("Object {kind} {namespace} {name}"),
                View::ToolTarget { namespace, name } => format!("ToolTarget {namespace} {name}"),
            };
            assert_eq!(got, want, "{path}");
        }
        for path in [
            "/clusters",
            "/clusters/a",
            "/nope",
            "/clusters/a/b/c",
            "/clusters/%zz/b",
        ] {
            assert!(View::parse(path, &params(&[])).is_none(), "{path}");
        }
        let View::Fleet(query) = View::parse("/", &params(&[("q", "web")])).unwrap() else {
            panic!("the fleet");
        };
        assert_eq!(query.text, "web");
    }

    #[test]
    fn fingerprints_tell_renderings_apart() {
        assert_eq!(fingerprint("<p>a</p>"), fingerprint("<p>a</p>"));
        assert_ne!(fingerprint("<p>a</p>"), fingerprint("<p>b</p>"));
    }
}
