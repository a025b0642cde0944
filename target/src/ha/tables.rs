//! The HA runtime's small shared tables, each behind one lock from [`crate::sync`] so that the
//! loom models (`target/tests/loom_models.rs`, `--cfg duet_loom`) explore this very code.
//!
//! - [`Published`]: the per-LUN role facts the I/O paths read while the HA driver changes them.
//!   Every read is one consistent snapshot of one [`Published::publish`] call.
//! - [`PendingTable`]: requests sent to the peer, waiting for their reply. A reply is delivered
//!   at most once; [`PendingTable::close`] (link down) cancels every waiter and refuses new ones
//!   until [`PendingTable::open`], so a waiter gets its reply or "cancelled", never both, and
//!   never waits for a reply that cannot come.
//! - [`GrantTable`]: grants held on behalf of the peer (mode 1), decided by core's
//!   [`Grantor`], with the real guards attached. A released or revoked grant's guard is dropped
//!   exactly once; [`GrantTable::clear`] (link down) drops every grant and ends the link
//!   session, so a guard taken for a grant of the old session is not kept after it.
//!
//! Values leaving a table (reply senders, grant guards) are dropped after its lock is released:
//! dropping them wakes tasks or releases other locks, which must not happen under ours.

use duet_core::LunNumber;
use std::collections::{BTreeMap, HashMap};

use duet_core::alua::HaMode;
use duet_core::ha::grant::{Access, Answer, GrantId, Grantor, PrimaryFacts, SecondaryFacts};
use duet_core::ha::HaStatus;

use crate::sync::{self, Mutex, RwLock};

// ---- Published ------------------------------------------------------------------------------

/// What the I/O paths need to know about one LUN, as of the last step of the HA node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LunFacts {
    /// This controller is primary for the LUN and not suspended: it runs commands itself.
    pub primary_here: bool,
    /// The node allows I/O here (the primary, or a mode-1 secondary under a valid read lease).
    pub may_io: bool,
    /// The primary as this node knows it (`None`: no primary known).
    pub primary: Option<u8>,
    /// The node's (newest known) epoch for the LUN.
    pub epoch: u64,
}

/// One published picture: what [`Published::publish`] stored, all of it from one step of the
/// node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleFacts {
    /// How many times [`Published::publish`] ran before this picture (0: nothing published yet).
    pub generation: u64,
    /// Per LUN number.
    pub luns: BTreeMap<LunNumber, LunFacts>,
    /// The node sees the pair formed and the link is up.
    pub link_up: bool,
    /// The node's status summary for `duetctl ha`.
    pub status: Option<HaStatus>,
}

/// Facts other tasks record for `duetctl ha` between the node's steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The node's last status summary.
    pub status: Option<HaStatus>,
    /// Milliseconds (driver clock) when this node last wrote its quorum slot successfully.
    pub last_quorum_write: Option<u64>,
    /// The fencing agent confirmed the peer stopped, and the link has not come back since.
    pub peer_fenced: bool,
}

#[derive(Debug, Default)]
struct PublishedState {
    roles: RoleFacts,
    last_quorum_write: Option<u64>,
    peer_fenced: bool,
}

/// The per-LUN role facts, written by the HA driver after every step of the node and read by
/// every command. A reader always sees one whole [`Published::publish`]: never one LUN's facts
/// from one step and another's (or the link state) from another, and never older facts after
/// newer ones.
#[derive(Debug)]
pub struct Published {
    peer_id: u8,
    mode: HaMode,
    state: RwLock<PublishedState>,
}

impl Published {
    /// Nothing published yet, for a controller whose peer is `peer_id`, in `mode`.
    pub fn new(peer_id: u8, mode: HaMode) -> Published {
        Published {
            peer_id,
            mode,
            state: RwLock::new(PublishedState::default()),
        }
    }

    /// Replaces the role facts with `luns` (every LUN under HA), `link_up` and `status`, all at
    /// once. Returns the new generation.
    pub fn publish(
        &self,
        luns: impl IntoIterator<Item = (LunNumber, LunFacts)>,
        link_up: bool,
        status: HaStatus,
    ) -> u64 {
        // Built before taking the lock: readers wait only for the swap.
        let luns: BTreeMap<LunNumber, LunFacts> = luns.into_iter().collect();
        let mut s = sync::write(&self.state);
        let generation = s.roles.generation + 1;
        s.roles = RoleFacts {
            generation,
            luns,
            link_up,
            status: Some(status),
        };
        generation
    }

    /// The whole current picture.
    pub fn snapshot(&self) -> RoleFacts {
        sync::read(&self.state).roles.clone()
    }

    /// The current facts of `lun` (`None`: not under HA, or nothing published yet).
    pub fn lun(&self, lun: LunNumber) -> Option<LunFacts> {
        sync::read(&self.state).roles.luns.get(&lun).copied()
    }

    /// Whether this controller is the serving primary of `lun`.
    pub fn serving(&self, lun: LunNumber) -> bool {
        self.lun(lun).is_some_and(|l| l.primary_here)
    }

    /// What the primary's grantor needs to know about `lun` (mode 1), from one picture: it
    /// serves the LUN as primary, at which epoch, with the pair formed and the link up.
    pub fn primary_facts(&self, lun: LunNumber) -> PrimaryFacts {
        let s = sync::read(&self.state);
        let l = s.roles.luns.get(&lun).copied().unwrap_or_default();
        PrimaryFacts {
            serving_primary: l.primary_here,
            epoch: l.epoch,
            peer_connected: s.roles.link_up,
        }
    }

    /// What the secondary's grantee needs to know about `lun` (mode 1), from one picture: the
    /// epoch it knows, with the pair formed and the link up.
    pub fn secondary_facts(&self, lun: LunNumber) -> SecondaryFacts {
        let s = sync::read(&self.state);
        SecondaryFacts {
            epoch: s.roles.luns.get(&lun).map_or(0, |l| l.epoch),
            connected: s.roles.link_up,
        }
    }

    /// Whether the node sees the pair formed and the link up.
    pub fn link_up(&self) -> bool {
        sync::read(&self.state).roles.link_up
    }

    /// `Some(plan_only)` when a command for `lun` received here must go to the primary: this
    /// controller does not serve it, the link is up and the peer is its primary. In mode 1 the
    /// command goes (plan only) only while the node allows I/O here (read lease); otherwise the
    /// ALUA picture answers. `None`: run it here.
    pub fn forward_mode(&self, lun: LunNumber) -> Option<bool> {
        let s = sync::read(&self.state);
        let l = s.roles.luns.get(&lun)?;
        if l.primary_here || !s.roles.link_up || l.primary != Some(self.peer_id) {
            return None;
        }
        if self.mode == HaMode::ActiveActiveShared {
            return l.may_io.then_some(true);
        }
        Some(false)
    }

    /// Records a successful write of this node's quorum slot at `at_ms` (driver clock).
    pub fn quorum_written(&self, at_ms: u64) {
        sync::write(&self.state).last_quorum_write = Some(at_ms);
    }

    /// Records whether the peer is known fenced (the agent confirmed it; `false` when the link
    /// comes back).
    pub fn set_peer_fenced(&self, fenced: bool) {
        sync::write(&self.state).peer_fenced = fenced;
    }

    /// The status, last quorum write and fencing facts, read together.
    pub fn health(&self) -> Health {
        let s = sync::read(&self.state);
        Health {
            status: s.roles.status.clone(),
            last_quorum_write: s.last_quorum_write,
            peer_fenced: s.peer_fenced,
        }
    }
}

// ---- PendingTable ---------------------------------------------------------------------------

/// [`PendingTable::register`] refused: the link is down ([`PendingTable::close`]), no reply
/// can come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the HA link is down: the request cannot be sent")]
pub struct TableClosed;

#[derive(Debug)]
struct PendingState<T> {
    open: bool,
    next_id: u64,
    waiters: HashMap<u64, T>,
}

/// Requests sent to the peer and waiting for their reply: request id -> the waiter's reply
/// sender `T` (a `tokio::sync::oneshot::Sender` in the runtime). Dropping a sender is how a
/// waiter learns "cancelled".
#[derive(Debug)]
pub struct PendingTable<T> {
    state: Mutex<PendingState<T>>,
}

impl<T> Default for PendingTable<T> {
    fn default() -> Self {
        PendingTable::new()
    }
}

impl<T> PendingTable<T> {
    /// An empty, open table. Ids start at 1.
    pub fn new() -> PendingTable<T> {
        PendingTable {
            state: Mutex::new(PendingState {
                open: true,
                next_id: 1,
                waiters: HashMap::new(),
            }),
        }
    }

    /// Allocates a request id and stores `reply_to` under it. On a closed table `reply_to` is
    /// dropped (its waiter sees "cancelled") and the error says why.
    pub fn register(&self, reply_to: T) -> Result<u64, TableClosed> {
        let mut s = sync::lock(&self.state);
        if !s.open {
            drop(s);
            drop(reply_to);
            return Err(TableClosed);
        }
        let id = s.next_id;
        s.next_id = s.next_id.wrapping_add(1).max(1);
        s.waiters.insert(id, reply_to);
        Ok(id)
    }

    /// Removes and returns the sender of request `id`: the reply's path delivers through it; the
    /// waiter's own path (send failed, timeout) drops it. Only one caller ever gets it, so a
    /// reply is delivered at most once.
    pub fn take(&self, id: u64) -> Option<T> {
        sync::lock(&self.state).waiters.remove(&id)
    }

    /// Cancels every waiter (drops its sender) and keeps accepting new ones. Returns how many
    /// were cancelled.
    pub fn clear(&self) -> usize {
        let gone = std::mem::take(&mut sync::lock(&self.state).waiters);
        gone.len()
    }

    /// The link went down: cancels every waiter and refuses new ones until [`PendingTable::open`].
    /// Returns how many were cancelled.
    pub fn close(&self) -> usize {
        let gone = {
            let mut s = sync::lock(&self.state);
            s.open = false;
            std::mem::take(&mut s.waiters)
        };
        gone.len()
    }

    /// Removes the waiters for which `expired` holds and returns them, so that the caller drops
    /// (cancels) them outside the table's lock.
    pub fn expire(&self, mut expired: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut s = sync::lock(&self.state);
        let ids: Vec<u64> = s
            .waiters
            .iter()
            .filter(|(_, w)| expired(w))
            .map(|(&id, _)| id)
            .collect();
        ids.iter().filter_map(|id| s.waiters.remove(id)).collect()
    }

    /// The link is up: accepts new waiters again.
    pub fn open(&self) {
        sync::lock(&self.state).open = true;
    }

    /// Whether [`PendingTable::register`] accepts new waiters.
    pub fn is_open(&self) -> bool {
        sync::lock(&self.state).open
    }

    /// How many requests wait for a reply.
    pub fn len(&self) -> usize {
        sync::lock(&self.state).waiters.len()
    }

    /// Whether no request waits for a reply.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of the requests waiting for a reply, ascending.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = sync::lock(&self.state).waiters.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

// ---- GrantTable -----------------------------------------------------------------------------

/// What [`GrantTable::request`] did with a request.
#[derive(Debug)]
pub enum Requested<W> {
    /// The grantor answered at once; the waiter comes back with the answer.
    Answered(Answer, W),
    /// The lock is taken: the request waits in the grantor's queue and its waiter in the table,
    /// until [`GrantTable::update`] answers it.
    Queued,
}

#[derive(Debug)]
struct GrantState<G, W> {
    grantor: Grantor,
    /// The real guards of the grants the grantor holds (attached once taken).
    guards: HashMap<GrantId, G>,
    /// What a queued request needs to be answered, by request id.
    waiting: HashMap<u64, W>,
}

/// Grants held on behalf of the peer (mode 1): core's [`Grantor`] decides every grant, refusal,
/// revocation and queueing; this table keeps, under the same lock, what the runtime attaches to
/// its decisions: grant id -> the guard `G` that holds the LU's I/O lock and a pass through its
/// fencing gate until the peer releases it, and request id -> the waiter `W` of a request queued
/// for the lock.
///
/// The grantor counts link sessions: [`GrantTable::clear`] (link down) ends one. A request
/// handler reads [`GrantTable::session`] when the request arrives and names it to
/// [`GrantTable::request`]; a request of an ended session is refused. A guard is kept only for
/// a grant the grantor still holds ([`GrantTable::attach`]), so a guard taken after the grant
/// was revoked (or the link dropped) is given back to be dropped, not held for nobody.
#[derive(Debug)]
pub struct GrantTable<G, W = ()> {
    state: Mutex<GrantState<G, W>>,
}

impl<G, W> Default for GrantTable<G, W> {
    fn default() -> Self {
        GrantTable::new()
    }
}

impl<G, W> GrantTable<G, W> {
    /// An empty table in link session 0. Grant ids start at 1.
    pub fn new() -> GrantTable<G, W> {
        GrantTable {
            state: Mutex::new(GrantState {
                grantor: Grantor::new(),
                guards: HashMap::new(),
                waiting: HashMap::new(),
            }),
        }
    }

    /// The current link session.
    pub fn session(&self) -> u64 {
        sync::lock(&self.state).grantor.session()
    }

    /// Request `req` of link session `session` for `lun` with `access`, given the primary's
    /// `facts` ([`Grantor::request`]). `waiter` is kept while the request is queued.
    pub fn request(
        &self,
        session: u64,
        req: u64,
        lun: LunNumber,
        access: Access,
        facts: PrimaryFacts,
        waiter: W,
    ) -> Requested<W> {
        let mut s = sync::lock(&self.state);
        match s.grantor.request(session, req, lun, access, facts) {
            Some(answer) => Requested::Answered(answer, waiter),
            None => {
                s.waiting.insert(req, waiter);
                Requested::Queued
            }
        }
    }

    /// Keeps `guard` for grant `grant` if the grantor still holds the grant; otherwise gives it
    /// back (the grant was revoked or the link dropped meanwhile): the caller drops it.
    pub fn attach(&self, grant: GrantId, guard: G) -> Result<(), G> {
        let mut s = sync::lock(&self.state);
        if s.grantor.grants().any(|(id, _)| id == grant) {
            s.guards.insert(grant, guard);
            Ok(())
        } else {
            Err(guard)
        }
    }

    /// The peer released grant `grant` (or it could not be used): drops its guard. Returns the
    /// grant's LUN if it was held (a second release of the same id, or one after
    /// [`GrantTable::clear`] or a revocation, finds nothing); call [`GrantTable::update`] for it
    /// next, since waiting requests may now be granted.
    pub fn release(&self, grant: GrantId) -> Option<LunNumber> {
        let (lun, guard) = {
            let mut s = sync::lock(&self.state);
            let lun = s
                .grantor
                .grants()
                .find(|&(id, _)| id == grant)
                .map(|(_, h)| h.lun);
            s.grantor.release(grant);
            (lun, s.guards.remove(&grant))
        };
        drop(guard);
        lun
    }

    /// After a step of the node (or a release): [`Grantor::update`] for `lun` with `facts`.
    /// Drops the guards of the grants it revoked and returns its answers, each with the waiter
    /// of its request.
    pub fn update(&self, lun: LunNumber, facts: PrimaryFacts) -> Vec<(Answer, W)> {
        let (answers, revoked) = {
            let mut s = sync::lock(&self.state);
            let answers = s.grantor.update(lun, facts);
            let state = &mut *s;
            let held: Vec<GrantId> = state.grantor.grants().map(|(id, _)| id).collect();
            let gone: Vec<GrantId> = state
                .guards
                .keys()
                .copied()
                .filter(|id| !held.contains(id))
                .collect();
            let revoked: Vec<G> = gone
                .iter()
                .filter_map(|id| state.guards.remove(id))
                .collect();
            let mut out = Vec::with_capacity(answers.len());
            for (req, answer) in answers {
                match state.waiting.remove(&req) {
                    Some(w) => out.push((answer, w)),
                    None => {
                        // No one to answer: a grant for it would be held for nobody.
                        if let Answer::Granted { grant, .. } = answer {
                            state.grantor.release(grant);
                        }
                    }
                }
            }
            (out, revoked)
        };
        drop(revoked);
        answers
    }

    /// The link went down: the grantor drops every grant and queued request and ends the
    /// session ([`Grantor::link_down`]); their guards and waiters are dropped here. Returns how
    /// many grants were dropped.
    pub fn clear(&self) -> usize {
        let (n, guards, waiting) = {
            let mut s = sync::lock(&self.state);
            let n = s.grantor.link_down();
            (
                n,
                std::mem::take(&mut s.guards),
                std::mem::take(&mut s.waiting),
            )
        };
        drop(guards);
        drop(waiting);
        n
    }

    /// How many grants are held.
    pub fn len(&self) -> usize {
        sync::lock(&self.state).grantor.grants().count()
    }

    /// Whether no grant is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of the grants held, ascending.
    pub fn ids(&self) -> Vec<GrantId> {
        sync::lock(&self.state)
            .grantor
            .grants()
            .map(|(id, _)| id)
            .collect()
    }

    /// The ids of the grants whose guard is kept, ascending.
    pub fn guarded(&self) -> Vec<GrantId> {
        let mut ids: Vec<GrantId> = sync::lock(&self.state).guards.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many requests wait for the lock.
    pub fn waiting(&self) -> usize {
        sync::lock(&self.state).waiting.len()
    }
}

#[cfg(all(test, not(duet_loom)))]
mod tests {
    use super::*;
    use duet_core::ha::grant::Refusal;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn status() -> HaStatus {
        HaStatus {
            ha_id: 1,
            mode: HaMode::ActiveActiveForward,
            policy: Default::default(),
            link: 2,
            lease_remaining_ms: None,
            luns: Vec::new(),
        }
    }

    fn facts(primary_here: bool, primary: Option<u8>) -> LunFacts {
        LunFacts {
            primary_here,
            may_io: primary_here,
            primary,
            epoch: 1,
        }
    }

    #[test]
    fn published_starts_empty_and_replaces_whole_pictures() {
        let p = Published::new(2, HaMode::ActiveActiveForward);
        assert_eq!(p.snapshot(), RoleFacts::default());
        assert!(!p.serving(1));
        assert_eq!(p.forward_mode(1), None);
        assert_eq!(p.publish([(1, facts(true, Some(1)))], true, status()), 1);
        assert!(p.serving(1));
        assert_eq!(p.forward_mode(1), None);
        assert_eq!(p.publish([(2, facts(false, Some(2)))], true, status()), 2);
        assert_eq!(p.lun(1), None, "a publish replaces every LUN");
        assert_eq!(p.forward_mode(2), Some(false));
        assert_eq!(p.snapshot().generation, 2);
        assert!(p.link_up());
    }

    #[test]
    fn forward_mode_follows_the_mode_and_the_link() {
        let shared = Published::new(2, HaMode::ActiveActiveShared);
        let leased = LunFacts {
            primary_here: false,
            may_io: true,
            primary: Some(2),
            epoch: 1,
        };
        shared.publish([(1, leased)], true, status());
        assert_eq!(shared.forward_mode(1), Some(true));
        shared.publish([(1, facts(false, Some(2)))], true, status());
        assert_eq!(shared.forward_mode(1), None, "mode 1 without a lease");
        shared.publish([(1, leased)], false, status());
        assert_eq!(shared.forward_mode(1), None, "link down");
        let standby = Published::new(1, HaMode::ActiveStandby);
        standby.publish([(1, facts(false, Some(1)))], true, status());
        assert_eq!(standby.forward_mode(1), Some(false));
        standby.publish([(1, facts(false, Some(2)))], true, status());
        assert_eq!(standby.forward_mode(1), None, "the peer is not the primary");
    }

    #[test]
    fn health_keeps_what_other_tasks_record() {
        let p = Published::new(2, HaMode::ActiveActiveForward);
        p.quorum_written(40);
        p.set_peer_fenced(true);
        p.publish([], false, status());
        let h = p.health();
        assert_eq!(h.last_quorum_write, Some(40));
        assert!(h.peer_fenced);
        assert_eq!(h.status, Some(status()));
        p.set_peer_fenced(false);
        assert!(!p.health().peer_fenced);
    }

    #[test]
    fn pending_delivers_once_and_close_cancels() {
        let t = PendingTable::new();
        let (tx1, rx1) = std::sync::mpsc::channel::<u8>();
        let (tx2, rx2) = std::sync::mpsc::channel::<u8>();
        let a = t.register(tx1).expect("open");
        let b = t.register(tx2).expect("open");
        assert_ne!(a, b);
        assert_eq!(t.ids(), vec![a, b]);
        t.take(a).expect("held").send(7).expect("receiver alive");
        assert!(t.take(a).is_none(), "a second reply finds nothing");
        assert_eq!(rx1.recv(), Ok(7));
        assert_eq!(t.close(), 1);
        assert!(rx2.recv().is_err(), "cancelled");
        let (tx3, rx3) = std::sync::mpsc::channel::<u8>();
        assert_eq!(t.register(tx3), Err(TableClosed));
        assert!(rx3.recv().is_err(), "refused means cancelled");
        t.open();
        let (tx4, _rx4) = std::sync::mpsc::channel::<u8>();
        let c = t.register(tx4).expect("open again");
        assert!(c > b, "ids are not reused");
        assert_eq!(t.clear(), 1);
        assert!(t.is_empty() && t.is_open());
    }

    const SERVING: PrimaryFacts = PrimaryFacts {
        serving_primary: true,
        epoch: 3,
        peer_connected: true,
    };

    fn granted(r: Requested<u8>) -> GrantId {
        match r {
            Requested::Answered(Answer::Granted { grant, .. }, _) => grant,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn grants_drop_once_and_stale_sessions_are_refused() {
        let drops = Arc::new(AtomicUsize::new(0));
        let t: GrantTable<Counted, u8> = GrantTable::new();
        let s0 = t.session();
        let a = granted(t.request(s0, 1, 0, Access::Shared, SERVING, 0));
        let b = granted(t.request(s0, 2, 0, Access::Shared, SERVING, 0));
        assert!(t.attach(a, Counted(drops.clone())).is_ok());
        assert!(t.attach(b, Counted(drops.clone())).is_ok());
        assert_eq!(t.ids(), vec![a, b]);
        assert_eq!(t.release(a), Some(0));
        assert_eq!(t.release(a), None);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(t.clear(), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(t.release(b), None);
        assert!(matches!(
            t.request(s0, 3, 0, Access::Shared, SERVING, 0),
            Requested::Answered(Answer::Refused(Refusal::StaleSession), 0)
        ));
        let back = t.attach(b, Counted(drops.clone()));
        assert!(back.is_err(), "no guard is kept for a grant the link took");
        drop(back);
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        let c = granted(t.request(t.session(), 4, 0, Access::Shared, SERVING, 0));
        assert!(t.attach(c, Counted(drops.clone())).is_ok());
        assert_eq!(t.len(), 1);
        assert!(t.release(c).is_some());
        assert_eq!(drops.load(Ordering::SeqCst), 4);
        assert!(t.is_empty() && t.guarded().is_empty());
    }

    #[test]
    fn queued_requests_are_answered_by_update_with_their_waiters() {
        let drops = Arc::new(AtomicUsize::new(0));
        let t: GrantTable<Counted, u8> = GrantTable::new();
        let s = t.session();
        let x = granted(t.request(s, 1, 0, Access::Exclusive, SERVING, 10));
        assert!(t.attach(x, Counted(drops.clone())).is_ok());
        assert!(matches!(
            t.request(s, 2, 0, Access::Shared, SERVING, 20),
            Requested::Queued
        ));
        assert!(matches!(
            t.request(s, 3, 1, Access::Shared, SERVING, 30),
            Requested::Answered(Answer::Granted { .. }, 30)
        ));
        assert_eq!(t.waiting(), 1);
        assert!(t.update(0, SERVING).is_empty(), "still locked");
        assert_eq!(t.release(x), Some(0));
        let answers = t.update(0, SERVING);
        assert!(matches!(
            answers.as_slice(),
            [(Answer::Granted { epoch: 3, .. }, 20)]
        ));
        assert_eq!(t.waiting(), 0);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_new_epoch_revokes_grants_and_drops_their_guards() {
        let drops = Arc::new(AtomicUsize::new(0));
        let t: GrantTable<Counted, u8> = GrantTable::new();
        let s = t.session();
        let a = granted(t.request(s, 1, 0, Access::Exclusive, SERVING, 0));
        assert!(t.attach(a, Counted(drops.clone())).is_ok());
        assert!(matches!(
            t.request(s, 2, 0, Access::Shared, SERVING, 7),
            Requested::Queued
        ));
        let stepped_down = PrimaryFacts {
            serving_primary: false,
            ..SERVING
        };
        let answers = t.update(0, stepped_down);
        assert!(matches!(
            answers.as_slice(),
            [(Answer::Refused(Refusal::NotServing), 7)]
        ));
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the revoked guard is dropped"
        );
        assert!(t.is_empty() && t.guarded().is_empty());
        assert_eq!(t.release(a), None, "a late release finds nothing");
    }

    #[test]
    fn published_gives_the_grant_facts_of_one_picture() {
        let p = Published::new(2, HaMode::ActiveActiveShared);
        let here = LunFacts {
            epoch: 5,
            ..facts(true, Some(1))
        };
        p.publish([(1, here)], true, status());
        assert_eq!(
            p.primary_facts(1),
            PrimaryFacts {
                serving_primary: true,
                epoch: 5,
                peer_connected: true
            }
        );
        assert_eq!(
            p.secondary_facts(1),
            SecondaryFacts {
                epoch: 5,
                connected: true
            }
        );
        assert!(!p.primary_facts(9).serving_primary, "not under HA");
    }
}
