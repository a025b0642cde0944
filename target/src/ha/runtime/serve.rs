//! The primary's side of forwarding: it runs what its peer forwards (phase 1, the medium phase
//! in place or on the blocking pool) and, in mode 1, lends the peer the LU's I/O lock and a pass
//! through its fencing gate (a grant) while the peer runs the plan on the shared backend.
//! Touches the LUs through [`crate::exec`].

use std::sync::Arc;

use bytes::Bytes;

use duet_core::iscsi::Completion;
use duet_core::scsi::{IoPlan, Prepared, ResetKind};
use duet_core::sense::SenseCode;

use super::super::proto::{PeerReply, PeerRequest};
use super::{Grant, HaRuntime};
use crate::exec::{
    after_command, check, completion_of, io_guard, prepare_local, run_inline, run_medium,
    try_io_guard, IoGuard,
};
use crate::lu::Lu;

/// A forwarded request that has to wait: for the blocking pool, or for the LU's I/O lock.
pub(super) enum Unfinished {
    Medium {
        lu: Arc<Lu>,
        plan: IoPlan,
        data: Bytes,
    },
    Grant {
        lu: Arc<Lu>,
        plan: IoPlan,
    },
}

impl HaRuntime {
    /// The primary's side of a forwarded request, as far as it goes without waiting: phase 1,
    /// and the medium phase when it [never waits](crate::exec::never_waits). What must wait
    /// (the blocking pool, a contended I/O lock) comes back as [`Unfinished`].
    pub(super) fn serve_now(
        self: &Arc<Self>,
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
                        Ok(done(completion_of(o)))
                    }
                    Prepared::Io(plan) if plan_only => match try_io_guard(&lu, &plan) {
                        Some(guard) => Ok(self.grant(&lu, plan, guard, session)),
                        None => Err(Unfinished::Grant { lu, plan }),
                    },
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

    /// The rest of a forwarded request that [`HaRuntime::serve_now`] could not finish.
    pub(super) async fn serve_later(self: &Arc<Self>, rest: Unfinished, session: u64) -> PeerReply {
        match rest {
            Unfinished::Medium { lu, plan, data } => done(run_medium(lu, plan, data).await),
            Unfinished::Grant { lu, plan } => {
                let guard = io_guard(&lu, &plan).await;
                self.grant(&lu, plan, guard, session)
            }
        }
    }

    /// Lends the peer (mode 1) the LU's I/O lock and a pass through its fencing gate for `plan`,
    /// until it releases the grant.
    fn grant(&self, lu: &Lu, plan: IoPlan, guard: IoGuard, session: u64) -> PeerReply {
        let Some(pass) = lu.gate.enter() else {
            return done(check(SenseCode::ALUA_TRANSITIONING));
        };
        match self.grants.insert(
            session,
            Grant {
                _guard: guard,
                _pass: pass,
            },
        ) {
            Ok(grant) => PeerReply::Plan { grant, plan },
            Err(e) => PeerReply::Unavailable {
                reason: e.to_string(),
            },
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
