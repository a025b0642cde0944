//! NOP-Out answers and the target's NOP-In pings of [`Session`], with their timeouts.
//! Touches only the session's own fields and the action queue it is given.

use super::*;

impl Session {
    pub(super) fn handle_nop_out(&mut self, pdu: Pdu, out: &mut VecDeque<Action>) {
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
}
