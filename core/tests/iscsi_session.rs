//! Full-feature behaviour: CmdSN window, data transfer, residuals, NOP, task management, text,
//! logout and error handling, as seen on the wire.

mod iscsi_common;

use bytes::Bytes;
use duet_core::iscsi::codec::{Codec, PduError};
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::{
    Action, CloseReason, Completion, Connection, Lun, Pdu, TargetLimits, TaskAttr, TmfFunction,
    TmfResponse,
};
use duet_core::sense::{status, SenseCode};
use iscsi_common::*;

const RSV: u32 = 0xffff_ffff;
const F: u8 = 0x80;

fn cmd(itt: u32, cdb: &[u8], edtl: u32, cmd_sn: u32, fl: u8) -> Pdu {
    Pdu::scsi_command(itt, lun0(), cdb, edtl, cmd_sn, fl, TaskAttr::Simple)
}

fn tur(itt: u32, cmd_sn: u32) -> Pdu {
    cmd(itt, &TUR, 0, cmd_sn, F)
}

fn step(c: &mut Connection, p: Pdu) -> Vec<Action> {
    c.handle_pdu(p, 0);
    drain(c)
}

fn complete(c: &mut Connection, itt: u32, comp: Completion) -> Vec<Pdu> {
    c.complete_command(itt, comp, 0);
    sent(&drain(c))
}

fn good(data: &[u8], wanted: u32) -> Completion {
    Completion {
        status: status::GOOD,
        sense: None,
        data_in: Bytes::copy_from_slice(data),
        wanted_len: wanted,
    }
}

fn sense_of(p: &Pdu) -> Option<(u8, u8, u8)> {
    let s = p.sense_data()?;
    Some((s[2] & 0xf, s[12], s[13]))
}

// ----- CmdSN -----

#[test]
fn commands_outside_the_window_are_dropped_silently_and_session_goes_on() {
    let mut c = logged_in();
    let max = c.session().unwrap().max_cmd_sn();
    assert_eq!(max, FIRST_CMD_SN + 15);
    assert!(
        step(&mut c, tur(1, max.wrapping_add(1))).is_empty(),
        "too high"
    );
    assert!(
        step(&mut c, tur(2, FIRST_CMD_SN.wrapping_sub(1))).is_empty(),
        "too low"
    );
    let acts = step(&mut c, tur(3, FIRST_CMD_SN));
    let ex = executes(&acts);
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].itt, 3);
    let resp = complete(&mut c, 3, good(&[], 0));
    assert_eq!(resp[0].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(resp[0].status(), status::GOOD);
    assert_eq!(resp[0].exp_cmd_sn(), FIRST_CMD_SN + 1);
    assert_eq!(resp[0].max_cmd_sn(), FIRST_CMD_SN + 16);
    assert!(!c.is_closed());
}

#[test]
fn commands_ahead_are_held_and_released_in_cmdsn_order() {
    let mut c = logged_in();
    assert!(executes(&step(&mut c, tur(12, FIRST_CMD_SN + 2))).is_empty());
    assert!(executes(&step(&mut c, tur(11, FIRST_CMD_SN + 1))).is_empty());
    assert_eq!(c.session().unwrap().held_count(), 2);
    // A duplicate of a held CmdSN is dropped.
    assert!(step(&mut c, tur(13, FIRST_CMD_SN + 2)).is_empty());
    let ex = executes(&step(&mut c, tur(10, FIRST_CMD_SN)));
    let order: Vec<u32> = ex.iter().map(|e| e.itt).collect();
    assert_eq!(order, vec![10, 11, 12]);
    assert_eq!(c.session().unwrap().exp_cmd_sn(), FIRST_CMD_SN + 3);
}

#[test]
fn immediate_commands_do_not_advance_cmdsn() {
    let mut c = logged_in();
    let mut p = tur(1, FIRST_CMD_SN);
    p.set_immediate(true);
    let ex = executes(&step(&mut c, p));
    assert_eq!(ex.len(), 1);
    assert!(ex[0].immediate);
    assert_eq!(c.session().unwrap().exp_cmd_sn(), FIRST_CMD_SN);
    assert_eq!(executes(&step(&mut c, tur(2, FIRST_CMD_SN))).len(), 1);
    assert_eq!(c.session().unwrap().exp_cmd_sn(), FIRST_CMD_SN + 1);
}

// ----- reads -----

#[test]
fn read_is_split_by_initiator_mrdsl_with_status_on_last_data_in() {
    let mut c = logged_in_with(config(), &[("MaxRecvDataSegmentLength", "1024")]);
    let ex = executes(&step(
        &mut c,
        cmd(5, &read10_cdb(0, 5), 2560, FIRST_CMD_SN, F | flags::READ),
    ));
    assert_eq!(ex[0].cdb.len(), 16);
    assert_eq!(&ex[0].cdb[..10], &read10_cdb(0, 5));
    assert!(ex[0].read && !ex[0].write);
    let data: Vec<u8> = (0..2560u32).map(|i| i as u8).collect();
    let pdus = complete(&mut c, 5, good(&data, 2560));
    assert_eq!(pdus.len(), 3);
    let mut joined = Vec::new();
    for (i, p) in pdus.iter().enumerate() {
        assert_eq!(p.opcode(), Some(Opcode::DataIn));
        assert_eq!(p.data_sn(), i as u32);
        assert_eq!(p.buffer_offset() as usize, joined.len());
        assert!(p.data.len() <= 1024);
        joined.extend_from_slice(&p.data);
    }
    assert_eq!(joined, data);
    let last = &pdus[2];
    assert_eq!(
        last.flags() & (flags::FINAL | flags::STATUS),
        flags::FINAL | flags::STATUS
    );
    assert_eq!(last.flags() & (flags::OVERFLOW | flags::UNDERFLOW), 0);
    assert_eq!(last.status(), status::GOOD);
    assert_eq!(pdus[0].flags() & flags::STATUS, 0);
    // Only the status-carrying PDU takes a StatSN.
    assert_eq!(pdus[0].stat_sn(), last.stat_sn());
}

#[test]
fn read_marks_the_end_of_each_burst() {
    let lim = TargetLimits {
        max_burst_length: 4096,
        ..limits()
    };
    let mut c = logged_in_with(
        config_with(lim, None),
        &[("MaxRecvDataSegmentLength", "4096")],
    );
    step(
        &mut c,
        cmd(5, &read10_cdb(0, 24), 12288, FIRST_CMD_SN, F | flags::READ),
    );
    let pdus = complete(&mut c, 5, good(&vec![7u8; 12288], 12288));
    assert_eq!(pdus.len(), 3);
    assert!(
        pdus.iter().all(|p| p.final_bit()),
        "each 4096-byte burst ends with F"
    );
    assert_eq!(pdus[2].flags() & flags::STATUS, flags::STATUS);
}

#[test]
fn check_condition_comes_in_a_scsi_response_with_sense() {
    let mut c = logged_in();
    step(
        &mut c,
        cmd(
            5,
            &read10_cdb(u32::MAX, 1),
            512,
            FIRST_CMD_SN,
            F | flags::READ,
        ),
    );
    let sense = Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0]);
    let pdus = complete(
        &mut c,
        5,
        Completion {
            status: status::CHECK_CONDITION,
            sense: Some(sense.clone()),
            data_in: Bytes::new(),
            wanted_len: 512,
        },
    );
    assert_eq!(pdus.len(), 1);
    assert_eq!(pdus[0].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(pdus[0].status(), status::CHECK_CONDITION);
    assert_eq!(pdus[0].sense_data(), Some(sense));
}

#[test]
fn data_with_sense_is_followed_by_a_separate_response() {
    let mut c = logged_in();
    step(
        &mut c,
        cmd(5, &read10_cdb(0, 1), 512, FIRST_CMD_SN, F | flags::READ),
    );
    let pdus = complete(
        &mut c,
        5,
        Completion {
            status: status::GOOD,
            sense: Some(Bytes::from_static(&[
                0x70, 0, 1, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x5d, 0, 0, 0, 0, 0,
            ])),
            data_in: Bytes::from(vec![1u8; 512]),
            wanted_len: 512,
        },
    );
    assert_eq!(pdus.len(), 2);
    assert_eq!(pdus[0].opcode(), Some(Opcode::DataIn));
    assert_eq!(pdus[0].flags() & flags::STATUS, 0);
    assert_eq!(pdus[1].opcode(), Some(Opcode::ScsiResponse));
    assert!(pdus[1].sense_data().is_some());
}

/// READ10 of 1 block (512 bytes) with various EDTLs, as iSCSIResiduals checks.
#[test]
fn read_residuals_follow_edtl() {
    let cases: [(u32, u32, u8, u32); 4] = [
        // (blocks*512 wanted, EDTL, flag, residual)
        (512, 0, flags::OVERFLOW, 512),
        (512, 10000, flags::UNDERFLOW, 10000 - 512),
        (512, 200, flags::OVERFLOW, 312),
        (1024, 512, flags::OVERFLOW, 512),
    ];
    for (i, (wanted, edtl, flag, residual)) in cases.into_iter().enumerate() {
        let mut c = logged_in();
        let blocks = (wanted / 512) as u16;
        step(
            &mut c,
            cmd(
                i as u32,
                &read10_cdb(0, blocks),
                edtl,
                FIRST_CMD_SN,
                F | flags::READ,
            ),
        );
        let pdus = complete(&mut c, i as u32, good(&vec![3u8; wanted as usize], wanted));
        let last = pdus.last().unwrap();
        let moved: usize = pdus.iter().map(|p| p.data.len()).sum();
        assert_eq!(
            moved as u32,
            wanted.min(edtl),
            "case {i}: never more than EDTL"
        );
        assert_eq!(last.status(), status::GOOD);
        assert_eq!(
            last.flags() & (flags::OVERFLOW | flags::UNDERFLOW),
            flag,
            "case {i}"
        );
        assert_eq!(last.residual_count(), residual, "case {i}");
    }
}

#[test]
fn short_data_sets_underflow() {
    let mut c = logged_in();
    step(
        &mut c,
        cmd(
            1,
            &[0x12, 0, 0, 0, 255, 0],
            255,
            FIRST_CMD_SN,
            F | flags::READ,
        ),
    );
    let pdus = complete(&mut c, 1, good(&[0u8; 36], 255));
    let last = pdus.last().unwrap();
    assert_eq!(last.flags() & flags::UNDERFLOW, flags::UNDERFLOW);
    assert_eq!(last.residual_count(), 255 - 36);
}

// ----- writes -----

#[test]
fn write_with_all_data_immediate_executes_at_once() {
    let mut c = logged_in();
    let mut p = cmd(9, &write10_cdb(0, 8), 4096, FIRST_CMD_SN, F | flags::WRITE);
    p.set_data(Bytes::from(vec![0xab; 4096]));
    let ex = executes(&step(&mut c, p));
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].data_out.len(), 4096);
    assert!(ex[0].write);
    let pdus = complete(&mut c, 9, good(&[], 4096));
    assert_eq!(pdus[0].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(pdus[0].flags() & (flags::OVERFLOW | flags::UNDERFLOW), 0);
}

#[test]
fn write_residuals_follow_edtl() {
    // (wanted, EDTL, flag, residual) as iSCSIResiduals.Write10Residuals expects.
    let cases: [(u32, u32, u8, u32); 4] = [
        (512, 0, flags::OVERFLOW, 512),
        (512, 10000, flags::UNDERFLOW, 10000 - 512),
        (512, 200, flags::OVERFLOW, 312),
        (1024, 512, flags::OVERFLOW, 512),
    ];
    for (i, (wanted, edtl, flag, residual)) in cases.into_iter().enumerate() {
        let mut c = logged_in();
        let mut p = cmd(
            i as u32,
            &write10_cdb(0, (wanted / 512) as u16),
            edtl,
            FIRST_CMD_SN,
            F | flags::WRITE,
        );
        p.set_data(Bytes::from(vec![b'b'; edtl as usize]));
        let ex = executes(&step(&mut c, p));
        assert_eq!(ex[0].data_out.len() as u32, edtl);
        // Also when the executor refuses the mismatch, the residual is reported.
        let comp = Completion {
            status: status::CHECK_CONDITION,
            sense: Some(duet_core::iscsi::session::fixed_sense(
                SenseCode::INVALID_FIELD_IN_COMMAND_IU,
            )),
            data_in: Bytes::new(),
            wanted_len: wanted,
        };
        let pdus = complete(&mut c, i as u32, comp);
        assert_eq!(
            pdus[0].flags() & (flags::OVERFLOW | flags::UNDERFLOW),
            flag,
            "case {i}"
        );
        assert_eq!(pdus[0].residual_count(), residual, "case {i}");
    }
}

#[test]
fn write_without_immediate_data_is_solicited_with_r2t() {
    let lim = TargetLimits {
        initial_r2t: true,
        max_burst_length: 1024,
        ..limits()
    };
    let mut c = logged_in_with(config_with(lim, None), &[("ImmediateData", "No")]);
    let acts = step(
        &mut c,
        cmd(4, &write10_cdb(0, 4), 2048, FIRST_CMD_SN, F | flags::WRITE),
    );
    assert!(executes(&acts).is_empty());
    let r2ts = of_opcode(&sent(&acts), Opcode::R2t);
    assert_eq!(r2ts.len(), 1, "MaxOutstandingR2T is 1");
    let r = &r2ts[0];
    assert_eq!(
        (r.buffer_offset(), r.desired_length(), r.r2t_sn()),
        (0, 1024, 0)
    );
    assert_ne!(r.ttt(), RSV);
    let stat_sn = r.stat_sn();
    // First burst: two PDUs of 512.
    let a = Pdu::data_out(4, r.ttt(), lun0(), 0, 0, false, Bytes::from(vec![1u8; 512]));
    assert!(step(&mut c, a).is_empty());
    let b = Pdu::data_out(
        4,
        r.ttt(),
        lun0(),
        1,
        512,
        true,
        Bytes::from(vec![2u8; 512]),
    );
    let acts = step(&mut c, b);
    let r2 = of_opcode(&sent(&acts), Opcode::R2t).remove(0);
    assert_eq!(
        (r2.buffer_offset(), r2.desired_length(), r2.r2t_sn()),
        (1024, 1024, 1)
    );
    assert_eq!(r2.stat_sn(), stat_sn, "R2T does not advance StatSN");
    let d = Pdu::data_out(
        4,
        r2.ttt(),
        lun0(),
        0,
        1024,
        true,
        Bytes::from(vec![3u8; 1024]),
    );
    let ex = executes(&step(&mut c, d));
    assert_eq!(ex.len(), 1);
    let mut expect = vec![1u8; 512];
    expect.extend(vec![2u8; 512]);
    expect.extend(vec![3u8; 1024]);
    assert_eq!(&ex[0].data_out[..], &expect[..]);
}

#[test]
fn unsolicited_data_out_then_r2t_for_the_rest() {
    let lim = TargetLimits {
        first_burst_length: 1024,
        ..limits()
    };
    let mut c = logged_in_with(config_with(lim, None), &[("FirstBurstLength", "1024")]);
    let mut p = cmd(6, &write10_cdb(0, 4), 2048, FIRST_CMD_SN, flags::WRITE); // F=0: Data-Out follows
    p.set_data(Bytes::from(vec![1u8; 512]));
    assert!(step(&mut c, p).is_empty());
    let d = Pdu::data_out(6, RSV, lun0(), 0, 512, true, Bytes::from(vec![2u8; 512]));
    let acts = step(&mut c, d);
    let r2t = of_opcode(&sent(&acts), Opcode::R2t).remove(0);
    assert_eq!((r2t.buffer_offset(), r2t.desired_length()), (1024, 1024));
    let d = Pdu::data_out(
        6,
        r2t.ttt(),
        lun0(),
        0,
        1024,
        true,
        Bytes::from(vec![3u8; 1024]),
    );
    let ex = executes(&step(&mut c, d));
    assert_eq!(ex[0].data_out.len(), 2048);
}

/// The four corruptions iSCSIdatasn sends; none may let the WRITE end GOOD or execute.
#[test]
fn bad_data_sn_fails_the_write() {
    let corruptions: [&[u32]; 4] = [&[0, 0], &[27], &[u32::MAX], &[1, 0]];
    for sns in corruptions {
        let mut c = logged_in_with(config(), &[("ImmediateData", "No")]);
        let len = 512 * sns.len() as u32;
        let acts = step(
            &mut c,
            cmd(
                8,
                &write10_cdb(100, sns.len() as u16),
                len,
                FIRST_CMD_SN,
                flags::WRITE,
            ),
        );
        assert!(acts.is_empty());
        let mut all = Vec::new();
        for (i, sn) in sns.iter().enumerate() {
            let last = i + 1 == sns.len();
            let d = Pdu::data_out(
                8,
                RSV,
                lun0(),
                *sn,
                512 * i as u32,
                last,
                Bytes::from(vec![9u8; 512]),
            );
            all.extend(step(&mut c, d));
        }
        assert!(executes(&all).is_empty(), "{sns:?} must not execute");
        let resp = of_opcode(&sent(&all), Opcode::ScsiResponse);
        assert_eq!(resp.len(), 1, "{sns:?}");
        assert_eq!(resp[0].status(), status::CHECK_CONDITION);
        assert_eq!(sense_of(&resp[0]), Some((0x0b, 0x4b, 0x00)));
        // The session is still usable.
        assert_eq!(executes(&step(&mut c, tur(20, FIRST_CMD_SN + 1))).len(), 1);
    }
}

#[test]
fn bad_offset_and_unknown_ttt_fail_the_write() {
    let mut c = logged_in_with(config(), &[("ImmediateData", "No")]);
    step(
        &mut c,
        cmd(8, &write10_cdb(0, 2), 1024, FIRST_CMD_SN, flags::WRITE),
    );
    let d = Pdu::data_out(8, RSV, lun0(), 0, 512, false, Bytes::from(vec![0u8; 512]));
    let resp = of_opcode(&sent(&step(&mut c, d)), Opcode::ScsiResponse);
    assert_eq!(resp[0].status(), status::CHECK_CONDITION);

    let mut c = logged_in_with(config(), &[("ImmediateData", "No"), ("InitialR2T", "Yes")]);
    let acts = step(
        &mut c,
        cmd(8, &write10_cdb(0, 1), 512, FIRST_CMD_SN, F | flags::WRITE),
    );
    let r2t = of_opcode(&sent(&acts), Opcode::R2t).remove(0);
    let d = Pdu::data_out(
        8,
        r2t.ttt().wrapping_add(5),
        lun0(),
        0,
        0,
        true,
        Bytes::from(vec![0u8; 512]),
    );
    let resp = of_opcode(&sent(&step(&mut c, d)), Opcode::ScsiResponse);
    assert_eq!(resp[0].status(), status::CHECK_CONDITION);
}

#[test]
fn immediate_data_beyond_first_burst_is_refused() {
    let lim = TargetLimits {
        first_burst_length: 512,
        ..limits()
    };
    let mut c = logged_in_with(config_with(lim, None), &[("FirstBurstLength", "512")]);
    let mut p = cmd(1, &write10_cdb(0, 2), 1024, FIRST_CMD_SN, F | flags::WRITE);
    p.set_data(Bytes::from(vec![0u8; 1024]));
    let acts = step(&mut c, p);
    assert!(executes(&acts).is_empty());
    let resp = of_opcode(&sent(&acts), Opcode::ScsiResponse);
    assert_eq!(sense_of(&resp[0]), Some((5, 0x0e, 0x03)));
    assert_eq!(c.session().unwrap().exp_cmd_sn(), FIRST_CMD_SN + 1);
}

// ----- NOP -----

#[test]
fn nop_out_ping_is_echoed_and_unanswered_nop_is_silent() {
    let mut c = logged_in();
    for payload in [&b"12345678"[..], &b""[..]] {
        let mut p = Pdu::nop_out(0x77, RSV, FIRST_CMD_SN, Bytes::copy_from_slice(payload));
        p.set_immediate(true);
        p.set_lun(Lun::from_number(3));
        let pdus = sent(&step(&mut c, p));
        assert_eq!(pdus.len(), 1);
        let n = &pdus[0];
        assert_eq!(n.opcode(), Some(Opcode::NopIn));
        assert_eq!(n.itt(), 0x77);
        assert_eq!(n.ttt(), RSV);
        assert_eq!(&n.data[..], payload);
        assert_eq!(n.lun(), Lun::from_number(3));
    }
    let mut p = Pdu::nop_out(RSV, RSV, FIRST_CMD_SN, Bytes::new());
    p.set_immediate(true);
    assert!(step(&mut c, p).is_empty());
}

#[test]
fn ping_stat_sn_advances() {
    let mut c = logged_in();
    let mut p = Pdu::nop_out(1, RSV, FIRST_CMD_SN, Bytes::new());
    p.set_immediate(true);
    let a = sent(&step(&mut c, p.clone())).remove(0).stat_sn();
    let b = sent(&step(&mut c, p)).remove(0).stat_sn();
    assert_eq!(b, a + 1);
}

#[test]
fn target_pings_and_closes_on_silence() {
    let lim = TargetLimits {
        nop_in_interval_ms: 1000,
        nop_in_timeout_ms: 500,
        ..limits()
    };
    let mut c = logged_in_with(config_with(lim, None), &[]);
    assert_eq!(c.next_timeout(), Some(1000));
    c.handle_timeout(1000);
    let ping = sent(&drain(&mut c)).remove(0);
    assert_eq!(ping.opcode(), Some(Opcode::NopIn));
    assert_eq!(ping.itt(), RSV);
    assert_ne!(ping.ttt(), RSV);
    assert_eq!(c.next_timeout(), Some(1500));
    // Answered: no close.
    let mut ans = Pdu::nop_out(RSV, ping.ttt(), FIRST_CMD_SN, Bytes::new());
    ans.set_immediate(true);
    c.handle_pdu(ans, 1200);
    assert!(drain(&mut c).is_empty(), "answers to pings get no reply");
    c.handle_timeout(1500);
    assert!(drain(&mut c).is_empty());
    assert!(!c.is_closed());
    // Next ping unanswered: close.
    let next = c.next_timeout().unwrap();
    c.handle_timeout(next);
    drain(&mut c);
    let deadline = c.next_timeout().unwrap();
    c.handle_timeout(deadline);
    let acts = drain(&mut c);
    assert!(matches!(
        acts.last(),
        Some(Action::Close(CloseReason::PingTimeout))
    ));
    assert!(c.is_closed());
}

#[test]
fn no_timers_when_pings_are_off() {
    let c = logged_in();
    assert_eq!(c.next_timeout(), None);
}

// ----- task management -----

#[test]
fn abort_task_of_running_command_suppresses_its_response() {
    let mut c = logged_in();
    let mut p = cmd(
        0x50,
        &write10_cdb(0, 8),
        4096,
        FIRST_CMD_SN,
        F | flags::WRITE,
    );
    p.set_data(Bytes::from(vec![0u8; 4096]));
    assert_eq!(executes(&step(&mut c, p)).len(), 1);
    let mut tmf = Pdu::tmf_request(0x51, 1, lun0(), 0x50, FIRST_CMD_SN + 1, FIRST_CMD_SN);
    tmf.set_immediate(true);
    let acts = step(&mut c, tmf);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Abort { itts } if itts == &vec![0x50])));
    let resp = of_opcode(&sent(&acts), Opcode::TaskMgmtResponse).remove(0);
    assert_eq!(resp.itt(), 0x51);
    assert_eq!(resp.response(), 0);
    // The late completion produces nothing.
    assert!(complete(&mut c, 0x50, good(&[], 4096)).is_empty());
}

#[test]
fn abort_task_of_finished_command_reports_no_task() {
    let mut c = logged_in();
    step(&mut c, tur(0x60, FIRST_CMD_SN));
    complete(&mut c, 0x60, good(&[], 0));
    let mut tmf = Pdu::tmf_request(0x61, 1, lun0(), 0x60, FIRST_CMD_SN + 1, FIRST_CMD_SN);
    tmf.set_immediate(true);
    let resp = sent(&step(&mut c, tmf)).remove(0);
    assert_eq!(resp.response(), 1);
}

#[test]
fn abort_task_for_a_command_not_yet_arrived_drops_it_later() {
    let mut c = logged_in();
    let mut tmf = Pdu::tmf_request(0x71, 1, lun0(), 0x70, FIRST_CMD_SN, FIRST_CMD_SN);
    tmf.set_immediate(true);
    assert_eq!(sent(&step(&mut c, tmf)).remove(0).response(), 0);
    assert!(executes(&step(&mut c, tur(0x70, FIRST_CMD_SN))).is_empty());
    assert_eq!(c.session().unwrap().exp_cmd_sn(), FIRST_CMD_SN + 1);
}

#[test]
fn data_out_for_an_aborted_task_is_discarded() {
    let mut c = logged_in_with(config(), &[("ImmediateData", "No")]);
    step(
        &mut c,
        cmd(0x30, &write10_cdb(0, 2), 1024, FIRST_CMD_SN, flags::WRITE),
    );
    let mut tmf = Pdu::tmf_request(0x31, 1, lun0(), 0x30, FIRST_CMD_SN + 1, FIRST_CMD_SN);
    tmf.set_immediate(true);
    step(&mut c, tmf);
    let d = Pdu::data_out(0x30, RSV, lun0(), 0, 0, true, Bytes::from(vec![0u8; 1024]));
    assert!(step(&mut c, d).is_empty());
}

#[test]
fn lun_reset_is_delegated_and_answered() {
    let mut c = logged_in();
    step(&mut c, tur(1, FIRST_CMD_SN));
    let mut tmf = Pdu::tmf_request(0x90, 5, lun0(), RSV, FIRST_CMD_SN + 1, 0);
    tmf.set_immediate(true);
    let acts = step(&mut c, tmf);
    let req = acts
        .iter()
        .find_map(|a| match a {
            Action::TaskManagement(r) => Some(r.clone()),
            _ => None,
        })
        .expect("TaskManagement action");
    assert_eq!(req.function, TmfFunction::LunReset);
    assert_eq!(req.aborted, vec![1]);
    assert!(sent(&acts).is_empty(), "response waits for the runtime");
    c.complete_task_management(0x90, TmfResponse::Complete, 0);
    let resp = sent(&drain(&mut c)).remove(0);
    assert_eq!(
        (resp.opcode(), resp.response()),
        (Some(Opcode::TaskMgmtResponse), 0)
    );
    // Unknown LUN, as the runtime reports it.
    let mut tmf = Pdu::tmf_request(0x91, 5, Lun::from_number(77), RSV, FIRST_CMD_SN + 1, 0);
    tmf.set_immediate(true);
    step(&mut c, tmf);
    c.complete_task_management(0x91, TmfResponse::LunNotFound, 0);
    assert_eq!(sent(&drain(&mut c)).remove(0).response(), 2);
}

#[test]
fn cold_reset_closes_after_the_response() {
    let mut c = logged_in();
    let mut tmf = Pdu::tmf_request(0x92, 7, lun0(), RSV, FIRST_CMD_SN, 0);
    tmf.set_immediate(true);
    step(&mut c, tmf);
    c.complete_task_management(0x92, TmfResponse::Complete, 0);
    let acts = drain(&mut c);
    assert_eq!(sent(&acts)[0].response(), 0);
    assert!(matches!(
        acts.last(),
        Some(Action::Close(CloseReason::ColdReset))
    ));
}

#[test]
fn reassign_and_clear_aca_are_not_supported() {
    let mut c = logged_in();
    for f in [3u8, 8] {
        let mut tmf = Pdu::tmf_request(0x93, f, lun0(), RSV, FIRST_CMD_SN, 0);
        tmf.set_immediate(true);
        assert_eq!(sent(&step(&mut c, tmf)).remove(0).response(), 5);
    }
}

// ----- logout -----

#[test]
fn logout_waits_for_outstanding_commands() {
    let mut c = logged_in();
    step(&mut c, tur(1, FIRST_CMD_SN));
    let acts = step(&mut c, Pdu::logout_request(2, FIRST_CMD_SN + 1, 0, 0));
    assert!(acts.is_empty(), "logout response only after the command");
    c.complete_command(1, good(&[], 0), 0);
    let acts = drain(&mut c);
    let pdus = sent(&acts);
    assert_eq!(pdus[0].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(pdus[1].opcode(), Some(Opcode::LogoutResponse));
    assert_eq!(pdus[1].response(), 0);
    assert_eq!(pdus[1].stat_sn(), pdus[0].stat_sn() + 1);
    assert!(matches!(
        acts.last(),
        Some(Action::Close(CloseReason::LoggedOut))
    ));
}

#[test]
fn logout_for_recovery_is_refused() {
    let mut c = logged_in();
    let acts = step(&mut c, Pdu::logout_request(2, FIRST_CMD_SN, 2, 0));
    assert_eq!(sent(&acts)[0].response(), 2);
    assert!(!c.is_closed());
}

// ----- text -----

fn text_req(itt: u32, kv: &str) -> Pdu {
    let mut data = kv.as_bytes().to_vec();
    data.push(0);
    let mut p = Pdu::text_request(itt, RSV, FIRST_CMD_SN, Bytes::from(data));
    p.set_immediate(true);
    p
}

#[test]
fn send_targets_in_a_normal_session_reports_the_current_target() {
    let mut c = logged_in();
    let resp = sent(&step(&mut c, text_req(3, "SendTargets=All"))).remove(0);
    assert_eq!(resp.opcode(), Some(Opcode::TextResponse));
    assert_eq!(resp.flags(), 0x80);
    let t = keys_of(&resp);
    assert_eq!(t.get("TargetName"), Some(TARGET));
    assert_eq!(t.iter().filter(|(k, _)| *k == "TargetAddress").count(), 2);
    assert!(!t.iter().any(|(_, v)| v == OTHER_TARGET));
}

#[test]
fn invalid_send_targets_requests_are_rejected() {
    let mut c = logged_in();
    for (i, kv) in [
        "SendTargetsPlease=All",
        "SendTargets=Alle",
        "SendTargets=A",
        "sENDtARGETS=aLL",
    ]
    .iter()
    .enumerate()
    {
        let req = text_req(10 + i as u32, kv);
        let resp = sent(&step(&mut c, req.clone())).remove(0);
        assert_eq!(resp.opcode(), Some(Opcode::Reject), "{kv}");
        assert_eq!(resp.response(), 4);
        assert_eq!(
            &resp.data[..],
            &req.bhs[..],
            "the rejected header is attached"
        );
    }
    let resp = sent(&step(&mut c, text_req(20, "SendTargets=All"))).remove(0);
    assert_eq!(resp.opcode(), Some(Opcode::TextResponse));
}

#[test]
fn long_text_responses_continue() {
    let mut cfg = (*config()).clone();
    cfg.targets[0].addresses = (0..400)
        .map(|i| format!("10.0.{}.{}:3260,1", i / 250, i % 250))
        .collect();
    let mut c = logged_in_with(
        std::sync::Arc::new(cfg),
        &[("MaxRecvDataSegmentLength", "512")],
    );
    let mut joined = Vec::new();
    let mut r = sent(&step(&mut c, text_req(3, "SendTargets=All"))).remove(0);
    let mut rounds = 0;
    while !r.final_bit() {
        assert_eq!(r.flags() & 0x40, 0x40, "C set while more follows");
        assert!(r.data.len() <= 512);
        joined.extend_from_slice(&r.data);
        let mut next = Pdu::text_request(3, r.ttt(), FIRST_CMD_SN, Bytes::new());
        next.set_immediate(true);
        r = sent(&step(&mut c, next)).remove(0);
        rounds += 1;
        assert!(rounds < 100);
    }
    joined.extend_from_slice(&r.data);
    let t = duet_core::iscsi::TextPairs::parse(&joined).unwrap();
    assert_eq!(t.iter().filter(|(k, _)| *k == "TargetAddress").count(), 400);
}

// ----- errors -----

#[test]
fn snack_and_unknown_opcodes_are_rejected_with_the_header() {
    let mut c = logged_in();
    let mut s = Pdu::new(Opcode::Snack);
    s.set_itt(5);
    let r = sent(&step(&mut c, s.clone())).remove(0);
    assert_eq!((r.opcode(), r.response()), (Some(Opcode::Reject), 4));
    assert_eq!(&r.data[..], &s.bhs[..]);

    let codec = Codec::new();
    let mut raw = bytes::BytesMut::new();
    let mut odd = Pdu::new(Opcode::NopOut);
    odd.bhs[0] = 0x1c;
    codec.encode(&odd, &mut raw);
    let err = codec.decode(&mut raw).unwrap_err();
    assert!(matches!(err, PduError::UnknownOpcode { opcode: 0x1c, .. }));
    c.handle_decode_error(err, 0);
    let r = sent(&drain(&mut c)).remove(0);
    assert_eq!((r.opcode(), r.response()), (Some(Opcode::Reject), 5));
    assert!(!c.is_closed());
}

#[test]
fn data_digest_error_on_data_out_fails_the_command() {
    let mut c = logged_in_with(
        config(),
        &[("ImmediateData", "No"), ("DataDigest", "CRC32C")],
    );
    step(
        &mut c,
        cmd(8, &write10_cdb(0, 1), 512, FIRST_CMD_SN, flags::WRITE),
    );
    let codec = Codec::for_session(c.params().unwrap());
    let mut raw = bytes::BytesMut::new();
    codec.encode(
        &Pdu::data_out(8, RSV, lun0(), 0, 0, true, Bytes::from(vec![1u8; 512])),
        &mut raw,
    );
    let n = raw.len();
    raw[n - 10] ^= 0xff;
    let err = codec.decode(&mut raw).unwrap_err();
    assert!(matches!(err, PduError::DataDigest { .. }));
    c.handle_decode_error(err, 0);
    let pdus = sent(&drain(&mut c));
    assert_eq!(pdus[0].opcode(), Some(Opcode::Reject));
    assert_eq!(pdus[0].response(), 2);
    assert_eq!(pdus[1].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(sense_of(&pdus[1]), Some((0x0b, 0x47, 0x03)));
}

#[test]
fn header_digest_error_closes() {
    let mut c = logged_in();
    c.handle_decode_error(
        PduError::HeaderDigest {
            received: 1,
            computed: 2,
        },
        0,
    );
    assert!(matches!(
        drain(&mut c).last(),
        Some(Action::Close(CloseReason::ProtocolError(_)))
    ));
}

#[test]
fn shutdown_aborts_outstanding_tasks() {
    let mut c = logged_in();
    step(&mut c, tur(1, FIRST_CMD_SN));
    c.shutdown(0);
    assert!(matches!(drain(&mut c).as_slice(), [Action::Abort { itts }] if itts == &vec![1]));
    assert!(c.is_closed());
}

#[test]
fn async_logout_request() {
    let mut c = logged_in();
    c.request_logout(5, 0);
    let p = sent(&drain(&mut c)).remove(0);
    assert_eq!(p.opcode(), Some(Opcode::AsyncMessage));
    assert_eq!(p.async_event(), 1);
    assert_eq!(p.u32_at(40) >> 16, 0);
    assert_eq!(u16::from_be_bytes([p.bhs[42], p.bhs[43]]), 5);
}

#[test]
fn extended_cdb_reaches_the_executor() {
    let mut c = logged_in();
    let cdb: Vec<u8> = (0..32u8).collect();
    let ex = executes(&step(&mut c, cmd(1, &cdb, 0, FIRST_CMD_SN, F)));
    assert_eq!(&ex[0].cdb[..], &cdb[..]);
}
