//! Task management functions at the LU / target level (ABORT TASK SET, CLEAR TASK SET, LUN
//! RESET, TARGET WARM/COLD RESET): the reset on this controller's LUs, what other sessions on
//! the target are told ([`Sessions::broadcast`]), and which resets the HA primary must perform
//! too ([`Pair::resets_to_forward`]). Touches the LUs' SCSI state and the session registry.

use duet_core::LunNumber;
use std::sync::Arc;

use duet_core::iscsi::{TmfFunction, TmfRequest, TmfResponse};
use duet_core::scsi::ResetKind;

use super::pair::Pair;
use crate::lu::Target;
use crate::sessions::{ConnMsg, Sessions};

/// What a task management function did here, and what remains for the HA primary.
#[derive(Debug)]
pub struct Tmf {
    /// The response, once the primary has done its part (if any).
    pub resp: TmfResponse,
    /// LUNs whose reset the primary must also perform before the response goes out (HA; empty
    /// otherwise).
    pub peer_reset: Vec<LunNumber>,
    /// Whether that reset is a cold target reset.
    pub cold: bool,
}

impl Tmf {
    /// A response with nothing left for the primary.
    fn now(resp: TmfResponse) -> Tmf {
        Tmf {
            resp,
            peer_reset: Vec::new(),
            cold: false,
        }
    }
}

/// Carries out a task management function at the LU / target level.
pub fn task_management(
    target: Option<&Arc<Target>>,
    conn_id: u64,
    sessions: &Sessions,
    pair: &dyn Pair,
    req: &TmfRequest,
) -> Tmf {
    let Some(target) = target else {
        return Tmf::now(TmfResponse::Rejected);
    };
    let lun = req.lun.number();
    let lu = lun.and_then(|n| target.luns.get(&n)).cloned();
    match req.function {
        TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
            if lu.is_none() {
                return Tmf::now(TmfResponse::LunNotFound);
            }
            if req.function == TmfFunction::ClearTaskSet {
                sessions.broadcast(conn_id, &target.name, ConnMsg::AbortTasks(lun));
            }
            Tmf::now(TmfResponse::Complete)
        }
        TmfFunction::LunReset => {
            let Some(lu) = lu else {
                return Tmf::now(TmfResponse::LunNotFound);
            };
            tracing::info!(target = %target.name, lun = lu.number, "LUN reset");
            sessions.broadcast(conn_id, &target.name, ConnMsg::AbortTasks(lun));
            lu.lock().reset(ResetKind::LunReset);
            Tmf {
                resp: TmfResponse::Complete,
                peer_reset: pair.resets_to_forward(&[lu.number]),
                cold: false,
            }
        }
        TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => {
            let cold = req.function == TmfFunction::TargetColdReset;
            tracing::info!(target = %target.name, cold, "target reset");
            sessions.broadcast(
                conn_id,
                &target.name,
                if cold {
                    ConnMsg::Close
                } else {
                    ConnMsg::AbortTasks(None)
                },
            );
            for lu in target.luns.values() {
                lu.lock().reset(if cold {
                    ResetKind::TargetCold
                } else {
                    ResetKind::TargetWarm
                });
            }
            let luns: Vec<LunNumber> = target.luns.keys().copied().collect();
            Tmf {
                resp: TmfResponse::Complete,
                peer_reset: pair.resets_to_forward(&luns),
                cold,
            }
        }
        TmfFunction::ClearAca => Tmf::now(TmfResponse::NotSupported),
        TmfFunction::TaskReassign => Tmf::now(TmfResponse::NotSupported),
        TmfFunction::AbortTask => Tmf::now(TmfResponse::Complete),
        TmfFunction::Unknown(_) => Tmf::now(TmfResponse::Rejected),
    }
}
