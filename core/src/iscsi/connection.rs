//! One iSCSI connection from accept to close: the login phase, then the full-feature session
//! (one connection per session: MaxConnections is always 1).
//!
//! Driven like quinn-proto: feed decoded PDUs with [`Connection::handle_pdu`], command results
//! with [`Connection::complete_command`], timer expiries with [`Connection::handle_timeout`];
//! after each call drain [`Connection::poll_action`] and perform the actions **in order**.

use super::codec::PduError;
use super::config::{IscsiConfig, LoginEntropy, PortalInfo, SessionIdentity};
use super::login::Login;
use super::params::SessionParams;
use super::pdu::{Lun, Pdu};
use super::session::Session;
use std::collections::VecDeque;
use std::sync::Arc;

// The shared values live in `types`; these names stay reachable here for existing paths.
pub use super::types::{
    Action, CloseReason, Completion, LoginOutcome, Millis, ScsiCommand, TmfFunction, TmfRequest,
    TmfResponse,
};

enum Phase {
    Login(Box<Login>),
    FullFeature(Box<Session>),
    Closed,
}

/// One connection: login, then the full-feature session.
pub struct Connection {
    phase: Phase,
    actions: VecDeque<Action>,
    /// The login phase must end by then (see [`Connection::set_login_deadline`]).
    login_deadline: Option<Millis>,
}

impl Connection {
    /// A freshly accepted connection on `portal`, expecting a Login request.
    pub fn new(config: Arc<IscsiConfig>, portal: PortalInfo, entropy: LoginEntropy) -> Connection {
        Connection {
            phase: Phase::Login(Box::new(Login::new(config, portal, entropy))),
            actions: VecDeque::new(),
            login_deadline: None,
        }
    }

    /// The login phase must finish by `at`; a connection still logging in then is closed with
    /// [`CloseReason::LoginTimeout`] (ctld gives initiators 60 s). Without a deadline a silent
    /// client keeps its connection for ever.
    pub fn set_login_deadline(&mut self, at: Millis) {
        self.login_deadline = Some(at);
    }

    /// Handles one decoded PDU at time `now`.
    pub fn handle_pdu(&mut self, pdu: Pdu, now: Millis) {
        match &mut self.phase {
            Phase::Login(login) => {
                login.handle_pdu(&pdu, &mut self.actions);
                if let Some(done) = login.take_finished() {
                    let session = Session::new(done, login.config(), login.portal(), now);
                    self.phase = Phase::FullFeature(Box::new(session));
                } else if login.failed() {
                    self.phase = Phase::Closed;
                }
            }
            Phase::FullFeature(s) => {
                s.handle_pdu(pdu, now, &mut self.actions);
                if s.is_closed() {
                    self.phase = Phase::Closed;
                }
            }
            Phase::Closed => {}
        }
    }

    /// Handles a decoder error: fatal ones close the connection, the others Reject the PDU.
    pub fn handle_decode_error(&mut self, err: PduError, now: Millis) {
        if err.is_fatal() {
            self.close(CloseReason::ProtocolError(err.to_string()));
            return;
        }
        match &mut self.phase {
            Phase::Login(_) => self.close(CloseReason::ProtocolError(err.to_string())),
            Phase::FullFeature(s) => {
                s.handle_decode_error(err, now, &mut self.actions);
                if s.is_closed() {
                    self.phase = Phase::Closed;
                }
            }
            Phase::Closed => {}
        }
    }

    /// The executor finished the command with this ITT.
    pub fn complete_command(&mut self, itt: u32, completion: Completion, now: Millis) {
        if let Phase::FullFeature(s) = &mut self.phase {
            s.complete_command(itt, completion, now, &mut self.actions);
            if s.is_closed() {
                self.phase = Phase::Closed;
            }
        }
    }

    /// The runtime finished the task management request with this ITT.
    pub fn complete_task_management(&mut self, itt: u32, response: TmfResponse, now: Millis) {
        if let Phase::FullFeature(s) = &mut self.phase {
            s.complete_task_management(itt, response, now, &mut self.actions);
            if s.is_closed() {
                self.phase = Phase::Closed;
            }
        }
    }

    /// Aborts this session's tasks on `lun` (all LUNs when `None`) without responses, as a LU or
    /// target reset from another nexus does. Returns the aborted ITTs.
    pub fn abort_tasks(&mut self, lun: Option<Lun>, now: Millis) -> Vec<u32> {
        match &mut self.phase {
            Phase::FullFeature(s) => s.abort_tasks(lun, now, &mut self.actions),
            _ => Vec::new(),
        }
    }

    /// Sends an Async Message asking the initiator to log out within `time2wait` seconds
    /// (AsyncEvent 1). Ignored before full feature phase.
    pub fn request_logout(&mut self, time2wait: u16, now: Millis) {
        if let Phase::FullFeature(s) = &mut self.phase {
            s.request_logout(time2wait, now, &mut self.actions);
        }
    }

    /// Sends an Async Message with AsyncEvent 0 (SCSI asynchronous event) carrying `sense`.
    pub fn send_scsi_event(&mut self, lun: Lun, sense: &[u8], now: Millis) {
        if let Phase::FullFeature(s) = &mut self.phase {
            s.send_scsi_event(lun, sense, now, &mut self.actions);
        }
    }

    /// Time has reached `now`: fire NOP-In pings and ping timeouts.
    pub fn handle_timeout(&mut self, now: Millis) {
        if let (Phase::Login(_), Some(at)) = (&self.phase, self.login_deadline) {
            if now >= at {
                self.actions
                    .push_back(Action::Close(CloseReason::LoginTimeout));
                self.phase = Phase::Closed;
            }
            return;
        }
        if let Phase::FullFeature(s) = &mut self.phase {
            s.handle_timeout(now, &mut self.actions);
            if s.is_closed() {
                self.phase = Phase::Closed;
            }
        }
    }

    /// When [`Connection::handle_timeout`] should next be called, if ever.
    pub fn next_timeout(&self) -> Option<Millis> {
        match &self.phase {
            Phase::FullFeature(s) => s.next_timeout(),
            Phase::Login(_) => self.login_deadline,
            Phase::Closed => None,
        }
    }

    /// The runtime is closing the connection (socket error, shutdown, session reinstated):
    /// aborts all tasks. Emits `Abort` for outstanding tasks but no `Close`.
    pub fn shutdown(&mut self, now: Millis) {
        if let Phase::FullFeature(s) = &mut self.phase {
            s.abort_tasks(None, now, &mut self.actions);
        }
        self.phase = Phase::Closed;
    }

    /// The next action to perform, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the login finished and the session is in full feature phase.
    pub fn is_full_feature(&self) -> bool {
        matches!(self.phase, Phase::FullFeature(_))
    }

    /// Whether the connection is closed (a `Close` action was emitted or `shutdown` called).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The session's identity once logged in.
    pub fn identity(&self) -> Option<&SessionIdentity> {
        match &self.phase {
            Phase::FullFeature(s) => Some(s.identity()),
            _ => None,
        }
    }

    /// The negotiated parameters once logged in.
    pub fn params(&self) -> Option<&SessionParams> {
        match &self.phase {
            Phase::FullFeature(s) => Some(s.params()),
            _ => None,
        }
    }

    /// Direct access to the full-feature session (tests, statistics).
    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::FullFeature(s) => Some(s),
            _ => None,
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if !matches!(self.phase, Phase::Closed) {
            if let Phase::FullFeature(s) = &mut self.phase {
                s.abort_tasks(None, 0, &mut self.actions);
            }
            self.actions.push_back(Action::Close(reason));
            self.phase = Phase::Closed;
        }
    }
}
