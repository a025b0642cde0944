//! SCSI commands of [`Session`]: tasks, write data collection (immediate, unsolicited, R2T and
//! Data-Out), the start of execution in CmdSN order, and the response with Data-In segmentation
//! and residuals.
//! Touches only the session's own fields and the action queue it is given.

use super::*;

impl Session {
    /// The most tasks the session keeps at once.
    pub(super) fn max_tasks(&self) -> usize {
        (self.params.queue_depth.max(1) as usize)
            .saturating_mul(2)
            .saturating_add(16)
    }

    /// Creates the task for a SCSI command and takes its immediate data. `None` if the command
    /// was refused (a Reject or response was sent).
    pub(super) fn register_task(&mut self, pdu: &Pdu, out: &mut VecDeque<Action>) -> Option<u32> {
        let itt = pdu.itt();
        if self.identity.session_type == SessionType::Discovery {
            self.reject(reject_reason::PROTOCOL_ERROR, pdu, out);
            return None;
        }
        if itt == RESERVED_TAG || self.tasks.contains_key(&itt) {
            self.reject(
                if itt == RESERVED_TAG {
                    reject_reason::INVALID_PDU_FIELD
                } else {
                    reject_reason::TASK_IN_PROGRESS
                },
                pdu,
                out,
            );
            return None;
        }
        if self.tasks.len() >= self.max_tasks() {
            // More tasks than the window can justify (immediate commands bypass it).
            let mut p = Pdu::new(Opcode::ScsiResponse);
            p.set_itt(itt).set_status(status::TASK_SET_FULL);
            self.send_with_status(p, out);
            return None;
        }
        self.stats.commands += 1;
        let edtl = pdu.edtl();
        let write = pdu.write_bit();
        let imm = pdu.data.len() as u32;
        let mut task = Task {
            itt,
            lun: pdu.lun(),
            cdb: pdu.cdb(),
            attr: pdu.task_attr(),
            cmd_sn: pdu.cmd_sn(),
            immediate: pdu.immediate(),
            edtl,
            read: pdu.read_bit(),
            write,
            ordered: false,
            data: BytesMut::new(),
            unsolicited_pending: false,
            unsolicited_next_sn: 0,
            r2ts: Vec::new(),
            next_r2t_sn: 0,
            solicited_upto: 0,
            executing: false,
        };
        let unsolicited_limit = edtl.min(self.params.first_burst_length);
        let mut error = None;
        if imm > 0 {
            if !write || !self.params.immediate_data || imm > unsolicited_limit {
                error = Some(SenseCode::INVALID_FIELD_IN_COMMAND_IU);
            } else {
                task.data.extend_from_slice(&pdu.data);
                self.stats.data_out_bytes += imm as u64;
            }
        }
        if write && !pdu.final_bit() && error.is_none() {
            if self.params.initial_r2t || imm >= unsolicited_limit {
                error = Some(SenseCode::INVALID_FIELD_IN_COMMAND_IU);
            } else {
                task.unsolicited_pending = true;
            }
        }
        task.solicited_upto = task.data.len() as u32;
        self.tasks.insert(itt, task);
        if let Some(code) = error {
            // Answered at once; a non-immediate command still uses up its CmdSN slot.
            self.fail_task(itt, code, out);
            return None;
        }
        Some(itt)
    }

    /// The task's CmdSN turn has come: solicit data or execute.
    pub(super) fn start_task(&mut self, itt: u32, out: &mut VecDeque<Action>) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.ordered = true;
        }
        self.advance_task(itt, out);
    }

    /// Issues R2Ts while allowed, or executes once all data is in.
    pub(super) fn advance_task(&mut self, itt: u32, out: &mut VecDeque<Action>) {
        let max_burst = self.params.max_burst_length.max(512);
        let max_r2t = self.params.max_outstanding_r2t.max(1) as usize;
        let Some(t) = self.tasks.get(&itt) else {
            return;
        };
        if !t.ordered || t.executing {
            return;
        }
        let need = if t.write { t.edtl } else { 0 };
        if (t.data.len() as u32) >= need && t.r2ts.is_empty() && !t.unsolicited_pending {
            let Some(t) = self.tasks.get_mut(&itt) else {
                return;
            };
            t.executing = true;
            let data_out = std::mem::take(&mut t.data).freeze();
            let cmd = ScsiCommand {
                itt,
                lun: t.lun,
                cdb: t.cdb.clone(),
                attr: t.attr,
                cmd_sn: t.cmd_sn,
                edtl: t.edtl,
                read: t.read,
                write: t.write,
                data_out,
                immediate: t.immediate,
            };
            out.push_back(Action::Execute(cmd));
            return;
        }
        if t.unsolicited_pending {
            return;
        }
        loop {
            let Some(t) = self.tasks.get(&itt) else {
                return;
            };
            if t.r2ts.len() >= max_r2t || t.solicited_upto >= need {
                return;
            }
            let offset = t.solicited_upto;
            let len = (need - offset).min(max_burst);
            let lun = t.lun;
            let r2t_sn = t.next_r2t_sn;
            let ttt = self.alloc_ttt();
            let Some(t) = self.tasks.get_mut(&itt) else {
                return;
            };
            t.r2ts.push(R2tState {
                ttt,
                offset,
                len,
                next_data_sn: 0,
                received: 0,
            });
            t.next_r2t_sn = t.next_r2t_sn.wrapping_add(1);
            t.solicited_upto = offset + len;
            let mut p = Pdu::new(Opcode::R2t);
            p.set_lun(lun)
                .set_itt(itt)
                .set_ttt(ttt)
                .set_data_sn(r2t_sn)
                .set_buffer_offset(offset)
                .set_residual_count(len);
            self.send_without_status(p, out);
        }
    }

    pub(super) fn handle_data_out(&mut self, pdu: Pdu, _now: Millis, out: &mut VecDeque<Action>) {
        let itt = pdu.itt();
        let first_burst = self.params.first_burst_length;
        let Some(t) = self.tasks.get_mut(&itt) else {
            // Unknown or aborted task: discarded.
            return;
        };
        if t.executing {
            return;
        }
        let len = pdu.data.len() as u32;
        let offset = pdu.buffer_offset();
        let received = t.data.len() as u32;
        let ok = if pdu.ttt() == RESERVED_TAG {
            let limit = t.edtl.min(first_burst);
            let good = t.unsolicited_pending
                && pdu.data_sn() == t.unsolicited_next_sn
                && offset == received
                && (received as u64 + len as u64) <= limit as u64;
            if good {
                t.unsolicited_next_sn = t.unsolicited_next_sn.wrapping_add(1);
                if pdu.final_bit() {
                    t.unsolicited_pending = false;
                }
                t.solicited_upto = received + len;
            }
            good
        } else {
            match t.r2ts.iter().position(|r| r.ttt == pdu.ttt()) {
                None => false,
                Some(i) => {
                    let r = &mut t.r2ts[i];
                    let good = pdu.data_sn() == r.next_data_sn
                        && offset == r.offset.wrapping_add(r.received)
                        && offset == received
                        && (r.received as u64 + len as u64) <= r.len as u64
                        && (!pdu.final_bit() || r.received + len == r.len);
                    if good {
                        r.next_data_sn = r.next_data_sn.wrapping_add(1);
                        r.received += len;
                        if r.received == r.len {
                            t.r2ts.remove(i);
                        }
                    }
                    good
                }
            }
        };
        if !ok {
            self.fail_task(itt, SenseCode::DATA_PHASE_ERROR, out);
            return;
        }
        t.data.extend_from_slice(&pdu.data);
        self.stats.data_out_bytes += len as u64;
        self.advance_task(itt, out);
    }

    /// Ends a task that has not executed with CHECK CONDITION `code`.
    pub(super) fn fail_task(&mut self, itt: u32, code: SenseCode, out: &mut VecDeque<Action>) {
        if self.tasks.remove(&itt).is_none() {
            return;
        }
        let mut p = Pdu::new(Opcode::ScsiResponse);
        p.set_itt(itt).set_status(status::CHECK_CONDITION);
        p.set_data(sense_segment(&fixed_sense(code)));
        self.send_with_status(p, out);
    }

    /// The executor finished a command.
    pub fn complete_command(
        &mut self,
        itt: u32,
        c: Completion,
        now: Millis,
        out: &mut VecDeque<Action>,
    ) {
        if self.closed {
            return;
        }
        let Some(t) = self.tasks.get(&itt) else {
            // Aborted meanwhile: no response.
            return;
        };
        if !t.executing {
            return;
        }
        let Some(t) = self.tasks.remove(&itt) else {
            return;
        };
        let edtl = t.edtl;
        let good_no_sense = c.status == status::GOOD && c.sense.is_none();
        // Bytes actually moved: data-in for reads, the data the CDB used for writes.
        let data_in = if t.read && c.data_in.len() as u64 > edtl as u64 {
            c.data_in.slice(..edtl as usize)
        } else if t.read {
            c.data_in.clone()
        } else {
            Bytes::new()
        };
        let moved = if t.read {
            data_in.len() as u32
        } else {
            c.wanted_len.min(edtl)
        };
        let (res_flags, residual) = if c.wanted_len > edtl {
            (flags::OVERFLOW, c.wanted_len - edtl)
        } else if moved < edtl {
            (flags::UNDERFLOW, edtl - moved)
        } else {
            (0, 0)
        };
        // Data-In: at most MaxRecvDataSegmentLength (initiator's) per PDU, F at the end of each
        // MaxBurstLength sequence, status on the last one when GOOD without sense.
        let seg = self.params.max_xmit_data_segment_length.max(512) as usize;
        let burst = self.params.max_burst_length.max(512) as usize;
        let total = data_in.len();
        let mut offset = 0usize;
        let mut data_sn = 0u32;
        let mut in_burst = 0usize;
        while offset < total {
            let n = (total - offset).min(seg).min(burst - in_burst);
            let last = offset + n == total;
            in_burst += n;
            let end_of_burst = last || in_burst == burst;
            let mut p = Pdu::new(Opcode::DataIn);
            let mut f = 0u8;
            if end_of_burst {
                f |= flags::FINAL;
            }
            p.set_lun(t.lun)
                .set_itt(itt)
                .set_ttt(RESERVED_TAG)
                .set_data_sn(data_sn)
                .set_buffer_offset(offset as u32);
            p.set_data(data_in.slice(offset..offset + n));
            self.stats.data_in_bytes += n as u64;
            if last && good_no_sense {
                f |= flags::STATUS | res_flags;
                p.set_flags(f)
                    .set_status(c.status)
                    .set_residual_count(residual);
                self.send_with_status(p, out);
                self.maybe_finish_logout(now, out);
                return;
            }
            p.set_flags(f);
            self.send_without_status(p, out);
            if end_of_burst {
                in_burst = 0;
            }
            offset += n;
            data_sn = data_sn.wrapping_add(1);
        }
        // ExpDataSN: the Data-In PDUs sent for a read, the R2Ts sent for a write.
        let exp_data_sn = if t.read { data_sn } else { t.next_r2t_sn };
        let mut p = Pdu::new(Opcode::ScsiResponse);
        p.set_flags(flags::FINAL | res_flags)
            .set_itt(itt)
            .set_status(c.status)
            .set_data_sn(exp_data_sn)
            .set_residual_count(residual);
        if let Some(s) = &c.sense {
            p.set_data(sense_segment(s));
        }
        self.send_with_status(p, out);
        self.maybe_finish_logout(now, out);
    }
}
