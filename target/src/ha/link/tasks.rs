//! Small helpers of the link's tokio tasks: waiting for shutdown, sleeping unless shut down,
//! aborting a group of tasks when their owner goes away.
//!
//! Touches tokio's timers and the shutdown watch only.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep;

/// Waits until shutdown is asked for (or nobody can ask any more). Cancel-safe.
pub(super) async fn shutdown_asked(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Whether shutdown has been asked for (or nobody can ask any more).
pub(super) fn is_shutdown(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Sleeps `d`; false if shutdown was asked for meanwhile.
pub(super) async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = sleep(d) => true,
        _ = shutdown_asked(shutdown) => false,
    }
}

/// Aborts its tasks when dropped.
pub(super) struct AbortOnDrop(pub(super) Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
