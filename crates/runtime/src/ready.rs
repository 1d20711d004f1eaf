//! Waiting for a reflector's first list from many passes at once.
//!
//! kube-runtime's `Store::wait_until_ready` keeps one waker: of several
//! tasks waiting at the same time only the last is woken, and the others
//! wait forever (found here: passes that started before the first list
//! never finished). A [`Gate`] waits on the store once and lets any number
//! of waiters through.

use kube::runtime::reflector::Store;
use tokio::sync::watch;

/// Opens once a store has had its first list.
#[derive(Debug, Clone)]
pub struct Gate {
    open: watch::Receiver<bool>,
}

impl Gate {
    /// A gate that opens when `store` is ready (its writer must be driven,
    /// typically by the controller watching it).
    pub fn of<K>(store: &Store<K>) -> Self
    where
        K: kube::runtime::reflector::Lookup + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (open, opened) = watch::channel(false);
        let store = store.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = open.send(true);
            }
        });
        Self { open: opened }
    }

    /// Waits until the store is ready; false if it never will be (its
    /// writer went away).
    pub async fn wait(&self) -> bool {
        self.open.clone().wait_for(|open| *open).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use std::time::Duration;

    #[tokio::test]
    async fn many_waiters_all_get_through() {
        let (reader, mut writer) = store::<ConfigMap>();
        let gate = Gate::of(&reader);
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        for waiter in waiters {
            let passed = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("a waiter was left behind")
                .unwrap();
            assert!(passed);
        }
    }
}
