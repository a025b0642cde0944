//! The HA thread: one thread with a single-threaded tokio runtime of its own ("duetd-ha") that
//! runs what decides whether the peer is alive and what to do about it: the HA link's control
//! channel (pings, reading, the dead-after timer, reconnecting), the node's driver and the
//! receipt of link events. Nothing else runs there: iSCSI connections and the link's data
//! channel have their threads ([`crate::threads`]), blocking work (quorum I/O, draining the
//! fencing gate) goes to this runtime's blocking pool, so however loaded the connection threads
//! are, a ping is sent and read on time.
//!
//! Touches: one OS thread and its runtime.

use std::io;
use std::time::Duration;

use tokio::sync::watch;

/// How long the thread keeps running after shutdown is asked for: the link tells the peer
/// goodbye in that time (it waits at most 200 ms for its bye to go out).
const LINGER: Duration = Duration::from_millis(300);
/// How long the runtime's blocking work (a quorum read or write) may hold up the thread's end.
const BLOCKING_BOUND: Duration = Duration::from_millis(500);

/// Starts the HA thread and returns its runtime. The thread ends [`LINGER`] after `shutdown`
/// turns true (or its sender is dropped); the tasks still on it are dropped then.
pub(super) fn start(mut shutdown: watch::Receiver<bool>) -> io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("duetd-ha-blocking")
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("duetd-ha".into())
        .spawn(move || {
            rt.block_on(async move {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(LINGER).await;
            });
            rt.shutdown_timeout(BLOCKING_BOUND);
        })?;
    Ok(handle)
}
