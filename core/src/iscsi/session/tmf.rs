//! Task management of [`Session`]: TMF requests, aborting tasks and the TMF responses.
//! Touches only the session's own fields and the action queue it is given.

use super::*;

impl Session {
    /// Aborts this session's tasks (on `lun`, or all): no responses will be sent for them.
    pub fn abort_tasks(
        &mut self,
        lun: Option<Lun>,
        now: Millis,
        out: &mut VecDeque<Action>,
    ) -> Vec<u32> {
        let itts: Vec<u32> = self
            .tasks
            .values()
            .filter(|t| lun.is_none_or(|l| t.lun == l))
            .map(|t| t.itt)
            .collect();
        self.remove_tasks(&itts, out);
        self.maybe_finish_logout(now, out);
        itts
    }

    pub(super) fn remove_tasks(&mut self, itts: &[u32], out: &mut VecDeque<Action>) {
        if itts.is_empty() {
            return;
        }
        for itt in itts {
            self.tasks.remove(itt);
        }
        for h in self.held.values_mut() {
            if let Held::Task(i) = h {
                if itts.contains(i) {
                    *h = Held::Nothing;
                }
            }
        }
        out.push_back(Action::Abort {
            itts: itts.to_vec(),
        });
    }

    pub(super) fn handle_tmf(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
        if self.identity.session_type == SessionType::Discovery {
            self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out);
            return;
        }
        let itt = pdu.itt();
        let function = TmfFunction::from_code(pdu.tmf_function());
        let lun = pdu.lun();
        match function {
            TmfFunction::AbortTask => {
                let r = pdu.referenced_task_tag();
                let resp = if self.tasks.contains_key(&r) {
                    self.remove_tasks(&[r], out);
                    TmfResponse::Complete
                } else {
                    let ref_sn = pdu.ref_cmd_sn();
                    let off = ref_sn.wrapping_sub(self.exp_cmd_sn);
                    if off < self.params.queue_depth.max(1) {
                        // Not arrived yet (RFC 7143 §11.5.1 b): consider its CmdSN received,
                        // so commands held behind it run, and drop it if it comes after all.
                        self.held.entry(ref_sn).or_insert(Held::Nothing);
                        TmfResponse::Complete
                    } else {
                        TmfResponse::TaskNotFound
                    }
                };
                self.send_tmf_response(itt, resp, out);
                self.drain_held(now, out);
            }
            TmfFunction::AbortTaskSet
            | TmfFunction::ClearTaskSet
            | TmfFunction::LunReset
            | TmfFunction::TargetWarmReset
            | TmfFunction::TargetColdReset => {
                let scope = match function {
                    TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => None,
                    _ => Some(lun),
                };
                let aborted = self.abort_tasks(scope, now, out);
                self.tmfs.insert(itt, PendingTmf { function });
                out.push_back(Action::TaskManagement(TmfRequest {
                    itt,
                    function,
                    lun,
                    aborted,
                }));
            }
            TmfFunction::ClearAca | TmfFunction::TaskReassign => {
                self.send_tmf_response(itt, TmfResponse::NotSupported, out)
            }
            TmfFunction::Unknown(_) => self.send_tmf_response(itt, TmfResponse::Rejected, out),
        }
    }

    pub(super) fn send_tmf_response(
        &mut self,
        itt: u32,
        resp: TmfResponse,
        out: &mut VecDeque<Action>,
    ) {
        let mut p = Pdu::new(Opcode::TaskMgmtResponse);
        p.set_itt(itt).set_response(resp.code());
        self.send_with_status(p, out);
    }

    /// The runtime finished a task management request.
    pub fn complete_task_management(
        &mut self,
        itt: u32,
        resp: TmfResponse,
        now: Millis,
        out: &mut VecDeque<Action>,
    ) {
        if self.closed {
            return;
        }
        let Some(tmf) = self.tmfs.remove(&itt) else {
            return;
        };
        self.send_tmf_response(itt, resp, out);
        if tmf.function == TmfFunction::TargetColdReset && resp == TmfResponse::Complete {
            self.close(CloseReason::ColdReset, now, out);
        }
    }
}
