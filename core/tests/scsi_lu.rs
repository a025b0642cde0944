//! Behaviour of one logical unit as an initiator sees it: data commands, unit attentions,
//! reservations, ALUA reporting, mode pages.

mod scsi_common;

use duet_core::alua::AluaState;
use duet_core::scsi::{Effect, LuConfig, PrState, ResetKind};
use duet_core::sense::{status, SenseCode};
use scsi_common::*;

fn fresh() -> (Rig, duet_core::scsi::Nexus) {
    let mut r = Rig::new();
    let a = nexus(1);
    r.clear_ua(&a);
    (r, a)
}

// ---------------------------------------------------------------- data commands

#[test]
fn written_blocks_read_back() {
    let (mut r, a) = fresh();
    let data: Vec<u8> = (0..2 * BS).map(|i| (i % 251) as u8).collect();
    r.good(&a, &write10(10, 2), &data);
    assert_eq!(r.good(&a, &read10(10, 2), &[]), data);
    assert_eq!(r.good(&a, &read16(11, 1), &[]), data[BS as usize..]);
}

#[test]
fn out_of_range_and_zero_length_transfers() {
    let (mut r, a) = fresh();
    r.good(&a, &read10(0, 0), &[]);
    r.expect_sense(
        &a,
        &read10(BLOCKS as u32, 1),
        &[],
        SenseCode::LBA_OUT_OF_RANGE,
    );
    r.expect_sense(
        &a,
        &read10(BLOCKS as u32 + 1, 0),
        &[],
        SenseCode::LBA_OUT_OF_RANGE,
    );
    r.expect_sense(
        &a,
        &read10(0x8000_0000, 0),
        &[],
        SenseCode::LBA_OUT_OF_RANGE,
    );
    r.expect_sense(&a, &read16(u64::MAX, 1), &[], SenseCode::LBA_OUT_OF_RANGE);
    r.expect_sense(
        &a,
        &write10(BLOCKS as u32 - 1, 2),
        &[0; 1024],
        SenseCode::LBA_OUT_OF_RANGE,
    );
    let mut prot = read10(0, 1);
    prot[1] = 0x20;
    r.expect_sense(&a, &prot, &[], SenseCode::INVALID_FIELD_IN_CDB);
    // READ(6) length 0 means 256 blocks.
    let o = r.run(&a, &[0x08, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o.data_in.len(), 256 * BS as usize);
    assert_eq!(o.wanted_len, 256 * BS);
}

#[test]
fn short_write_writes_only_whole_blocks_received() {
    let (mut r, a) = fresh();
    r.good(&a, &write10(0, 2), &[b'a'; 1024]);
    // Two blocks asked, one received.
    let o = r.run(&a, &write10(0, 2), &[b'b'; 512]);
    assert_eq!(o.status, status::GOOD);
    assert_eq!(o.wanted_len, 1024);
    let back = r.good(&a, &read10(0, 2), &[]);
    assert!(back[..512].iter().all(|b| *b == b'b'));
    assert!(back[512..].iter().all(|b| *b == b'a'));
    // Less than a block: nothing written, still GOOD.
    r.good(&a, &write10(0, 1), &[b'c'; 200]);
    assert_eq!(r.good(&a, &read10(0, 1), &[])[0], b'b');
}

#[test]
fn compare_and_write_is_all_or_nothing() {
    let (mut r, a) = fresh();
    r.good(&a, &write10(5, 1), &[7; 512]);
    let mut d = vec![7u8; 512];
    d.extend_from_slice(&[9; 512]);
    r.good(&a, &compare_and_write(5, 1), &d);
    assert!(r.good(&a, &read10(5, 1), &[]).iter().all(|b| *b == 9));
    // Miscompare at byte 100: nothing written, INFORMATION = 100.
    let mut bad = vec![9u8; 512];
    bad[100] = 0;
    bad.extend_from_slice(&[1; 512]);
    let o = r.run(&a, &compare_and_write(5, 1), &bad);
    assert_eq!(o.sense_code(), Some(SenseCode::MISCOMPARE));
    let s = o.sense.unwrap();
    assert_eq!(s[0], 0xF0, "INFORMATION valid");
    assert_eq!(u32::from_be_bytes([s[3], s[4], s[5], s[6]]), 100);
    assert!(r.good(&a, &read10(5, 1), &[]).iter().all(|b| *b == 9));
    // Wrong Data-Out size and too many blocks.
    r.expect_sense(
        &a,
        &compare_and_write(5, 1),
        &[9; 512],
        SenseCode::INVALID_FIELD_IN_COMMAND_IU,
    );
    let mut cfg = LuConfig::new(0, BS, BLOCKS, "DUET0002");
    cfg.max_compare_write_blocks = 4;
    let mut r2 = Rig::with(cfg);
    r2.clear_ua(&a);
    r2.expect_sense(
        &a,
        &compare_and_write(0, 5),
        &[0; 5120],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
}

#[test]
fn write_same_and_unmap_read_back_zeros() {
    let (mut r, a) = fresh();
    r.good(&a, &write_same16(0, 16, false), &[0xAB; 512]);
    assert!(r.good(&a, &read10(0, 16), &[]).iter().all(|b| *b == 0xAB));
    // UNMAP bit: deallocated blocks read zeros (LBPRZ).
    r.good(&a, &write_same16(0, 8, true), &[0xAB; 512]);
    let back = r.good(&a, &read10(0, 16), &[]);
    assert!(back[..8 * 512].iter().all(|b| *b == 0));
    assert!(back[8 * 512..].iter().all(|b| *b == 0xAB));
    r.good(&a, &unmap_cdb(24), &unmap_list(&[(8, 8)]));
    assert!(r.good(&a, &read10(0, 16), &[]).iter().all(|b| *b == 0));
    // Zero blocks runs to the end of the medium (WSNZ=0).
    r.good(&a, &write_same16(BLOCKS - 4, 0, false), &[0xCD; 512]);
    let tail = r.good(&a, &read16(BLOCKS - 5, 5), &[]);
    assert!(tail[..512].iter().all(|b| *b == 0));
    assert!(tail[512..].iter().all(|b| *b == 0xCD));
    // ... but not beyond MAXIMUM WRITE SAME LENGTH.
    let mut cfg = LuConfig::new(0, BS, BLOCKS, "DUET0004");
    cfg.max_write_same_blocks = 16;
    let mut small = Rig::with(cfg);
    small.clear_ua(&a);
    small.expect_sense(
        &a,
        &write_same16(0, 0, false),
        &[0; 512],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
    small.good(&a, &write_same16(BLOCKS - 16, 0, false), &[0; 512]);
    small.expect_sense(
        &a,
        &write_same16(BLOCKS - 17, 0, false),
        &[0; 512],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
    // ANCHOR without UNMAP, wrong Data-Out size.
    let mut anchor = write_same16(0, 1, false);
    anchor[1] |= 0x10;
    r.expect_sense(&a, &anchor, &[0; 512], SenseCode::INVALID_FIELD_IN_CDB);
    r.expect_sense(
        &a,
        &write_same16(0, 1, false),
        &[0; 1024],
        SenseCode::INVALID_FIELD_IN_COMMAND_IU,
    );
    r.expect_sense(
        &a,
        &write_same16(BLOCKS, 0, false),
        &[0; 512],
        SenseCode::LBA_OUT_OF_RANGE,
    );
    // Empty UNMAP lists and zero-length descriptors are fine.
    r.good(&a, &unmap_cdb(0), &[]);
    r.good(&a, &unmap_cdb(24), &unmap_list(&[(0, 0)]));
    r.expect_sense(
        &a,
        &unmap_cdb(24),
        &unmap_list(&[(BLOCKS, 1)]),
        SenseCode::LBA_OUT_OF_RANGE,
    );
}

#[test]
fn get_lba_status_reports_holes() {
    let (mut r, a) = fresh();
    r.good(&a, &write10(0, 64), &[1; 64 * 512]);
    r.good(&a, &unmap_cdb(24), &unmap_list(&[(0, 8)]));
    let mut c = cdb16(0x9E, 0x12, 0, 24);
    let d = r.good(&a, &c, &[]);
    assert_eq!(d.len(), 24);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 0);
    assert_eq!(d[20], 1, "deallocated");
    c[2..10].copy_from_slice(&8u64.to_be_bytes());
    let d = r.good(&a, &c, &[]);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 8);
    assert_eq!(d[20], 0, "mapped");
    r.expect_sense(
        &a,
        &cdb16(0x9E, 0x12, BLOCKS, 24),
        &[],
        SenseCode::LBA_OUT_OF_RANGE,
    );
}

#[test]
fn verify_compares_only_with_bytchk() {
    let (mut r, a) = fresh();
    r.good(&a, &write10(3, 1), &[5; 512]);
    let mut v = read10(3, 1);
    v[0] = 0x2F;
    r.good(&a, &v, &[]);
    v[1] = 0x02; // BYTCHK 1
    r.good(&a, &v, &[5; 512]);
    r.expect_sense(&a, &v, &[6; 512], SenseCode::MISCOMPARE);
}

#[test]
fn read_only_lu_refuses_writes() {
    let mut cfg = LuConfig::new(0, BS, BLOCKS, "DUET0003");
    cfg.read_only = true;
    let mut r = Rig::with(cfg);
    let a = nexus(1);
    r.clear_ua(&a);
    r.expect_sense(&a, &write10(0, 1), &[0; 512], SenseCode::WRITE_PROTECTED);
    let ms = r.good(&a, &mode_sense6(0x3F, 255), &[]);
    assert_eq!(ms[2] & 0x80, 0x80, "WP");
    r.good(&a, &read10(0, 1), &[]);
}

#[test]
fn unsupported_commands_are_invalid_opcode() {
    let (mut r, a) = fresh();
    for cdb in [
        vec![0x48u8, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x83; 16],
        vec![0x9C; 16],
    ] {
        r.expect_sense(&a, &cdb, &[], SenseCode::INVALID_OPCODE);
    }
}

// ---------------------------------------------------------------- inquiry & friends

#[test]
fn inquiry_and_vpd_pages() {
    let (mut r, a) = fresh();
    let std = r.good(&a, &inquiry(false, 0, 512), &[]);
    assert_eq!(std.len(), 96);
    assert_eq!(std[4] as usize, std.len() - 5);
    assert_eq!(std[5] & 0x30, 0x10, "implicit ALUA only (TPGS 01b)");
    assert_eq!(&std[8..12], b"DUET");
    assert_eq!(r.good(&a, &inquiry(false, 0, 511), &[]), std);
    r.expect_sense(
        &a,
        &inquiry(false, 0x80, 255),
        &[],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
    let list = r.good(&a, &inquiry(true, 0, 255), &[]);
    let pages = &list[4..];
    assert!(pages.windows(2).all(|w| w[0] < w[1]));
    for p in pages {
        let d = r.good(&a, &inquiry(true, *p, 255), &[]);
        assert_eq!(d[1], *p);
    }
    let b0 = r.good(&a, &inquiry(true, 0xB0, 255), &[]);
    assert_eq!(u16::from_be_bytes([b0[2], b0[3]]), 0x3C);
    let sn = r.good(&a, &inquiry(true, 0x80, 255), &[]);
    assert_eq!(&sn[4..], b"DUET0001");
    // VPD 83 carries the receiving port's RTPI and TPG.
    let d83 = r.good(&a, &inquiry(true, 0x83, 255), &[]);
    let mut at = 4;
    let mut kinds = Vec::new();
    while at + 4 <= d83.len() {
        let ty = d83[at + 1] & 0x0F;
        let len = d83[at + 3] as usize;
        if ty == 4 {
            assert_eq!(u16::from_be_bytes([d83[at + 6], d83[at + 7]]), 1);
        }
        if ty == 5 {
            assert_eq!(u16::from_be_bytes([d83[at + 6], d83[at + 7]]), 1);
        }
        kinds.push(ty);
        at += 4 + len;
    }
    assert_eq!(kinds, vec![3, 1, 4, 5, 8]);
}

#[test]
fn capacity_and_report_luns() {
    let (mut r, a) = fresh();
    let rc = r.good(&a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(
        u32::from_be_bytes(rc[..4].try_into().unwrap()),
        BLOCKS as u32 - 1
    );
    let rc16 = r.good(&a, &cdb16(0x9E, 0x10, 0, 32), &[]);
    assert_eq!(rc16[14] & 0xC0, 0xC0, "LBPME + LBPRZ");
    assert!(r.good(&a, &cdb16(0x9E, 0x10, 0, 0), &[]).is_empty());
    r.luns = vec![3, 0, 3];
    let rl = r.good(&a, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]);
    assert_eq!(
        u32::from_be_bytes(rl[..4].try_into().unwrap()),
        16,
        "full list length"
    );
    assert_eq!(rl.len(), 16);
}

#[test]
fn report_supported_opcodes_matches_dpofua() {
    let (mut r, a) = fresh();
    let all = r.good(&a, &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0], &[]);
    let n = u32::from_be_bytes(all[..4].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let one = r.good(
        &a,
        &[0xA3, 0x0C, 0x01, 0x2A, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0],
        &[],
    );
    assert_eq!(one[1] & 7, 3);
    assert_eq!(one[4], 0x2A);
    assert_eq!(one[5] & 0x18, 0x18, "DPO/FUA usage bits");
    let ms = r.good(&a, &mode_sense6(0x3F, 255), &[]);
    assert_eq!(ms[2] & 0x10, 0x10, "DPOFUA");
    r.expect_sense(
        &a,
        &[0xA3, 0x0C, 0x01, 0x5E, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0],
        &[],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
}

// ---------------------------------------------------------------- mode pages

#[test]
fn mode_select_changes_d_sense_and_tells_other_nexuses() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    let ms = r.good(&a, &mode_sense6(0x0A, 255), &[]);
    let bd = ms[3] as usize;
    let mut page = ms[4 + bd..].to_vec();
    page[2] |= 0x04; // D_SENSE
    let mut list = vec![0, 0, 0, 0];
    list.extend_from_slice(&page);
    r.good(&a, &mode_select6(list.len() as u8), &list);
    let o = r.run(&a, &read10(BLOCKS as u32, 1), &[]);
    assert_eq!(
        o.sense.as_ref().unwrap()[0],
        0x72,
        "descriptor format sense"
    );
    assert_eq!(o.sense_code(), Some(SenseCode::LBA_OUT_OF_RANGE));
    r.expect_sense(&b, &tur(), &[], SenseCode::UA_MODE_PARAMETERS_CHANGED);
    r.good(&b, &tur(), &[]);
    // A non-changeable bit is refused.
    let mut bad = list.clone();
    bad[4 + 3] ^= 0x02; // QERR
    r.expect_sense(
        &a,
        &mode_select6(bad.len() as u8),
        &bad,
        SenseCode::INVALID_FIELD_IN_PARAM_LIST,
    );
}

#[test]
fn mode_sense_all_pages_contains_control_page() {
    let (mut r, a) = fresh();
    let all = r.good(&a, &[0x1A, 0x08, 0x3F, 0, 255, 0], &[]);
    let ctl = r.good(&a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    assert_eq!(all[0] as usize, all.len() - 1);
    let c = &ctl[4..];
    assert!(all.windows(c.len()).any(|w| w == c));
    let four = r.good(&a, &mode_sense6(0x3F, 4), &[]);
    assert_eq!(four.len(), 4);
    r.expect_sense(
        &a,
        &mode_sense6(0x15, 255),
        &[],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
}

// ---------------------------------------------------------------- unit attentions

#[test]
fn new_nexus_sees_power_on_once_but_inquiry_passes_it_by() {
    let mut r = Rig::new();
    let a = nexus(1);
    r.good(&a, &inquiry(false, 0, 96), &[]);
    r.good(&a, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]);
    r.expect_sense(&a, &tur(), &[], SenseCode::UA_POWER_ON_RESET);
    r.good(&a, &tur(), &[]);
}

#[test]
fn request_sense_returns_and_clears_the_unit_attention() {
    let mut r = Rig::new();
    let a = nexus(1);
    let s = r.good(&a, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!((s[2] & 0x0F, s[12], s[13]), (6, 0x29, 0));
    let s = r.good(&a, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!(s[2] & 0x0F, 0, "NO SENSE");
    r.good(&a, &tur(), &[]);
}

#[test]
fn unit_attentions_come_highest_priority_first() {
    let (mut r, a) = fresh();
    r.lu.raise_ua(&a, SenseCode::UA_REPORTED_LUNS_CHANGED);
    r.lu.raise_ua(&a, SenseCode::UA_ALUA_STATE_CHANGED);
    r.lu.reset(ResetKind::LunReset);
    r.lu.raise_ua(&a, SenseCode::UA_ALUA_STATE_CHANGED);
    let mut seen = Vec::new();
    loop {
        let o = r.run(&a, &tur(), &[]);
        match o.sense_code() {
            Some(s) => seen.push((s.asc, s.ascq)),
            None => break,
        }
    }
    assert_eq!(seen, vec![(0x29, 0x00), (0x2A, 0x06), (0x3F, 0x0E)]);
}

#[test]
fn alua_change_raises_asymmetric_access_state_changed() {
    let (mut r, a) = fresh();
    r.two_groups(AluaState::ActiveOptimized, AluaState::Standby);
    // Every change of the picture is reported once.
    r.expect_sense(&a, &tur(), &[], SenseCode::UA_ALUA_STATE_CHANGED);
    r.good(&a, &tur(), &[]);
    r.two_groups(AluaState::ActiveNonOptimized, AluaState::ActiveOptimized);
    r.expect_sense(&a, &tur(), &[], SenseCode::UA_ALUA_STATE_CHANGED);
    r.good(&a, &tur(), &[]);
}

// ---------------------------------------------------------------- ALUA

#[test]
fn alua_gate_then_rtpg_reports_both_groups() {
    let (mut r, _) = fresh();
    r.two_groups(AluaState::ActiveOptimized, AluaState::Standby);
    let b = duet_core::scsi::Nexus::new("iqn.2026-11.test:init1", [0x23, 0x0d, 0, 0, 0, 9], 129);
    // Standby port: reads (and TUR) fail 02/04/0B before any unit attention; REQUEST SENSE,
    // RTPG and INQUIRY pass.
    r.expect_sense(&b, &read10(0, 1), &[], SenseCode::ALUA_STANDBY);
    r.expect_sense(&b, &tur(), &[], SenseCode::ALUA_STANDBY);
    let s = r.good(&b, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!((s[12], s[13]), (0x29, 0));
    let rtpg = r.good(&b, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[]);
    assert_eq!(rtpg.len(), 4);
    let full_len = u32::from_be_bytes(rtpg[..4].try_into().unwrap()) as usize;
    let full = r.good(&b, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[]);
    assert_eq!(
        u32::from_be_bytes(full[..4].try_into().unwrap()) as usize,
        full_len
    );
    let full = r.good(&b, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(full.len(), full_len + 4);
    assert_eq!(full[4] & 0x0F, 0, "group 1 AO");
    assert_eq!(u16::from_be_bytes([full[6], full[7]]), 1);
    let second = 4 + 8 + 4 * full[11] as usize;
    assert_eq!(full[second] & 0x0F, 2, "group 2 standby");
    let ext = r.good(&b, &[0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(ext[4], 0x10);
    assert_eq!(ext[5], 10);
}

#[test]
fn stpg_asks_the_runtime_and_tells_the_others() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.two_groups(AluaState::ActiveOptimized, AluaState::Standby);
    r.clear_ua(&a);
    r.clear_ua(&b);
    let list = [0, 0, 0, 0, 0x00, 0, 0, 2];
    let o = r.run(&a, &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &list);
    assert_eq!(o.status, status::GOOD);
    assert_eq!(
        o.effects,
        vec![Effect::SetTargetPortGroups(vec![(
            2,
            AluaState::ActiveOptimized
        )])]
    );
    // The runtime applies the change: everyone but the sender hears of it.
    // (RTPG passes a Standby port's gate and reports unit attentions.)
    let rtpg = [0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    r.two_groups(AluaState::Standby, AluaState::ActiveOptimized);
    r.expect_sense(&b, &rtpg, &[], SenseCode::UA_ALUA_STATE_CHANGED);
    r.good(&a, &rtpg, &[]);
    // Asking for what is in place is GOOD and asks nothing of the runtime.
    let o = r.run(&a, &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], &list);
    assert_eq!((o.status, o.effects.len()), (status::GOOD, 0));
    // Both groups Active/Optimized is no picture a pair can take: the second descriptor's
    // state field (byte 8, bit 3) is pointed at.
    let both = [0, 0, 0, 0, 0x00, 0, 0, 1, 0x00, 0, 0, 2];
    let o = r.run(&a, &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0], &both);
    assert_eq!(o.status, status::CHECK_CONDITION);
    let sense = o.sense.expect("sense data");
    assert_eq!(
        SenseCode::from_sense_data(&sense),
        Some(SenseCode::INVALID_FIELD_IN_PARAM_LIST)
    );
    assert_eq!(
        &sense[15..18],
        &[0x80 | 0x08 | 3, 0, 8],
        "SKSV, BPV, bit 3, byte 8"
    );
    // Mode 0 never makes a group Active/Non-optimized.
    let ano = [0, 0, 0, 0, 0x00, 0, 0, 1, 0x01, 0, 0, 2];
    r.expect_sense(
        &a,
        &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0],
        &ano,
        SenseCode::INVALID_FIELD_IN_PARAM_LIST,
    );
    // Transitioning and unknown groups are refused.
    let bad = [0, 0, 0, 0, 0x0F, 0, 0, 2];
    r.expect_sense(
        &a,
        &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        &bad,
        SenseCode::INVALID_FIELD_IN_PARAM_LIST,
    );
    let bad = [0, 0, 0, 0, 0x00, 0, 0, 7];
    r.expect_sense(
        &a,
        &[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        &bad,
        SenseCode::INVALID_FIELD_IN_PARAM_LIST,
    );
}

// ---------------------------------------------------------------- SCSI-2 reservations

#[test]
fn reserve6_blocks_other_nexuses_until_release_reset_or_loss() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    let reserve = [0x16, 0, 0, 0, 0, 0];
    let release = [0x17, 0, 0, 0, 0, 0];
    r.good(&a, &reserve, &[]);
    r.good(&a, &reserve, &[]);
    r.expect_conflict(&b, &reserve, &[]);
    r.good(&b, &release, &[]);
    r.good(&a, &mode_sense6(0x3F, 255), &[]);
    r.expect_conflict(&b, &mode_sense6(0x3F, 255), &[]);
    r.expect_conflict(&b, &read10(0, 1), &[]);
    r.good(&b, &inquiry(false, 0, 96), &[]);
    r.good(&a, &release, &[]);
    r.good(&b, &reserve, &[]);
    // Logout of the holder releases it.
    r.lu.nexus_lost(&b);
    r.good(&a, &reserve, &[]);
    // A LUN reset releases it too (and raises 29/xx).
    r.lu.reset(ResetKind::LunReset);
    let o = r.run(&b, &read10(0, 1), &[]);
    assert_eq!(o.sense_code().map(|s| s.asc), Some(0x29));
    r.clear_ua(&b);
    r.good(&b, &read10(0, 1), &[]);
}

// ---------------------------------------------------------------- persistent reservations

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const REGISTER_AND_IGNORE: u8 = 6;

fn keys(r: &mut Rig, n: &duet_core::scsi::Nexus) -> (u32, Vec<u64>) {
    let d = r.good(n, &prin(0, 1024), &[]);
    let gen = u32::from_be_bytes(d[..4].try_into().unwrap());
    let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
    let ks = d[8..8 + len]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (gen, ks)
}

fn reservation(r: &mut Rig, n: &duet_core::scsi::Nexus) -> Option<(u64, u8)> {
    let d = r.good(n, &prin(1, 1024), &[]);
    if u32::from_be_bytes(d[4..8].try_into().unwrap()) == 0 {
        return None;
    }
    Some((
        u64::from_be_bytes(d[8..16].try_into().unwrap()),
        d[21] & 0x0F,
    ))
}

#[test]
fn register_read_keys_and_generation() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    let (g0, k0) = keys(&mut r, &a);
    assert!(k0.is_empty());
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xAA, false));
    r.good(
        &b,
        &prout(REGISTER_AND_IGNORE, 0),
        &prout_params(0, 0xBB, false),
    );
    let (g1, k1) = keys(&mut r, &a);
    assert_eq!(g1, g0 + 2);
    assert_eq!(k1, vec![0xAA, 0xBB]);
    // Wrong current key: conflict, nothing changes.
    r.expect_conflict(&a, &prout(REGISTER, 0), &prout_params(0x11, 0xCC, false));
    assert_eq!(keys(&mut r, &a), (g1, k1));
    // Truncated READ KEYS keeps the full additional length.
    let d = r.good(&a, &prin(0, 12), &[]);
    assert_eq!(d.len(), 12);
    assert_eq!(u32::from_be_bytes(d[4..8].try_into().unwrap()), 16);
    // Unregister.
    r.good(&b, &prout(REGISTER, 0), &prout_params(0xBB, 0, false));
    assert_eq!(keys(&mut r, &a).1, vec![0xAA]);
    // Bad parameter list length, bad service actions.
    let mut c = prout(REGISTER, 0);
    c[8] = 20;
    r.expect_sense(&a, &c, &[0; 20], SenseCode::PARAM_LIST_LENGTH_ERROR);
    for sa in 4..0x20u8 {
        r.expect_sense(&a, &prin(sa, 64), &[], SenseCode::INVALID_FIELD_IN_CDB);
    }
}

/// (type, registered other can read, write, unregistered other can read, write)
const MATRIX: [(u8, bool, bool, bool, bool); 6] = [
    (3, false, false, false, false), // EA
    (1, true, false, true, false),   // WE
    (6, true, true, false, false),   // EA-RO
    (5, true, true, true, false),    // WE-RO
    (8, true, true, false, false),   // EA-AR
    (7, true, true, true, false),    // WE-AR
];

#[test]
fn reservation_access_matrix() {
    for (ptype, rr, rw, ur, uw) in MATRIX {
        let (mut r, a) = fresh();
        let b = nexus(2);
        r.clear_ua(&b);
        r.good(
            &a,
            &prout(REGISTER_AND_IGNORE, 0),
            &prout_params(0, 0xA, false),
        );
        r.good(
            &b,
            &prout(REGISTER_AND_IGNORE, 0),
            &prout_params(0, 0xB, false),
        );
        r.good(&a, &prout(RESERVE, ptype), &prout_params(0xA, 0, false));
        let expect_key = if ptype >= 7 { 0 } else { 0xA };
        assert_eq!(reservation(&mut r, &a), Some((expect_key, ptype)));
        r.good(&a, &read10(0, 1), &[]);
        r.good(&a, &write10(0, 1), &[0; 512]);
        let check = |r: &mut Rig, can_read: bool, can_write: bool| {
            let o = r.run(&b, &read10(0, 1), &[]);
            assert_eq!(o.status == status::GOOD, can_read, "type {ptype} read");
            if !can_read {
                assert_eq!(o.status, status::RESERVATION_CONFLICT);
            }
            let o = r.run(&b, &write10(0, 1), &[0; 512]);
            assert_eq!(o.status == status::GOOD, can_write, "type {ptype} write");
            if !can_write {
                assert_eq!(o.status, status::RESERVATION_CONFLICT);
            }
            // INQUIRY, REPORT LUNS, PR IN pass regardless.
            r.good(&b, &inquiry(false, 0, 96), &[]);
            r.good(&b, &prin(0, 64), &[]);
        };
        check(&mut r, rr, rw);
        r.good(&b, &prout(REGISTER, 0), &prout_params(0xB, 0, false));
        check(&mut r, ur, uw);
        r.good(&a, &prout(RELEASE, ptype), &prout_params(0xA, 0, false));
        assert_eq!(reservation(&mut r, &a), None);
        r.good(&b, &write10(0, 1), &[0; 512]);
    }
}

#[test]
fn reserve_requires_registration_and_conflicts_for_others() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    r.expect_conflict(&a, &prout(RESERVE, 1), &prout_params(0xA, 0, false));
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, false));
    r.good(&b, &prout(REGISTER, 0), &prout_params(0, 0xB, false));
    r.good(&a, &prout(RESERVE, 1), &prout_params(0xA, 0, false));
    r.good(&a, &prout(RESERVE, 1), &prout_params(0xA, 0, false));
    r.expect_conflict(&b, &prout(RESERVE, 1), &prout_params(0xB, 0, false));
    // RELEASE with the wrong type is an error; by a non-holder it is a no-op.
    r.expect_sense(
        &a,
        &prout(RELEASE, 3),
        &prout_params(0xA, 0, false),
        SenseCode::new(5, 0x26, 0x04),
    );
    r.good(&b, &prout(RELEASE, 1), &prout_params(0xB, 0, false));
    assert_eq!(reservation(&mut r, &a), Some((0xA, 1)));
    // The holder unregistering ends a WE reservation.
    r.good(&a, &prout(REGISTER, 0), &prout_params(0xA, 0, false));
    assert_eq!(reservation(&mut r, &b), None);
}

#[test]
fn all_registrants_reservation_survives_its_creator() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, false));
    r.good(&b, &prout(REGISTER, 0), &prout_params(0, 0xB, false));
    r.good(&a, &prout(RESERVE, 7), &prout_params(0xA, 0, false));
    r.good(&a, &prout(REGISTER, 0), &prout_params(0xA, 0, false));
    assert_eq!(reservation(&mut r, &b), Some((0, 7)));
    r.good(&b, &write10(0, 1), &[0; 512]);
    r.good(&b, &prout(RELEASE, 7), &prout_params(0xB, 0, false));
    assert_eq!(reservation(&mut r, &b), None);
}

#[test]
fn clear_and_preempt_remove_others_with_unit_attentions() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, false));
    r.good(&b, &prout(REGISTER, 0), &prout_params(0, 0xB, false));
    r.good(&b, &prout(RESERVE, 3), &prout_params(0xB, 0, false));
    let (g, _) = keys(&mut r, &a);
    // PREEMPT the holder's key: a takes over the reservation, b is unregistered.
    r.good(&a, &prout(PREEMPT, 1), &prout_params(0xA, 0xB, false));
    assert_eq!(keys(&mut r, &a), (g + 1, vec![0xA]));
    assert_eq!(reservation(&mut r, &a), Some((0xA, 1)));
    r.expect_sense(&b, &tur(), &[], SenseCode::UA_REGISTRATIONS_PREEMPTED);
    // PREEMPT of a key nobody has: conflict.
    r.expect_conflict(&a, &prout(PREEMPT, 1), &prout_params(0xA, 0x77, false));
    // CLEAR drops everything and tells the other registrants.
    r.good(&b, &prout(REGISTER, 0), &prout_params(0, 0xB, false));
    r.good(&a, &prout(CLEAR, 0), &prout_params(0xA, 0, false));
    assert!(keys(&mut r, &a).1.is_empty());
    assert_eq!(reservation(&mut r, &a), None);
    r.expect_sense(&b, &tur(), &[], SenseCode::UA_RESERVATIONS_PREEMPTED);
    // Only a registrant may clear.
    r.expect_conflict(&b, &prout(CLEAR, 0), &prout_params(0xB, 0, false));
}

#[test]
fn report_capabilities_and_full_status() {
    let (mut r, a) = fresh();
    let caps = r.good(&a, &prin(2, 64), &[]);
    assert_eq!(u16::from_be_bytes([caps[0], caps[1]]), 8);
    assert_eq!(u16::from_be_bytes([caps[4], caps[5]]), 0xEA01);
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, false));
    r.good(&a, &prout(RESERVE, 3), &prout_params(0xA, 0, false));
    let fs = r.good(&a, &prin(3, 1024), &[]);
    let len = u32::from_be_bytes(fs[4..8].try_into().unwrap()) as usize;
    assert_eq!(fs.len(), 8 + len);
    assert_eq!(u64::from_be_bytes(fs[8..16].try_into().unwrap()), 0xA);
    assert_eq!(fs[20], 1, "R_HOLDER");
    assert_eq!(fs[21], 3);
    let tid_len = u32::from_be_bytes(fs[28..32].try_into().unwrap()) as usize;
    let tid = &fs[32..32 + tid_len];
    assert_eq!(tid[0], 0x45);
    assert!(std::str::from_utf8(&tid[4..])
        .unwrap()
        .starts_with("iqn.2026-11.test:init1,i,0x230d00000001"));
}

#[test]
fn aptpl_state_round_trips_through_serde() {
    let (mut r, a) = fresh();
    let o = r.run(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, true));
    assert_eq!(o.effects, vec![Effect::PrChanged { aptpl: true }]);
    r.good(&a, &prout(RESERVE, 5), &prout_params(0xA, 0, false));
    let json = serde_json::to_string(r.lu.pr_state()).unwrap();
    // A restarted controller restores it.
    let mut r2 = Rig::new();
    let st: PrState = serde_json::from_str(&json).unwrap();
    r2.lu.restore_pr(st);
    r2.clear_ua(&a);
    assert_eq!(reservation(&mut r2, &a), Some((0xA, 5)));
    assert_eq!(keys(&mut r2, &a).1, vec![0xA]);
    let b = nexus(2);
    r2.clear_ua(&b);
    r2.expect_conflict(&b, &write10(0, 1), &[0; 512]);
}

#[test]
fn resets_keep_persistent_reservations() {
    let (mut r, a) = fresh();
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, false));
    r.good(&a, &prout(RESERVE, 3), &prout_params(0xA, 0, false));
    r.lu.reset(ResetKind::TargetWarm);
    r.lu.nexus_lost(&a);
    r.clear_ua(&a);
    assert_eq!(reservation(&mut r, &a), Some((0xA, 3)));
}

#[test]
fn fixed_disk_refuses_eject_but_accepts_start_stop() {
    let (mut r, a) = fresh();
    r.good(&a, &[0x1B, 0, 0, 0, 0x01, 0], &[]);
    r.good(&a, &[0x1B, 1, 0, 0, 0x00, 0], &[]);
    r.expect_sense(
        &a,
        &[0x1B, 1, 0, 0, 0x02, 0],
        &[],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
    // With a power condition, LOEJ is ignored.
    r.good(&a, &[0x1B, 1, 0, 0, 0x32, 0], &[]);
}

#[test]
fn write_same_unmap_needs_no_data_and_unaligned_ranges_work() {
    let (mut r, a) = fresh();
    r.good(&a, &write10(0, 16), &[0x77; 16 * 512]);
    for i in 1..8u64 {
        r.good(&a, &write_same16(i, 8 - i as u32, true), &[]);
    }
    let back = r.good(&a, &read10(0, 16), &[]);
    assert!(back[..512].iter().all(|b| *b == 0x77));
    assert!(back[512..8 * 512].iter().all(|b| *b == 0));
    assert!(back[8 * 512..].iter().all(|b| *b == 0x77));
    // Without UNMAP a missing or oversized block is an error.
    r.expect_sense(
        &a,
        &write_same16(0, 1, false),
        &[],
        SenseCode::INVALID_FIELD_IN_COMMAND_IU,
    );
    r.expect_sense(
        &a,
        &write_same16(0, 1, true),
        &[0; 256],
        SenseCode::INVALID_FIELD_IN_COMMAND_IU,
    );
}

#[test]
fn capacity_reports_four_kib_physical_blocks_for_512_byte_lus() {
    let (mut r, a) = fresh();
    let rc16 = r.good(&a, &cdb16(0x9E, 0x10, 0, 32), &[]);
    assert_eq!(rc16[13] & 0x0F, 3);
    // GET LBA STATUS inside a physical block starts at the next physical block.
    r.good(&a, &write10(0, 32), &[1; 32 * 512]);
    r.good(&a, &unmap_cdb(24), &unmap_list(&[(0, 8)]));
    let d = r.good(&a, &cdb16(0x9E, 0x12, 9, 24), &[]);
    assert_eq!(u64::from_be_bytes(d[8..16].try_into().unwrap()), 16);
    assert_eq!(d[20], 0);
}

#[test]
fn anchor_is_refused_and_compare_and_write_of_zero_blocks_with_data_too() {
    let (mut r, a) = fresh();
    let mut ws = write_same16(0, 1, true);
    ws[1] |= 0x10;
    r.expect_sense(&a, &ws, &[0; 512], SenseCode::INVALID_FIELD_IN_CDB);
    let mut ws10 = vec![0x41, 0x18, 0, 0, 0, 0, 0, 0, 1, 0];
    r.expect_sense(&a, &ws10, &[0; 512], SenseCode::INVALID_FIELD_IN_CDB);
    ws10[1] = 0x08;
    r.good(&a, &ws10, &[0; 512]);
    // NLB 0 is what a 256-block request looks like in the one-byte field.
    r.expect_sense(
        &a,
        &compare_and_write(0, 0),
        &[0; 512 * 512],
        SenseCode::INVALID_FIELD_IN_CDB,
    );
    r.good(&a, &compare_and_write(0, 0), &[]);
    // MAXIMUM WRITE SAME LENGTH equals MAXIMUM TRANSFER LENGTH.
    let b0 = r.good(&a, &inquiry(true, 0xB0, 64), &[]);
    let max_xfer = u32::from_be_bytes(b0[8..12].try_into().unwrap()) as u64;
    let max_ws = u64::from_be_bytes(b0[36..44].try_into().unwrap());
    assert_eq!(max_xfer, max_ws);
}

#[test]
fn preempt_and_abort_and_all_registrants_preempt() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    let c = nexus(3);
    r.clear_ua(&b);
    r.clear_ua(&c);
    for (n, k) in [(&a, 0xAu64), (&b, 0xB), (&c, 0xC)] {
        r.good(n, &prout(REGISTER, 0), &prout_params(0, k, false));
    }
    r.good(&b, &prout(RESERVE, 7), &prout_params(0xB, 0, false));
    // PREEMPT AND ABORT with key 0 under an all-registrants reservation: everyone else goes,
    // the preempting nexus holds a new reservation of the type it asked for.
    let o = r.run(&a, &prout(5, 3), &prout_params(0xA, 0, false));
    assert_eq!(o.status, status::GOOD);
    assert_eq!(keys(&mut r, &a).1, vec![0xA]);
    assert_eq!(reservation(&mut r, &a), Some((0xA, 3)));
    r.expect_sense(&b, &tur(), &[], SenseCode::UA_REGISTRATIONS_PREEMPTED);
    r.expect_sense(&c, &tur(), &[], SenseCode::UA_REGISTRATIONS_PREEMPTED);
    r.expect_conflict(&b, &read10(0, 1), &[]);
    // PREEMPT with key 0 without an all-registrants reservation is a parameter error.
    r.expect_sense(
        &a,
        &prout(PREEMPT, 3),
        &prout_params(0xA, 0, false),
        SenseCode::INVALID_FIELD_IN_PARAM_LIST,
    );
}

fn register_and_move_params(
    key: u64,
    sa_key: u64,
    rtpi: u16,
    to: &duet_core::scsi::Nexus,
) -> Vec<u8> {
    let mut name = to.initiator_port_name().into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) {
        name.push(0);
    }
    let mut tid = vec![0x45, 0];
    tid.extend_from_slice(&(name.len() as u16).to_be_bytes());
    tid.extend_from_slice(&name);
    let mut v = key.to_be_bytes().to_vec();
    v.extend_from_slice(&sa_key.to_be_bytes());
    v.push(0);
    v.push(0x02); // UNREG
    v.extend_from_slice(&rtpi.to_be_bytes());
    v.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    v.extend_from_slice(&tid);
    v
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let (mut r, a) = fresh();
    let b = nexus(2);
    r.clear_ua(&b);
    r.good(&a, &prout(REGISTER, 0), &prout_params(0, 0xA, false));
    r.good(&a, &prout(RESERVE, 3), &prout_params(0xA, 0, false));
    let p = register_and_move_params(0xA, 0xB, b.rtpi, &b);
    let mut cdb = prout(7, 3);
    cdb[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    r.good(&a, &cdb, &p);
    // b now holds the reservation with key 0xB; a (UNREG) is gone.
    assert_eq!(keys(&mut r, &b).1, vec![0xB]);
    assert_eq!(reservation(&mut r, &b), Some((0xB, 3)));
    r.good(&b, &write10(0, 1), &[0; 512]);
    r.expect_conflict(&a, &read10(0, 1), &[]);
    // Only the holder may move it.
    r.expect_conflict(&a, &cdb, &p);
}
