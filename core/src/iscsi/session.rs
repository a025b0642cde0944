//! The full-feature phase of a session (one connection): CmdSN window and ordering, StatSN,
//! write data collection (immediate, unsolicited, R2T-solicited), Data-In segmentation and
//! residuals, NOP, task management, text (SendTargets), logout, Reject and Async Messages.
//!
//! This file holds the session's state, its queries, the StatSN rules of sending, and the entry
//! points for PDUs and decode errors. The children extend [`Session`] with private access to its
//! fields: `window` (the CmdSN window), `data` (commands, R2T and Data-Out, the response),
//! `tmf` (task management), `text_request` (Text and SendTargets), `nop` (NOP-Out, NOP-In
//! pings) and `logout` (logout and asynchronous messages). Bytes in, actions out; no I/O.

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

mod data;
mod logout;
mod nop;
mod text_request;
mod tmf;
mod window;

pub use super::serial::sn_lt;

/// Fixed-format sense data (SPC-4 §4.5.3) for `code`, built by the SCSI layer's
/// [`Sense`](crate::scsi::Sense) (no information, no sense-key specific field).
pub fn fixed_sense(code: SenseCode) -> Bytes {
    Bytes::from(crate::scsi::Sense::new(code).to_bytes(false))
}

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
}
