//! The primary's side of forwarding: it runs what its peer forwards (phase 1, the medium phase
//! in place or on the blocking pool) and, in mode 1, lends the peer the LU's I/O lock and a pass
//! through its fencing gate (a grant) while the peer runs the plan on the shared backend.
//! Touches the LUs through [`crate::exec`].
//!
//! Whether, when and at which epoch a grant is given, queued, refused or revoked is decided by
//! core's [`Grantor`](duet_core::ha::Grantor) (in [`GrantTable`](super::super::tables::GrantTable));
//! this file only carries its answers out: it takes the real guards for a grant and replies.
//!
//! **The primary's own I/O and the grantor.** The primary's own medium phase does not tell the
//! grantor ([`Grantor::begin_local`](duet_core::ha::Grantor::begin_local) is not used): the LU's
//! real I/O lock alone orders it against the peer's grants, because a grant is lent to the peer
//! only once its real guard is taken ([`HaRuntime::lend`]; if the primary's own I/O holds the
//! lock, the reply waits for it in [`HaRuntime::serve_later`]) and the guard is kept until the
//! grant is released or revoked. So the peer never runs a plan while a conflicting local I/O
//! runs, and a local I/O waits for the conflicting grants to end. The grantor's own lock orders
//! the grants among themselves (and queues them), which the real lock would also do; what only
//! the grantor knows is the rule: link session, epoch, serving and connected.

use std::sync::Arc;

use bytes::Bytes;

use duet_core::ha::grant::{Access, Answer, GrantId};
use duet_core::iscsi::Completion;
use duet_core::scsi::{IoPlan, Prepared, ResetKind};
use duet_core::sense::SenseCode;
use duet_core::LunNumber;

use super::super::link::Channel;
use super::super::proto::{LinkMsg, PeerReply, PeerRequest};
use super::super::tables::Requested;
use super::{Grant, HaRuntime};
use crate::exec::{
    after_command, check, completion_of, io_guard, port_group_to_activate, prepare_local,
    run_inline, run_medium, try_io_guard, IoGuard,
};
use crate::lu::Lu;

/// A mode-1 grant request as the primary keeps it until it is answered: the link request to
/// reply to, the peer's grant request id, and the plan to lend the lock for.
pub(super) struct GrantWaiter {
    /// The link request's id (the reply goes to it).
    id: u64,
    /// The peer's grant request id (`Grantee::ask`).
    ask: u64,
    lu: Arc<Lu>,
    plan: IoPlan,
}

/// A forwarded request that has to wait: for the blocking pool, for the LU's I/O lock held by
/// the primary's own I/O (a grant given), or for the grantor (queued: answered by
/// [`HaRuntime::update_grants`]).
pub(super) enum Unfinished {
    Medium {
        lu: Arc<Lu>,
        plan: IoPlan,
        data: Bytes,
    },
    Grant {
        grant: GrantId,
        epoch: u64,
        waiter: GrantWaiter,
    },
    Queued,
    /// An accepted SET TARGET PORT GROUPS: answered once the LUN has moved (or could not).
    PortGroups {
        lu: Arc<Lu>,
        group: u16,
        good: Completion,
    },
}

impl HaRuntime {
    /// The primary's side of a forwarded request, as far as it goes without waiting: phase 1,
    /// and the medium phase when it [never waits](crate::exec::never_waits). What must wait
    /// (the blocking pool, a contended I/O lock) comes back as [`Unfinished`].
    pub(super) fn serve_now(
        self: &Arc<Self>,
        id: u64,
        req: PeerRequest,
        session: u64,
    ) -> Result<PeerReply, Unfinished> {
        let unavailable = |reason: &str| PeerReply::Unavailable {
            reason: reason.to_string(),
        };
        match req {
            PeerRequest::Execute {
                lun,
                nexus,
                cdb,
                data_out,
                data_len,
                plan_only,
                ask,
            } => {
                let Some((target, lu)) = self.luns.get(&lun).cloned() else {
                    return Ok(unavailable("no such LUN"));
                };
                if !self.serving(lun) {
                    return Ok(unavailable("not primary"));
                }
                let data = if data_out.len() as u64 == u64::from(data_len) {
                    data_out
                } else {
                    // Mode 1 bulk write: phase 1 only needs the length.
                    Bytes::from(vec![0u8; data_len as usize])
                };
                match prepare_local(&target, &lu, &nexus, &cdb, &data) {
                    Prepared::Done(o) => {
                        after_command(&**self, &lu, &cdb, &o.effects);
                        if let Some(group) = port_group_to_activate(&o.effects) {
                            let good = completion_of(o);
                            return Err(Unfinished::PortGroups { lu, group, good });
                        }
                        Ok(done(completion_of(o)))
                    }
                    Prepared::Io(plan) if plan_only => {
                        // The I/O lock's mode the plan needs (see `exec::io_guard`).
                        let access = if plan.needs_exclusive() {
                            Access::Exclusive
                        } else {
                            Access::Shared
                        };
                        let facts = self.published.primary_facts(lun);
                        let waiter = GrantWaiter { id, ask, lu, plan };
                        match self
                            .grants
                            .request(session, ask, lun, access, facts, waiter)
                        {
                            Requested::Answered(answer, waiter) => {
                                self.answer_grant(answer, waiter)
                            }
                            Requested::Queued => Err(Unfinished::Queued),
                        }
                    }
                    Prepared::Io(plan) => match run_inline(&lu, &plan, &data) {
                        Some(c) => Ok(done(c)),
                        None => Err(Unfinished::Medium { lu, plan, data }),
                    },
                }
            }
            PeerRequest::Reset { lun, cold } => {
                if let Some((_, lu)) = self.luns.get(&lun) {
                    lu.lock().reset(if cold {
                        ResetKind::TargetCold
                    } else {
                        ResetKind::LunReset
                    });
                }
                Ok(PeerReply::Ack)
            }
            PeerRequest::NexusLost { lun, nexus } => {
                if let Some((_, lu)) = self.luns.get(&lun) {
                    lu.lock().nexus_lost(&nexus);
                }
                Ok(PeerReply::Ack)
            }
        }
    }

    /// The rest of a forwarded request that [`HaRuntime::serve_now`] could not finish (`None`:
    /// queued, the grantor answers it later).
    pub(super) async fn serve_later(self: &Arc<Self>, rest: Unfinished) -> Option<PeerReply> {
        match rest {
            Unfinished::Medium { lu, plan, data } => Some(done(run_medium(lu, plan, data).await)),
            Unfinished::Grant {
                grant,
                epoch,
                waiter,
            } => {
                let guard = io_guard(&waiter.lu, &waiter.plan).await;
                Some(self.lend(grant, epoch, waiter, guard))
            }
            Unfinished::Queued => None,
            Unfinished::PortGroups { lu, group, good } => {
                Some(done(self.stpg_outcome(&lu, group, good).await))
            }
        }
    }

    /// Carries out the grantor's answer to a grant request: a refusal is answered as an
    /// unavailable primary (the peer answers Transitioning); a grant is lent once its guard is
    /// taken (at once, or after the primary's own I/O that holds the lock).
    fn answer_grant(
        self: &Arc<Self>,
        answer: Answer,
        waiter: GrantWaiter,
    ) -> Result<PeerReply, Unfinished> {
        match answer {
            Answer::Refused(r) => Ok(PeerReply::Unavailable {
                reason: r.name().to_string(),
            }),
            Answer::Granted { grant, epoch } => match try_io_guard(&waiter.lu, &waiter.plan) {
                Some(guard) => Ok(self.lend(grant, epoch, waiter, guard)),
                None => Err(Unfinished::Grant {
                    grant,
                    epoch,
                    waiter,
                }),
            },
        }
    }

    /// Lends the peer (mode 1) the LU's I/O lock and a pass through its fencing gate for grant
    /// `grant`, until it releases it. A closed gate, or a grant the grantor no longer holds
    /// (revoked, or the link dropped while the guard was awaited), is answered Transitioning.
    fn lend(
        self: &Arc<Self>,
        grant: GrantId,
        epoch: u64,
        waiter: GrantWaiter,
        guard: IoGuard,
    ) -> PeerReply {
        let GrantWaiter { ask, lu, plan, .. } = waiter;
        let Some(pass) = lu.gate.enter() else {
            drop(guard);
            if let Some(lun) = self.grants.release(grant) {
                self.update_grants(lun);
            }
            return done(check(SenseCode::ALUA_TRANSITIONING));
        };
        let held = Grant {
            _guard: guard,
            _pass: pass,
        };
        match self.grants.attach(grant, held) {
            Ok(()) => PeerReply::Plan {
                ask,
                grant,
                epoch,
                plan,
            },
            Err(held) => {
                drop(held);
                PeerReply::Unavailable {
                    reason: "grant revoked".to_string(),
                }
            }
        }
    }

    /// After a step of the node, a release or a refused lend: lets the grantor revoke what no
    /// longer holds and answer the requests waiting for `lun`, and sends those answers.
    pub(super) fn update_grants(self: &Arc<Self>, lun: LunNumber) {
        let facts = self.published.primary_facts(lun);
        for (answer, waiter) in self.grants.update(lun, facts) {
            let id = waiter.id;
            match self.answer_grant(answer, waiter) {
                Ok(reply) => self.send(Channel::Data, LinkMsg::Reply { id, reply }),
                Err(rest) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = me.serve_later(rest).await {
                            me.send(Channel::Data, LinkMsg::Reply { id, reply });
                        }
                    });
                }
            }
        }
    }
}

fn done(c: Completion) -> PeerReply {
    PeerReply::Done {
        status: c.status,
        sense: c.sense,
        data_in: c.data_in,
        wanted_len: c.wanted_len,
    }
}
