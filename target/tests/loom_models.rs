//! Loom models of the runtime's shared structures.
//!
//! Each model runs the *real* code of duet-target (the fencing gate, the HA runtime's tables,
//! duet-core's logical unit under its lock) with loom's `Mutex`, `RwLock`, `Condvar` and atomics
//! (through `duet_target::sync`), so loom explores every interleaving of their operations up to
//! a preemption bound and checks an invariant in each. Loom also reports a deadlock (every thread
//! blocked: a waiter that hangs) and a leak of a loom object as failures.
//!
//! Build and run them with the cfg that switches the shim (`verification/loom.sh` does this):
//!
//! ```sh
//! RUSTFLAGS="--cfg duet_loom" CARGO_TARGET_DIR=build/loom \
//!     cargo test --release -p duet-target --test loom_models -- --nocapture
//! ```
//!
//! Every model prints one line `LOOM-MODEL <name> interleavings=<n> bound=<b> invariant: <text>`.
//! The preemption bound is `LOOM_MAX_PREEMPTIONS` when set, otherwise 3. The models whose name
//! ends in `_is_caught` break a rule on purpose and expect loom to find the violation: they show
//! that the invariants have teeth.
#![cfg(duet_loom)]

use duet_core::LunNumber;
use std::sync::atomic::{AtomicUsize as StdAtomicUsize, Ordering as StdOrdering};
use std::time::Duration;

use duet_core::alua::{HaMode, LunView};
use duet_core::ha::grant::{Access, Answer, PrimaryFacts};
use duet_core::ha::HaStatus;
use duet_core::scsi::{AluaPicture, CommandContext, LogicalUnit, LuConfig, MemStore, Nexus};
use duet_core::sense::SenseCode;
use duet_target::ha::gate::IoGate;
use duet_target::ha::tables::{
    GrantTable, LunFacts, PendingTable, Published, Requested, RoleFacts,
};
use duet_target::sync::atomic::{AtomicUsize, Ordering};
use duet_target::sync::{self, thread, Arc, Condvar, Mutex};

/// The preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const DEFAULT_BOUND: usize = 3;
/// A `close()` limit the models never reach (under loom `close` ignores it anyway).
const NO_LIMIT: Duration = Duration::from_secs(3600);

/// Explores `f` with loom and prints the model's report line. Returns the interleavings explored.
fn explore<F>(name: &str, invariant: &str, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    let count = std::sync::Arc::new(StdAtomicUsize::new(0));
    let seen = count.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_BOUND);
    }
    let bound = builder.preemption_bound.unwrap_or(DEFAULT_BOUND);
    builder.check(move || {
        seen.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    let n = count.load(StdOrdering::Relaxed);
    println!("LOOM-MODEL {name} interleavings={n} bound={bound} invariant: {invariant}");
    assert!(n > 0, "loom explored nothing");
    n
}

/// Announces a model that must fail, for the log of `loom.sh`.
fn expect_violation(name: &str, rule_broken: &str) {
    println!("LOOM-MODEL {name} expects a violation: {rule_broken}");
}

// ---- the fencing gate -----------------------------------------------------------------------

/// One medium operation: through the gate, a write to the "backend", then the pass is dropped.
/// With `write_after_drop` the write comes after the pass is dropped (the bug the gate prevents
/// when callers hold the pass across the backend call).
fn gated_write(gate: &std::sync::Arc<IoGate>, backend: &AtomicUsize, write_after_drop: bool) {
    if let Some(pass) = gate.enter() {
        if write_after_drop {
            drop(pass);
            backend.fetch_add(1, Ordering::SeqCst);
        } else {
            backend.fetch_add(1, Ordering::SeqCst);
            drop(pass);
        }
    }
}

fn gate_model(write_after_drop: bool, two_phase: bool) {
    let gate = IoGate::new(true);
    let backend = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (g, b) = (gate.clone(), backend.clone());
            thread::spawn(move || gated_write(&g, &b, write_after_drop))
        })
        .collect();
    let (g, b) = (gate.clone(), backend.clone());
    let closer = thread::spawn(move || {
        if two_phase {
            g.close_begin();
            assert!(
                g.wait_drained(NO_LIMIT),
                "under loom the wait ends when drained"
            );
        } else {
            assert!(g.close(NO_LIMIT), "under loom close waits until drained");
        }
        assert_eq!(g.in_flight(), 0);
        b.load(Ordering::SeqCst)
    });
    let at_close = closer.join().expect("closer");
    for w in writers {
        w.join().expect("writer");
    }
    // Every writer has finished: nothing reached the backend after close returned.
    assert_eq!(
        backend.load(Ordering::SeqCst),
        at_close,
        "a write reached the backend after close() returned"
    );
    assert!(gate.enter().is_none(), "closed until open()");
    gate.open();
    assert!(gate.enter().is_some(), "open() admits again");
}

#[test]
fn gate_close_fences_every_write() {
    explore(
        "gate_close_fences_every_write",
        "once IoGate::close() has returned (drained), no write reaches the backend until open(); \
         2 writers (enter, write, drop pass) against 1 closer",
        || gate_model(false, false),
    );
}

#[test]
fn gate_two_phase_close_fences_every_write() {
    explore(
        "gate_two_phase_close_fences_every_write",
        "once IoGate::close_begin() then wait_drained() have returned (drained), no write \
         reaches the backend until open(); 2 writers against 1 closer",
        || gate_model(false, true),
    );
}

#[test]
#[should_panic(expected = "after close() returned")]
fn gate_write_outside_the_pass_is_caught() {
    expect_violation(
        "gate_write_outside_the_pass_is_caught",
        "a writer drops its pass before writing",
    );
    explore(
        "gate_write_outside_the_pass_is_caught",
        "(must fail)",
        || gate_model(true, false),
    );
}

// ---- Published ------------------------------------------------------------------------------

const ME: u8 = 1;
const PEER: u8 = 2;

fn status() -> HaStatus {
    HaStatus {
        ha_id: ME,
        mode: HaMode::ActiveActiveForward,
        policy: Default::default(),
        link: 2,
        lease_remaining_ms: None,
        luns: Vec::new(),
    }
}

/// The pictures the driver publishes, by generation: 0 nothing, 1 LUN 1 here and LUN 2 on the
/// peer, 2 a switchover of both.
fn picture(generation: u64) -> Vec<(LunNumber, LunFacts)> {
    let here = LunFacts {
        primary_here: true,
        may_io: true,
        primary: Some(ME),
        epoch: 1,
    };
    let there = LunFacts {
        primary_here: false,
        may_io: false,
        primary: Some(PEER),
        epoch: 1,
    };
    match generation {
        0 => Vec::new(),
        1 => vec![(1, here), (2, there)],
        _ => vec![(1, there), (2, here)],
    }
}

/// `forward_mode(lun)` as the published picture of `generation` makes it (mode 2, link up).
fn forward_of(generation: u64, lun: LunNumber) -> Option<bool> {
    picture(generation)
        .into_iter()
        .find(|(l, _)| *l == lun)
        .and_then(|(_, f)| (!f.primary_here && f.primary == Some(PEER)).then_some(false))
}

/// Checks that `snap` is exactly one published picture, and returns its generation.
fn check_snapshot(snap: &RoleFacts) -> u64 {
    assert!(
        snap.generation <= 2,
        "unknown generation {}",
        snap.generation
    );
    let want: std::collections::BTreeMap<LunNumber, LunFacts> =
        picture(snap.generation).into_iter().collect();
    for f in snap.luns.values() {
        assert!(
            !(f.primary_here && f.primary == Some(PEER)),
            "torn LUN facts: primary here and on the peer"
        );
    }
    assert_eq!(snap.luns, want, "torn snapshot: LUNs of different steps");
    assert_eq!(
        snap.link_up,
        snap.generation > 0,
        "torn snapshot: link state"
    );
    assert_eq!(snap.status.is_some(), snap.generation > 0);
    snap.generation
}

fn reader(p: &Published) {
    let first = check_snapshot(&p.snapshot());
    let fm = p.forward_mode(2);
    assert!(
        (0..=2).any(|g| forward_of(g, 2) == fm),
        "forward_mode({fm:?}) matches no published picture"
    );
    let second = check_snapshot(&p.snapshot());
    assert!(second >= first, "older facts after newer ones");
}

#[test]
fn published_snapshots_are_never_torn() {
    explore(
        "published_snapshots_are_never_torn",
        "every read of Published (snapshot, forward_mode) is one whole publish() (old or new, \
         never a mix, never primary_here with primary == peer) and never older than a previous \
         read; 1 driver publishing 2 pictures, 2 readers",
        || {
            let p = std::sync::Arc::new(Published::new(PEER, HaMode::ActiveActiveForward));
            let w = p.clone();
            let driver = thread::spawn(move || {
                assert_eq!(w.publish(picture(1), true, status()), 1);
                assert_eq!(w.publish(picture(2), true, status()), 2);
            });
            let r = p.clone();
            let other = thread::spawn(move || reader(&r));
            reader(&p);
            driver.join().expect("driver");
            other.join().expect("reader");
            assert_eq!(check_snapshot(&p.snapshot()), 2);
            assert!(p.serving(2) && !p.serving(1));
        },
    );
}

// ---- PendingTable ---------------------------------------------------------------------------

/// What a waiter ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Waiting,
    Replied(u32),
    Cancelled,
}

/// A one-shot reply slot with loom's types, standing in for tokio's oneshot channel: the sender
/// delivers once or, dropped unused, cancels. Every outcome is counted, so "both" or "twice"
/// would show.
struct Slot {
    state: Mutex<Outcome>,
    changed: Condvar,
    outcomes: AtomicUsize,
}

struct SlotSender {
    slot: Arc<Slot>,
    sent: bool,
}

impl Slot {
    fn channel() -> (SlotSender, Arc<Slot>) {
        let slot = Arc::new(Slot {
            state: Mutex::new(Outcome::Waiting),
            changed: Condvar::new(),
            outcomes: AtomicUsize::new(0),
        });
        (
            SlotSender {
                slot: slot.clone(),
                sent: false,
            },
            slot,
        )
    }

    fn settle(&self, outcome: Outcome) {
        let mut s = sync::lock(&self.state);
        assert_eq!(
            *s,
            Outcome::Waiting,
            "second outcome {outcome:?} after {:?}",
            *s
        );
        *s = outcome;
        self.outcomes.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Blocks until the waiter's outcome is known (loom reports a deadlock if it never is).
    fn recv(&self) -> Outcome {
        let mut s = sync::lock(&self.state);
        while *s == Outcome::Waiting {
            s = sync::wait(&self.changed, s);
        }
        *s
    }
}

impl SlotSender {
    fn send(mut self, v: u32) {
        self.sent = true;
        self.slot.settle(Outcome::Replied(v));
    }
}

impl Drop for SlotSender {
    fn drop(&mut self) {
        if !self.sent {
            self.slot.settle(Outcome::Cancelled);
        }
    }
}

/// One waiter registers and waits, a reply arrives twice (a duplicated message), the link goes
/// down (`close()`, which refuses later registrations).
fn pending_model() {
    let table = std::sync::Arc::new(PendingTable::<SlotSender>::new());
    let repliers = spawn_repliers(&table);
    let t = table.clone();
    let down = thread::spawn(move || t.close());
    let (tx, rx) = Slot::channel();
    if let Ok(id) = table.register(tx) {
        assert_eq!(id, 1);
    }
    // Blocks until replied or cancelled: loom fails the model (deadlock) if that never comes.
    let outcome = rx.recv();
    let delivered = join_repliers(repliers);
    down.join().expect("link down");
    check_outcome(&rx, outcome, delivered);
    assert!(table.is_empty(), "nothing left waiting");
}

/// Two repliers delivering the reply to request 1 (the only waiter's id: ids start at 1).
fn spawn_repliers(
    table: &std::sync::Arc<PendingTable<SlotSender>>,
) -> Vec<thread::JoinHandle<bool>> {
    (0..2)
        .map(|i| {
            let t = table.clone();
            thread::spawn(move || match t.take(1) {
                Some(tx) => {
                    tx.send(10 + i);
                    true
                }
                None => false,
            })
        })
        .collect()
}

/// How many repliers delivered.
fn join_repliers(repliers: Vec<thread::JoinHandle<bool>>) -> usize {
    repliers
        .into_iter()
        .map(|r| r.join().expect("replier"))
        .filter(|d| *d)
        .count()
}

fn check_outcome(rx: &Slot, outcome: Outcome, delivered: usize) {
    assert_ne!(outcome, Outcome::Waiting, "the waiter would wait forever");
    assert_eq!(rx.outcomes.load(Ordering::SeqCst), 1, "exactly one outcome");
    assert!(delivered <= 1, "a reply delivered twice");
    assert_eq!(
        delivered == 1,
        matches!(outcome, Outcome::Replied(_)),
        "a delivered reply is the waiter's outcome"
    );
}

#[test]
fn pending_reply_at_most_once_or_cancelled() {
    explore(
        "pending_reply_at_most_once_or_cancelled",
        "each PendingTable waiter ends with exactly one outcome, its reply or cancelled (never \
         both, a duplicated reply delivered at most once) and never hangs across close() on \
         link down; 1 waiter, 2 repliers, 1 link-down",
        pending_model,
    );
}

#[test]
#[should_panic(expected = "would wait forever")]
fn pending_clear_without_close_hang_is_caught() {
    expect_violation(
        "pending_clear_without_close_hang_is_caught",
        "link down only clear()s and keeps the table open: a waiter registering after it waits \
         forever",
    );
    explore(
        "pending_clear_without_close_hang_is_caught",
        "(must fail)",
        || {
            let table = std::sync::Arc::new(PendingTable::<SlotSender>::new());
            let repliers = spawn_repliers(&table);
            let t = table.clone();
            let down = thread::spawn(move || t.clear());
            let (tx, rx) = Slot::channel();
            let _ = table.register(tx);
            // Not blocking here (a loom deadlock aborts the process): once every other thread
            // is done, nobody can settle a waiter that is still waiting.
            let delivered = join_repliers(repliers);
            down.join().expect("link down");
            let outcome = *sync::lock(&rx.state);
            check_outcome(&rx, outcome, delivered);
            table.clear();
        },
    );
}

// ---- GrantTable -----------------------------------------------------------------------------

/// A grant's guard: counts its drops.
struct Guard {
    drops: Arc<AtomicUsize>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// The primary's facts while it serves LUN 0 at epoch 3 with the peer connected.
const SERVING: PrimaryFacts = PrimaryFacts {
    serving_primary: true,
    epoch: 3,
    peer_connected: true,
};

/// Asks the table for a grant (request `req` of `session`, LUN 0, shared) and attaches a guard
/// counted by `drops` if one is given. Returns the grant id if the guard is kept; a guard the
/// table gives back (the grant was released, revoked or the session ended first) is dropped.
fn grant_and_attach(
    t: &GrantTable<Guard>,
    session: u64,
    req: u64,
    facts: PrimaryFacts,
    drops: &Arc<AtomicUsize>,
) -> Option<u64> {
    let guard = Guard {
        drops: drops.clone(),
    };
    match t.request(session, req, 0, Access::Shared, facts, ()) {
        Requested::Answered(Answer::Granted { grant, .. }, ()) => {
            t.attach(grant, guard).ok().map(|()| grant)
        }
        _ => None,
    }
}

/// Checks that every guard was dropped at most once, and is kept (its grant id among the
/// table's guarded ids) exactly when it was not dropped.
fn check_guards(table: &GrantTable<Guard>, ids: &[Option<u64>], drops: &[Arc<AtomicUsize>]) {
    let kept_ids = table.guarded();
    for (i, c) in drops.iter().enumerate() {
        let n = c.load(Ordering::SeqCst);
        assert!(n <= 1, "guard {i} dropped {n} times");
        let kept = ids[i].is_some_and(|id| kept_ids.contains(&id));
        assert_eq!(n == 0, kept, "guard {i}: kept iff not dropped");
    }
}

#[test]
fn grants_dropped_exactly_once() {
    explore(
        "grants_dropped_exactly_once",
        "every GrantTable guard is dropped exactly once (released, cleared, or given back by \
         attach() when its grant is gone; a repeated release drops nothing) and no grant of a \
         session survives the clear() that ends it; 1 granter (2 grants), 1 releaser \
         (3 releases), 1 link-down",
        || {
            let table = std::sync::Arc::new(GrantTable::<Guard>::new());
            let drops: Vec<Arc<AtomicUsize>> =
                (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
            let (t, d) = (table.clone(), drops.clone());
            let granter = thread::spawn(move || {
                let session = t.session();
                let ids: Vec<Option<u64>> = d
                    .iter()
                    .zip(1..)
                    .map(|(c, req)| grant_and_attach(&t, session, req, SERVING, c))
                    .collect();
                (session, ids)
            });
            let t = table.clone();
            let releaser = thread::spawn(move || {
                let first = t.release(1).is_some();
                let again = t.release(1).is_some();
                assert!(!(first && again), "grant 1 released twice");
                t.release(2);
            });
            table.clear();
            let (session, ids) = granter.join().expect("granter");
            releaser.join().expect("releaser");
            check_guards(&table, &ids, &drops);
            if session == 0 {
                assert!(
                    table.guarded().is_empty() && table.is_empty(),
                    "a grant of the ended session survived clear()"
                );
            }
            table.clear();
            for c in &drops {
                assert_eq!(c.load(Ordering::SeqCst), 1, "clear() drops every grant");
            }
            assert!(table.is_empty());
        },
    );
}

#[test]
fn grants_revoked_by_update_drop_their_guards() {
    explore(
        "grants_revoked_by_update_drop_their_guards",
        "a grant the grantor revokes (update() after the primary stepped down) keeps no guard: \
         its guard is dropped exactly once, by update() or given back by attach(); a grant \
         given after the update keeps its guard until released; 1 granter (1 grant), \
         1 step-down",
        || {
            let table = std::sync::Arc::new(GrantTable::<Guard>::new());
            let drops = vec![Arc::new(AtomicUsize::new(0))];
            let (t, d) = (table.clone(), drops[0].clone());
            let granter = thread::spawn(move || grant_and_attach(&t, 0, 1, SERVING, &d));
            let stepped_down = PrimaryFacts {
                serving_primary: false,
                ..SERVING
            };
            let answered = table.update(0, stepped_down);
            assert!(answered.is_empty(), "nothing was queued");
            let id = granter.join().expect("granter");
            check_guards(&table, &[id], &drops);
            if let Some(id) = id {
                // Attached, then revoked (its guard dropped by update()), or attached after the
                // update and still held.
                let kept = table.guarded().contains(&id);
                let released = table.release(id);
                assert_eq!(released.is_some(), kept, "a kept guard's grant is held");
            }
            assert_eq!(drops[0].load(Ordering::SeqCst), 1);
            assert!(table.is_empty() && table.guarded().is_empty());
        },
    );
}

// ---- the LU state lock ----------------------------------------------------------------------

/// Runs TEST UNIT READY for `nexus` under the LU lock; returns its sense code, if any.
fn tur(lu: &Mutex<LogicalUnit>, store: &MemStore, nexus: &Nexus) -> Option<SenseCode> {
    let alua = AluaPicture::from_view(LunView::standalone(), 1, &[1, 2], &[]);
    let luns = [0u64];
    let ctx = CommandContext {
        nexus,
        alua: &alua,
        target_name: "iqn.2026-11.dev.duet:loom",
        tpgt: 1,
        luns: &luns,
    };
    sync::lock(lu)
        .execute(&ctx, &[0; 6], &[], store)
        .sense_code()
}

fn nexus(i: u8) -> Nexus {
    Nexus::new(
        &format!("iqn.2026-11.dev.duet:init{i}"),
        [0x23, 0x0d, 0, 0, 0, i],
        1,
    )
}

/// A connection task: two commands while the driver may raise the UA, one after.
fn connection(lu: &Mutex<LogicalUnit>, store: &MemStore, nexus: &Nexus) -> Vec<Option<SenseCode>> {
    (0..2).map(|_| tur(lu, store, nexus)).collect()
}

#[test]
fn lu_alua_unit_attention_seen_once_per_nexus() {
    explore(
        "lu_alua_unit_attention_seen_once_per_nexus",
        "an ALUA unit attention raised (raise_ua_all) while two nexuses run TEST UNIT READY on \
         the shared Mutex<LogicalUnit> reaches each nexus exactly once; 1 driver, 2 connections \
         (2 commands each, then 1 more after the driver)",
        || {
            let cfg = LuConfig::new(0, 512, 64, "DUETLOOM");
            let store = std::sync::Arc::new(MemStore::new(64 * 512));
            let lu = Arc::new(Mutex::new(LogicalUnit::new(cfg).expect("valid LU config")));
            let (a, b) = (nexus(1), nexus(2));
            // Both nexuses log in and clear their 29/00 before the race.
            for n in [&a, &b] {
                assert_eq!(tur(&lu, &store, n), Some(SenseCode::UA_POWER_ON_RESET));
                assert_eq!(tur(&lu, &store, n), None);
            }
            let l = lu.clone();
            let driver = thread::spawn(move || {
                sync::lock(&l).raise_ua_all(SenseCode::UA_ALUA_STATE_CHANGED, None);
            });
            let (l, s, na) = (lu.clone(), store.clone(), a.clone());
            let conn_a = thread::spawn(move || connection(&l, &s, &na));
            let mut seen_b = connection(&lu, &store, &b);
            driver.join().expect("driver");
            let mut seen_a = conn_a.join().expect("connection a");
            seen_a.push(tur(&lu, &store, &a));
            seen_b.push(tur(&lu, &store, &b));
            for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
                let ua = seen
                    .iter()
                    .filter(|s| **s == Some(SenseCode::UA_ALUA_STATE_CHANGED))
                    .count();
                assert_eq!(ua, 1, "nexus {name} saw the ALUA UA {ua} times: {seen:?}");
                assert!(
                    seen.iter()
                        .all(|s| s.is_none() || *s == Some(SenseCode::UA_ALUA_STATE_CHANGED)),
                    "nexus {name}: unexpected sense {seen:?}"
                );
            }
        },
    );
}
