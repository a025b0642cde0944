//! The synchronization primitives of the runtime's shared structures, swappable for loom's.
//!
//! Code that shares state between tasks and threads (the fencing gate, the HA runtime's tables)
//! takes its `Mutex`, `RwLock`, `Condvar`, atomics and threads from here. A normal build gets the
//! `std` types; a build with `RUSTFLAGS="--cfg duet_loom"` gets [loom]'s, so the loom models in
//! `target/tests/loom_models.rs` explore every interleaving of the *real* code. (A plain
//! `--cfg loom` would also switch tokio to its own loom mode, which drops `tokio::net`; hence a
//! cfg of our own.)
//!
//! Both configurations offer the same surface: the types, plus helpers that hide the two places
//! where they differ:
//!
//! - poisoning: [`lock`], [`read`], [`write`] and [`wait`] ignore it (a panic while holding a lock
//!   leaves the data as the panicking code left it; the runtime serves on rather than refusing
//!   every later operation);
//! - timed waits: loom cannot model time, so [`wait_until`] waits for a notification without a
//!   deadline under loom and reports that it never timed out.
//!
//! Loom's types only work inside `loom::model`; under `duet_loom` nothing but the loom models may
//! run (`cargo test --test loom_models`).
//!
//! [loom]: https://docs.rs/loom

use std::time::Instant;

#[cfg(duet_loom)]
pub use loom::sync::{
    atomic, Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(duet_loom)]
pub use loom::thread;

#[cfg(not(duet_loom))]
pub use std::sync::{
    atomic, Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(not(duet_loom))]
pub use std::thread;

/// Locks `m`, ignoring poisoning.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes `l` for reading, ignoring poisoning.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Takes `l` for writing, ignoring poisoning.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` (releasing `guard` meanwhile) until notified, ignoring poisoning. As with any
/// condition variable the wake-up may be spurious: re-check the condition.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` until notified or until `deadline`, ignoring poisoning. Returns the guard and
/// whether the deadline has passed (then the caller should give up, whatever the condition).
/// A deadline already past returns at once without waiting.
///
/// Under `duet_loom` there is no time: this waits for a notification only and never reports a
/// timeout, so loom checks the logic that does not depend on the clock.
#[cfg(not(duet_loom))]
pub fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Instant,
) -> (MutexGuard<'a, T>, bool) {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return (guard, true);
    }
    let guard = match cv.wait_timeout(guard, left) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    };
    (guard, Instant::now() >= deadline)
}

/// Waits on `cv` until notified or until `deadline`, ignoring poisoning. Returns the guard and
/// whether the deadline has passed (then the caller should give up, whatever the condition).
///
/// Under `duet_loom` (this build) there is no time: this waits for a notification only and
/// never reports a timeout, so loom checks the logic that does not depend on the clock.
#[cfg(duet_loom)]
pub fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    _deadline: Instant,
) -> (MutexGuard<'a, T>, bool) {
    (wait(cv, guard), false)
}

#[cfg(all(test, not(duet_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lock_survives_a_poisoned_mutex() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let r = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn wait_until_a_past_deadline_returns_at_once() {
        let m = Mutex::new(());
        let cv = Condvar::new();
        let (_g, timed_out) = wait_until(&cv, lock(&m), Instant::now());
        assert!(timed_out);
    }

    #[test]
    fn wait_until_reports_a_timeout() {
        let m = Mutex::new(());
        let cv = Condvar::new();
        let deadline = Instant::now() + Duration::from_millis(5);
        let mut g = lock(&m);
        loop {
            let (g2, timed_out) = wait_until(&cv, g, deadline);
            g = g2;
            if timed_out {
                break;
            }
        }
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn read_and_write_ignore_poisoning() {
        let l = Arc::new(RwLock::new(5));
        let l2 = l.clone();
        let r = std::thread::spawn(move || {
            let _g = write(&l2);
            panic!("poison it");
        })
        .join();
        assert!(r.is_err());
        *write(&l) = 6;
        assert_eq!(*read(&l), 6);
    }
}
