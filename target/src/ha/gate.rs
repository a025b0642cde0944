//! The fencing gate in front of a LUN's backend.
//!
//! Every medium operation (read or write) passes through [`IoGate::enter`] and holds the returned
//! [`GatePass`] until its backend call has returned. The HA node closes the gate
//! (`Output::FenceIo`) when this controller must stop touching the shared disk and opens it
//! (`Output::ResumeIo`) when it may serve again. [`IoGate::close`] returns only once every
//! operation admitted before it has finished, so after `close` no write reaches the backend
//! until the next [`IoGate::open`].
//!
//! The gate's lock and condition variable come from [`crate::sync`], so the loom models
//! (`target/tests/loom_models.rs`, built with `--cfg duet_loom`) explore this very code. The
//! `Arc` a pass holds is always `std`'s: the gate is shared with code that loom does not model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{self, Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    in_flight: usize,
    /// Closers waiting for `in_flight` to reach 0 (only then is the condition variable
    /// signalled: the I/O path pays no wake-up system call).
    waiters: usize,
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub struct IoGate {
    state: Mutex<GateState>,
    drained: Condvar,
}

/// Proof that an operation was admitted; dropping it lets a waiting [`IoGate::close`] return.
#[derive(Debug)]
pub struct GatePass {
    gate: Arc<IoGate>,
}

impl Drop for GatePass {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 && s.waiters > 0 {
            self.gate.drained.notify_all();
        }
    }
}

impl IoGate {
    /// A gate, open or closed.
    pub fn new(open: bool) -> Arc<IoGate> {
        Arc::new(IoGate {
            state: Mutex::new(GateState {
                open,
                in_flight: 0,
                waiters: 0,
            }),
            drained: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        sync::lock(&self.state)
    }

    /// Admits one medium operation, or `None` when the gate is closed.
    pub fn enter(self: &Arc<Self>) -> Option<GatePass> {
        let mut s = self.lock();
        if !s.open {
            return None;
        }
        s.in_flight += 1;
        Some(GatePass { gate: self.clone() })
    }

    /// Whether new operations are admitted.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Operations admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Admits operations again.
    pub fn open(&self) {
        self.lock().open = true;
    }

    /// Stops admitting operations and waits until the admitted ones have finished, at most
    /// `limit`. Returns whether the gate drained (it stays closed either way). When it returns
    /// `true`, no operation admitted before reaches the backend any more, and none is admitted
    /// until [`IoGate::open`].
    ///
    /// Under `duet_loom` there is no clock: `limit` is ignored and this waits until drained.
    pub fn close(&self, limit: Duration) -> bool {
        let deadline = deadline_after(limit);
        let mut s = self.lock();
        s.open = false;
        self.drain(s, deadline)
    }

    /// The first half of [`IoGate::close`]: stops admitting operations, without waiting.
    pub fn close_begin(&self) {
        self.lock().open = false;
    }

    /// The second half of [`IoGate::close`]: waits until no admitted operation is in flight, at
    /// most `limit`. Returns whether that happened. It does not close the gate: on an open gate
    /// new operations may be admitted meanwhile.
    pub fn wait_drained(&self, limit: Duration) -> bool {
        let deadline = deadline_after(limit);
        let s = self.lock();
        self.drain(s, deadline)
    }

    fn drain(&self, mut s: MutexGuard<'_, GateState>, deadline: Instant) -> bool {
        let mut drained = true;
        s.waiters += 1;
        while s.in_flight > 0 {
            let (g, timed_out) = sync::wait_until(&self.drained, s, deadline);
            s = g;
            if timed_out && s.in_flight > 0 {
                drained = false;
                break;
            }
        }
        s.waiters -= 1;
        drained
    }
}

/// Now plus `limit`, saturating far in the future instead of overflowing.
fn deadline_after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

#[cfg(all(test, not(duet_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_admits_nothing_until_opened() {
        let g = IoGate::new(false);
        assert!(g.enter().is_none());
        g.open();
        let p = g.enter().expect("open gate admits");
        assert_eq!(g.in_flight(), 1);
        drop(p);
        assert!(g.close(Duration::from_millis(10)));
        assert!(g.enter().is_none());
    }

    #[test]
    fn close_waits_for_admitted_operations() {
        let g = IoGate::new(true);
        let pass = g.enter().expect("admitted");
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.close(Duration::from_secs(20)));
        // The closer cannot finish while the pass is held; new operations are refused at once.
        while g.is_open() {
            std::thread::yield_now();
        }
        assert!(g.enter().is_none());
        drop(pass);
        assert!(t.join().expect("closer thread"));
        assert_eq!(g.in_flight(), 0);
    }

    #[test]
    fn close_reports_a_gate_that_did_not_drain() {
        let g = IoGate::new(true);
        let _pass = g.enter().expect("admitted");
        assert!(!g.close(Duration::from_millis(5)));
        assert!(!g.is_open());
    }

    #[test]
    fn close_in_two_halves() {
        let g = IoGate::new(true);
        let pass = g.enter().expect("admitted");
        g.close_begin();
        assert!(!g.is_open());
        assert!(g.enter().is_none());
        assert!(!g.wait_drained(Duration::from_millis(5)));
        let g2 = g.clone();
        let t = std::thread::spawn(move || g2.wait_drained(Duration::from_secs(20)));
        drop(pass);
        assert!(t.join().expect("waiter thread"));
        assert!(
            g.wait_drained(Duration::ZERO),
            "an idle gate is drained at once"
        );
    }
}
