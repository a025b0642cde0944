//! SCSI as a host speaks it: the CDBs a host sends and parsers of the data that comes back
//! (READ CAPACITY (16), the Device Identification VPD page, REPORT TARGET PORT GROUPS), the
//! mirror of what the logical unit decodes and builds. Used by the test hosts, the model's
//! clients and the tests. Status values and sense decoding are in [`crate::sense`]. Pure.

use crate::alua::AluaState;

/// TEST UNIT READY.
pub fn test_unit_ready_cdb() -> [u8; 6] {
    [0u8; 6]
}

/// READ (10) of `blocks` blocks at `lba`.
pub const fn read10_cdb(lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

/// WRITE (10) of `blocks` blocks at `lba`.
pub const fn write10_cdb(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10_cdb(lba, blocks);
    c[0] = 0x2a;
    c
}

/// READ (16) CDB.
pub fn read16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE (16) CDB.
pub fn write16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16_cdb(lba, blocks);
    c[0] = 0x8a;
    c
}

/// READ CAPACITY (16) asking for `alloc` bytes.
pub fn read_capacity16_cdb(alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// INQUIRY of VPD page `page` (EVPD=1) asking for `alloc` bytes.
pub fn inquiry_vpd_cdb(page: u8, alloc: u16) -> [u8; 6] {
    let mut c = [0u8; 6];
    c[0] = 0x12;
    c[1] = 0x01;
    c[2] = page;
    c[3..5].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0x0a) asking for `alloc` bytes.
pub fn report_target_port_groups_cdb(alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa3;
    c[1] = 0x0a;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// One target port group from REPORT TARGET PORT GROUPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortGroup {
    /// The 4-bit asymmetric access state code (0 A/O, 1 A/N, 2 Standby, 3 Unavailable,
    /// 0xE Offline, 0xF Transitioning).
    pub state_code: u8,
    /// The decoded state, when the code is a known one.
    pub state: Option<AluaState>,
    /// The PREF bit.
    pub preferred: bool,
    pub group_id: u16,
    /// Relative target port identifiers of the group's ports.
    pub ports: Vec<u16>,
}

/// Parses READ CAPACITY (16) data into `(number of blocks, block size)`.
pub fn parse_read_capacity16(d: &[u8]) -> Option<(u64, u32)> {
    let last = u64::from_be_bytes(d.get(0..8)?.try_into().ok()?);
    let bs = u32::from_be_bytes(d.get(8..12)?.try_into().ok()?);
    Some((last.checked_add(1)?, bs))
}

/// Finds the relative target port designator (type 4, association 1) in VPD page 0x83.
pub fn parse_relative_port_id(page: &[u8]) -> Option<u16> {
    if page.len() < 4 || page[1] != 0x83 {
        return None;
    }
    let end = (4 + u16::from_be_bytes([page[2], page[3]]) as usize).min(page.len());
    let mut pos = 4;
    while pos + 4 <= end {
        let kind = page[pos + 1] & 0x0f;
        let assoc = (page[pos + 1] >> 4) & 0x03;
        let len = page[pos + 3] as usize;
        let body = page.get(pos + 4..pos + 4 + len)?;
        if kind == 4 && assoc == 1 && len >= 4 {
            return Some(u16::from_be_bytes([body[2], body[3]]));
        }
        pos += 4 + len;
    }
    None
}

/// Parses REPORT TARGET PORT GROUPS data (length-only or extended header).
pub fn parse_rtpg(d: &[u8]) -> Option<Vec<TargetPortGroup>> {
    let len = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    let end = (4 + len).min(d.len());
    let mut pos = 4;
    // Extended header: format type 1 in byte 4 bits 6-4.
    if d.len() >= 8 && (d[4] >> 4) & 0x07 == 1 {
        pos = 8;
    }
    let mut out = Vec::new();
    while pos + 8 <= end {
        let code = d[pos] & 0x0f;
        let preferred = d[pos] & 0x80 != 0;
        let group_id = u16::from_be_bytes([d[pos + 2], d[pos + 3]]);
        let count = d[pos + 7] as usize;
        pos += 8;
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let p = d.get(pos..pos + 4)?;
            ports.push(u16::from_be_bytes([p[2], p[3]]));
            pos += 4;
        }
        out.push(TargetPortGroup {
            state_code: code,
            state: AluaState::from_code(code),
            preferred,
            group_id,
            ports,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpg_parses_groups_and_ports() {
        let d = [
            0, 0, 0, 24, // length
            0x80, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1 A/O pref, port 1
            0x02, 0x8f, 0, 2, 0, 2, 0, 1, 0, 0, 0, 2, // group 2 standby, port 2
        ];
        let g = parse_rtpg(&d).expect("parses");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].state, Some(AluaState::ActiveOptimized));
        assert!(g[0].preferred);
        assert_eq!(g[0].ports, vec![1]);
        assert_eq!(g[1].group_id, 2);
        assert_eq!(g[1].state, Some(AluaState::Standby));
        assert_eq!(g[1].ports, vec![2]);
        // A port list cut short.
        assert_eq!(parse_rtpg(&d[..26]), None);
    }

    #[test]
    fn vpd83_relative_port() {
        let page = [
            0, 0x83, 0, 16, // header
            0x02, 0x01, 0, 4, b'D', b'U', b'E', b'T', // T10 vendor id, LU
            0x61, 0x14, 0, 4, 0, 0, 0, 7, // relative target port 7
        ];
        assert_eq!(parse_relative_port_id(&page), Some(7));
        assert_eq!(parse_relative_port_id(&page[..12]), None);
    }

    #[test]
    fn cdbs() {
        assert_eq!(read10_cdb(0x01020304, 8), [0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0]);
        assert_eq!(write10_cdb(1, 1)[0], 0x2a);
        assert_eq!(read16_cdb(1, 2)[0], 0x88);
        assert_eq!(write16_cdb(1, 2)[13], 2);
        assert_eq!(read_capacity16_cdb(32)[13], 32);
        assert_eq!(inquiry_vpd_cdb(0x83, 1024), [0x12, 1, 0x83, 4, 0, 0]);
        assert_eq!(report_target_port_groups_cdb(4096)[8], 0x10);
    }
}
