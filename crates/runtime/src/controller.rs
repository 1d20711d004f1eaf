//! [`Runtime::run`]: a kube-runtime `Controller` with its watches set up by
//! the controller that owns it, run with the runtime's error policy,
//! metrics and shutdown.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kube::Resource;
use kube::runtime::Controller;
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::Instrument;

use crate::backoff::{BackoffSettings, Backoffs};
use crate::error::ReconcileError;
use crate::metrics::{ControllerLabels, ControllerMetrics, ErrorLabels, ResultLabels};
use crate::shards::Shards;

/// What every controller of a process shares: metrics, the stop signal,
/// the backoff bounds, how many passes a controller runs at once, and the
/// shards of the fleet this replica owns.
#[derive(Debug, Clone)]
pub struct Runtime {
    metrics: Arc<ControllerMetrics>,
    stopping: watch::Receiver<bool>,
    backoff: BackoffSettings,
    concurrency: u16,
    shards: Arc<Shards>,
}

impl Runtime {
    /// A runtime whose controllers stop when `stopping` turns true.
    pub fn new(metrics: Arc<ControllerMetrics>, stopping: watch::Receiver<bool>) -> Self {
        Self {
            metrics,
            stopping,
            backoff: BackoffSettings::default(),
            concurrency: 32,
            shards: Shards::whole(),
        }
    }

    /// Sharded controllers act only on the objects of `shards` this
    /// replica owns (by default: every object).
    pub fn with_shards(mut self, shards: Arc<Shards>) -> Self {
        self.shards = shards;
        self
    }

    /// The shards this replica owns.
    pub fn shards(&self) -> &Arc<Shards> {
        &self.shards
    }

    /// Errors back off between `min` and `max`.
    pub fn with_backoff(mut self, backoff: BackoffSettings) -> Self {
        self.backoff = backoff;
        self
    }

    /// Passes each controller runs at once.
    pub fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<ControllerMetrics> {
        &self.metrics
    }

    /// Completes when the process stops on purpose.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            while !*stopping.borrow_and_update() {
                if stopping.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Whether the process is stopping on purpose.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Runs `controller` (its watches already set) as `name` with
    /// `reconcile`, until the process stops. Each pass is counted and
    /// timed; a failed one is counted by its category and retried after
    /// the object's own jittered backoff (at least the error's
    /// Retry-After), a successful one starts that backoff over.
    pub fn run<K, Ctx, E, F, Fut>(
        &self,
        name: &'static str,
        controller: Controller<K>,
        context: Arc<Ctx>,
        reconcile: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        Ctx: Send + Sync + 'static,
        E: ReconcileError,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        self.run_in(name, controller, context, reconcile, None)
    }

    /// As [`Runtime::run`] for objects shared out between replicas, each in
    /// the shard `shard` says (of the count given; None: in no shard yet,
    /// so nobody's): a pass runs only inside a shard this replica owns
    /// (the others are not passes here: not counted, not timed), and
    /// gaining a shard passes over every object in the cache.
    pub fn run_sharded<K, Ctx, E, F, Fut>(
        &self,
        name: &'static str,
        controller: Controller<K>,
        context: Arc<Ctx>,
        shard: fn(&K, u32) -> Option<u32>,
        reconcile: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        Ctx: Send + Sync + 'static,
        E: ReconcileError,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let controller = if self.shards.count().is_some() {
            controller.reconcile_all_on(self.shards.gained())
        } else {
            controller
        };
        self.run_in(name, controller, context, reconcile, Some(shard))
    }

    fn run_in<K, Ctx, E, F, Fut>(
        &self,
        name: &'static str,
        controller: Controller<K>,
        context: Arc<Ctx>,
        reconcile: F,
        shard: Option<fn(&K, u32) -> Option<u32>>,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        Ctx: Send + Sync + 'static,
        E: ReconcileError,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
    {
        let store = controller.store();
        let shards = self.shards.clone();
        // Objects this replica acts on: those of its shards.
        self.metrics
            .count_objects(name, move || match (shard, shards.count()) {
                (Some(shard), Some(count)) => store
                    .state()
                    .iter()
                    .filter(|obj| shard(obj, count).is_some_and(|s| shards.owns(s)))
                    .count(),
                _ => store.state().len(),
            });
        let shards = self.shards.clone();
        let shared = Arc::new(Shared::<K> {
            name,
            metrics: self.metrics.clone(),
            backoffs: Backoffs::new(self.backoff),
        });
        let reconcile = Arc::new(reconcile);
        let on_error = shared.clone();
        controller
            .with_config(Config::default().concurrency(self.concurrency))
            .graceful_shutdown_on(self.stopped())
            .run(
                move |obj: Arc<K>, ctx: Arc<Ctx>| {
                    let shared = shared.clone();
                    let reconcile = reconcile.clone();
                    let entered = match (shard, shards.count()) {
                        (Some(shard), Some(count)) => {
                            shard(&obj, count).and_then(|s| shards.enter(s))
                        }
                        _ => None,
                    };
                    let elsewhere =
                        shard.is_some() && shards.count().is_some() && entered.is_none();
                    async move {
                        if elsewhere {
                            // Another replica's: its change reaches that
                            // replica's own watch.
                            return Ok(Action::await_change());
                        }
                        let labels = ControllerLabels { controller: name };
                        let in_flight = shared.metrics.in_flight.get_or_create(&labels).clone();
                        in_flight.inc();
                        let started = Instant::now();
                        // One span per pass (exported as a trace when
                        // OTLP is configured); provider calls and helm
                        // runs are its children.
                        let span = tracing::info_span!(
                            "reconcile",
                            otel.name = %format_args!("reconcile {}", K::kind(&())),
                            controller = name,
                            kind = %K::kind(&()),
                            namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
                            name = obj.meta().name.as_deref().unwrap_or_default(),
                            result = tracing::field::Empty,
                            otel.status_code = tracing::field::Empty,
                        );
                        let result = reconcile(obj.clone(), ctx).instrument(span.clone()).await;
                        match &result {
                            Ok(_) => span.record("result", "ok"),
                            Err(error) => span
                                .record("result", error.category())
                                .record("otel.status_code", "error"),
                        };
                        in_flight.dec();
                        shared.finished(&*obj, &result, started);
                        drop(entered);
                        result
                    }
                },
                move |obj: Arc<K>, error: &E, _: Arc<Ctx>| on_error.retry(&*obj, error),
                context,
            )
            .for_each(move |result| {
                if let Err(e) = result {
                    tracing::debug!(controller = name, "{e}");
                }
                futures::future::ready(())
            })
    }
}

struct Shared<K: Resource<DynamicType = ()>> {
    name: &'static str,
    metrics: Arc<ControllerMetrics>,
    backoffs: Backoffs<ObjectRef<K>>,
}

impl<K: Resource<DynamicType = ()>> Shared<K> {
    fn finished<E>(&self, obj: &K, result: &Result<Action, E>, started: Instant) {
        let controller = self.name;
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels { controller })
            .observe(started.elapsed().as_secs_f64());
        let result_label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .reconciles
            .get_or_create(&ResultLabels {
                controller,
                result: result_label,
            })
            .inc();
        if result.is_ok() {
            self.backoffs.reset(&ObjectRef::from(obj));
        }
    }

    fn retry<E: ReconcileError>(&self, obj: &K, error: &E) -> Action {
        let controller = self.name;
        let category = error.category();
        self.metrics
            .reconcile_errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
        let delay = self
            .backoffs
            .next(&ObjectRef::from(obj), error.retry_after());
        tracing::warn!(
            controller,
            name = obj.meta().name.as_deref().unwrap_or_default(),
            namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
            category,
            retry_in = ?delay,
            "reconcile failed: {error}"
        );
        Action::requeue(delay)
    }
}
