//! Mode 1's grant protocol (Active/Active on a shared disk), both sides, as pure state machines.
//!
//! In `ha_mode` 1 the secondary runs host commands on the shared backend itself, but only under
//! a *grant* from the primary. The exchange, over the HA link:
//!
//! 1. The secondary asks ([`Grantee::ask`]): a request id, the LUN and the [`Access`] its
//!    medium phase needs. (In the runtime the request carries the command, and the primary runs
//!    phase 1 on it: CDB checks, reservations, task ordering.)
//! 2. The primary decides ([`Grantor::request`]): it grants only while it serves the LUN as
//!    primary at some epoch `E`, not suspended, with the peer connected ([`PrimaryFacts`]), and
//!    only for a request of the current link session. Otherwise it refuses with a [`Refusal`]
//!    (the runtime answers the command with ALUA Transitioning, and the host retries). A grant
//!    holds the LUN's lock ([`Access`]) until it is released or revoked; a request whose lock is
//!    taken waits in the grantor's queue, in arrival order.
//! 3. The secondary checks the grant when it is about to start the medium phase
//!    ([`Grantee::start`]): it starts only a grant it holds for its current link session and the
//!    epoch it knows now, connected to the primary. Once started, the I/O may still land even
//!    after the link or the epoch has moved on: that is why the primary, on link loss, suspends
//!    I/O until it has fenced the secondary (core [`Node`]).
//! 4. When the I/O has completed the secondary releases the grant ([`Grantee::finished`], then
//!    [`Grantor::release`]). A release is applied once; a second or late one finds nothing.
//!
//! **Revocation.** On link loss ([`Grantor::link_down`]) the primary drops every grant and every
//! queued request, and starts a new link session: an answer prepared for a request of the old
//! session is refused ([`Refusal::StaleSession`]) instead of held for a peer that will never
//! release it. When the primary steps down, is suspended or moves to another epoch
//! ([`Grantor::update`]), the grants of the old epoch are dropped too: they no longer order
//! anything, because before a controller serves at a newer epoch it fences the peer whose
//! granted I/O might still land.
//!
//! **The lock's granularity.** The runtime has no block-range lock: each LU has one I/O lock
//! (a reader-writer lock) that plain reads and writes take shared and read-modify-writes
//! (COMPARE AND WRITE, ORWRITE) take exclusively; the ordering of overlapping commands is phase
//! 1's (task attributes), not the lock's. This module models exactly that: one lock per LUN,
//! [`Access::Shared`] or [`Access::Exclusive`], held by grants and by the primary's own I/O
//! ([`Grantor::begin_local`]). A caller that wants a command to exclude every other on the LUN
//! (as the model does for its one-block writes) asks for [`Access::Exclusive`].
//!
//! Pure and deterministic: inputs in, answers out; no I/O, clocks or randomness. The runtime
//! keeps the real guards (the I/O lock, the fencing gate's pass) keyed by [`GrantId`].
//!
//! [`Node`]: super::Node

use std::collections::BTreeMap;

use super::node::Node;
use super::types::LunNumber;

/// A grant's id, unique on one primary for as long as it runs (ids are never reused, also across
/// link sessions).
pub type GrantId = u64;

/// How a command uses the LUN's I/O lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Plain reads and writes: shared with each other.
    Shared,
    /// Read-modify-writes: alone on the LUN.
    Exclusive,
}

impl Access {
    /// Whether two holders of the lock with these accesses exclude each other.
    pub fn conflicts(self, other: Access) -> bool {
        self == Access::Exclusive || other == Access::Exclusive
    }
}

/// What the grantor needs to know of its node about one LUN, as of the node's last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PrimaryFacts {
    /// The node is primary for the LUN and not suspended.
    pub serving_primary: bool,
    /// The node's epoch for the LUN.
    pub epoch: u64,
    /// The pair is formed: the link is up and the peer logged in (link state 2).
    pub peer_connected: bool,
}

impl PrimaryFacts {
    /// The facts of `node` about `lun`.
    pub fn of(node: &Node, lun: LunNumber) -> PrimaryFacts {
        PrimaryFacts {
            serving_primary: node.is_primary(lun) && node.serving(lun),
            epoch: node.epoch(lun),
            peer_connected: node.link_state() == 2,
        }
    }
}

/// What the grantee needs to know of its node about one LUN, as of the node's last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SecondaryFacts {
    /// The newest epoch the node knows for the LUN.
    pub epoch: u64,
    /// The pair is formed: the link is up and the peer logged in (link state 2).
    pub connected: bool,
}

impl SecondaryFacts {
    /// The facts of `node` about `lun`.
    pub fn of(node: &Node, lun: LunNumber) -> SecondaryFacts {
        SecondaryFacts {
            epoch: node.epoch(lun),
            connected: node.link_state() == 2,
        }
    }
}

/// Why a grant was refused or could not be used. Every reason means "not now, try again
/// (elsewhere)": the runtime answers the command with ALUA Transitioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The primary does not serve the LUN (not primary, or suspended), or has moved to another
    /// epoch since the grant.
    NotServing,
    /// The peer is not connected.
    LinkDown,
    /// The request (or the grant) belongs to a link session that has ended.
    StaleSession,
}

impl Refusal {
    /// The reason in words.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotServing => "not serving as primary",
            Refusal::LinkDown => "HA link down",
            Refusal::StaleSession => "link session ended",
        }
    }
}

/// The primary's answer to a grant request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// Run the medium phase under grant `grant`, given at `epoch`, then release it.
    Granted { grant: GrantId, epoch: u64 },
    /// Not granted.
    Refused(Refusal),
}

/// The grant exchange's messages, as a model (or a runtime) carries them over the HA link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantMsg {
    /// Secondary to primary: request `req` for `lun` with `access`.
    Request {
        req: u64,
        lun: LunNumber,
        access: Access,
    },
    /// Primary to secondary: the answer to request `req`.
    Answer { req: u64, answer: Answer },
    /// Secondary to primary: the I/O under `grant` has completed.
    Release { grant: GrantId },
}

/// A grant the primary holds for the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    pub lun: LunNumber,
    pub access: Access,
    /// The epoch the primary served at when it granted.
    pub epoch: u64,
}

/// A request waiting for the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Queued {
    req: u64,
    lun: LunNumber,
    access: Access,
}

/// The primary's side: grants held for the peer, the primary's own I/O on the same locks, and
/// requests waiting for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Grantor {
    session: u64,
    next_grant: GrantId,
    next_local: u64,
    grants: BTreeMap<GrantId, Held>,
    local: BTreeMap<u64, (LunNumber, Access)>,
    queued: Vec<Queued>,
}

impl Grantor {
    /// No grants, link session 0.
    pub fn new() -> Grantor {
        Grantor::default()
    }

    /// The current link session: a request handler reads it when the request arrives and names
    /// it to [`Grantor::request`].
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether a holder with `access` on `lun` would conflict with a grant or local I/O.
    fn taken(&self, lun: LunNumber, access: Access) -> bool {
        self.grants
            .values()
            .any(|g| g.lun == lun && g.access.conflicts(access))
            || self
                .local
                .values()
                .any(|&(l, a)| l == lun && a.conflicts(access))
    }

    /// Whether the facts allow granting at all, or why not.
    fn admissible(facts: PrimaryFacts) -> Result<(), Refusal> {
        if !facts.serving_primary {
            Err(Refusal::NotServing)
        } else if !facts.peer_connected {
            Err(Refusal::LinkDown)
        } else {
            Ok(())
        }
    }

    fn grant(&mut self, lun: LunNumber, access: Access, epoch: u64) -> Answer {
        self.next_grant += 1;
        let grant = self.next_grant;
        self.grants.insert(grant, Held { lun, access, epoch });
        Answer::Granted { grant, epoch }
    }

    /// Request `req` of link session `session` for `lun` with `access`. Answers at once, or
    /// `None`: the lock is taken (or an earlier request waits for it), and the request waits for
    /// [`Grantor::update`].
    pub fn request(
        &mut self,
        session: u64,
        req: u64,
        lun: LunNumber,
        access: Access,
        facts: PrimaryFacts,
    ) -> Option<Answer> {
        if session != self.session {
            return Some(Answer::Refused(Refusal::StaleSession));
        }
        if let Err(r) = Self::admissible(facts) {
            return Some(Answer::Refused(r));
        }
        let behind = self
            .queued
            .iter()
            .any(|q| q.lun == lun && q.access.conflicts(access));
        if behind || self.taken(lun, access) {
            self.queued.push(Queued { req, lun, access });
            return None;
        }
        Some(self.grant(lun, access, facts.epoch))
    }

    /// The peer released `grant`. Returns whether it was held (a second release, or one after
    /// [`Grantor::link_down`] or a revocation, finds nothing). Call [`Grantor::update`] next:
    /// waiting requests may now be granted.
    pub fn release(&mut self, grant: GrantId) -> bool {
        self.grants.remove(&grant).is_some()
    }

    /// The primary's own I/O on `lun` with `access` begins, if the lock is free of grants and of
    /// other local I/O that conflict: returns its id for [`Grantor::end_local`], or `None` (the
    /// I/O waits).
    pub fn begin_local(&mut self, lun: LunNumber, access: Access) -> Option<u64> {
        if self.taken(lun, access) {
            return None;
        }
        self.next_local += 1;
        self.local.insert(self.next_local, (lun, access));
        Some(self.next_local)
    }

    /// Whether [`Grantor::begin_local`] would let the I/O begin now.
    pub fn may_begin_local(&self, lun: LunNumber, access: Access) -> bool {
        !self.taken(lun, access)
    }

    /// The primary's own I/O `id` has completed. Call [`Grantor::update`] next.
    pub fn end_local(&mut self, id: u64) -> bool {
        self.local.remove(&id).is_some()
    }

    /// The link went down: every grant and waiting request is dropped and the link session
    /// ends. Returns how many grants were dropped.
    pub fn link_down(&mut self) -> usize {
        self.session += 1;
        self.queued.clear();
        std::mem::take(&mut self.grants).len()
    }

    /// After the node's step (or a release, or the end of local I/O): revokes the grants of
    /// `lun` that no longer order anything (the node no longer serves it, or serves it at another
    /// epoch), refuses the waiting requests of `lun` if the node may not grant, and grants those
    /// whose lock is free now, in order. Returns the answers to send, by request id.
    pub fn update(&mut self, lun: LunNumber, facts: PrimaryFacts) -> Vec<(u64, Answer)> {
        self.grants
            .retain(|_, g| g.lun != lun || (facts.serving_primary && g.epoch == facts.epoch));
        let mut out = Vec::new();
        let waiting = std::mem::take(&mut self.queued);
        for q in waiting {
            if q.lun != lun {
                self.queued.push(q);
                continue;
            }
            if let Err(r) = Self::admissible(facts) {
                out.push((q.req, Answer::Refused(r)));
                continue;
            }
            let behind = self
                .queued
                .iter()
                .any(|w| w.lun == lun && w.access.conflicts(q.access));
            if behind || self.taken(lun, q.access) {
                self.queued.push(q);
            } else {
                out.push((q.req, self.grant(lun, q.access, facts.epoch)));
            }
        }
        out
    }

    /// The grants held, by id.
    pub fn grants(&self) -> impl Iterator<Item = (GrantId, &Held)> + '_ {
        self.grants.iter().map(|(&id, g)| (id, g))
    }

    /// How many grants were given so far (the next grant's id is one more).
    pub fn granted(&self) -> u64 {
        self.next_grant
    }

    /// How many requests wait for the lock.
    pub fn waiting(&self) -> usize {
        self.queued.len()
    }

    /// Whether the primary's own I/O is in progress.
    pub fn local_busy(&self) -> bool {
        !self.local.is_empty()
    }
}

/// A grant as the secondary knows it: the grant id and the secondary's link session when it
/// arrived (a restarted primary numbers its grants from 1 again, so an id alone is not unique).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket {
    pub session: u64,
    pub grant: GrantId,
}

/// A grant the secondary holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holding {
    pub lun: LunNumber,
    /// The epoch of the grant.
    pub epoch: u64,
    /// The medium phase has started (its I/O may land whatever happens next).
    pub started: bool,
}

/// What the secondary does with an answer from the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Received {
    /// A grant for a request it waits for: start the medium phase ([`Grantee::start`]).
    Granted(Ticket),
    /// A refusal of a request it waits for: the command fails (the host retries).
    Refused(Refusal),
    /// A grant nobody waits for (its request was given up): release it at once.
    Unwanted(GrantId),
    /// A copy of an answer already received: nothing to do.
    Duplicate,
}

/// Whether the secondary may start the medium phase under a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Start {
    /// Start now; release with [`Grantee::finished`] once the I/O has completed.
    Go,
    /// Not allowed: the grant is dropped, and the command fails. `release`: tell the primary
    /// (the grant is of the current session).
    Denied { reason: Refusal, release: bool },
}

/// The secondary's side: requests sent, grants held.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Grantee {
    session: u64,
    next_req: u64,
    asked: BTreeMap<u64, (LunNumber, Access)>,
    held: BTreeMap<Ticket, Holding>,
}

impl Grantee {
    /// No requests, link session 0.
    pub fn new() -> Grantee {
        Grantee::default()
    }

    /// A new request for `lun` with `access`: returns its id, to send to the primary.
    pub fn ask(&mut self, lun: LunNumber, access: Access) -> u64 {
        self.next_req += 1;
        self.asked.insert(self.next_req, (lun, access));
        self.next_req
    }

    /// The request `req` is given up (e.g. it could not be sent): a grant for it will be
    /// released as [`Received::Unwanted`].
    pub fn forget(&mut self, req: u64) -> bool {
        self.asked.remove(&req).is_some()
    }

    /// The primary's answer to request `req` arrived.
    pub fn on_answer(&mut self, req: u64, answer: Answer) -> Received {
        match answer {
            Answer::Granted { grant, epoch } => {
                let ticket = Ticket {
                    session: self.session,
                    grant,
                };
                if self.held.contains_key(&ticket) {
                    return Received::Duplicate;
                }
                let Some((lun, _)) = self.asked.remove(&req) else {
                    return Received::Unwanted(grant);
                };
                self.held.insert(
                    ticket,
                    Holding {
                        lun,
                        epoch,
                        started: false,
                    },
                );
                Received::Granted(ticket)
            }
            Answer::Refused(r) => match self.asked.remove(&req) {
                Some(_) => Received::Refused(r),
                None => Received::Duplicate,
            },
        }
    }

    /// The medium phase under `grant` is about to start: allowed only for a grant held, not yet
    /// started, of the current link session, at the epoch the node knows now, while connected.
    pub fn start(&mut self, ticket: Ticket, facts: SecondaryFacts) -> Start {
        let current = ticket.session == self.session;
        let Some(h) = self.held.get_mut(&ticket) else {
            return Start::Denied {
                reason: Refusal::StaleSession,
                release: false,
            };
        };
        let reason = if h.started || !current {
            Some(Refusal::StaleSession)
        } else if !facts.connected {
            Some(Refusal::LinkDown)
        } else if facts.epoch != h.epoch {
            Some(Refusal::NotServing)
        } else {
            None
        };
        match reason {
            None => {
                h.started = true;
                Start::Go
            }
            Some(reason) => {
                // A started grant stays until its I/O completes.
                if !h.started {
                    self.held.remove(&ticket);
                }
                Start::Denied {
                    reason,
                    release: current && reason != Refusal::StaleSession,
                }
            }
        }
    }

    /// The I/O under `grant` has completed: the grant is given back. Returns it if the primary
    /// must be told ([`GrantMsg::Release`]): a grant of an ended link session was already dropped
    /// there.
    pub fn finished(&mut self, ticket: Ticket) -> Option<GrantId> {
        self.held.remove(&ticket)?;
        (ticket.session == self.session).then_some(ticket.grant)
    }

    /// The link went down: the link session ends, every request waiting for an answer is
    /// cancelled (returned: their commands fail and the hosts retry), and every grant not yet
    /// started is dropped (returned likewise). Started grants stay until their I/O completes;
    /// no release is sent for them.
    pub fn link_down(&mut self) -> (Vec<u64>, Vec<Ticket>) {
        self.session += 1;
        let asked = std::mem::take(&mut self.asked).into_keys().collect();
        let dropped: Vec<Ticket> = self
            .held
            .iter()
            .filter(|(_, h)| !h.started)
            .map(|(&g, _)| g)
            .collect();
        for g in &dropped {
            self.held.remove(g);
        }
        (asked, dropped)
    }

    /// Whether `req` waits for an answer.
    pub fn asking(&self, req: u64) -> bool {
        self.asked.contains_key(&req)
    }

    /// The grants held.
    pub fn held(&self) -> impl Iterator<Item = (Ticket, &Holding)> + '_ {
        self.held.iter().map(|(&t, h)| (t, h))
    }

    /// How many requests were asked so far (the next request's id is one more).
    pub fn requests(&self) -> u64 {
        self.next_req
    }

    /// The current link session.
    pub fn session(&self) -> u64 {
        self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVING: PrimaryFacts = PrimaryFacts {
        serving_primary: true,
        epoch: 3,
        peer_connected: true,
    };
    const UP: SecondaryFacts = SecondaryFacts {
        epoch: 3,
        connected: true,
    };

    fn granted(a: Option<Answer>) -> GrantId {
        match a {
            Some(Answer::Granted { grant, .. }) => grant,
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn grants_only_while_serving_and_connected() {
        let mut p = Grantor::new();
        let not_primary = PrimaryFacts {
            serving_primary: false,
            ..SERVING
        };
        let no_link = PrimaryFacts {
            peer_connected: false,
            ..SERVING
        };
        assert_eq!(
            p.request(0, 1, 0, Access::Shared, not_primary),
            Some(Answer::Refused(Refusal::NotServing))
        );
        assert_eq!(
            p.request(0, 2, 0, Access::Shared, no_link),
            Some(Answer::Refused(Refusal::LinkDown))
        );
        assert_eq!(
            p.request(0, 3, 0, Access::Shared, SERVING),
            Some(Answer::Granted { grant: 1, epoch: 3 })
        );
    }

    #[test]
    fn exclusive_waits_for_shared_and_local_io() {
        let mut p = Grantor::new();
        let g = granted(p.request(0, 1, 0, Access::Shared, SERVING));
        granted(p.request(0, 2, 0, Access::Shared, SERVING));
        assert_eq!(p.request(0, 3, 0, Access::Exclusive, SERVING), None);
        // A shared request behind a waiting exclusive one waits too (arrival order).
        assert_eq!(p.request(0, 4, 0, Access::Shared, SERVING), None);
        // Another LUN is another lock.
        granted(p.request(0, 5, 1, Access::Exclusive, SERVING));
        assert!(p.begin_local(0, Access::Exclusive).is_none());
        assert!(p.release(g));
        assert!(!p.release(g), "a second release finds nothing");
        assert!(p.update(0, SERVING).is_empty());
        assert!(p.release(2));
        let out = p.update(0, SERVING);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 3);
        assert_eq!(p.waiting(), 1);
        let Answer::Granted { grant, .. } = out[0].1 else {
            panic!("{out:?}")
        };
        p.release(grant);
        assert_eq!(p.update(0, SERVING).len(), 1);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn local_io_blocks_grants_until_it_ends() {
        let mut p = Grantor::new();
        let l = p.begin_local(0, Access::Exclusive).expect("free");
        assert_eq!(p.request(0, 1, 0, Access::Shared, SERVING), None);
        assert!(p.update(0, SERVING).is_empty());
        assert!(p.end_local(l));
        assert_eq!(p.update(0, SERVING).len(), 1);
        assert!(!p.may_begin_local(0, Access::Exclusive));
        assert!(p.may_begin_local(0, Access::Shared));
    }

    #[test]
    fn link_down_drops_grants_and_ends_the_session() {
        let mut p = Grantor::new();
        let s = p.session();
        let g = granted(p.request(s, 1, 0, Access::Exclusive, SERVING));
        assert_eq!(p.request(s, 2, 0, Access::Exclusive, SERVING), None);
        assert_eq!(p.link_down(), 1);
        assert_eq!(p.waiting(), 0);
        assert!(!p.release(g), "a late release is ignored");
        assert_eq!(
            p.request(s, 3, 0, Access::Shared, SERVING),
            Some(Answer::Refused(Refusal::StaleSession))
        );
        granted(p.request(p.session(), 4, 0, Access::Exclusive, SERVING));
    }

    #[test]
    fn a_new_epoch_or_a_step_down_revokes() {
        let mut p = Grantor::new();
        granted(p.request(0, 1, 0, Access::Exclusive, SERVING));
        assert_eq!(p.request(0, 2, 0, Access::Exclusive, SERVING), None);
        let stepped_down = PrimaryFacts {
            serving_primary: false,
            ..SERVING
        };
        assert_eq!(
            p.update(0, stepped_down),
            vec![(2, Answer::Refused(Refusal::NotServing))]
        );
        assert_eq!(p.grants().count(), 0);
        granted(p.request(0, 3, 0, Access::Exclusive, SERVING));
        let next = PrimaryFacts {
            epoch: 4,
            ..SERVING
        };
        p.update(0, next);
        assert_eq!(p.grants().count(), 0);
    }

    #[test]
    fn the_secondary_starts_only_current_grants() {
        let mut s = Grantee::new();
        let r = s.ask(0, Access::Exclusive);
        let a = Answer::Granted { grant: 7, epoch: 3 };
        let t7 = Ticket {
            session: 0,
            grant: 7,
        };
        assert_eq!(s.on_answer(r, a), Received::Granted(t7));
        assert_eq!(s.on_answer(r, a), Received::Duplicate);
        let newer = SecondaryFacts { epoch: 4, ..UP };
        assert_eq!(
            s.start(t7, newer),
            Start::Denied {
                reason: Refusal::NotServing,
                release: true
            }
        );
        let r = s.ask(0, Access::Exclusive);
        let Received::Granted(t8) = s.on_answer(r, Answer::Granted { grant: 8, epoch: 3 }) else {
            panic!("not granted")
        };
        assert_eq!(s.start(t8, UP), Start::Go);
        assert!(matches!(s.start(t8, UP), Start::Denied { .. }), "once");
        assert_eq!(s.finished(t8), Some(8));
        assert_eq!(s.finished(t8), None);
    }

    #[test]
    fn link_loss_cancels_requests_and_unstarted_grants() {
        let mut s = Grantee::new();
        let r1 = s.ask(0, Access::Shared);
        let r2 = s.ask(0, Access::Shared);
        let r3 = s.ask(0, Access::Shared);
        let t = |grant| Ticket { session: 0, grant };
        s.on_answer(r1, Answer::Granted { grant: 1, epoch: 3 });
        s.on_answer(r2, Answer::Granted { grant: 2, epoch: 3 });
        assert_eq!(s.start(t(1), UP), Start::Go);
        let (asked, dropped) = s.link_down();
        assert_eq!(asked, vec![r3]);
        assert_eq!(dropped, vec![t(2)]);
        assert!(matches!(
            s.start(t(2), UP),
            Start::Denied { release: false, .. }
        ));
        // The started I/O completes later; the primary already dropped its grant.
        assert_eq!(s.finished(t(1)), None);
        // A restarted primary numbers its grants from 1 again: not a duplicate.
        let r4 = s.ask(0, Access::Shared);
        assert_eq!(
            s.on_answer(r4, Answer::Granted { grant: 1, epoch: 4 }),
            Received::Granted(Ticket {
                session: 1,
                grant: 1
            })
        );
        // A late answer of the old session is unwanted: released at once.
        assert_eq!(
            s.on_answer(r3, Answer::Granted { grant: 9, epoch: 3 }),
            Received::Unwanted(9)
        );
        assert_eq!(
            s.on_answer(r3, Answer::Refused(Refusal::LinkDown)),
            Received::Duplicate
        );
    }
}
