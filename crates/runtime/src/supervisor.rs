//! Every controller runs as its own task under one supervisor: when one
//! stops while the process is not shutting down (it returned, failed to
//! start, or panicked), the supervisor says which in `/readyz` and ends
//! the process with an error, so that Kubernetes restarts it rather than
//! leaving a replica that silently reconciles only part of the API.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tokio::task::JoinSet;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    connected: AtomicBool,
    stopped: Mutex<Vec<String>>,
}

impl Readiness {
    /// The API server answered.
    pub fn set_connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    /// Why the process is not ready, or None when it is.
    pub fn problem(&self) -> Option<String> {
        let stopped = self.stopped.lock().expect("readiness");
        if !stopped.is_empty() {
            return Some(format!("stopped: {}", stopped.join("; ")));
        }
        (!self.connected.load(Ordering::Relaxed))
            .then(|| "not connected to the API server yet".to_string())
    }

    fn record_stop(&self, what: String) {
        self.stopped.lock().expect("readiness").push(what);
    }
}

/// The controllers of one process.
#[derive(Debug)]
pub struct Supervisor {
    readiness: std::sync::Arc<Readiness>,
    stopping: watch::Receiver<bool>,
    tasks: JoinSet<(&'static str, Result<(), String>)>,
}

impl Supervisor {
    /// A supervisor that reports to `readiness`; `stopping` turns true when
    /// the process shuts down on purpose (a signal, lost leadership).
    pub fn new(readiness: std::sync::Arc<Readiness>, stopping: watch::Receiver<bool>) -> Self {
        Self {
            readiness,
            stopping,
            tasks: JoinSet::new(),
        }
    }

    /// Runs controller `name`; it returns only when the process stops, or
    /// with the reason it could not run.
    pub fn spawn(
        &mut self,
        name: &'static str,
        controller: impl Future<Output = Result<(), String>> + Send + 'static,
    ) {
        self.tasks.spawn(async move { (name, controller.await) });
    }

    /// Waits for every controller. Ok when they all stopped because the
    /// process is stopping; an error naming the first one that stopped by
    /// itself otherwise (the others are then aborted).
    pub async fn wait(mut self) -> Result<(), String> {
        while let Some(joined) = self.tasks.join_next().await {
            let stopping = *self.stopping.borrow();
            let failure = match joined {
                Ok((_, Ok(()))) if stopping => continue,
                Ok((name, Ok(()))) => format!("the {name} controller stopped"),
                Ok((name, Err(reason))) => format!("the {name} controller stopped: {reason}"),
                Err(e) if e.is_cancelled() && stopping => continue,
                Err(e) => format!("a controller panicked: {e}"),
            };
            tracing::error!("{failure}: exiting so that the process is restarted");
            self.readiness.record_stop(failure.clone());
            return Err(failure);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_controller_that_stops_by_itself_ends_the_process_and_is_named() {
        let readiness = Arc::new(Readiness::default());
        readiness.set_connected();
        let (_stop, stopping) = watch::channel(false);
        let mut supervisor = Supervisor::new(readiness.clone(), stopping);
        supervisor.spawn("Cluster", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        supervisor.spawn("ToolInstall", async { Err("its watch ended".to_string()) });
        let error = supervisor.wait().await.unwrap_err();
        assert_eq!(error, "the ToolInstall controller stopped: its watch ended");
        assert_eq!(
            readiness.problem().as_deref(),
            Some("stopped: the ToolInstall controller stopped: its watch ended")
        );
    }

    #[tokio::test]
    async fn a_panic_is_a_stop_too() {
        let (_stop, stopping) = watch::channel(false);
        let mut supervisor = Supervisor::new(Arc::default(), stopping);
        supervisor.spawn("Environment", async { panic!("boom") });
        assert!(supervisor.wait().await.unwrap_err().contains("panicked"));
    }

    #[tokio::test]
    async fn stopping_on_purpose_is_no_error() {
        let readiness = Arc::new(Readiness::default());
        let (stop, stopping) = watch::channel(false);
        let mut supervisor = Supervisor::new(readiness.clone(), stopping.clone());
        let mut rx = stopping;
        supervisor.spawn("Cluster", async move {
            let _ = rx.wait_for(|s| *s).await;
            Ok(())
        });
        stop.send(true).unwrap();
        supervisor.wait().await.unwrap();
        assert_eq!(
            readiness.problem().as_deref(),
            Some("not connected to the API server yet")
        );
    }
}
