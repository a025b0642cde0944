//! The fencing gate in front of a LUN's backend.
//!
//! Every medium operation (read or write) passes through [`IoGate::enter`] and holds the returned
//! [`GatePass`] until its backend call has returned. The HA node closes the gate
//! (`Output::FenceIo`) when this controller must stop touching the shared disk and opens it
//! (`Output::ResumeIo`) when it may serve again. [`IoGate::close`] returns only once every
//! operation admitted before it has finished, so after `close` no write reaches the backend
//! until the next [`IoGate::open`].

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    in_flight: usize,
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
        if s.in_flight == 0 {
            self.gate.drained.notify_all();
        }
    }
}

impl IoGate {
    /// A gate, open or closed.
    pub fn new(open: bool) -> Arc<IoGate> {
        Arc::new(IoGate {
            state: Mutex::new(GateState { open, in_flight: 0 }),
            drained: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
    /// `limit`. Returns whether the gate drained (it stays closed either way).
    pub fn close(&self, limit: Duration) -> bool {
        let mut s = self.lock();
        s.open = false;
        let deadline = std::time::Instant::now() + limit;
        while s.in_flight > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match self.drained.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

#[cfg(test)]
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
}
