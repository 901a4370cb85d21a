//! Whether the broker can keep its promises right now: the store's write health, read by
//! `/readyz` and kept up to date by every write the chat layer makes and, while the store is
//! failing, by a probe write once a second ([`watch_store`]).

use crate::metrics as m;
use crate::store::{Store, StoreError, StoreErrorKind};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often a failing store is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Health {
    store_down: AtomicBool,
    reason: Mutex<String>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        metrics::gauge!(m::STORE_WRITABLE).set(1.0);
        Arc::new(Health::default())
    }

    /// Records the outcome of a store write. Errors that say nothing about the store's
    /// ability to write (not found, conflicts, limits) leave the health as it is.
    pub fn write_result<T>(&self, r: &Result<T, StoreError>) {
        match r {
            Ok(_) => self.store_ok(),
            Err(e) if is_outage(e.kind) => self.store_failed(&e.to_string()),
            Err(_) => {}
        }
    }

    pub fn store_failed(&self, reason: &str) {
        metrics::counter!(m::STORE_FAILURES).increment(1);
        *self.reason.lock() = reason.to_owned();
        if !self.store_down.swap(true, Ordering::AcqRel) {
            metrics::gauge!(m::STORE_WRITABLE).set(0.0);
            warn!(reason, "store cannot write: not ready until it can");
        }
    }

    pub fn store_ok(&self) {
        if self.store_down.load(Ordering::Acquire) && self.store_down.swap(false, Ordering::AcqRel)
        {
            metrics::gauge!(m::STORE_WRITABLE).set(1.0);
            info!("store writes again: ready");
        }
    }

    /// `Some(reason)` while the store cannot write.
    pub fn store_problem(&self) -> Option<String> {
        self.store_down
            .load(Ordering::Acquire)
            .then(|| self.reason.lock().clone())
    }
}

/// Errors that mean the store cannot write at all right now.
pub fn is_outage(kind: StoreErrorKind) -> bool {
    matches!(
        kind,
        StoreErrorKind::Unavailable | StoreErrorKind::Timeout | StoreErrorKind::Internal
    )
}

/// While the store is marked failing, probes it with a durable write once a second, so
/// readiness comes back by itself when the disk has room again (no client write needed).
pub fn watch_store(health: Arc<Health>, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if health.store_problem().is_some() {
                health.write_result(&store.probe().await);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_then_recovery() {
        let h = Health::default();
        assert_eq!(h.store_problem(), None);
        h.write_result::<()>(&Err(StoreError::new(StoreErrorKind::NotFound, "x")));
        assert_eq!(h.store_problem(), None, "a missing row is no outage");
        h.write_result::<()>(&Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "disk full",
        )));
        assert!(h.store_problem().is_some_and(|r| r.contains("disk full")));
        h.write_result(&Ok(()));
        assert_eq!(h.store_problem(), None);
    }
}
