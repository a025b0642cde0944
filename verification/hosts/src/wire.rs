//! The rules an initiator follows in full feature phase, shared by every session kind: ExpStatSN and the CmdSN window (serial number arithmetic is duet-core's), how a command's write data is laid out
//! (immediate data, unsolicited Data-Out, the rest on R2T), the Data-Out PDUs of one sequence,
//! the answer to a target ping and the task a Reject names. Builds PDUs with duet-core's
//! constructors; no I/O.

use bytes::Bytes;
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::{Lun, Pdu, SessionParams, BHS_LEN, RESERVED_TAG};

pub use duet_core::iscsi::serial::{sn_gt, sn_le};

/// Whether a target PDU carries a StatSN that advances ExpStatSN (RFC 7143 §4.2.2.2): every
/// response does (SCSI Response, Data-In with S, ...), but an R2T, a Data-In without S and a
/// NOP-In that answers no NOP-Out (a target ping or an unsolicited NOP-In, ITT reserved) do
/// not.
pub fn advances_stat_sn(pdu: &Pdu) -> bool {
    match pdu.opcode() {
        Some(Opcode::R2t) => false,
        Some(Opcode::DataIn) => pdu.flags() & flags::STATUS != 0,
        Some(Opcode::NopIn) => pdu.itt() != RESERVED_TAG,
        _ => true,
    }
}

/// The sequence numbers of a session: the next CmdSN, the StatSN expected next and the last
/// CmdSN the target admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
}

impl Sequence {
    /// Takes ExpStatSN (when the PDU carries a StatSN: [`advances_stat_sn`]) and the CmdSN
    /// window from a target PDU; `true` when the window grew.
    pub fn note(&mut self, pdu: &Pdu) -> bool {
        if advances_stat_sn(pdu) {
            let next = pdu.stat_sn().wrapping_add(1);
            if sn_gt(next, self.exp_stat_sn) {
                self.exp_stat_sn = next;
            }
        }
        let exp = pdu.exp_cmd_sn();
        let max = pdu.max_cmd_sn();
        // A window is valid when MaxCmdSN >= ExpCmdSN - 1 (RFC 7143 §4.2.2.1).
        if sn_le(exp.wrapping_sub(1), max) && sn_gt(max, self.max_cmd_sn) {
            self.max_cmd_sn = max;
            return true;
        }
        false
    }

    /// Whether the CmdSN window lets one more command out.
    pub fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Takes the next CmdSN.
    pub fn take_cmd_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn = sn.wrapping_add(1);
        sn
    }
}

/// What an initiator may send of a write without being asked, after login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteLimits {
    /// The target's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_xmit_seg: usize,
    pub first_burst: usize,
    pub initial_r2t: bool,
    pub immediate_data: bool,
}

impl WriteLimits {
    /// The limits of a login's negotiated parameters (in the target's terms, see
    /// [`duet_core::iscsi::LoginResult::params`]).
    pub fn from_params(p: &SessionParams) -> WriteLimits {
        WriteLimits {
            max_xmit_seg: p.max_recv_data_segment_length.max(512) as usize,
            first_burst: p.first_burst_length as usize,
            initial_r2t: p.initial_r2t,
            immediate_data: p.immediate_data,
        }
    }

    /// How a command writing `write_len` bytes and reading `read_len` is sent.
    pub fn layout(&self, write_len: usize, read_len: u32) -> Layout {
        let immediate = if self.immediate_data {
            write_len.min(self.max_xmit_seg).min(self.first_burst)
        } else {
            0
        };
        let unsolicited_end = if self.initial_r2t {
            immediate
        } else {
            write_len.min(self.first_burst)
        };
        let mut fl = 0u8;
        if write_len > 0 {
            fl |= flags::WRITE;
        }
        if read_len > 0 {
            fl |= flags::READ;
        }
        if unsolicited_end == immediate {
            fl |= flags::FINAL;
        }
        let edtl = if write_len > 0 {
            write_len as u32
        } else {
            read_len
        };
        Layout {
            immediate,
            unsolicited_end,
            flags: fl,
            edtl,
        }
    }
}

/// The shape of one SCSI command on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of write data carried in the command PDU itself.
    pub immediate: usize,
    /// Write data up to here goes out unsolicited (Data-Out with the reserved TTT); the rest
    /// waits for R2T.
    pub unsolicited_end: usize,
    /// F, R and W bits of the command PDU.
    pub flags: u8,
    /// Expected Data Transfer Length.
    pub edtl: u32,
}

/// The Data-Out PDUs carrying `payload[start..end]` as one sequence (DataSN from 0), at most
/// `seg` bytes each, sharing `payload`'s memory.
pub fn data_out_pdus(
    itt: u32,
    ttt: u32,
    lun: Lun,
    payload: &Bytes,
    (start, end): (usize, usize),
    seg: usize,
) -> impl Iterator<Item = Pdu> + '_ {
    let seg = seg.max(1);
    let mut pos = start;
    let mut sn = 0u32;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let n = seg.min(end - pos);
        let fin = pos + n == end;
        let p = Pdu::data_out(
            itt,
            ttt,
            lun,
            sn,
            pos as u32,
            fin,
            payload.slice(pos..pos + n),
        );
        pos += n;
        sn += 1;
        Some(p)
    })
}

/// The NOP-Out answering a target's NOP-In ping (one with a TTT), if it is one.
pub fn ping_answer(nop_in: &Pdu, cmd_sn: u32) -> Option<Pdu> {
    if nop_in.ttt() == RESERVED_TAG {
        return None;
    }
    let mut p = Pdu::nop_out(RESERVED_TAG, nop_in.ttt(), cmd_sn, nop_in.data.clone());
    p.set_immediate(true);
    Some(p)
}

/// The ITT of the PDU a Reject carries back, if it carries a whole header.
pub fn rejected_itt(reject: &Pdu) -> Option<u32> {
    let d = &reject.data;
    (d.len() >= BHS_LEN).then(|| u32::from_be_bytes([d[16], d[17], d[18], d[19]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_le(5, 5));
        assert!(sn_le(0xffff_fffe, 2));
        assert!(!sn_le(3, 2));
        assert!(sn_gt(1, 0xffff_ffff));
    }

    #[test]
    fn responses_advance_stat_sn_but_r2t_partial_data_in_and_pings_do_not() {
        let mut data_in = Pdu::new(Opcode::DataIn);
        data_in.set_flags(0);
        assert!(!advances_stat_sn(&data_in));
        data_in.set_flags(flags::FINAL | flags::STATUS);
        assert!(advances_stat_sn(&data_in));
        assert!(advances_stat_sn(&Pdu::new(Opcode::ScsiResponse)));
        assert!(advances_stat_sn(&Pdu::new(Opcode::Reject)));
        assert!(!advances_stat_sn(&Pdu::new(Opcode::R2t)));
        let mut nop_in = Pdu::new(Opcode::NopIn);
        nop_in.set_itt(RESERVED_TAG).set_ttt(7);
        assert!(!advances_stat_sn(&nop_in), "a target ping");
        nop_in.set_itt(3).set_ttt(RESERVED_TAG);
        assert!(advances_stat_sn(&nop_in), "the answer to our ping");
    }

    #[test]
    fn layout_follows_the_negotiated_limits() {
        let l = WriteLimits {
            max_xmit_seg: 8192,
            first_burst: 65536,
            initial_r2t: false,
            immediate_data: true,
        };
        let w = l.layout(131072, 0);
        assert_eq!(
            (w.immediate, w.unsolicited_end, w.edtl),
            (8192, 65536, 131072)
        );
        assert_eq!(w.flags, flags::WRITE);
        let r = l.layout(0, 4096);
        assert_eq!(r.flags, flags::READ | flags::FINAL);
        let strict = WriteLimits {
            initial_r2t: true,
            immediate_data: false,
            ..l
        };
        let s = strict.layout(4096, 0);
        assert_eq!((s.immediate, s.unsolicited_end), (0, 0));
        assert_eq!(s.flags, flags::WRITE | flags::FINAL);
    }

    #[test]
    fn data_out_splits_into_segments() {
        let payload = Bytes::from(vec![7u8; 10_000]);
        let pdus: Vec<Pdu> = data_out_pdus(
            5,
            RESERVED_TAG,
            Lun::from_number(1),
            &payload,
            (1000, 10_000),
            4096,
        )
        .collect();
        assert_eq!(pdus.len(), 3);
        assert_eq!(pdus[0].buffer_offset(), 1000);
        assert_eq!(pdus[2].data_sn(), 2);
        assert!(pdus[2].final_bit() && !pdus[1].final_bit());
        assert_eq!(pdus.iter().map(|p| p.data.len()).sum::<usize>(), 9000);
    }
}
