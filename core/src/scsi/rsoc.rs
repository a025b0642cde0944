//! The table of supported commands and REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
//!
//! The CDB usage bitmaps say which bits the decoder in [`super::cdb`] looks at; keep the two in
//! step.

use super::sense_data::Sense;

/// One supported command: operation code, service action (if the opcode has them) and the CDB
/// usage bitmap (whose length is the CDB length).
pub(crate) struct OpInfo {
    pub opcode: u8,
    pub sa: Option<u16>,
    pub usage: &'static [u8],
}

const C: u8 = 0x07; // control byte: NACA, obsolete FLAG/LINK

macro_rules! op {
    ($opc:expr, $($b:expr),*) => {
        OpInfo { opcode: $opc, sa: None, usage: &[$opc, $($b),*] }
    };
}
macro_rules! op_sa {
    ($opc:expr, $sa:expr, $($b:expr),*) => {
        OpInfo { opcode: $opc, sa: Some($sa), usage: &[$opc, $($b),*] }
    };
}

const F: u8 = 0xFF;

pub(crate) static OPS: &[OpInfo] = &[
    op!(0x00, 0, 0, 0, 0, C),                         // TEST UNIT READY
    op!(0x03, 0x01, 0, 0, F, C),                      // REQUEST SENSE
    op!(0x08, 0x1F, F, F, F, C),                      // READ(6)
    op!(0x0A, 0x1F, F, F, F, C),                      // WRITE(6)
    op!(0x12, 0x01, F, F, F, C),                      // INQUIRY
    op!(0x15, 0x11, 0, 0, F, C),                      // MODE SELECT(6)
    op!(0x16, 0, 0, 0, 0, C),                         // RESERVE(6)
    op!(0x17, 0, 0, 0, 0, C),                         // RELEASE(6)
    op!(0x1A, 0x08, F, F, F, C),                      // MODE SENSE(6)
    op!(0x1B, 0x01, 0, 0x0F, 0xF7, C),                // START STOP UNIT
    op!(0x1E, 0, 0, 0, 0x03, C),                      // PREVENT ALLOW MEDIUM REMOVAL
    op!(0x25, 0, F, F, F, F, 0, 0, 0x01, C),          // READ CAPACITY(10)
    op!(0x28, 0xF8, F, F, F, F, 0x3F, F, F, C),       // READ(10)
    op!(0x2A, 0xF8, F, F, F, F, 0x3F, F, F, C),       // WRITE(10)
    op!(0x2E, 0xF2, F, F, F, F, 0x3F, F, F, C),       // WRITE AND VERIFY(10)
    op!(0x2F, 0xF6, F, F, F, F, 0x3F, F, F, C),       // VERIFY(10)
    op!(0x34, 0x02, F, F, F, F, 0x3F, F, F, C),       // PRE-FETCH(10)
    op!(0x35, 0x02, F, F, F, F, 0x3F, F, F, C),       // SYNCHRONIZE CACHE(10)
    op!(0x37, 0, 0x1F, 0, 0, 0, 0, F, F, C),          // READ DEFECT DATA(10)
    op!(0x41, 0xF8, F, F, F, F, 0x3F, F, F, C),       // WRITE SAME(10)
    op!(0x42, 0x01, 0, 0, 0, 0, 0x3F, F, F, C),       // UNMAP
    op!(0x55, 0x11, 0, 0, 0, 0, 0, F, F, C),          // MODE SELECT(10)
    op!(0x56, 0, 0, 0, 0, 0, 0, 0, 0, C),             // RESERVE(10)
    op!(0x57, 0, 0, 0, 0, 0, 0, 0, 0, C),             // RELEASE(10)
    op!(0x5A, 0x18, F, F, 0, 0, 0, F, F, C),          // MODE SENSE(10)
    op_sa!(0x5E, 0x00, 0x1F, 0, 0, 0, 0, 0, F, F, C), // PR IN READ KEYS
    op_sa!(0x5E, 0x01, 0x1F, 0, 0, 0, 0, 0, F, F, C), // PR IN READ RESERVATION
    op_sa!(0x5E, 0x02, 0x1F, 0, 0, 0, 0, 0, F, F, C), // PR IN REPORT CAPABILITIES
    op_sa!(0x5E, 0x03, 0x1F, 0, 0, 0, 0, 0, F, F, C), // PR IN READ FULL STATUS
    op_sa!(0x5F, 0x00, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT REGISTER
    op_sa!(0x5F, 0x01, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT RESERVE
    op_sa!(0x5F, 0x02, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT RELEASE
    op_sa!(0x5F, 0x03, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT CLEAR
    op_sa!(0x5F, 0x04, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT PREEMPT
    op_sa!(0x5F, 0x05, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT PREEMPT AND ABORT
    op_sa!(0x5F, 0x06, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT REGISTER AND IGNORE
    op_sa!(0x5F, 0x07, 0x1F, F, 0, 0, F, F, F, F, C), // PR OUT REGISTER AND MOVE
    op!(0x88, 0xF8, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // READ(16)
    op!(0x89, 0xF8, F, F, F, F, F, F, F, F, 0, 0, 0, F, 0x3F, C), // COMPARE AND WRITE
    op!(0x8A, 0xF8, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // WRITE(16)
    op!(0x8B, 0xF8, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // ORWRITE(16)
    op!(0x8E, 0xF2, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // WRITE AND VERIFY(16)
    op!(0x8F, 0xF6, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // VERIFY(16)
    op!(0x90, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // PRE-FETCH(16)
    op!(0x91, 0x02, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // SYNCHRONIZE CACHE(16)
    op!(0x93, 0xF9, F, F, F, F, F, F, F, F, F, F, F, F, 0x3F, C), // WRITE SAME(16)
    op_sa!(0x9E, 0x10, 0x1F, F, F, F, F, F, F, F, F, F, F, F, F, 0, C), // READ CAPACITY(16)
    op_sa!(0x9E, 0x12, 0x1F, F, F, F, F, F, F, F, F, F, F, F, F, 0, C), // GET LBA STATUS
    op!(0xA0, 0, F, 0, 0, 0, F, F, F, F, 0, C),       // REPORT LUNS
    op_sa!(0xA3, 0x0A, 0xFF, 0, 0, 0, 0, F, F, F, F, 0, C), // REPORT TARGET PORT GROUPS
    op_sa!(0xA3, 0x0C, 0x1F, 0x87, F, F, F, F, F, F, F, 0, C), // REPORT SUPPORTED OP CODES
    op_sa!(0xA4, 0x0A, 0x1F, 0, 0, 0, 0, F, F, F, F, 0, C), // SET TARGET PORT GROUPS
    op!(0xA8, 0xF8, F, F, F, F, F, F, F, F, 0x3F, C), // READ(12)
    op!(0xAA, 0xF8, F, F, F, F, F, F, F, F, 0x3F, C), // WRITE(12)
    op!(0xAE, 0xF2, F, F, F, F, F, F, F, F, 0x3F, C), // WRITE AND VERIFY(12)
    op!(0xAF, 0xF6, F, F, F, F, F, F, F, F, 0x3F, C), // VERIFY(12)
    op!(0xB7, 0x1F, 0, 0, 0, 0, F, F, F, F, 0, C),    // READ DEFECT DATA(12)
];

/// Whether any supported command uses this operation code.
pub(crate) fn is_supported_opcode(opcode: u8) -> bool {
    OPS.iter().any(|o| o.opcode == opcode)
}

fn has_service_actions(opcode: u8) -> bool {
    OPS.iter().any(|o| o.opcode == opcode && o.sa.is_some())
}

/// Nominal and recommended command timeouts (seconds) reported with RCTD.
fn timeouts(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x00, 0x0A, 0, 0]);
    out.extend_from_slice(&30u32.to_be_bytes());
    out.extend_from_slice(&60u32.to_be_bytes());
}

/// Build REPORT SUPPORTED OPERATION CODES data (not cut to the allocation length).
pub(crate) fn report(rctd: bool, options: u8, opcode: u8, sa: u16) -> Result<Vec<u8>, Sense> {
    let mut out = Vec::new();
    let ctdp = if rctd { 0x80 } else { 0 };
    let one = |info: Option<&OpInfo>, out: &mut Vec<u8>| {
        match info {
            Some(i) => {
                out.extend_from_slice(&[0, ctdp | 0x03]);
                out.extend_from_slice(&(i.usage.len() as u16).to_be_bytes());
                out.extend_from_slice(i.usage);
                if rctd {
                    timeouts(out);
                }
            }
            None => out.extend_from_slice(&[0, 0x01, 0, 0]),
        };
    };
    match options {
        0 => {
            out.extend_from_slice(&[0; 4]);
            for i in OPS {
                out.push(i.opcode);
                out.push(0);
                out.extend_from_slice(&i.sa.unwrap_or(0).to_be_bytes());
                out.push(0);
                out.push(if rctd { 0x02 } else { 0 } | u8::from(i.sa.is_some()));
                out.extend_from_slice(&(i.usage.len() as u16).to_be_bytes());
                if rctd {
                    timeouts(&mut out);
                }
            }
            let len = (out.len() - 4) as u32;
            out[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1 => {
            if has_service_actions(opcode) {
                return Err(Sense::cdb_field(2, Some(0)));
            }
            one(OPS.iter().find(|o| o.opcode == opcode), &mut out);
        }
        2 => {
            if !has_service_actions(opcode) {
                return Err(Sense::cdb_field(2, Some(0)));
            }
            one(
                OPS.iter().find(|o| o.opcode == opcode && o.sa == Some(sa)),
                &mut out,
            );
        }
        3 => {
            let info = if has_service_actions(opcode) {
                OPS.iter().find(|o| o.opcode == opcode && o.sa == Some(sa))
            } else {
                OPS.iter().find(|o| o.opcode == opcode)
            };
            one(info, &mut out);
        }
        _ => return Err(Sense::cdb_field(2, Some(0))),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::cdb_length;

    #[test]
    fn usage_bitmaps_have_the_cdb_length() {
        for o in OPS {
            assert_eq!(o.usage.len(), cdb_length(o.opcode), "{:02x}", o.opcode);
            assert_eq!(o.usage[0], o.opcode);
        }
    }

    #[test]
    fn one_command_rules() {
        assert!(report(false, 1, 0x5E, 0).is_err());
        assert!(report(false, 2, 0x28, 0).is_err());
        let r = report(false, 1, 0x28, 0).unwrap();
        assert_eq!(r[1] & 7, 3);
        assert_eq!(r[4], 0x28);
        let u = report(false, 1, 0xC0, 0).unwrap();
        assert_eq!(u[1] & 7, 1);
    }
}
