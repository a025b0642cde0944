//! Polling before sleeping (`poll_us`), shared by the connection threads and the HA link's data
//! channel: after being busy, a task keeps looking for its next input for a short window instead
//! of letting its thread sleep, so that input arriving soon costs no wake-up. A round also
//! reaps the thread's io_uring completions ([`crate::uring::reap_posted`]).

use std::time::{Duration, Instant};

/// One task's polling window. Only on a single-threaded runtime, whose `yield_now` polls the I/O
/// driver without blocking.
pub(crate) struct IdlePoll {
    window: Duration,
    /// When polling began; none while busy, so the busy path reads no clock.
    since: Option<Instant>,
}

impl IdlePoll {
    pub(crate) fn new(window: Duration) -> IdlePoll {
        IdlePoll {
            window,
            since: None,
        }
    }

    /// Whether to poll (once more) rather than sleep.
    pub(crate) fn active(&self) -> bool {
        !self.window.is_zero() && self.since.is_none_or(|t| t.elapsed() < self.window)
    }

    /// One round: the runtime polls its I/O driver without sleeping (other tasks on the thread
    /// keep running), then the CPU is offered to other threads: on a busy machine the host may
    /// need it to send the next command. Last, completions the thread's io_uring ring holds are
    /// reaped at once (the kernel posts them as the thread returns from a system call, such as
    /// the yield): their commands run next, without another round through the reactor.
    pub(crate) async fn round(&mut self) {
        tokio::task::yield_now().await;
        self.since.get_or_insert_with(Instant::now);
        std::thread::yield_now();
        crate::uring::reap_posted();
    }

    /// The task had work: the next idle period gets a whole window.
    pub(crate) fn busy(&mut self) {
        self.since = None;
    }
}
