//! INQUIRY (standard data and VPD pages 00, 80, 83, B0, B1, B2), READ CAPACITY, REPORT LUNS and
//! REPORT TARGET PORT GROUPS data builders.

use super::lu_config::LuConfig;
use super::sense_data::Sense;
use super::types::{AluaPicture, CommandContext};

/// VPD pages Duet serves, ascending.
pub(crate) const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// Version descriptors: SAM-5, SPC-4, SBC-3, iSCSI.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960];

fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7F).contains(&b) { b } else { b'_' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// Byte 5 of standard INQUIRY data: the TPGS field (bits 5-4), 01b implicit ALUA only, 11b
/// implicit and explicit (SET TARGET PORT GROUPS accepted).
pub(crate) fn standard_tpgs(alua: &AluaPicture) -> u8 {
    if alua.explicit {
        0x30
    } else {
        0x10
    }
}

/// Standard INQUIRY data (96 bytes).
pub(crate) fn standard(cfg: &LuConfig, alua: &AluaPicture) -> Vec<u8> {
    let mut v = vec![0u8; 96];
    v[0] = 0x00; // connected, direct access block device
    v[2] = 0x06; // SPC-4
    v[3] = 0x12; // HISUP, response data format 2
    v[4] = (v.len() - 5) as u8;
    v[5] = standard_tpgs(alua);
    v[6] = 0x10; // MULTIP
    v[7] = 0x02; // CMDQUE
    v[8..16].copy_from_slice(&padded(&cfg.vendor, 8));
    v[16..32].copy_from_slice(&padded(&cfg.product, 16));
    v[32..36].copy_from_slice(&padded(&cfg.revision, 4));
    for (i, d) in VERSION_DESCRIPTORS.iter().enumerate() {
        v[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    v
}

fn page(code: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x00, code];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn designator(proto_codeset: u8, piv_assoc_type: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![proto_codeset, piv_assoc_type, 0, data.len() as u8];
    v.extend_from_slice(data);
    v
}

/// A VPD page (not cut to the allocation length).
pub(crate) fn vpd(
    cfg: &LuConfig,
    naa: &[u8; 16],
    ctx: &CommandContext,
    code: u8,
) -> Result<Vec<u8>, Sense> {
    Ok(match code {
        0x00 => page(0x00, &VPD_PAGES),
        0x80 => page(0x80, &padded(&cfg.serial, cfg.serial.len().clamp(1, 251))),
        0x83 => {
            let mut b = Vec::new();
            // NAA (LU, binary).
            b.extend(designator(0x01, 0x03, naa));
            // T10 vendor ID (LU, ASCII): vendor + serial.
            let mut t10 = padded(&cfg.vendor, 8);
            t10.extend_from_slice(&padded(&cfg.serial, cfg.serial.len().clamp(1, 200)));
            b.extend(designator(0x02, 0x01, &t10));
            // Relative target port (target port, iSCSI, binary).
            let rtpi = ctx.nexus.rtpi.to_be_bytes();
            b.extend(designator(0x51, 0x94, &[0, 0, rtpi[0], rtpi[1]]));
            // Target port group.
            if let Some(g) = ctx.alua.group_of(ctx.nexus.rtpi) {
                let id = g.id.to_be_bytes();
                b.extend(designator(0x51, 0x95, &[0, 0, id[0], id[1]]));
            }
            // SCSI name string of the target port: iqn...,t,0x<tpgt>.
            if !ctx.target_name.is_empty() {
                let mut name = format!("{},t,0x{:04x}", ctx.target_name, ctx.tpgt).into_bytes();
                name.truncate(251);
                name.push(0);
                while !name.len().is_multiple_of(4) {
                    name.push(0);
                }
                b.extend(designator(0x53, 0x98, &name));
            }
            page(0x83, &b)
        }
        0xB0 => {
            let mut b = vec![0u8; 0x3C];
            b[0] = 0x00; // WSNZ = 0: WRITE SAME of 0 blocks runs to the end of the medium
            b[1] = cfg.max_compare_write_blocks;
            let lbppb = 1u32 << cfg.lbppbe.min(15);
            b[2..4].copy_from_slice(&(lbppb as u16).to_be_bytes()); // optimal transfer granularity
            b[4..8].copy_from_slice(&cfg.max_transfer_blocks.to_be_bytes());
            let opt = (cfg.max_transfer_blocks).min((128 * 1024) / cfg.block_size.max(1));
            b[8..12].copy_from_slice(&opt.to_be_bytes());
            b[12..16].copy_from_slice(&cfg.max_transfer_blocks.to_be_bytes()); // max prefetch
            if cfg.thin {
                b[16..20].copy_from_slice(&cfg.max_unmap_blocks.to_be_bytes());
                b[20..24].copy_from_slice(&cfg.max_unmap_descriptors.to_be_bytes());
                b[24..28].copy_from_slice(&lbppb.to_be_bytes()); // optimal unmap granularity
            }
            b[32..40].copy_from_slice(&cfg.max_write_same_blocks.to_be_bytes());
            page(0xB0, &b)
        }
        0xB1 => {
            let mut b = vec![0u8; 0x3C];
            b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
            page(0xB1, &b)
        }
        0xB2 => {
            let mut b = vec![0u8; 4];
            if cfg.thin {
                b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ=1
                b[2] = 0x02; // thin provisioned
            }
            page(0xB2, &b)
        }
        _ => return Err(Sense::cdb_field(2, None)),
    })
}

/// READ CAPACITY (16) data (32 bytes).
pub(crate) fn read_capacity_16(cfg: &LuConfig) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    v[0..8].copy_from_slice(&cfg.num_blocks.saturating_sub(1).to_be_bytes());
    v[8..12].copy_from_slice(&cfg.block_size.to_be_bytes());
    v[13] = cfg.lbppbe & 0x0F;
    if cfg.thin {
        v[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    v
}

/// READ CAPACITY (10) data (8 bytes).
pub(crate) fn read_capacity_10(cfg: &LuConfig) -> Vec<u8> {
    let last = u32::try_from(cfg.num_blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    let mut v = last.to_be_bytes().to_vec();
    v.extend_from_slice(&cfg.block_size.to_be_bytes());
    v
}

/// REPORT LUNS data (not cut to the allocation length): sorted, without duplicates.
pub(crate) fn report_luns(luns: &[u64]) -> Vec<u8> {
    let mut l: Vec<u64> = luns.to_vec();
    l.sort_unstable();
    l.dedup();
    let mut v = ((l.len() * 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&[0; 4]);
    for lun in l {
        let mut e = [0u8; 8];
        if lun < 256 {
            e[1] = lun as u8;
        } else {
            // Flat space addressing.
            let n = (lun & 0x3FFF) as u16;
            e[0] = 0x40 | (n >> 8) as u8;
            e[1] = n as u8;
        }
        v.extend_from_slice(&e);
    }
    v
}

/// REPORT TARGET PORT GROUPS data (not cut; RETURN DATA LENGTH counts everything).
pub(crate) fn rtpg(alua: &AluaPicture, extended: bool) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    if extended {
        v.extend_from_slice(&[0x10, alua.transition_time, 0, 0]);
    }
    for g in &alua.groups {
        v.push(if g.preferred { 0x80 } else { 0 } | g.state.code());
        v.push(0x80 | 0x08 | 0x04 | 0x02 | 0x01); // T, U, S, AN, AO supported
        v.extend_from_slice(&g.id.to_be_bytes());
        v.push(0);
        v.push(g.status);
        v.push(0);
        v.push(g.ports.len().min(255) as u8);
        for p in g.ports.iter().take(255) {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (v.len() - 4) as u32;
    v[0..4].copy_from_slice(&len.to_be_bytes());
    v
}
