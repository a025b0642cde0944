//! CDB decoding: command descriptor block bytes into a typed [`Command`]. Never panics: short
//! CDBs and reserved values come back as a [`Sense`].

use super::sense_data::Sense;
use crate::sense::SenseCode;

/// Operation codes Duet knows (SPC-4, SBC-3).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const MAINTENANCE_OUT: u8 = 0xA4;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;

    /// SERVICE ACTION IN(16) service actions.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const SAI_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    /// MAINTENANCE OUT service actions.
    pub const MO_SET_TARGET_PORT_GROUPS: u8 = 0x0A;
}

/// A block read/write/verify addressed by LBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    pub lba: u64,
    /// Number of logical blocks (6-byte CDBs: 0 already turned into 256 for READ/WRITE 6).
    pub blocks: u32,
}

/// Flags common to READ/WRITE-class CDBs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IoFlags {
    /// RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT (bits 7-5 of byte 1).
    pub protect: u8,
    pub dpo: bool,
    pub fua: bool,
}

/// The decoded command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ReportLuns {
        select: u8,
        alloc: u32,
    },
    ReadCapacity10 {
        lba: u32,
        pmi: bool,
    },
    ReadCapacity16 {
        alloc: u32,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    Read {
        range: BlockRange,
        flags: IoFlags,
        cdb_len: u8,
    },
    Write {
        range: BlockRange,
        flags: IoFlags,
        cdb_len: u8,
    },
    /// BYTCHK: 0 = media check only, 1 = compare with Data-Out, 3 = compare every block with one
    /// block of Data-Out.
    Verify {
        range: BlockRange,
        flags: IoFlags,
        bytchk: u8,
    },
    WriteAndVerify {
        range: BlockRange,
        flags: IoFlags,
        bytchk: u8,
    },
    OrWrite {
        range: BlockRange,
        flags: IoFlags,
    },
    CompareAndWrite {
        range: BlockRange,
        flags: IoFlags,
    },
    WriteSame {
        range: BlockRange,
        protect: u8,
        anchor: bool,
        unmap: bool,
        ndob: bool,
        sixteen: bool,
    },
    Unmap {
        anchor: bool,
        param_len: u32,
    },
    SynchronizeCache {
        range: BlockRange,
        immed: bool,
    },
    PreFetch {
        range: BlockRange,
        immed: bool,
    },
    ModeSense {
        six: bool,
        dbd: bool,
        llbaa: bool,
        pc: u8,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        six: bool,
        pf: bool,
        sp: bool,
        param_len: u32,
    },
    StartStopUnit {
        immed: bool,
        power_condition: u8,
        loej: bool,
        start: bool,
    },
    PreventAllow {
        prevent: u8,
    },
    Reserve {
        ten: bool,
    },
    Release {
        ten: bool,
    },
    PersistentReserveIn {
        sa: u8,
        alloc: u32,
    },
    PersistentReserveOut {
        sa: u8,
        scope: u8,
        ptype: u8,
        param_len: u32,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
        alloc: u32,
    },
    ReportTargetPortGroups {
        extended: bool,
        alloc: u32,
    },
    SetTargetPortGroups {
        param_len: u32,
    },
    ReadDefectData {
        twelve: bool,
        plist: bool,
        glist: bool,
        format: u8,
        alloc: u32,
    },
}

fn be16(c: &[u8], at: usize) -> u32 {
    u16::from_be_bytes([c[at], c[at + 1]]) as u32
}
fn be32(c: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]])
}
fn be64(c: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The CDB length the SCSI command set assigns to an operation code's group.
pub fn cdb_length(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 6,
    }
}

fn io_flags(b1: u8) -> IoFlags {
    IoFlags {
        protect: b1 >> 5,
        dpo: b1 & 0x10 != 0,
        fua: b1 & 0x08 != 0,
    }
}

/// Namespace for CDB parsing.
pub struct Cdb;

impl Cdb {
    /// Decode a CDB. Unknown operation codes and service actions give 05/20/00 (for
    /// MAINTENANCE IN/OUT and SERVICE ACTION IN: 05/24/00 pointing at byte 1); CDBs shorter than
    /// their operation code needs give 05/24/00.
    pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
        let Some(&opcode) = cdb.first() else {
            return Err(Sense::new(SenseCode::INVALID_OPCODE));
        };
        if !super::rsoc::is_supported_opcode(opcode) {
            return Err(Sense::new(SenseCode::INVALID_OPCODE));
        }
        let need = cdb_length(opcode);
        if cdb.len() < need {
            return Err(Sense::new(SenseCode::INVALID_FIELD_IN_CDB));
        }
        let c = cdb;
        let sa = c[1] & 0x1F;
        use op::*;
        Ok(match opcode {
            TEST_UNIT_READY => Command::TestUnitReady,
            REQUEST_SENSE => Command::RequestSense {
                desc: c[1] & 1 != 0,
                alloc: c[4] as u32,
            },
            INQUIRY => {
                if c[1] & 0x02 != 0 {
                    return Err(Sense::cdb_field(1, Some(1)));
                }
                Command::Inquiry {
                    evpd: c[1] & 1 != 0,
                    page: c[2],
                    alloc: be16(c, 3),
                }
            }
            REPORT_LUNS => Command::ReportLuns {
                select: c[2],
                alloc: be32(c, 6),
            },
            READ_CAPACITY_10 => Command::ReadCapacity10 {
                lba: be32(c, 2),
                pmi: c[8] & 1 != 0,
            },
            SERVICE_ACTION_IN_16 => match sa {
                SAI_READ_CAPACITY_16 => Command::ReadCapacity16 { alloc: be32(c, 10) },
                SAI_GET_LBA_STATUS => Command::GetLbaStatus {
                    lba: be64(c, 2),
                    alloc: be32(c, 10),
                },
                _ => return Err(Sense::cdb_field(1, Some(4))),
            },
            READ_6 | WRITE_6 => {
                let lba = (((c[1] & 0x1F) as u64) << 16) | ((c[2] as u64) << 8) | c[3] as u64;
                let blocks = if c[4] == 0 { 256 } else { c[4] as u32 };
                let range = BlockRange { lba, blocks };
                let flags = IoFlags::default();
                if opcode == READ_6 {
                    Command::Read {
                        range,
                        flags,
                        cdb_len: 6,
                    }
                } else {
                    Command::Write {
                        range,
                        flags,
                        cdb_len: 6,
                    }
                }
            }
            READ_10 | WRITE_10 | READ_12 | WRITE_12 | READ_16 | WRITE_16 => {
                let (range, len) = match opcode {
                    READ_10 | WRITE_10 => (
                        BlockRange {
                            lba: be32(c, 2) as u64,
                            blocks: be16(c, 7),
                        },
                        10,
                    ),
                    READ_12 | WRITE_12 => (
                        BlockRange {
                            lba: be32(c, 2) as u64,
                            blocks: be32(c, 6),
                        },
                        12,
                    ),
                    _ => (
                        BlockRange {
                            lba: be64(c, 2),
                            blocks: be32(c, 10),
                        },
                        16,
                    ),
                };
                let flags = io_flags(c[1]);
                if matches!(opcode, READ_10 | READ_12 | READ_16) {
                    Command::Read {
                        range,
                        flags,
                        cdb_len: len,
                    }
                } else {
                    Command::Write {
                        range,
                        flags,
                        cdb_len: len,
                    }
                }
            }
            VERIFY_10 | VERIFY_12 | VERIFY_16 | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12
            | WRITE_AND_VERIFY_16 => {
                let range = match opcode {
                    VERIFY_10 | WRITE_AND_VERIFY_10 => BlockRange {
                        lba: be32(c, 2) as u64,
                        blocks: be16(c, 7),
                    },
                    VERIFY_12 | WRITE_AND_VERIFY_12 => BlockRange {
                        lba: be32(c, 2) as u64,
                        blocks: be32(c, 6),
                    },
                    _ => BlockRange {
                        lba: be64(c, 2),
                        blocks: be32(c, 10),
                    },
                };
                let flags = IoFlags {
                    fua: false,
                    ..io_flags(c[1])
                };
                let bytchk = (c[1] >> 1) & 3;
                if matches!(opcode, VERIFY_10 | VERIFY_12 | VERIFY_16) {
                    Command::Verify {
                        range,
                        flags,
                        bytchk,
                    }
                } else {
                    Command::WriteAndVerify {
                        range,
                        flags,
                        bytchk,
                    }
                }
            }
            ORWRITE_16 => Command::OrWrite {
                range: BlockRange {
                    lba: be64(c, 2),
                    blocks: be32(c, 10),
                },
                flags: io_flags(c[1]),
            },
            COMPARE_AND_WRITE => Command::CompareAndWrite {
                range: BlockRange {
                    lba: be64(c, 2),
                    blocks: c[13] as u32,
                },
                flags: io_flags(c[1]),
            },
            WRITE_SAME_10 | WRITE_SAME_16 => {
                let sixteen = opcode == WRITE_SAME_16;
                let range = if sixteen {
                    BlockRange {
                        lba: be64(c, 2),
                        blocks: be32(c, 10),
                    }
                } else {
                    BlockRange {
                        lba: be32(c, 2) as u64,
                        blocks: be16(c, 7),
                    }
                };
                Command::WriteSame {
                    range,
                    protect: c[1] >> 5,
                    anchor: c[1] & 0x10 != 0,
                    unmap: c[1] & 0x08 != 0,
                    ndob: sixteen && c[1] & 0x01 != 0,
                    sixteen,
                }
            }
            UNMAP => Command::Unmap {
                anchor: c[1] & 1 != 0,
                param_len: be16(c, 7),
            },
            SYNCHRONIZE_CACHE_10 | PRE_FETCH_10 | SYNCHRONIZE_CACHE_16 | PRE_FETCH_16 => {
                let range = if matches!(opcode, SYNCHRONIZE_CACHE_10 | PRE_FETCH_10) {
                    BlockRange {
                        lba: be32(c, 2) as u64,
                        blocks: be16(c, 7),
                    }
                } else {
                    BlockRange {
                        lba: be64(c, 2),
                        blocks: be32(c, 10),
                    }
                };
                let immed = c[1] & 0x02 != 0;
                if matches!(opcode, SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16) {
                    Command::SynchronizeCache { range, immed }
                } else {
                    Command::PreFetch { range, immed }
                }
            }
            MODE_SENSE_6 | MODE_SENSE_10 => {
                let six = opcode == MODE_SENSE_6;
                Command::ModeSense {
                    six,
                    dbd: c[1] & 0x08 != 0,
                    llbaa: !six && c[1] & 0x10 != 0,
                    pc: c[2] >> 6,
                    page: c[2] & 0x3F,
                    subpage: c[3],
                    alloc: if six { c[4] as u32 } else { be16(c, 7) },
                }
            }
            MODE_SELECT_6 | MODE_SELECT_10 => {
                let six = opcode == MODE_SELECT_6;
                Command::ModeSelect {
                    six,
                    pf: c[1] & 0x10 != 0,
                    sp: c[1] & 0x01 != 0,
                    param_len: if six { c[4] as u32 } else { be16(c, 7) },
                }
            }
            START_STOP_UNIT => Command::StartStopUnit {
                immed: c[1] & 1 != 0,
                power_condition: c[4] >> 4,
                loej: c[4] & 0x02 != 0,
                start: c[4] & 0x01 != 0,
            },
            PREVENT_ALLOW => Command::PreventAllow { prevent: c[4] & 3 },
            RESERVE_6 | RESERVE_10 => {
                let ten = opcode == RESERVE_10;
                if ten && c[1] & 0x12 != 0 {
                    // Third-party and long-id reservations are not supported.
                    return Err(Sense::cdb_field(1, None));
                }
                if !ten && c[1] & 0x01 != 0 {
                    // Extent reservations (obsolete).
                    return Err(Sense::cdb_field(1, Some(0)));
                }
                Command::Reserve { ten }
            }
            RELEASE_6 | RELEASE_10 => {
                let ten = opcode == RELEASE_10;
                if ten && c[1] & 0x12 != 0 {
                    return Err(Sense::cdb_field(1, None));
                }
                Command::Release { ten }
            }
            PERSISTENT_RESERVE_IN => Command::PersistentReserveIn {
                sa,
                alloc: be16(c, 7),
            },
            PERSISTENT_RESERVE_OUT => Command::PersistentReserveOut {
                sa,
                scope: c[2] >> 4,
                ptype: c[2] & 0x0F,
                param_len: be32(c, 5),
            },
            MAINTENANCE_IN => match sa {
                MI_REPORT_TARGET_PORT_GROUPS => {
                    let format = c[1] >> 5;
                    if format > 1 {
                        return Err(Sense::cdb_field(1, Some(5)));
                    }
                    Command::ReportTargetPortGroups {
                        extended: format == 1,
                        alloc: be32(c, 6),
                    }
                }
                MI_REPORT_SUPPORTED_OPCODES => Command::ReportSupportedOpcodes {
                    rctd: c[2] & 0x80 != 0,
                    options: c[2] & 0x07,
                    opcode: c[3],
                    sa: be16(c, 4) as u16,
                    alloc: be32(c, 6),
                },
                _ => return Err(Sense::cdb_field(1, Some(4))),
            },
            MAINTENANCE_OUT => match sa {
                MO_SET_TARGET_PORT_GROUPS => Command::SetTargetPortGroups {
                    param_len: be32(c, 6),
                },
                _ => return Err(Sense::cdb_field(1, Some(4))),
            },
            READ_DEFECT_DATA_10 => Command::ReadDefectData {
                twelve: false,
                plist: c[2] & 0x10 != 0,
                glist: c[2] & 0x08 != 0,
                format: c[2] & 0x07,
                alloc: be16(c, 7),
            },
            READ_DEFECT_DATA_12 => Command::ReadDefectData {
                twelve: true,
                plist: c[1] & 0x10 != 0,
                glist: c[1] & 0x08 != 0,
                format: c[1] & 0x07,
                alloc: be32(c, 6),
            },
            _ => return Err(Sense::new(SenseCode::INVALID_OPCODE)),
        })
    }
}

impl Command {
    /// Whether the command changes the medium (for write protection and reservations).
    pub fn writes_medium(&self) -> bool {
        matches!(
            self,
            Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::OrWrite { .. }
                | Command::CompareAndWrite { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_read10_and_write16() {
        let c = Cdb::parse(&[0x28, 0x18, 0, 0, 0, 5, 0, 0, 2, 0]).unwrap();
        assert_eq!(
            c,
            Command::Read {
                range: BlockRange { lba: 5, blocks: 2 },
                flags: IoFlags {
                    protect: 0,
                    dpo: true,
                    fua: true
                },
                cdb_len: 10
            }
        );
        let mut w = [0u8; 16];
        w[0] = 0x8A;
        w[9] = 7;
        w[13] = 1;
        assert!(matches!(
            Cdb::parse(&w).unwrap(),
            Command::Write {
                range: BlockRange { lba: 7, blocks: 1 },
                ..
            }
        ));
    }

    #[test]
    fn six_byte_zero_length_means_256() {
        match Cdb::parse(&[0x08, 0, 0, 1, 0, 0]).unwrap() {
            Command::Read { range, .. } => assert_eq!(range.blocks, 256),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn short_or_unknown_cdbs_are_errors() {
        assert_eq!(
            Cdb::parse(&[0x28, 0, 0]).unwrap_err().code,
            SenseCode::INVALID_FIELD_IN_CDB
        );
        assert_eq!(
            Cdb::parse(&[0xFF; 16]).unwrap_err().code,
            SenseCode::INVALID_OPCODE
        );
        assert_eq!(Cdb::parse(&[]).unwrap_err().code, SenseCode::INVALID_OPCODE);
    }
}
