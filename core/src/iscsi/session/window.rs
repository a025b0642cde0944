//! The CmdSN window of [`Session`] (RFC 7143 §4.2.2.1): immediate requests, requests outside
//! [ExpCmdSN, MaxCmdSN] dropped, requests held until their CmdSN's turn, and the dispatch of a
//! request whose turn has come.
//! Touches only the session's own fields and the action queue it is given.

use super::*;

impl Session {
    /// CmdSN rules for requests (RFC 7143 §4.2.2.1).
    pub(super) fn handle_request(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
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

    /// Runs held requests whose turn has come.
    pub(super) fn drain_held(&mut self, now: Millis, out: &mut VecDeque<Action>) {
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
    pub(super) fn process(&mut self, pdu: Pdu, now: Millis, out: &mut VecDeque<Action>) {
        match pdu.opcode() {
            Some(Opcode::NopOut) => self.handle_nop_out(pdu, out),
            Some(Opcode::TaskMgmtRequest) => self.handle_tmf(pdu, now, out),
            Some(Opcode::TextRequest) => self.handle_text(pdu, out),
            Some(Opcode::LogoutRequest) => self.handle_logout(pdu, now, out),
            _ => self.reject(reject_reason::PROTOCOL_ERROR, &pdu, out),
        }
    }
}
