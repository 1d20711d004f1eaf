//! Kubernetes Events (`events.k8s.io/v1`) about managed objects, as
//! `kubectl describe` shows them.
//!
//! The same event repeated within a few minutes becomes a series (one Event
//! whose count grows) instead of a flood. Unlike kube-runtime's recorder,
//! the note is part of what makes an event "the same": two different
//! changes with the same reason stay two readable events.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// How long a repeat joins the previous event's series.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something happened as expected.
    Normal,
    /// Something needs attention.
    Warning,
}

#[derive(Debug)]
struct Recorded {
    name: String,
    count: i32,
    last: Instant,
}

/// Publishes events on behalf of one controller.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recorded: Mutex<HashMap<u64, Recorded>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder reporting as `controller` (instance: `POD_NAME` or the
    /// host name).
    pub fn new(client: Client, controller: &str) -> Self {
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| controller.to_string());
        Self {
            client,
            controller: controller.to_string(),
            instance,
            recorded: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event about `regarding`, best effort: an Event is for
    /// people, so one that cannot be written is logged and never fails the
    /// pass that told it. A repeat of the same event within a few minutes
    /// increments its series instead of creating another.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        if let Err(e) = self
            .try_publish(regarding, type_, reason, action, note)
            .await
        {
            tracing::warn!(
                controller = %self.controller,
                object = regarding.name.as_deref().unwrap_or_default(),
                reason,
                "could not publish an event: {e}"
            );
        }
    }

    /// As [`Recorder::publish`], saying whether it worked.
    pub async fn try_publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let mut hasher = DefaultHasher::new();
        (type_, reason, action, note, &regarding.uid, &regarding.name).hash(&mut hasher);
        let key = hasher.finish();
        let now = MicroTime(Timestamp::now());

        let repeat = {
            let mut recorded = self.recorded.lock().expect("event cache");
            recorded.retain(|_, r| r.last.elapsed() < SERIES_WINDOW);
            recorded.get_mut(&key).map(|r| {
                r.count += 1;
                r.last = Instant::now();
                (r.name.clone(), r.count)
            })
        };
        if let Some((name, count)) = repeat {
            let series = json!({"series": EventSeries { count, last_observed_time: now.clone() }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired or deleted: start a new one.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e),
            }
        }

        let event = Event {
            metadata: ObjectMeta {
                // As client-go names events: the object's name and a
                // timestamp in hex.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("object"),
                    now.0.as_nanosecond()
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(now),
            action: Some(truncate(action, 128)),
            reason: Some(truncate(reason, 128)),
            note: Some(truncate(note, 1024)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(truncate(&self.instance, 128)),
            ..Event::default()
        };
        let created = api.create(&PostParams::default(), &event).await?;
        self.recorded.lock().expect("event cache").insert(
            key,
            Recorded {
                name: created.name_any(),
                count: 1,
                last: Instant::now(),
            },
        );
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
