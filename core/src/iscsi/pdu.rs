//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment with typed accessors, Additional
//! Header Segments and the data segment, plus constructors for every PDU either side sends.
//!
//! A [`Pdu`] keeps its BHS as raw bytes so that any PDU, even one Duet does not understand, can be
//! carried, echoed in a Reject and re-encoded unchanged. Field accessors are named after RFC 7143;
//! fields that share an offset in different PDUs have one accessor per name.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The reserved tag value `0xffffffff` (ITT of unanswered NOP-Out, TTT of unsolicited data).
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// AHS type of the Extended CDB AHS (RFC 7143 §11.3.1.2).
pub const AHS_EXTENDED_CDB: u8 = 1;
/// AHS type of the Bidirectional Read Expected Data Transfer Length AHS (RFC 7143 §11.3.1.3).
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

/// iSCSI opcodes (RFC 7143 §11.2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    /// Every opcode Duet knows, initiator opcodes first.
    pub const ALL: [Opcode; 18] = [
        Opcode::NopOut,
        Opcode::ScsiCommand,
        Opcode::TaskMgmtRequest,
        Opcode::LoginRequest,
        Opcode::TextRequest,
        Opcode::DataOut,
        Opcode::LogoutRequest,
        Opcode::Snack,
        Opcode::NopIn,
        Opcode::ScsiResponse,
        Opcode::TaskMgmtResponse,
        Opcode::LoginResponse,
        Opcode::TextResponse,
        Opcode::DataIn,
        Opcode::LogoutResponse,
        Opcode::R2t,
        Opcode::AsyncMessage,
        Opcode::Reject,
    ];

    /// The opcode for a 6-bit value, if it is one RFC 7143 defines.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Opcode::ALL.iter().copied().find(|o| *o as u8 == v & 0x3f)
    }

    /// Whether the initiator sends this opcode (as opposed to the target).
    pub fn from_initiator(self) -> bool {
        (self as u8) < 0x20
    }
}

/// SCSI Command task attributes (RFC 7143 §11.3.1, ATTR field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
    /// A reserved value (5-7).
    Reserved(u8),
}

impl TaskAttr {
    /// Decodes the 3-bit ATTR field.
    pub fn from_bits(v: u8) -> TaskAttr {
        match v & 7 {
            0 => TaskAttr::Untagged,
            1 => TaskAttr::Simple,
            2 => TaskAttr::Ordered,
            3 => TaskAttr::HeadOfQueue,
            4 => TaskAttr::Aca,
            n => TaskAttr::Reserved(n),
        }
    }

    /// The 3-bit ATTR field.
    pub fn bits(self) -> u8 {
        match self {
            TaskAttr::Untagged => 0,
            TaskAttr::Simple => 1,
            TaskAttr::Ordered => 2,
            TaskAttr::HeadOfQueue => 3,
            TaskAttr::Aca => 4,
            TaskAttr::Reserved(n) => n & 7,
        }
    }
}

/// An 8-byte SCSI LUN as carried in the BHS (SAM-5 §4.7). `Lun(0)` is LUN 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lun(pub u64);

impl Lun {
    /// The LUN field for LUN number `n` (peripheral addressing below 256, flat above).
    pub fn from_number(n: crate::LunNumber) -> Lun {
        if n < 256 {
            Lun((n as u64) << 48)
        } else {
            Lun((((n & 0x3fff) as u64) | 0x4000) << 48)
        }
    }

    /// The LUN number for peripheral (00b, bus 0) or flat (01b) addressing with the other levels
    /// zero; `None` for any other form.
    pub fn number(self) -> Option<crate::LunNumber> {
        if self.0 & 0x0000_ffff_ffff_ffff != 0 {
            return None;
        }
        let first = (self.0 >> 48) as u16;
        match first >> 14 {
            0 if first >> 8 == 0 => Some(first & 0xff),
            1 => Some(first & 0x3fff),
            _ => None,
        }
    }
}

/// One iSCSI PDU: BHS, AHS bytes (type/length headers included, each padded to 4 bytes) and the
/// data segment (without padding or digest).
///
/// TotalAHSLength (byte 4) and DataSegmentLength (bytes 5-7) are kept in step with `ahs` and
/// `data` by [`Pdu::set_data`]/[`Pdu::set_ahs`] and are always rewritten by the encoder.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Pdu");
        match self.opcode() {
            Some(op) => d.field("opcode", &op),
            None => d.field("opcode", &self.opcode_raw()),
        };
        d.field("immediate", &self.immediate())
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .field("ahs_len", &self.ahs.len())
            .field("data_len", &self.data.len())
            .finish()
    }
}

macro_rules! field_u32 {
    ($(#[$m:meta])* $get:ident, $set:ident, $off:expr) => {
        $(#[$m])*
        pub fn $get(&self) -> u32 {
            self.u32_at($off)
        }
        $(#[$m])*
        pub fn $set(&mut self, v: u32) -> &mut Self {
            self.put_u32_at($off, v);
            self
        }
    };
}

macro_rules! field_u16 {
    ($(#[$m:meta])* $get:ident, $set:ident, $off:expr) => {
        $(#[$m])*
        pub fn $get(&self) -> u16 {
            u16::from_be_bytes([self.bhs[$off], self.bhs[$off + 1]])
        }
        $(#[$m])*
        pub fn $set(&mut self, v: u16) -> &mut Self {
            self.bhs[$off..$off + 2].copy_from_slice(&v.to_be_bytes());
            self
        }
    };
}

impl Pdu {
    /// A PDU of `opcode` with an all-zero header and no AHS or data. For target PDUs byte 1 bit 7
    /// (F) is set, as every target PDU but Data-In/Text/Login continuations carries it.
    pub fn new(opcode: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode as u8;
        if !opcode.from_initiator() {
            bhs[1] = 0x80;
        }
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }

    /// A PDU from a raw header (as received), with the given AHS and data.
    pub fn from_parts(bhs: [u8; BHS_LEN], ahs: Bytes, data: Bytes) -> Pdu {
        Pdu { bhs, ahs, data }
    }

    pub fn u32_at(&self, off: usize) -> u32 {
        match self.bhs.get(off..off + 4) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            None => 0,
        }
    }

    pub fn put_u32_at(&mut self, off: usize, v: u32) {
        if let Some(b) = self.bhs.get_mut(off..off + 4) {
            b.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// The 6-bit opcode value as sent.
    pub fn opcode_raw(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// The opcode, if RFC 7143 defines it.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.bhs[0])
    }

    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    pub fn set_immediate(&mut self, on: bool) -> &mut Self {
        if on {
            self.bhs[0] |= 0x40;
        } else {
            self.bhs[0] &= !0x40;
        }
        self
    }

    /// Byte 1: F and the opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    pub fn set_flags(&mut self, v: u8) -> &mut Self {
        self.bhs[1] = v;
        self
    }

    /// The F (final) bit.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    pub fn set_final(&mut self, on: bool) -> &mut Self {
        if on {
            self.bhs[1] |= 0x80;
        } else {
            self.bhs[1] &= !0x80;
        }
        self
    }

    /// TotalAHSLength as written in the header, in 4-byte words.
    pub fn total_ahs_length_field(&self) -> u8 {
        self.bhs[4]
    }

    /// DataSegmentLength as written in the header.
    pub fn data_segment_length_field(&self) -> u32 {
        u32::from_be_bytes([0, self.bhs[5], self.bhs[6], self.bhs[7]])
    }

    /// Replaces the data segment and updates DataSegmentLength (truncated to 2^24-1 bytes).
    pub fn set_data(&mut self, data: Bytes) -> &mut Self {
        let data = if data.len() > 0x00ff_ffff {
            data.slice(..0x00ff_ffff)
        } else {
            data
        };
        let n = data.len() as u32;
        self.bhs[5..8].copy_from_slice(&n.to_be_bytes()[1..]);
        self.data = data;
        self
    }

    /// Replaces the AHS bytes (whole AHS segments, 4-byte aligned) and updates TotalAHSLength.
    pub fn set_ahs(&mut self, ahs: Bytes) -> &mut Self {
        let ahs = if ahs.len() > 1020 {
            ahs.slice(..1020)
        } else {
            ahs
        };
        self.bhs[4] = ahs.len().div_ceil(4) as u8;
        self.ahs = ahs;
        self
    }

    /// The LUN field (bytes 8-15).
    pub fn lun(&self) -> Lun {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bhs[8..16]);
        Lun(u64::from_be_bytes(b))
    }

    pub fn set_lun(&mut self, lun: Lun) -> &mut Self {
        self.bhs[8..16].copy_from_slice(&lun.0.to_be_bytes());
        self
    }

    field_u32!(
        /// Initiator Task Tag (bytes 16-19).
        itt, set_itt, 16
    );
    field_u32!(
        /// Target Transfer Tag (bytes 20-23: NOP, Data-In/Out, R2T, Text).
        ttt, set_ttt, 20
    );
    field_u32!(
        /// Expected Data Transfer Length of a SCSI Command (bytes 20-23).
        edtl, set_edtl, 20
    );
    field_u32!(
        /// Referenced Task Tag of a Task Management request (bytes 20-23).
        referenced_task_tag, set_referenced_task_tag, 20
    );
    field_u32!(
        /// CmdSN of an initiator request (bytes 24-27).
        cmd_sn, set_cmd_sn, 24
    );
    field_u32!(
        /// StatSN of a target PDU (bytes 24-27).
        stat_sn, set_stat_sn, 24
    );
    field_u32!(
        /// ExpStatSN of an initiator PDU (bytes 28-31).
        exp_stat_sn, set_exp_stat_sn, 28
    );
    field_u32!(
        /// ExpCmdSN of a target PDU (bytes 28-31).
        exp_cmd_sn, set_exp_cmd_sn, 28
    );
    field_u32!(
        /// MaxCmdSN of a target PDU (bytes 32-35).
        max_cmd_sn, set_max_cmd_sn, 32
    );
    field_u32!(
        /// RefCmdSN of a Task Management request (bytes 32-35).
        ref_cmd_sn, set_ref_cmd_sn, 32
    );
    field_u32!(
        /// DataSN (Data-In/Out), R2TSN (R2T) or ExpDataSN (SCSI Response, TMF request) at 36-39.
        data_sn, set_data_sn, 36
    );
    field_u32!(
        /// Buffer Offset of Data-In/Out and R2T (bytes 40-43).
        buffer_offset, set_buffer_offset, 40
    );
    field_u32!(
        /// Residual Count (SCSI Response, Data-In) or Desired Data Transfer Length (R2T), 44-47.
        residual_count, set_residual_count, 44
    );
    field_u16!(
        /// TSIH of a Login request/response (bytes 14-15).
        tsih, set_tsih, 14
    );
    field_u16!(
        /// CID of a Login or Logout request (bytes 20-21).
        cid, set_cid, 20
    );
    field_u16!(
        /// Time2Wait of a Logout response / Parameter3 of an Async Message (bytes 40-41).
        time2wait, set_time2wait, 40
    );
    field_u16!(
        /// Time2Retain of a Logout response (bytes 42-43).
        time2retain, set_time2retain, 42
    );

    /// Desired Data Transfer Length of an R2T (bytes 44-47).
    pub fn desired_length(&self) -> u32 {
        self.residual_count()
    }

    /// R2TSN of an R2T (bytes 36-39).
    pub fn r2t_sn(&self) -> u32 {
        self.data_sn()
    }

    /// Byte 2: the Response of SCSI/TMF/Logout responses, the Reason of a Reject.
    pub fn response(&self) -> u8 {
        self.bhs[2]
    }

    pub fn set_response(&mut self, v: u8) -> &mut Self {
        self.bhs[2] = v;
        self
    }

    /// Byte 3: SCSI status of a SCSI Response or of a Data-In with S.
    pub fn status(&self) -> u8 {
        self.bhs[3]
    }

    pub fn set_status(&mut self, v: u8) -> &mut Self {
        self.bhs[3] = v;
        self
    }

    /// Login: the ISID (bytes 8-13).
    pub fn isid(&self) -> [u8; 6] {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.bhs[8..14]);
        b
    }

    pub fn set_isid(&mut self, isid: [u8; 6]) -> &mut Self {
        self.bhs[8..14].copy_from_slice(&isid);
        self
    }

    /// Login: the T (transit) bit.
    pub fn login_transit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    /// Login/Text: the C (continue) bit.
    pub fn continue_bit(&self) -> bool {
        self.bhs[1] & 0x40 != 0
    }

    /// Login: the current stage (bits 3-2 of byte 1).
    pub fn login_csg(&self) -> u8 {
        (self.bhs[1] >> 2) & 3
    }

    /// Login: the next stage (bits 1-0 of byte 1).
    pub fn login_nsg(&self) -> u8 {
        self.bhs[1] & 3
    }

    /// Login: sets T, C, CSG and NSG in byte 1.
    pub fn set_login_stages(&mut self, transit: bool, cont: bool, csg: u8, nsg: u8) -> &mut Self {
        self.bhs[1] = (if transit { 0x80 } else { 0 })
            | (if cont { 0x40 } else { 0 })
            | (csg & 3) << 2
            | (nsg & 3);
        self
    }

    /// Login request: Version-max (byte 2); Login response: Version-max.
    pub fn version_max(&self) -> u8 {
        self.bhs[2]
    }

    /// Login request: Version-min (byte 3); Login response: Version-active.
    pub fn version_min(&self) -> u8 {
        self.bhs[3]
    }

    /// Login response: Status-Class (byte 36).
    pub fn status_class(&self) -> u8 {
        self.bhs[36]
    }

    /// Login response: Status-Detail (byte 37).
    pub fn status_detail(&self) -> u8 {
        self.bhs[37]
    }

    pub fn set_login_status(&mut self, class: u8, detail: u8) -> &mut Self {
        self.bhs[36] = class;
        self.bhs[37] = detail;
        self
    }

    /// Task Management request: the function (byte 1 low 7 bits).
    pub fn tmf_function(&self) -> u8 {
        self.bhs[1] & 0x7f
    }

    /// Logout request: the reason code (byte 1 low 7 bits).
    pub fn logout_reason(&self) -> u8 {
        self.bhs[1] & 0x7f
    }

    /// SCSI Command: task attribute (byte 1 low 3 bits).
    pub fn task_attr(&self) -> TaskAttr {
        TaskAttr::from_bits(self.bhs[1])
    }

    /// SCSI Command: the R (read) bit.
    pub fn read_bit(&self) -> bool {
        self.bhs[1] & 0x40 != 0
    }

    /// SCSI Command: the W (write) bit.
    pub fn write_bit(&self) -> bool {
        self.bhs[1] & 0x20 != 0
    }

    /// Async Message: AsyncEvent (byte 36).
    pub fn async_event(&self) -> u8 {
        self.bhs[36]
    }

    /// The AHS segments as `(type, specific bytes)` pairs, or a description of what is wrong.
    pub fn ahs_segments(&self) -> Result<Vec<(u8, Bytes)>, &'static str> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        let a = &self.ahs;
        while pos < a.len() {
            if a.len() - pos < 4 {
                return Err("truncated AHS header");
            }
            let len = u16::from_be_bytes([a[pos], a[pos + 1]]) as usize;
            let typ = a[pos + 2];
            if len == 0 {
                return Err("zero AHSLength");
            }
            // AHSLength counts the reserved byte 3 and the specific bytes.
            let end = pos + 3 + len;
            if end > a.len() {
                return Err("AHS longer than TotalAHSLength");
            }
            out.push((typ, a.slice(pos + 4..end)));
            pos = end.div_ceil(4) * 4;
        }
        Ok(out)
    }

    /// SCSI Command: the whole CDB (the 16 BHS bytes plus any Extended CDB AHS).
    pub fn cdb(&self) -> Bytes {
        let mut cdb = BytesMut::with_capacity(16);
        cdb.extend_from_slice(&self.bhs[32..48]);
        if let Ok(segs) = self.ahs_segments() {
            for (typ, body) in segs {
                if typ == AHS_EXTENDED_CDB {
                    cdb.extend_from_slice(&body);
                }
            }
        }
        cdb.freeze()
    }

    /// SCSI Command: sets the CDB; bytes beyond 16 go into an Extended CDB AHS.
    pub fn set_cdb(&mut self, cdb: &[u8]) -> &mut Self {
        let head = cdb.len().min(16);
        self.bhs[32..48].fill(0);
        self.bhs[32..32 + head].copy_from_slice(&cdb[..head]);
        if cdb.len() > 16 {
            // The AHS area holds at most 1020 bytes: 4 of header, 1016 of CDB.
            let rest = &cdb[16..cdb.len().min(16 + 1016)];
            let mut a = BytesMut::new();
            a.put_u16((rest.len() + 1) as u16);
            a.put_u8(AHS_EXTENDED_CDB);
            a.put_u8(0);
            a.extend_from_slice(rest);
            while a.len() & 3 != 0 {
                a.put_u8(0);
            }
            self.set_ahs(a.freeze());
        }
        self
    }

    /// SCSI Command: the Bidirectional Read EDTL from its AHS, if present.
    pub fn bidi_read_length(&self) -> Option<u32> {
        let segs = self.ahs_segments().ok()?;
        segs.iter().find_map(|(t, b)| {
            if *t == AHS_BIDI_READ_LENGTH && b.len() >= 4 {
                Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            } else {
                None
            }
        })
    }

    /// SCSI Response: the sense data carried in the data segment (after its 2-byte length).
    pub fn sense_data(&self) -> Option<Bytes> {
        if self.data.len() < 2 {
            return None;
        }
        let n = u16::from_be_bytes([self.data[0], self.data[1]]) as usize;
        if n == 0 || self.data.len() < 2 + n {
            return None;
        }
        Some(self.data.slice(2..2 + n))
    }

    // ----- constructors: initiator PDUs (used by tests and an initiator) -----

    /// A SCSI Command. `flags` holds F/R/W; `attr` is added to them.
    pub fn scsi_command(
        itt: u32,
        lun: Lun,
        cdb: &[u8],
        edtl: u32,
        cmd_sn: u32,
        flags: u8,
        attr: TaskAttr,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.set_flags((flags & 0xe0) | attr.bits())
            .set_itt(itt)
            .set_lun(lun)
            .set_edtl(edtl)
            .set_cmd_sn(cmd_sn)
            .set_cdb(cdb);
        p
    }

    /// A Data-Out PDU.
    pub fn data_out(
        itt: u32,
        ttt: u32,
        lun: Lun,
        data_sn: u32,
        offset: u32,
        fin: bool,
        data: Bytes,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::DataOut);
        p.set_final(fin)
            .set_itt(itt)
            .set_ttt(ttt)
            .set_lun(lun)
            .set_data_sn(data_sn)
            .set_buffer_offset(offset)
            .set_data(data);
        p
    }

    /// A NOP-Out (ping when `itt` is not reserved, answer to a target ping when it is).
    pub fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, data: Bytes) -> Pdu {
        let mut p = Pdu::new(Opcode::NopOut);
        p.set_final(true)
            .set_itt(itt)
            .set_ttt(ttt)
            .set_cmd_sn(cmd_sn)
            .set_data(data);
        p
    }

    /// A Login request (immediate) with text `data`.
    pub fn login_request(
        isid: [u8; 6],
        tsih: u16,
        itt: u32,
        cmd_sn: u32,
        stages: (bool, u8, u8),
        data: Bytes,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.set_immediate(true)
            .set_login_stages(stages.0, false, stages.1, stages.2)
            .set_isid(isid)
            .set_tsih(tsih)
            .set_itt(itt)
            .set_cmd_sn(cmd_sn)
            .set_data(data);
        p
    }

    /// A Text request with text `data` (F set, TTT reserved unless continuing).
    pub fn text_request(itt: u32, ttt: u32, cmd_sn: u32, data: Bytes) -> Pdu {
        let mut p = Pdu::new(Opcode::TextRequest);
        p.set_final(true)
            .set_itt(itt)
            .set_ttt(ttt)
            .set_cmd_sn(cmd_sn)
            .set_data(data);
        p
    }

    /// A Logout request for `reason` (0 session, 1 connection, 2 recovery).
    pub fn logout_request(itt: u32, cmd_sn: u32, reason: u8, cid: u16) -> Pdu {
        let mut p = Pdu::new(Opcode::LogoutRequest);
        p.set_flags(0x80 | (reason & 0x7f))
            .set_itt(itt)
            .set_cmd_sn(cmd_sn)
            .set_cid(cid);
        p
    }

    /// A Task Management request.
    pub fn tmf_request(
        itt: u32,
        function: u8,
        lun: Lun,
        ref_itt: u32,
        cmd_sn: u32,
        ref_cmd_sn: u32,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::TaskMgmtRequest);
        p.set_flags(0x80 | (function & 0x7f))
            .set_itt(itt)
            .set_lun(lun)
            .set_referenced_task_tag(ref_itt)
            .set_cmd_sn(cmd_sn)
            .set_ref_cmd_sn(ref_cmd_sn);
        p
    }

    // ----- constructors: target PDUs -----

    /// A Reject of `rejected`'s header for `reason` (RFC 7143 §11.17.1).
    pub fn reject(reason: u8, rejected: &[u8; BHS_LEN]) -> Pdu {
        let mut p = Pdu::new(Opcode::Reject);
        p.set_response(reason).set_itt(RESERVED_TAG);
        p.set_data(Bytes::copy_from_slice(rejected));
        p
    }

    /// An Async Message carrying `event` (0 SCSI event with `sense`, 1 request logout, ...),
    /// with parameters 1-3 at bytes 38, 40, 42.
    pub fn async_message(
        event: u8,
        vcode: u8,
        lun: Lun,
        params: [u16; 3],
        sense: Option<&[u8]>,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::AsyncMessage);
        p.set_lun(lun).set_itt(RESERVED_TAG);
        p.bhs[36] = event;
        p.bhs[37] = vcode;
        p.bhs[38..40].copy_from_slice(&params[0].to_be_bytes());
        p.bhs[40..42].copy_from_slice(&params[1].to_be_bytes());
        p.bhs[42..44].copy_from_slice(&params[2].to_be_bytes());
        if let Some(s) = sense {
            p.set_data(sense_segment(s));
        }
        p
    }
}

/// The data segment of a SCSI Response or Async Message carrying `sense`: 2-byte SenseLength and
/// the sense bytes (at most 65535 of them).
pub fn sense_segment(sense: &[u8]) -> Bytes {
    let n = sense.len().min(0xffff);
    let mut b = BytesMut::with_capacity(2 + n);
    b.put_u16(n as u16);
    b.extend_from_slice(&sense[..n]);
    b.freeze()
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OPERATION_REJECT: u8 = 0x0a;
    pub const NEGOTIATION_RESET: u8 = 0x0b;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Flags of SCSI Response and Data-In PDUs.
pub mod flags {
    /// Data-In: status is present (S).
    pub const STATUS: u8 = 0x01;
    /// Residual underflow (U).
    pub const UNDERFLOW: u8 = 0x02;
    /// Residual overflow (O).
    pub const OVERFLOW: u8 = 0x04;
    /// Data-In: acknowledge requested (A).
    pub const ACK: u8 = 0x40;
    /// SCSI Command: read (R).
    pub const READ: u8 = 0x40;
    /// SCSI Command: write (W).
    pub const WRITE: u8 = 0x20;
    /// Final (F).
    pub const FINAL: u8 = 0x80;
}
