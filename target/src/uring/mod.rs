//! Media I/O through io_uring on the connection threads.
//!
//! Each connection thread (`crate::threads`, a single-threaded tokio runtime) owns one [`Ring`]:
//! a command's reads, writes and flushes of a direct-I/O store are submitted from the task that
//! runs the command and completed on the same thread, with no hand-off to another thread. The
//! ring's descriptor is registered with the thread's reactor ([`AsyncFd`]); it polls readable
//! while completions wait, and a small driver task ([`install`]) reaps them and wakes the
//! commands. [`direct`] turns a plan into ring operations.
//!
//! Where io_uring cannot be had (an old kernel, seccomp, `kernel.io_uring_disabled`), [`probe`]
//! says why once at start and media I/O stays on the blocking pool. Threads without a ring (the
//! HA runtime's) use the blocking pool too. Touches the kernel's io_uring, the thread's runtime
//! and the thread-local ring.

pub mod direct;
pub mod ring;

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use direct::{run_direct, DirectOp};
pub use ring::{Buf, Completed, Keep, Op, Ring};

/// Submission-queue entries of each connection thread's ring (the completion queue holds twice
/// as many; beyond that, operations wait in the ring's backlog).
pub const RING_ENTRIES: u32 = 256;

thread_local! {
    static CURRENT: RefCell<Option<Arc<Ring>>> = const { RefCell::new(None) };
}

/// This thread's ring, if it has one.
pub fn current() -> Option<Arc<Ring>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Reaps the completions this thread's ring holds, if it has one and they were posted (no
/// system call): called by a polling thread, which thus sees a completion without waiting for
/// the reactor to report the ring's descriptor. Returns whether there was anything.
pub fn reap_posted() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|r| r.reap_posted()))
}

/// Gives the calling thread a ring of `entries` and spawns its driver on the current runtime,
/// which must be the thread's own single-threaded runtime (call from inside its `block_on`).
pub fn install(entries: u32) -> io::Result<Arc<Ring>> {
    let ring = Ring::new(entries)?;
    // SAFETY: `RingFd` holds the ring, which owns the descriptor: it stays open, the same one,
    // as long as the registration lives.
    let fd = unsafe { AsyncFd::register_with_interest(RingFd(ring.clone()), Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    tokio::spawn(drive(fd));
    CURRENT.with(|c| *c.borrow_mut() = Some(ring.clone()));
    Ok(ring)
}

/// Reaps the ring's completions whenever its descriptor polls readable.
async fn drive(fd: AsyncFd<RingFd>) {
    loop {
        let Ok(mut ready) = fd.readable().await else {
            tracing::error!("io_uring: the reactor dropped the ring's descriptor");
            return;
        };
        // Cleared before reaping: a completion posted meanwhile polls readable again.
        ready.clear_ready();
        fd.get_ref().0.reap();
    }
}

/// The ring as the reactor sees it: its descriptor, kept open by the ring itself.
struct RingFd(Arc<Ring>);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd()
    }
}

/// Which path media I/O of direct-I/O LUNs takes in this process, once [`probe`] ran.
static MEDIA_PATH: OnceLock<String> = OnceLock::new();

/// Whether io_uring can be used here; logs the answer once per process: the path of media I/O
/// (the ring, or the blocking pool and why).
pub fn probe() -> bool {
    let result = Ring::new(RING_ENTRIES).map(drop);
    let path = MEDIA_PATH.get_or_init(|| match &result {
        Ok(()) => {
            tracing::info!(
                "media I/O of direct-I/O LUNs runs through io_uring (a ring of {RING_ENTRIES} entries per connection thread)"
            );
            "io_uring".to_string()
        }
        Err(e) => {
            let why = unavailable_reason(e);
            tracing::warn!("io_uring unavailable ({why}): media I/O runs on the blocking pool");
            format!("blocking pool (io_uring unavailable: {why})")
        }
    });
    path == "io_uring"
}

/// The path media I/O takes ("io_uring", or "blocking pool (io_uring unavailable: REASON)"),
/// for status reports; `None` before the connection threads started.
pub fn media_path() -> Option<&'static str> {
    MEDIA_PATH.get().map(String::as_str)
}

/// Why io_uring could not be set up, in an administrator's words.
pub fn unavailable_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel has no io_uring".into(),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            format!("refused by kernel.io_uring_disabled or a seccomp filter: {e}")
        }
        Some(libc::ENOMEM) => format!("cannot lock the ring's memory (RLIMIT_MEMLOCK?): {e}"),
        _ => e.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
