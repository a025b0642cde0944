//! The connection-thread pool: one single-threaded tokio runtime per thread (one per CPU by
//! default), connections placed round-robin, each thread with its own io_uring ring for media
//! I/O of direct-I/O LUNs ([`crate::uring`]) when the kernel offers one. Touches only its threads
//! and their rings.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::uring;

/// The threads that run iSCSI connections, each a single-threaded runtime. A connection lives
/// on one of them (round-robin), so a request wakes one thread, which reads, executes and
/// answers it before it sleeps again: no hand-off between worker threads, the lowest latency at
/// queue depth 1, and connections spread over the CPUs. Dropping it ends the threads.
pub struct ConnThreads {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl ConnThreads {
    /// Starts `n` threads (0: one per CPU), each with an io_uring ring unless [`uring::probe`]
    /// finds io_uring unavailable (then media I/O runs on the blocking pool; the probe says why).
    pub fn start(n: usize) -> std::io::Result<ConnThreads> {
        let rings = uring::probe();
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n
        };
        let mut t = ConnThreads {
            handles: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            t.handles.push(rt.handle().clone());
            t.stops.push(stop_tx);
            std::thread::Builder::new()
                .name(format!("duetd-conn-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        if rings {
                            if let Err(e) = uring::install(uring::RING_ENTRIES) {
                                tracing::warn!(
                                    "connection thread {i}: no io_uring ring ({}): its media I/O runs on the blocking pool",
                                    uring::unavailable_reason(&e)
                                );
                            }
                        }
                        let _ = stop_rx.await;
                    });
                })?;
        }
        Ok(t)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// The runtime of the first thread.
    pub fn first(&self) -> tokio::runtime::Handle {
        self.handles[0].clone()
    }

    /// The runtime of the thread whose turn it is.
    pub fn next(&self) -> &tokio::runtime::Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }
}

impl Drop for ConnThreads {
    fn drop(&mut self) {
        // Each thread ends (dropping what still runs there) once told; it is not joined, as the
        // last owner may be a task on one of them.
        self.stops.clear();
    }
}
