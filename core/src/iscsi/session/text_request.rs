//! Text requests of [`Session`]: continued (C bit) requests, SendTargets and the text response,
//! sent in chunks when longer than MaxRecvDataSegmentLength.
//! Touches only the session's own fields and the action queue it is given.

use super::*;

/// The most text a Text request may accumulate over continued (C bit) PDUs.
const MAX_TEXT_IN: usize = 65536;

impl Session {
    pub(super) fn handle_text(&mut self, pdu: Pdu, out: &mut VecDeque<Action>) {
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
    pub(super) fn send_targets(&self, value: &str) -> Option<TextPairs> {
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

    pub(super) fn send_text_chunk(&mut self, itt: u32, data: Bytes, out: &mut VecDeque<Action>) {
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
}
