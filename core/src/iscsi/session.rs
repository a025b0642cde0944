//! The full-feature phase of a session (one connection): CmdSN window and ordering, StatSN,
//! write data collection (immediate, unsolicited, R2T-solicited), Data-In segmentation and
//! residuals, NOP, task management, text (SendTargets), logout, Reject and Async Messages.

use super::codec::PduError;
use super::config::{IscsiConfig, PortalInfo, SessionIdentity, SessionType, TargetConfig};
use super::login::LoginDone;
use super::params::SessionParams;
use super::pdu::{flags, reject_reason, sense_segment, Lun, Opcode, Pdu, TaskAttr, RESERVED_TAG};
use super::text::TextPairs;
use super::types::{
    Action, CloseReason, Completion, Millis, ScsiCommand, TmfFunction, TmfRequest, TmfResponse,
};
use crate::sense::{status, SenseCode};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Serial-number "a < b" (RFC 1982, 32 bits).
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) < 0
}

/// Fixed-format sense data (SPC-4 §4.5.3) for `code`.
pub fn fixed_sense(code: SenseCode) -> Bytes {
    let mut s = [0u8; 18];
    s[0] = 0x70;
    s[2] = code.key & 0x0f;
    s[7] = 10;
    s[12] = code.asc;
    s[13] = code.ascq;
    Bytes::copy_from_slice(&s)
}

/// The most text a Text request may accumulate over continued (C bit) PDUs.
const MAX_TEXT_IN: usize = 65536;

/// A non-immediate PDU waiting for its CmdSN.
#[derive(Clone, Debug)]
enum Held {
    /// A SCSI command whose task is registered (collecting data) but not yet started.
    Task(u32),
    /// Any other request.
    Pdu(Box<Pdu>),
    /// A slot whose content was aborted or dropped: only advances ExpCmdSN.
    Nothing,
}

#[derive(Clone, Debug)]
struct R2tState {
    ttt: u32,
    offset: u32,
    len: u32,
    next_data_sn: u32,
    received: u32,
}

#[derive(Clone, Debug)]
struct Task {
    itt: u32,
    lun: Lun,
    cdb: Bytes,
    attr: TaskAttr,
    cmd_sn: u32,
    immediate: bool,
    edtl: u32,
    read: bool,
    write: bool,
    /// The CmdSN order has reached this task.
    ordered: bool,
    /// Write data received so far, in offset order.
    data: BytesMut,
    /// Unsolicited Data-Out is still expected (no F seen yet).
    unsolicited_pending: bool,
    unsolicited_next_sn: u32,
    r2ts: Vec<R2tState>,
    next_r2t_sn: u32,
    /// Offset up to which data has been solicited or received unsolicited.
    solicited_upto: u32,
    /// Execute was emitted.
    executing: bool,
}

#[derive(Clone, Debug)]
struct PendingTmf {
    function: TmfFunction,
}

#[derive(Clone, Debug)]
struct PendingLogout {
    req: Box<Pdu>,
}

#[derive(Clone, Debug)]
struct TextOut {
    itt: u32,
    ttt: u32,
    rest: Bytes,
}

#[derive(Clone, Copy, Debug)]
struct Ping {
    ttt: u32,
    deadline: Option<Millis>,
}

/// Session counters, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub commands: u64,
    pub dropped_out_of_window: u64,
    pub rejects: u64,
    pub data_in_bytes: u64,
    pub data_out_bytes: u64,
}

/// The full-feature session state machine.
pub struct Session {
    config: Arc<IscsiConfig>,
    portal: PortalInfo,
    identity: SessionIdentity,
    params: SessionParams,
    target: Option<TargetConfig>,
    stat_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    held: BTreeMap<u32, Held>,
    tasks: BTreeMap<u32, Task>,
    next_ttt: u32,
    tmfs: BTreeMap<u32, PendingTmf>,
    logout: Option<PendingLogout>,
    text_out: Option<TextOut>,
    text_in: BytesMut,
    ping: Option<Ping>,
    next_ping_at: Option<Millis>,
    closed: bool,
    stats: SessionStats,
}

impl Session {
    /// Starts the full-feature phase after `done`.
    pub fn new(
        done: LoginDone,
        config: Arc<IscsiConfig>,
        portal: PortalInfo,
        now: Millis,
    ) -> Session {
        let interval = config.limits.nop_in_interval_ms;
        Session {
            identity: done.outcome.identity,
            params: done.outcome.params,
            target: done.target,
            stat_sn: done.next_stat_sn,
            exp_stat_sn: done.next_stat_sn,
            exp_cmd_sn: done.exp_cmd_sn,
            held: BTreeMap::new(),
            tasks: BTreeMap::new(),
            next_ttt: 1,
            tmfs: BTreeMap::new(),
            logout: None,
            text_out: None,
            text_in: BytesMut::new(),
            ping: None,
            next_ping_at: if interval > 0 {
                Some(now.saturating_add(interval))
            } else {
                None
            },
            closed: false,
            stats: SessionStats::default(),
            config,
            portal,
        }
    }

    pub fn identity(&self) -> &SessionIdentity {
        &self.identity
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The next CmdSN expected.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
    }

    /// The highest CmdSN the window admits.
    pub fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn
            .wrapping_add(self.params.queue_depth.max(1) - 1)
    }

    /// The StatSN the next status-carrying PDU gets.
    pub fn next_stat_sn(&self) -> u32 {
        self.stat_sn
    }

    /// The last ExpStatSN the initiator acknowledged.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn
    }

    /// ITTs of tasks the session knows (collecting data or executing).
    pub fn outstanding_tasks(&self) -> Vec<u32> {
        self.tasks.keys().copied().collect()
    }

    /// Number of requests held for an earlier CmdSN.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    // ----- sending -----

    /// Sends a PDU that takes a StatSN (and advances it).
    fn send_with_status(&mut self, mut p: Pdu, out: &mut VecDeque<Action>) {
        p.set_stat_sn(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.set_exp_cmd_sn(self.exp_cmd_sn);
        p.set_max_cmd_sn(self.max_cmd_sn());
        out.push_back(Action::Send(p));
    }

    /// Sends a PDU that carries the next StatSN without advancing it.
    fn send_without_status(&mut self, mut p: Pdu, out: &mut VecDeque<Action>) {
        p.set_stat_sn(self.stat_sn);
        p.set_exp_cmd_sn(self.exp_cmd_sn);
        p.set_max_cmd_sn(self.max_cmd_sn());
        out.push_back(Action::Send(p));
    }

    fn reject(&mut self, reason: u8, pdu: &Pdu, out: &mut VecDeque<Action>) {
        self.stats.rejects += 1;
        // A Reject takes a StatSN like any other response (RFC 7143 §11.17).
        let r = Pdu::reject(reason, &pdu.bhs);
        self.send_with_status(r, out);
    }

    fn close(&mut self, reason: CloseReason, now: Millis, out: &mut VecDeque<Action>) {
        if self.closed {
            return;
        }
        self.abort_tasks(None, now, out);
        self.closed = true;
        out.push_back(Action::Close(reason));
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    // ----- input -----

    /// Handles one PDU from the initiator.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
        if self.closed {
            return;
        }
        self.note_activity(now);
        let op = match pdu.opcode() {
            Some(op) => op,
            None => {
                self.reject(reject_reason::COMMAND_NOT_SUPPORTED, &pdu, out);
                return;
            }
        };
        if op != Opcode::DataOut {
            let e = pdu.exp_stat_sn();
            if !sn_lt(e, self.exp_stat_sn) && !sn_lt(self.stat_sn, e) {
                self.exp_stat_sn = e;
            }
        }
        match op {
            Opcode::DataOut => self.handle_data_out(pdu, now, out),
            Opcode::NopOut
            | Opcode::ScsiCommand
            | Opcode::TaskMgmtRequest
            | Opcode::TextRequest
            | Opcode::LogoutRequest => self.handle_request(pdu, now, out),
            Opcode::Snack => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
            Opcode::LoginRequest => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
            _ => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
        }
        self.maybe_finish_logout(now, out);
    }

    /// Handles a non-fatal decoder error (the PDU was consumed).
    pub fn handle_decode_error(&mut self, err: PduError, now: Millis, out: &mut VecDeque<Action>) {
        if self.closed {
            return;
        }
        let reason = match err.reject_reason() {
            Some(r) => r,
            None => {
                self.close(CloseReason::ProtocolError(err.to_string()), now, out);
                return;
            }
        };
        let pdu = match err.pdu() {
            Some(p) => p.clone(),
            None => return,
        };
        if let PduError::DataDigest { .. } = err {
            // RFC 7143 §7.8: discard the PDU; at ERL 0 the command it belongs to fails.
            match pdu.opcode() {
                Some(Opcode::DataOut) => {
                    let itt = pdu.itt();
                    self.reject(reason, &pdu, out);
                    if self.tasks.get(&itt).is_some_and(|t| !t.executing) {
                        self.fail_task(itt, SenseCode::DATA_DIGEST_ERROR, out);
                    }
                    return;
                }
                Some(Opcode::ScsiCommand) => {
                    // The command still takes its CmdSN; answer it with CHECK CONDITION.
                    // Its CmdSN is used up all the same, so later commands are not blocked.
                    self.reject(reason, &pdu, out);
                    let sn = pdu.cmd_sn();
                    let in_window =
                        sn.wrapping_sub(self.exp_cmd_sn) < self.params.queue_depth.max(1);
                    if !pdu.immediate() && in_window && !self.held.contains_key(&sn) {
                        self.held.insert(sn, Held::Nothing);
                        self.drain_held(now, out);
                    }
                    return;
                }
                _ => {}
            }
        }
        self.reject(reason, &pdu, out);
    }

    fn note_activity(&mut self, now: Millis) {
        let interval = self.config.limits.nop_in_interval_ms;
        if interval > 0 && self.ping.is_none() {
            self.next_ping_at = Some(now.saturating_add(interval));
        }
    }

    /// CmdSN rules for requests (RFC 7143 §4.2.2.1).
    fn handle_request(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
        let nop_unanswered = pdu.opcode() == Some(Opcode::NopOut) && pdu.itt() == RESERVED_TAG;
        if pdu.immediate() || nop_unanswered {
            match pdu.opcode() {
                Some(Opcode::ScsiCommand) => {
                    if let Some(itt) = self.register_task(&pdu, out) {
                        self.start_task(itt, out);
                    }
                }
                _ => self.process(pdu, now, out),
            }
            return;
        }
        let sn = pdu.cmd_sn();
        let window = self.params.queue_depth.max(1);
        let offset = sn.wrapping_sub(self.exp_cmd_sn);
        if offset >= window {
            // Outside [ExpCmdSN, MaxCmdSN]: dropped silently, the session goes on.
            self.stats.dropped_out_of_window += 1;
            return;
        }
        if offset > 0 && self.held.contains_key(&sn) {
            // A duplicate of a request already waiting.
            self.stats.dropped_out_of_window += 1;
            return;
        }
        let held = if pdu.opcode() == Some(Opcode::ScsiCommand) {
            match self.register_task(&pdu, out) {
                Some(itt) => Held::Task(itt),
                None => Held::Nothing,
            }
        } else {
            Held::Pdu(Box::new(pdu))
        };
        self.held.insert(sn, held);
        self.drain_held(now, out);
    }

    /// The most tasks the session keeps at once.
    fn max_tasks(&self) -> usize {
        (self.params.queue_depth.max(1) as usize)
            .saturating_mul(2)
            .saturating_add(16)
    }

    /// Runs held requests whose turn has come.
    fn drain_held(&mut self, now: Millis, out: &mut VecDeque<Action>) {
        while let Some(h) = self.held.remove(&self.exp_cmd_sn) {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            match h {
                Held::Task(itt) => self.start_task(itt, out),
                Held::Pdu(p) => self.process(*p, now, out),
                Held::Nothing => {}
            }
            if self.closed {
                return;
            }
        }
    }

    /// A request whose CmdSN turn has come (or an immediate one).
    fn process(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
        match pdu.opcode() {
            Some(Opcode::NopOut) => self.handle_nop_out(pdu, out),
            Some(Opcode::TaskMgmtRequest) => self.handle_tmf(pdu, now, out),
            Some(Opcode::TextRequest) => self.handle_text(pdu, out),
            Some(Opcode::LogoutRequest) => self.handle_logout(pdu, now, out),
            _ => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
        }
    }

    // ----- NOP -----

    fn handle_nop_out(&mut self, pdu: Pdu, out: &mut VecDeque<Action>) {
        if pdu.ttt() != RESERVED_TAG {
            // The answer to a target ping.
            if self.ping.is_some_and(|p| p.ttt == pdu.ttt()) {
                self.ping = None;
            }
        }
        if pdu.itt() == RESERVED_TAG {
            return;
        }
        let mut p = Pdu::new(Opcode::NopIn);
        p.set_itt(pdu.itt())
            .set_ttt(RESERVED_TAG)
            .set_lun(pdu.lun());
        let max = self.params.max_xmit_data_segment_length as usize;
        let data = if pdu.data.len() > max {
            pdu.data.slice(..max)
        } else {
            pdu.data.clone()
        };
        p.set_data(data);
        self.send_with_status(p, out);
    }

    /// Fires NOP-In pings and their timeouts.
    pub fn handle_timeout(&mut self, now: Millis, out: &mut VecDeque<Action>) {
        if self.closed {
            return;
        }
        if let Some(ping) = self.ping {
            if ping.deadline.is_some_and(|d| now >= d) {
                self.close(CloseReason::PingTimeout, now, out);
                return;
            }
        }
        if let Some(at) = self.next_ping_at {
            if now >= at && self.ping.is_none() {
                let ttt = self.alloc_ttt();
                let mut p = Pdu::new(Opcode::NopIn);
                p.set_itt(RESERVED_TAG).set_ttt(ttt);
                self.send_without_status(p, out);
                let timeout = self.config.limits.nop_in_timeout_ms;
                self.ping = Some(Ping {
                    ttt,
                    deadline: if timeout > 0 {
                        Some(now.saturating_add(timeout))
                    } else {
                        None
                    },
                });
                let interval = self.config.limits.nop_in_interval_ms;
                self.next_ping_at = if interval > 0 {
                    Some(now.saturating_add(interval))
                } else {
                    None
                };
            }
        }
    }

    /// When `handle_timeout` should next run.
    pub fn next_timeout(&self) -> Option<Millis> {
        if self.closed {
            return None;
        }
        let deadline = self.ping.and_then(|p| p.deadline);
        let next = if self.ping.is_none() {
            self.next_ping_at
        } else {
            None
        };
        match (deadline, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- SCSI commands and data -----

    /// Creates the task for a SCSI command and takes its immediate data. `None` if the command
    /// was refused (a Reject or response was sent).
    fn register_task(&mut self, pdu: &Pdu, out: &mut VecDeque<Action>) -> Option<u32> {
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
    fn start_task(&mut self, itt: u32, out: &mut VecDeque<Action>) {
        if let Some(t) = self.tasks.get_mut(&itt) {
            t.ordered = true;
        }
        self.advance_task(itt, out);
    }

    /// Issues R2Ts while allowed, or executes once all data is in.
    fn advance_task(&mut self, itt: u32, out: &mut VecDeque<Action>) {
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

    fn handle_data_out(&mut self, pdu: Pdu, _now: Millis, out: &mut VecDeque<Action>) {
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
    fn fail_task(&mut self, itt: u32, code: SenseCode, out: &mut VecDeque<Action>) {
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

    fn remove_tasks(&mut self, itts: &[u32], out: &mut VecDeque<Action>) {
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

    // ----- task management -----

    fn handle_tmf(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
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

    fn send_tmf_response(&mut self, itt: u32, resp: TmfResponse, out: &mut VecDeque<Action>) {
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

    // ----- text -----

    fn handle_text(&mut self, pdu: Pdu, out: &mut VecDeque<Action>) {
        let itt = pdu.itt();
        if pdu.ttt() != RESERVED_TAG {
            // Continuation of a long response.
            match self.text_out.take() {
                Some(t) if t.ttt == pdu.ttt() && t.itt == itt => {
                    self.send_text_chunk(itt, t.rest, out);
                }
                _ => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
            }
            return;
        }
        self.text_out = None;
        if self.text_in.len() + pdu.data.len() > MAX_TEXT_IN {
            self.text_in.clear();
            self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out);
            return;
        }
        self.text_in.extend_from_slice(&pdu.data);
        if pdu.continue_bit() {
            let mut p = Pdu::new(Opcode::TextResponse);
            p.set_flags(0).set_itt(itt).set_ttt(RESERVED_TAG);
            self.send_with_status(p, out);
            return;
        }
        let raw = std::mem::take(&mut self.text_in);
        let keys = match TextPairs::parse(&raw) {
            Ok(k) => k,
            Err(_) => {
                self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out);
                return;
            }
        };
        let mut reply = TextPairs::new();
        for (k, v) in keys.iter() {
            if k != "SendTargets" {
                self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out);
                return;
            }
            match self.send_targets(v) {
                Some(mut r) => reply.0.append(&mut r.0),
                None => {
                    self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out);
                    return;
                }
            }
        }
        self.send_text_chunk(itt, reply.to_bytes(), out);
    }

    /// The SendTargets answer for `value`, `None` when the value is invalid.
    fn send_targets(&self, value: &str) -> Option<TextPairs> {
        let initiator = self.identity.initiator_name.as_str();
        let discovery = self.identity.session_type == SessionType::Discovery;
        let selected: Vec<&TargetConfig> = match value {
            "All" if discovery => self
                .config
                .targets
                .iter()
                .filter(|t| t.admits(initiator))
                .collect(),
            "All" | "" => match (&self.target, discovery) {
                (Some(t), false) => vec![t],
                _ => Vec::new(),
            },
            name => match self.config.target(name) {
                Some(t) if t.admits(initiator) => vec![t],
                _ => return None,
            },
        };
        let mut reply = TextPairs::new();
        for t in selected {
            reply.push("TargetName", t.name.clone());
            if t.addresses.is_empty() {
                if !self.portal.address.is_empty() {
                    reply.push("TargetAddress", self.portal.address.clone());
                }
            } else {
                for a in &t.addresses {
                    reply.push("TargetAddress", a.clone());
                }
            }
        }
        Some(reply)
    }

    fn send_text_chunk(&mut self, itt: u32, data: Bytes, out: &mut VecDeque<Action>) {
        let max = self.params.max_xmit_data_segment_length.max(512) as usize;
        let mut p = Pdu::new(Opcode::TextResponse);
        p.set_itt(itt);
        if data.len() > max {
            let ttt = self.alloc_ttt();
            p.set_flags(0x40).set_ttt(ttt).set_data(data.slice(..max));
            self.text_out = Some(TextOut {
                itt,
                ttt,
                rest: data.slice(max..),
            });
        } else {
            p.set_flags(flags::FINAL)
                .set_ttt(RESERVED_TAG)
                .set_data(data);
        }
        self.send_with_status(p, out);
    }

    // ----- logout -----

    fn handle_logout(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
        match pdu.logout_reason() {
            0 | 1 => {
                self.logout = Some(PendingLogout { req: Box::new(pdu) });
                self.maybe_finish_logout(now, out);
            }
            2 => {
                let mut p = Pdu::new(Opcode::LogoutResponse);
                p.set_itt(pdu.itt()).set_response(2);
                self.send_with_status(p, out);
            }
            _ => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
        }
    }

    /// Sends the Logout Response once no task is outstanding, then closes.
    fn maybe_finish_logout(&mut self, _now: Millis, out: &mut VecDeque<Action>) {
        if self.closed || self.logout.is_none() || !self.tasks.is_empty() {
            return;
        }
        let Some(l) = self.logout.take() else { return };
        let mut p = Pdu::new(Opcode::LogoutResponse);
        p.set_itt(l.req.itt())
            .set_response(0)
            .set_time2wait(0)
            .set_time2retain(0);
        self.send_with_status(p, out);
        self.closed = true;
        out.push_back(Action::Close(CloseReason::LoggedOut));
    }

    // ----- async -----

    /// Asks the initiator to log out (AsyncEvent 1).
    pub fn request_logout(&mut self, time2wait: u16, _now: Millis, out: &mut VecDeque<Action>) {
        if self.closed {
            return;
        }
        let p = Pdu::async_message(1, 0, Lun(0), [0, 0, time2wait], None);
        self.send_with_status(p, out);
    }

    /// Reports a SCSI asynchronous event (AsyncEvent 0) with `sense`.
    pub fn send_scsi_event(
        &mut self,
        lun: Lun,
        sense: &[u8],
        _now: Millis,
        out: &mut VecDeque<Action>,
    ) {
        if self.closed {
            return;
        }
        let p = Pdu::async_message(0, 0, lun, [0, 0, 0], Some(sense));
        self.send_with_status(p, out);
    }
}
