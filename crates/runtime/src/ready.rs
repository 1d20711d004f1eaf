//! Waiting for a watch's first complete list from many passes at once.
//!
//! kube-runtime's `Store::wait_until_ready` keeps one waker: of several
//! tasks waiting at the same time only the last is woken, and the others
//! wait forever. A controller's own applier is one of those waiters (it
//! waits for its store before its first pass), so a second waiter on a
//! controller's store can leave that controller, or itself, stuck (found
//! here: passes that started before the first list never finished). A
//! [`Gate`] does not use the store's readiness at all: it opens when the
//! watch stream itself passes its first `InitDone`, and lets any number of
//! waiters through.

use kube::runtime::watcher;
use tokio::sync::watch;

/// Opens a [`Gate`].
#[derive(Debug, Clone)]
pub struct Opener(std::sync::Arc<watch::Sender<bool>>);

impl Opener {
    /// Opens the gate (again is harmless).
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// For `.inspect()` on a watcher stream: opens the gate at the stream's
    /// first complete list.
    pub fn on_listed<K>(self) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
        move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                self.open();
            }
        }
    }
}

/// Opens once a watch has listed everything.
#[derive(Debug, Clone)]
pub struct Gate {
    open: watch::Receiver<bool>,
}

/// A closed gate and what opens it.
pub fn gate() -> (Opener, Gate) {
    let (open, opened) = watch::channel(false);
    (Opener(std::sync::Arc::new(open)), Gate { open: opened })
}

impl Gate {
    /// Whether the watch has listed, without waiting.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Waits until the watch has listed; false if it never will (its
    /// stream went away).
    pub async fn wait(&self) -> bool {
        self.open.clone().wait_for(|open| *open).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn many_waiters_all_get_through_once_the_list_is_complete() {
        let (opener, gate) = gate();
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut on_listed = opener.on_listed::<k8s_openapi::api::core::v1::ConfigMap>();
        on_listed(&Ok(watcher::Event::Init));
        assert!(!*gate.open.borrow(), "an Init is not yet a complete list");
        on_listed(&Ok(watcher::Event::InitDone));
        for waiter in waiters {
            let passed = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was left behind")
                .unwrap();
            assert!(passed);
        }
    }
}
