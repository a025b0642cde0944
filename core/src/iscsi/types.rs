//! The values that pass between the iSCSI state machines and the runtime: the [`Action`]s the
//! runtime carries out, the [`ScsiCommand`]s it executes and the [`Completion`]s it reports back,
//! task management requests and responses, close reasons and the login's outcome. Plain data;
//! used by `login`, `session` and `connection`, it uses none of them.

use super::config::SessionIdentity;
use super::params::SessionParams;
use super::pdu::{Lun, Pdu, TaskAttr};
use bytes::Bytes;
/// Milliseconds on the runtime's monotonic clock.
pub type Millis = u64;

/// A SCSI command ready to run: all of its write data has arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub itt: u32,
    pub lun: Lun,
    /// The whole CDB (16 bytes from the BHS plus any Extended CDB AHS).
    pub cdb: Bytes,
    pub attr: TaskAttr,
    pub cmd_sn: u32,
    /// Expected Data Transfer Length from the initiator.
    pub edtl: u32,
    /// R bit: the initiator expects data in.
    pub read: bool,
    /// W bit: the initiator sent data out.
    pub write: bool,
    /// All write data (immediate + unsolicited + solicited), `edtl` bytes long for a write.
    pub data_out: Bytes,
    /// The command was sent for immediate delivery.
    pub immediate: bool,
}

/// The executor's result for one [`ScsiCommand`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status (see [`crate::sense::status`]).
    pub status: u8,
    /// Full sense data bytes (fixed or descriptor format) for CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// Data to return; the session sends at most EDTL bytes of it.
    pub data_in: Bytes,
    /// How many bytes the CDB asked to transfer (allocation length or blocks × block size), used
    /// for the residual over/underflow against EDTL.
    pub wanted_len: u32,
}

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmfFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LunReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    Unknown(u8),
}

impl TmfFunction {
    pub fn from_code(c: u8) -> TmfFunction {
        match c {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LunReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            n => TmfFunction::Unknown(n),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            TmfFunction::AbortTask => 1,
            TmfFunction::AbortTaskSet => 2,
            TmfFunction::ClearAca => 3,
            TmfFunction::ClearTaskSet => 4,
            TmfFunction::LunReset => 5,
            TmfFunction::TargetWarmReset => 6,
            TmfFunction::TargetColdReset => 7,
            TmfFunction::TaskReassign => 8,
            TmfFunction::Unknown(n) => n,
        }
    }
}

/// Task management responses (RFC 7143 §11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmfResponse {
    Complete,
    TaskNotFound,
    LunNotFound,
    TaskStillAllegiant,
    ReassignmentUnsupported,
    NotSupported,
    AuthorizationFailed,
    Rejected,
}

impl TmfResponse {
    pub fn code(self) -> u8 {
        match self {
            TmfResponse::Complete => 0,
            TmfResponse::TaskNotFound => 1,
            TmfResponse::LunNotFound => 2,
            TmfResponse::TaskStillAllegiant => 3,
            TmfResponse::ReassignmentUnsupported => 4,
            TmfResponse::NotSupported => 5,
            TmfResponse::AuthorizationFailed => 6,
            TmfResponse::Rejected => 255,
        }
    }
}

/// A task management request the runtime must carry out at the logical-unit / target level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmfRequest {
    /// ITT of the TMF request: pass it back to
    /// [`Connection::complete_task_management`](super::Connection::complete_task_management).
    pub itt: u32,
    /// AbortTaskSet, ClearTaskSet, LunReset, TargetWarmReset or TargetColdReset.
    pub function: TmfFunction,
    pub lun: Lun,
    /// This session's tasks already aborted for it (no response will be sent for them).
    pub aborted: Vec<u32>,
}

/// Why the connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The initiator logged out (after the Logout Response went out).
    LoggedOut,
    /// The login failed (after the failing Login Response went out).
    LoginFailed,
    /// A fatal protocol error (header digest, framing, PDU not allowed).
    ProtocolError(String),
    /// The initiator did not answer a NOP-In ping in time.
    PingTimeout,
    /// TARGET COLD RESET was carried out.
    ColdReset,
    /// The login did not finish before its deadline (an idle or stalled client).
    LoginTimeout,
}

/// Result of a successful login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOutcome {
    pub identity: SessionIdentity,
    pub params: SessionParams,
}

/// What the runtime must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Encode and send this PDU.
    Send(Pdu),
    /// The login finished: switch the codec to `params` (digests, MaxRecvDataSegmentLength)
    /// before decoding the next PDU; register the session (close any older session with the
    /// same [`SessionIdentity::same_nexus`]).
    LoginComplete(LoginOutcome),
    /// Run this SCSI command and call
    /// [`Connection::complete_command`](super::Connection::complete_command) with its result.
    Execute(ScsiCommand),
    /// These tasks were aborted (ABORT TASK, logout, close): drop their completions if any are
    /// still to come (the session ignores them anyway).
    Abort { itts: Vec<u32> },
    /// Carry out this task management function and call
    /// [`Connection::complete_task_management`](super::Connection::complete_task_management).
    TaskManagement(TmfRequest),
    /// Flush what was sent, then close the TCP connection. No further actions follow.
    Close(CloseReason),
}
