//! Mode 1's grant exchange in the model, driven by core's own [`duet_core::ha::grant`] state
//! machines: each controller has a [`Grantor`](duet_core::ha::Grantor) (its side as primary)
//! and a [`Grantee`](duet_core::ha::Grantee) (its side as secondary), fed from its `Node`'s facts.
//!
//! A client command sent to a mode 1 secondary waits there ([`crate::state::Asked`]) while the
//! secondary asks the primary for a grant over the model's link, where the request, the answer
//! and the release are lost, duplicated, reordered and cut like every other message. With the
//! grant the secondary starts the command at once (if the grant is still good: its current link
//! session and epoch): a write is queued to the backend holding the grant and lands whenever the
//! checker says, then the grant is released; a read reads the register and releases. A refusal
//! or a lost link fails the command, and the client retries on the other path. A client that
//! times out aborts its command where it waits for a grant (nothing of it has started); a grant
//! that comes later is released unused. (Without this abort the late grant would run a write the
//! client gave up on after newer acknowledged ones: the checker finds that trace.)
//!
//! (The link session's end and the grantor's reaction to its node's facts are plumbing every step
//! shares: [`crate::model`].)
//!
//! The lock is the LUN's one lock, as in the runtime: the model's writes take it exclusively
//! (on its one block a write excludes every other), its reads through the secondary take it
//! shared. Reads at the primary take no lock: they are atomic in the model.

use crate::model::ClusterModel;
use crate::options::LUN;
use crate::state::{Asked, ClusterState, Lock, Msg, PendingWrite};
use duet_core::ha::grant::{Access, GrantMsg, PrimaryFacts, Received, SecondaryFacts, Start};
use stateright::semantics::register::RegisterRet;
use stateright::semantics::ConsistencyTester;

impl ClusterModel {
    /// Client `client` gave up its command: a secondary that still waits for the command's grant
    /// aborts it (a grant that comes later is released unused).
    pub(crate) fn abort_asks(s: &mut ClusterState, client: u8) {
        for c in s.ctl.iter_mut() {
            let (gone, kept): (Vec<Asked>, Vec<Asked>) =
                c.asks.iter().partition(|a| a.client == client);
            for a in gone {
                c.grantee.forget(a.req);
            }
            c.asks = kept;
        }
    }

    /// Secondary `n` asks its primary for a grant for a client's command (`value`: a write).
    pub(crate) fn ask(&self, s: &mut ClusterState, n: usize, mut a: Asked) {
        let access = if a.value.is_some() {
            Access::Exclusive
        } else {
            Access::Shared
        };
        a.req = s.ctl[n].grantee.ask(LUN, access);
        s.ctl[n].asks.push(a);
        let m = GrantMsg::Request {
            req: a.req,
            lun: LUN,
            access,
        };
        self.send(s, n, Msg::Grant(m));
    }

    /// Controller `to` receives a message of the grant exchange.
    pub(crate) fn on_grant_msg(&self, s: &mut ClusterState, to: usize, m: GrantMsg) {
        match m {
            GrantMsg::Request { req, lun, access } => {
                let Some(node) = &s.ctl[to].node else {
                    return;
                };
                let facts = PrimaryFacts::of(node, lun);
                let g = &mut s.ctl[to].grantor;
                let session = g.session();
                if let Some(answer) = g.request(session, req, lun, access, facts) {
                    self.send(s, to, Msg::Grant(GrantMsg::Answer { req, answer }));
                }
            }
            GrantMsg::Release { grant } => {
                s.ctl[to].grantor.release(grant);
                self.grant_update(s, to);
            }
            GrantMsg::Answer { req, answer } => {
                let received = s.ctl[to].grantee.on_answer(req, answer);
                let asked = s.ctl[to].asks.iter().position(|a| a.req == req);
                let asked = asked.map(|i| s.ctl[to].asks.remove(i));
                match (received, asked) {
                    (Received::Granted(ticket), Some(a)) => {
                        let Some(node) = &s.ctl[to].node else {
                            return;
                        };
                        let facts = SecondaryFacts::of(node, LUN);
                        match s.ctl[to].grantee.start(ticket, facts) {
                            Start::Go => match a.value {
                                Some(value) => s.ctl[to].writes.push(PendingWrite {
                                    client: a.client,
                                    op: a.op,
                                    attempt: a.attempt,
                                    value,
                                    lock: Lock::Grant(ticket),
                                }),
                                None => {
                                    Self::complete_read(s, a);
                                    if let Some(grant) = s.ctl[to].grantee.finished(ticket) {
                                        self.send(s, to, Msg::Grant(GrantMsg::Release { grant }));
                                    }
                                }
                            },
                            Start::Denied { release, .. } => {
                                if release {
                                    let grant = ticket.grant;
                                    self.send(s, to, Msg::Grant(GrantMsg::Release { grant }));
                                }
                                Self::fail_attempt(s, a.client, a.op, a.attempt);
                            }
                        }
                    }
                    (Received::Refused(_), Some(a)) => {
                        Self::fail_attempt(s, a.client, a.op, a.attempt)
                    }
                    (Received::Unwanted(grant), _) => {
                        self.send(s, to, Msg::Grant(GrantMsg::Release { grant }))
                    }
                    _ => {}
                }
            }
        }
    }

    /// A read under a grant returns the register's value to its client, if it still waits.
    fn complete_read(s: &mut ClusterState, a: Asked) {
        let ci = a.client as usize;
        if let Some(cl) = s.clients.get(ci).copied() {
            if cl.waiting && cl.op == a.op && cl.attempt == a.attempt {
                let _ = s
                    .history
                    .on_return(a.client, RegisterRet::ReadOk(s.backend));
                Self::next_op(&mut s.clients[ci]);
            }
        }
    }

    /// A write of controller `n` holding `lock` has landed: the lock is given back.
    pub(crate) fn write_landed(&self, s: &mut ClusterState, n: usize, lock: Lock) {
        match lock {
            Lock::None => {}
            Lock::Local(id) => {
                s.ctl[n].grantor.end_local(id);
                self.grant_update(s, n);
            }
            Lock::Grant(ticket) => {
                if let Some(grant) = s.ctl[n].grantee.finished(ticket) {
                    self.send(s, n, Msg::Grant(GrantMsg::Release { grant }));
                }
            }
        }
    }
}
