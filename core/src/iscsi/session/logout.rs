//! Logout of [`Session`] and the asynchronous messages the target sends (logout request, SCSI
//! event).
//! Touches only the session's own fields and the action queue it is given.

use super::*;

impl Session {
    pub(super) fn handle_logout(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
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
    pub(super) fn maybe_finish_logout(&mut self, _now: Millis, out: &mut VecDeque<Action>) {
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
