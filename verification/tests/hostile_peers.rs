//! Hostile peers against the real `duetd`: malformed and oversized PDUs, wrong sequence
//! numbers, connection and session floods, CHAP guessing and impostors on the HA link.
//!
//! Each test starts its own `duetd` on its own loopback address (127.0.0.6x/7x) with a fresh
//! directory, runs a well-behaved session (write, read back, verify) next to the abuse, and
//! checks that every abuse is refused clearly (a Reject, a failing status or a closed
//! connection), that the good session keeps working, that duetd's memory stays bounded and that
//! duetd is alive at the end. Nothing here depends on timing beyond generous deadlines.

mod hostile_common;
mod support;

use duet_core::iscsi::initiator::{InitiatorChap, LoginError, LoginPlan};
use duet_hosts::login::ClientError;
use hostile_common::*;
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{have_program, run_bounded, wait_until, Chap, Daemon, Site, TargetConfig};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

// ------------------------------------------------------------------------------------------
// Malformed PDUs
// ------------------------------------------------------------------------------------------

/// A logged-in abuser session (ISID qualifier `isid`).
fn abuser(d: &Daemon, isid: u16) -> Initiator {
    Initiator::login(d.portal(), BAD_INIT, isid)
        .unwrap_or_else(|e| panic!("the abuser cannot log in: {e}"))
}

#[test]
fn malformed_pdus_get_a_reject_or_a_close_and_duetd_survives() {
    let mut d = Daemon::start("malformed", &[ip(61)], |s| plain_config(s, 5));
    let baseline = d.rss_kib();
    let good = GoodSession::start(d.portal());

    // Unknown opcode in full feature phase: Reject reason 05 (command not supported) quoting
    // our header, and the session stays usable.
    let mut a = abuser(&d, 1);
    let mut p = RawPdu::new(0x40 | 0x0f);
    p.bhs[1] = 0x80;
    p.set_u32(16, 0xabcd).set_u32(24, a.cmd_sn);
    a.send(&p).expect("send an unknown opcode");
    let r = a.recv().expect("an answer to an unknown opcode");
    assert_eq!(r.opcode(), op::REJECT, "unknown opcode: expected a Reject");
    assert_eq!(r.bhs[2], 0x05, "Reject reason for an unknown opcode");
    assert_eq!(
        &r.data[..48],
        &p.encode()[..48],
        "the Reject quotes the header"
    );
    a.ping(b"still here")
        .expect("the session survives an unknown opcode");

    // An AHS whose AHSLength runs past TotalAHSLength: Reject (protocol error) or a close,
    // never a crash; if the session stays, it stays usable.
    let mut p = RawPdu::new(0x40 | op::NOP_OUT);
    p.bhs[1] = 0x80;
    p.set_u32(16, 0xabce)
        .set_u32(20, 0xffff_ffff)
        .set_u32(24, a.cmd_sn);
    p.ahs = vec![0xff, 0xff, 0x01, 0x00, 1, 2, 3, 4];
    a.send(&p).expect("send a bad AHS");
    match a.recv() {
        Ok(r) => {
            assert_eq!(r.opcode(), op::REJECT, "bad AHS: expected a Reject");
            assert_eq!(
                r.bhs[2], 0x04,
                "Reject reason for a bad AHS (protocol error)"
            );
            a.ping(b"after ahs")
                .expect("the session survives a bad AHS");
        }
        Err(e) => assert!(
            e.contains("closed"),
            "bad AHS: neither Reject nor close: {e}"
        ),
    }
    // A zero AHSLength.
    p.ahs = vec![0x00, 0x00, 0x01, 0x00];
    p.set_u32(16, 0xabcf);
    if a.send(&p).is_ok() {
        match a.recv() {
            Ok(r) => assert_eq!(r.opcode(), op::REJECT, "zero AHSLength: expected a Reject"),
            Err(e) => assert!(e.contains("closed"), "zero AHSLength: {e}"),
        }
    }
    a.close();

    // Before login: an unknown opcode, a SCSI READ, a NOP-Out and a Data-Out all end the
    // connection, and none of them gets data or a SCSI status.
    for opcode in [0x0f, op::SCSI_CMD, op::NOP_OUT, op::DATA_OUT, 0x3c] {
        let mut s = connect(d.portal());
        let mut p = RawPdu::new(opcode);
        p.bhs[1] = 0x80 | 0x40 | 1;
        p.set_lun(1);
        p.set_u32(16, 7).set_u32(20, 4096).set_u32(24, 1);
        p.bhs[32] = 0x28; // READ(10)
        p.bhs[39] = 8;
        s.write_all(&p.encode()).expect("send a PDU before login");
        let seen = read_until_closed(&mut s, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("opcode {opcode:#04x} before login: {e}"));
        for r in seen {
            assert!(
                matches!(r.opcode(), op::LOGIN_RSP | op::REJECT),
                "opcode {opcode:#04x} before login was answered with {:#04x}",
                r.opcode()
            );
            if r.opcode() == op::LOGIN_RSP {
                assert_ne!(r.bhs[36], 0, "a login success for a non-login PDU");
            }
        }
    }

    // Truncated headers and truncated data segments, then close; 50 of each.
    for i in 0..50u32 {
        let mut s = connect(d.portal());
        let req = login_request(
            1,
            3,
            true,
            i as u16,
            1,
            text_segment(&vec![format!("InitiatorName={BAD_INIT}"); 40]),
        );
        let bytes = req.encode();
        let cut = if i % 2 == 0 {
            1 + (i as usize % 47)
        } else {
            48 + 10 + i as usize
        };
        let _ = s.write_all(&bytes[..cut.min(bytes.len() - 1)]);
        let _ = s.shutdown(Shutdown::Both);
    }

    // Garbage: random bytes, before and after login (deterministic seeds).
    for seed in 0..40u64 {
        let mut s = connect(d.portal());
        let _ = s.write_all(&pattern(seed, 4096));
        let _ = read_until_closed(&mut s, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("garbage before login (seed {seed}): {e}"));
    }
    for seed in 0..20u64 {
        let mut a = abuser(&d, 100 + seed as u16);
        let _ = a.sock.write_all(&pattern(1000 + seed, 4096));
        a.close();
    }

    good.assert_progress("after malformed PDUs");
    good.finish("during malformed PDUs");
    assert_rss_bounded(&d, baseline, "after malformed PDUs");
    d.assert_alive();
}

// ------------------------------------------------------------------------------------------
// Oversized data segments
// ------------------------------------------------------------------------------------------

#[test]
fn oversized_data_segments_are_refused_without_allocating_them() {
    let mut d = Daemon::start("oversized", &[ip(62)], |s| plain_config(s, 5));
    let baseline = d.rss_kib();
    let good = GoodSession::start(d.portal());

    // Login phase: a Login Request that claims 16 MiB (the login limit is 8 KiB), 64 at once,
    // each with a few bytes of its segment: all are dropped.
    let mut socks = Vec::new();
    for i in 0..64u16 {
        let mut s = connect(d.portal());
        let mut b = login_request(1, 3, true, i, 1, Vec::new()).encode();
        b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        b.extend_from_slice(b"InitiatorName=x\0");
        s.write_all(&b).expect("send an oversized login");
        socks.push(s);
    }
    for (i, s) in socks.iter_mut().enumerate() {
        read_until_closed(s, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("oversized login {i}: {e}"));
    }
    assert_rss_bounded(&d, baseline, "after 64 logins claiming 16 MiB each");

    // Full feature phase: a SCSI WRITE whose segment claims 16 MiB - 1 (over the 256 KiB
    // MaxRecvDataSegmentLength duetd declares): the connection is dropped.
    let mut sessions = Vec::new();
    for i in 0..32u16 {
        let mut a = abuser(&d, 200 + i);
        let mut p = a.scsi_command(&[0x2a, 0, 0, 0, 0, 0, 0, 0x80, 0, 0], false, true, 1 << 24);
        p.data = vec![0x55; 64];
        let mut b = p.encode();
        b[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        a.sock.write_all(&b).expect("send an oversized WRITE");
        sessions.push(a);
    }
    for (i, a) in sessions.iter_mut().enumerate() {
        let seen = read_until_closed(&mut a.sock, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("oversized WRITE {i}: {e}"));
        assert!(
            seen.iter().all(|p| p.opcode() != op::R2T),
            "an oversized WRITE got an R2T"
        );
    }
    assert_rss_bounded(&d, baseline, "after 32 WRITEs claiming 16 MiB each");

    // A segment within the limit (256 KiB) that never arrives: 64 sessions hold it open; memory
    // grows only with what was really sent.
    let mut holders = Vec::new();
    for i in 0..64u16 {
        let mut a = abuser(&d, 400 + i);
        let mut p = a.scsi_command(&[0x2a, 0, 0, 0, 0, 0, 0, 2, 0, 0], false, true, 262_144);
        p.data = vec![0x66; 100];
        let mut b = p.encode();
        b[5..8].copy_from_slice(&262_144u32.to_be_bytes()[1..]);
        a.sock.write_all(&b).expect("send a partial WRITE");
        holders.push(a);
    }
    good.assert_progress("with 64 half-sent segments pending");
    assert_rss_bounded(&d, baseline, "with 64 half-sent 256 KiB segments");
    for a in holders {
        a.close();
    }

    good.assert_progress("after oversized segments");
    good.finish("during oversized segments");
    assert_rss_bounded(&d, baseline, "after oversized segments");
    d.assert_alive();
}

// ------------------------------------------------------------------------------------------
// Sequence numbers and Data-Out
// ------------------------------------------------------------------------------------------

#[test]
fn wrong_sequence_numbers_and_data_out_fields_leave_the_session_usable() {
    let mut d = Daemon::start("seq", &[ip(63)], |s| plain_config(s, 5));
    let baseline = d.rss_kib();
    let good = GoodSession::start(d.portal());
    let mut a = abuser(&d, 1);
    a.write_read_verify(0, 8, 42).expect("a first write");

    // CmdSN far outside the window (and just behind it): dropped without an answer; the next
    // in-window command is answered and nothing ever comes back for the dropped ones.
    for offset in [1_000_000u32, 0x8000_0000, 0xffff_fff0] {
        let mut p = a.scsi_command(&[0u8; 6], false, false, 0);
        a.cmd_sn = a.cmd_sn.wrapping_sub(1); // not consumed
        let bad_sn = a.cmd_sn.wrapping_add(offset);
        p.set_u32(24, bad_sn);
        a.send(&p).expect("send an out-of-window command");
        assert_eq!(
            a.test_unit_ready()
                .unwrap_or_else(|e| panic!("after CmdSN +{offset:#x}: {e}")),
            0,
            "TEST UNIT READY after an out-of-window CmdSN"
        );
    }
    a.ping(b"window").expect("ping after out-of-window CmdSNs");

    // A wrong ExpStatSN (far ahead and far behind) acknowledges nothing that exists; the
    // command is still carried out.
    for skew in [5000u32, 0x8000_0000] {
        let mut p = a.scsi_command(&[0u8; 6], false, false, 0);
        p.set_u32(28, a.exp_stat_sn.wrapping_add(skew));
        let itt = p.itt();
        a.send(&p).expect("send with a wrong ExpStatSN");
        let r = a
            .finish(itt, None)
            .unwrap_or_else(|e| panic!("command with ExpStatSN skewed by {skew:#x}: {e}"));
        assert_eq!(r.status, 0, "TEST UNIT READY with a wrong ExpStatSN");
    }

    // Data-Out with a wrong TTT, then with a wrong DataSN: the command ends with CHECK CONDITION
    // (ABORTED COMMAND, data phase error), the medium is untouched, the session carries on.
    for what in ["ttt", "datasn", "offset"] {
        let data = pattern(7, 8 * BLOCK);
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[5] = 0; // LBA 0
        cdb[8] = 8;
        let p = a.scsi_command(&cdb, false, true, data.len() as u32);
        let itt = p.itt();
        a.send(&p).expect("send WRITE");
        let r2t = a.recv().expect("an R2T");
        assert_eq!(r2t.opcode(), op::R2T, "expected an R2T");
        let mut dout = RawPdu::new(op::DATA_OUT);
        dout.bhs[1] = 0x80;
        dout.set_lun(1);
        dout.set_u32(16, itt)
            .set_u32(20, r2t.ttt())
            .set_u32(28, a.exp_stat_sn)
            .set_u32(36, 0)
            .set_u32(40, 0);
        match what {
            "ttt" => {
                dout.set_u32(20, r2t.ttt() ^ 0x5a5a_0000);
            }
            "datasn" => {
                dout.set_u32(36, 7);
            }
            _ => {
                dout.set_u32(40, 512);
            }
        }
        dout.data = data.clone();
        a.send(&dout).expect("send a bad Data-Out");
        let r = a
            .finish(itt, None)
            .unwrap_or_else(|e| panic!("WRITE with a wrong Data-Out {what}: {e}"));
        assert_eq!(
            r.status, 0x02,
            "wrong Data-Out {what}: expected CHECK CONDITION"
        );
        assert_eq!(
            sense_code(&r.sense).0,
            0x0b,
            "wrong Data-Out {what}: expected ABORTED COMMAND, sense {:02x?}",
            r.sense
        );
        let back = a.read(0, 8).expect("read after a failed WRITE");
        assert_eq!(
            back,
            pattern(42, 8 * BLOCK),
            "a failed WRITE changed the medium"
        );
    }

    // A Data-Out for a task that does not exist is discarded.
    let mut dout = RawPdu::new(op::DATA_OUT);
    dout.bhs[1] = 0x80;
    dout.set_lun(1);
    dout.set_u32(16, 0x7777_7777).set_u32(20, 0x1234);
    dout.data = vec![1; 512];
    a.send(&dout).expect("send a stray Data-Out");
    a.write_read_verify(16, 8, 43)
        .expect("the session after a stray Data-Out");
    a.close();

    good.assert_progress("after sequence abuse");
    good.finish("during sequence abuse");
    assert_rss_bounded(&d, baseline, "after sequence abuse");
    d.assert_alive();
}

// ------------------------------------------------------------------------------------------
// Floods
// ------------------------------------------------------------------------------------------

/// Opens `n` connections that say nothing.
fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| connect(addr)).collect()
}

/// Logs in `n` sessions that then stay idle.
fn idle_sessions(d: &Daemon, n: u16, isid_base: u16) -> Vec<Initiator> {
    (0..n).map(|i| abuser(d, isid_base + i)).collect()
}

/// Waits (bounded) until duetd's RSS is within `budget` KiB of `baseline`; returns the last
/// reading.
fn settle_rss(d: &Daemon, baseline: u64, budget: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = d.rss_kib();
        if now <= baseline + budget || Instant::now() >= deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn connection_and_session_floods_do_not_starve_a_good_session() {
    // ping_timeout 0: the idle sessions must stay logged in for as long as we hold them.
    let mut d = Daemon::start("flood", &[ip(64)], |s| plain_config(s, 0));
    let good = GoodSession::start(d.portal());
    let url = format!("iscsi://{}/{TARGET}/1", d.portal());
    let tools = have_program("iscsi-readcapacity16");
    let baseline = d.rss_kib();
    let mut after_round = Vec::new();
    let started = Instant::now();
    let rounds: u16 = std::env::var("HOSTILE_FLOOD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(2);
    for round in 0..rounds {
        let holes = half_open(d.portal(), 500);
        let idle = idle_sessions(&d, 200, 1000 + (round % 100) * 200);
        good.assert_progress(&format!(
            "with 500 half-open connections and 200 idle sessions (round {round})"
        ));
        if tools {
            let r = run_bounded(
                &d.dir,
                "iscsi-readcapacity16",
                &[&url],
                &[],
                Duration::from_secs(60),
            );
            let out = r.all();
            assert!(
                r.ok(),
                "iscsi-readcapacity16 during the flood failed:\n{out}"
            );
            assert!(out.contains("Total size:16777216"), "readcapacity16: {out}");
        }
        // The idle sessions still work when asked.
        let mut idle = idle;
        for (i, s) in idle.iter_mut().enumerate().step_by(40) {
            s.ping(b"idle?")
                .unwrap_or_else(|e| panic!("idle session {i} (round {round}): {e}"));
        }
        let peak = d.rss_kib();
        assert!(
            peak <= baseline + RSS_BUDGET_KIB,
            "duetd's memory grew from {baseline} KiB to {peak} KiB under the flood"
        );
        drop(holes);
        for s in idle {
            s.close();
        }
        good.assert_progress(&format!("after closing the flood (round {round})"));
        after_round.push(settle_rss(&d, baseline, 32 * 1024));
        eprintln!("flood: round {round} done at {:?}", started.elapsed());
    }
    eprintln!("flood: duetd RSS baseline {baseline} KiB, after each round {after_round:?} KiB");
    // No leak: the second round does not leave more behind than the first.
    assert!(
        after_round[1] <= after_round[0] + 32 * 1024,
        "duetd's memory after each flood round: {after_round:?} KiB (baseline {baseline} KiB)"
    );
    assert_rss_bounded(&d, baseline, "after the floods");
    good.finish("during the floods");
    d.assert_alive();
}

#[test]
fn a_connection_that_never_logs_in_is_closed_by_a_login_timeout() {
    // RFC 7143 leaves the value to the target; CTL's ctld uses 60 s
    // (kern.cam.ctl.iscsi.login_timeout), duetd 30 s. We allow 90 s for a silent connection and
    // for one that sent half a BHS (a slowloris).
    let mut d = Daemon::start("logintimeout", &[ip(65)], |s| plain_config(s, 5));
    let mut silent = connect(d.portal());
    let mut half = connect(d.portal());
    half.write_all(&[0x43, 0x87, 0, 0, 0, 0, 0, 0])
        .expect("send half a BHS");
    read_until_closed(&mut silent, Duration::from_secs(90))
        .expect("a silent pre-login connection must be closed by a login timeout");
    read_until_closed(&mut half, Duration::from_secs(10))
        .expect("a pre-login connection with half a BHS must be closed by a login timeout");
    d.assert_alive();
}

// ------------------------------------------------------------------------------------------
// CHAP guessing
// ------------------------------------------------------------------------------------------

const CHAP_USER: &str = "duetuser";
const CHAP_SECRET: &str = "duetsecret12";

fn chap_config(s: &Site) -> String {
    TargetConfig {
        discovery_auth_group: Some("none"),
        chap: Some(Chap {
            user: CHAP_USER,
            secret: CHAP_SECRET,
            mutual: None,
            initiator_names: &[],
        }),
        ..TargetConfig::new(TARGET)
    }
    .render(s)
}

/// One login with a made-up CHAP response; returns the final Login Response status.
fn chap_guess(addr: SocketAddr, isid: u16, guess: &[u8]) -> Result<(u8, u8), String> {
    let mut s = connect(addr);
    let mut exchange = |req: RawPdu| -> Result<RawPdu, String> {
        s.write_all(&req.encode()).map_err(|e| e.to_string())?;
        let r = read_pdu(&mut s)?.ok_or("closed during login")?;
        if r.opcode() != op::LOGIN_RSP {
            return Err(format!(
                "expected a Login Response, got {:#04x}",
                r.opcode()
            ));
        }
        Ok(r)
    };
    let r = exchange(login_request(
        0,
        1,
        false,
        isid,
        1,
        text_segment(&[
            format!("InitiatorName={BAD_INIT}"),
            format!("TargetName={TARGET}"),
            "SessionType=Normal".into(),
            "AuthMethod=CHAP".into(),
        ]),
    ))?;
    if (r.bhs[36], r.bhs[37]) != (0, 0) {
        return Ok((r.bhs[36], r.bhs[37]));
    }
    let r = exchange(login_request(
        0,
        1,
        false,
        isid,
        1,
        text_segment(&["CHAP_A=5".into()]),
    ))?;
    if (r.bhs[36], r.bhs[37]) != (0, 0) {
        return Ok((r.bhs[36], r.bhs[37]));
    }
    let keys = parse_text(&r.data);
    if !keys.iter().any(|(k, _)| k == "CHAP_C") {
        return Err(format!("no CHAP challenge: {keys:?}"));
    }
    let hex: String = guess.iter().map(|b| format!("{b:02x}")).collect();
    let r = exchange(login_request(
        0,
        1,
        true,
        isid,
        1,
        text_segment(&[format!("CHAP_N={CHAP_USER}"), format!("CHAP_R=0x{hex}")]),
    ))?;
    Ok((r.bhs[36], r.bhs[37]))
}

#[test]
fn fifty_wrong_chap_responses_are_refused_and_the_right_secret_still_works() {
    let mut d = Daemon::start("chap", &[ip(66)], chap_config);
    let baseline = d.rss_kib();
    for i in 0..50u16 {
        let guess = pattern(i as u64 + 1, 16);
        let status = chap_guess(d.portal(), i, &guess)
            .unwrap_or_else(|e| panic!("wrong CHAP response {i}: {e}"));
        assert_eq!(
            status,
            (0x02, 0x01),
            "wrong CHAP response {i}: expected 02/01"
        );
    }
    // Wrong lengths too: empty, one byte, a 1 KiB response.
    for (i, guess) in [vec![], vec![1u8], vec![0xaa; 1024]].iter().enumerate() {
        let status = chap_guess(d.portal(), 100 + i as u16, guess)
            .unwrap_or_else(|e| panic!("malformed CHAP response {i}: {e}"));
        assert_eq!(
            status.0, 0x02,
            "malformed CHAP response {i}: expected class 02"
        );
    }
    if have_program("iscsi-inq") {
        let inq = |secret: &str| {
            let url = format!("iscsi://{CHAP_USER}%{secret}@{}/{TARGET}/1", d.portal());
            run_bounded(
                &d.dir,
                "iscsi-inq",
                &["-i", "iqn.2026-11.test:init1", &url],
                &[],
                Duration::from_secs(60),
            )
        };
        let r = inq(CHAP_SECRET);
        assert!(
            r.ok(),
            "the right CHAP secret no longer works after 50 wrong ones:\n{}",
            r.all()
        );
        let r = inq("wrongsecret99");
        assert!(!r.ok(), "a wrong secret was accepted by libiscsi's login");
    } else {
        eprintln!("SKIPPED the libiscsi right-secret check: libiscsi-bin is not installed");
    }
    // duet-hosts' client: the right secret logs in, a wrong one is refused with 02/01.
    let chap_login = |secret: &str, qualifier: u16| {
        let mut s = connect(d.portal());
        let plan = LoginPlan {
            chap: Some(InitiatorChap::md5(CHAP_USER, secret.as_bytes())),
            ..LoginPlan::normal(GOOD_INIT, TARGET, isid(qualifier))
        };
        duet_hosts::login::blocking::login(&mut s, plan)
    };
    if let Err(e) = chap_login(CHAP_SECRET, 200) {
        panic!("the right CHAP secret no longer works after 50 wrong ones: {e}");
    }
    match chap_login("wrongsecret99", 201) {
        Err(ClientError::Login(LoginError::Rejected {
            class: 2,
            detail: 1,
        })) => {}
        other => panic!("a wrong CHAP secret: expected a 02/01 refusal, got {other:?}"),
    }
    assert_rss_bounded(&d, baseline, "after CHAP guessing");
    d.assert_alive();
}

// ------------------------------------------------------------------------------------------
// HA link impostors
// ------------------------------------------------------------------------------------------

const HA_SECRET: &str = "hostile-test-link-secret-0123456789";

/// ctrl-a of a lab-like pair (ha_id 1, mode 1, primary, listening for the link on the spare
/// port), started alone; we play ctrl-b.
fn ha_config(s: &Site) -> String {
    let dir = s.dir.display();
    let ha = format!(
        r#"[ha]
id = 1
mode = 1
role = "primary"
peer = "listen {ip}:{link}"
failover = "automatic"
quorum = "{dir}/quorum.img"
quorum_create = true
fencing = "process"
peer_pidfile = "{dir}/ctrl-b.pid"
pidfile = "{dir}/ctrl-a.pid"
secret = "{HA_SECRET}"
admin_socket = "{dir}/ctrl-a.sock"
lease_ms = 1000
renew_ms = 250
drift_ms = 50
margin_ms = 250
heartbeat_ms = 200
dead_after_ms = 1000
"#,
        ip = s.portal().ip(),
        link = s.spare_port,
    );
    TargetConfig {
        image: "da0.img",
        extra: &ha,
        ..config(5)
    }
    .render(s)
}

fn ha_daemon(tag: &str, last: u8) -> Daemon {
    let d = Daemon::start(tag, &[ip(last)], ha_config);
    let link = link_addr(&d);
    assert!(
        wait_until(
            || TcpStream::connect_timeout(&link, Duration::from_secs(1)).is_ok(),
            Duration::from_secs(20)
        ),
        "the HA link port never listened"
    );
    d
}

fn admin_socket(d: &Daemon) -> PathBuf {
    d.dir.join("ctrl-a.sock")
}

/// The HA link's version, as a peer that speaks the wire protocol knows it (duetd's
/// `LINK_VERSION`).
const LINK_VERSION: u8 = 3;

/// A link frame: magic, version, kind, flags, length, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = b"DUET".to_vec();
    f.extend_from_slice(&u16::from(LINK_VERSION).to_be_bytes());
    f.push(kind);
    f.push(0);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A postcard-encoded `LoginMsg::Hello` (variant 0: version varint, ha_id, mode, channel
/// varint, attempt varint, 32-byte nonce).
fn hello(ha_id: u8, mode: u8, channel: u8, attempt: u8, nonce_seed: u64) -> Vec<u8> {
    let mut p = vec![0u8, LINK_VERSION, ha_id, mode, channel, attempt & 0x7f];
    p.extend_from_slice(&pattern(nonce_seed, 32));
    p
}

/// A postcard-encoded `LoginMsg::Proof` (variant 1, 32 bytes).
fn proof(mac: &[u8; 32]) -> Vec<u8> {
    let mut p = vec![1u8];
    p.extend_from_slice(mac);
    p
}

/// What reading one link frame gave.
#[derive(Debug)]
enum Got {
    /// A frame: its kind and payload.
    Frame(u8, Vec<u8>),
    /// The connection was closed (or reset).
    Closed,
    /// Nothing within the socket's read timeout.
    TimedOut,
}

/// Reads one link frame.
fn read_frame(s: &mut TcpStream) -> Got {
    use std::io::{ErrorKind, Read};
    let mut h = [0u8; 12];
    let mut buf: Vec<u8> = Vec::new();
    let mut want = 12usize;
    let mut have_header = false;
    loop {
        while buf.len() < want {
            let mut chunk = vec![0u8; want - buf.len()];
            match s.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::TimedOut
                }
                Err(_) => return Got::Closed,
            }
        }
        if have_header {
            return Got::Frame(h[6], buf[12..].to_vec());
        }
        h.copy_from_slice(&buf[..12]);
        assert_eq!(&h[..4], b"DUET", "a frame from duetd without the magic");
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
        assert!(len <= 1024, "a login-phase frame of {len} bytes from duetd");
        want = 12 + len;
        have_header = true;
    }
}

/// The next frame, which must come.
fn expect_frame(s: &mut TcpStream, what: &str) -> (u8, Vec<u8>) {
    match read_frame(s) {
        Got::Frame(k, p) => (k, p),
        other => panic!("{what}: expected a frame, got {other:?}"),
    }
}

fn link_addr(d: &Daemon) -> SocketAddr {
    SocketAddr::new(d.portal().ip(), d.spare_port)
}

/// The link's state and the iSCSI service after an attack: link not up, LUN served, alive.
fn assert_ha_unharmed(d: &mut Daemon, baseline: u64, reason_in_log: &str) {
    assert!(
        d.wait_log(reason_in_log, Duration::from_secs(20)),
        "duetd's log does not name the reason {reason_in_log:?}:\n{}",
        d.log_tail(40)
    );
    let ha = admin(&admin_socket(d), "ha").expect("duetctl ha over the admin socket");
    assert_ne!(
        ha["link_state"], 2,
        "the HA link came up with an impostor: {ha}"
    );
    assert!(
        !d.log_text().contains("HA link status changed from 1 to 2"),
        "the HA link came up with an impostor"
    );
    let mut ini = Initiator::login(d.portal(), GOOD_INIT, 0x0a11)
        .unwrap_or_else(|e| panic!("iSCSI login after the HA attack: {e}"));
    ini.write_read_verify(64, 8, 99)
        .unwrap_or_else(|e| panic!("iSCSI I/O after the HA attack: {e}"));
    ini.close();
    assert_rss_bounded(d, baseline, "after the HA attack");
    d.assert_alive();
}

/// Sends our hello and returns duetd's answer (a hello or a bye).
fn hello_exchange(s: &mut TcpStream, ours: Vec<u8>, what: &str) -> (u8, Vec<u8>) {
    s.write_all(&frame(1, &ours)).expect("send hello");
    expect_frame(s, what)
}

#[test]
fn ha_peer_with_a_wrong_secret_is_refused() {
    let mut d = ha_daemon("ha-secret", 67);
    let baseline = d.rss_kib();
    let good = GoodSession::start(d.portal());
    for attempt in 0..20u8 {
        let mut s = connect(link_addr(&d));
        let (kind, _) = hello_exchange(
            &mut s,
            hello(2, 1, attempt % 2, attempt, attempt as u64),
            "a valid hello",
        );
        assert_eq!(kind, 1, "duetd answers a hello with its own hello");
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&pattern(500 + attempt as u64, 32));
        s.write_all(&frame(1, &proof(&mac)))
            .expect("send a bad proof");
        let (kind, reason) = expect_frame(&mut s, "a bad proof");
        assert_eq!(kind, 4, "a wrong proof is answered with a bye");
        let reason = String::from_utf8_lossy(&reason).to_string();
        assert!(reason.contains("authentication"), "bye reason: {reason}");
        assert!(
            matches!(read_frame(&mut s), Got::Closed),
            "the connection is closed after the bye"
        );
    }
    good.assert_progress("after wrong-secret HA peers");
    good.finish("during wrong-secret HA peers");
    assert_ha_unharmed(&mut d, baseline, "peer failed authentication");
}

#[test]
fn ha_peer_with_another_mode_is_refused() {
    let mut d = ha_daemon("ha-mode", 68);
    let baseline = d.rss_kib();
    for (i, mode) in [0u8, 2, 3, 255].into_iter().enumerate() {
        let mut s = connect(link_addr(&d));
        let (kind, reason) = hello_exchange(
            &mut s,
            hello(2, mode, 0, i as u8, i as u64),
            "another ha_mode",
        );
        assert_eq!(kind, 4, "ha_mode {mode}: expected a bye");
        let reason = String::from_utf8_lossy(&reason).to_string();
        assert!(
            reason.contains("ha_mode"),
            "ha_mode {mode}: bye reason {reason}"
        );
    }
    assert_ha_unharmed(&mut d, baseline, "peer has ha_mode");
}

#[test]
fn ha_peer_with_an_equal_or_invalid_id_is_refused() {
    let mut d = ha_daemon("ha-id", 69);
    let baseline = d.rss_kib();
    for (i, id) in [1u8, 0, 3, 255].into_iter().enumerate() {
        let mut s = connect(link_addr(&d));
        let (kind, reason) =
            hello_exchange(&mut s, hello(id, 1, 0, i as u8, i as u64), "a bad ha_id");
        assert_eq!(kind, 4, "ha_id {id}: expected a bye");
        let reason = String::from_utf8_lossy(&reason).to_string();
        assert!(reason.contains("ha_id"), "ha_id {id}: bye reason {reason}");
    }
    assert_ha_unharmed(&mut d, baseline, "peer has the same ha_id 1");
}

#[test]
fn ha_link_garbage_is_dropped_and_silent_connections_time_out() {
    let mut d = ha_daemon("ha-garbage", 70);
    let baseline = d.rss_kib();
    let good = GoodSession::start(d.portal());
    let addr = link_addr(&d);
    let mut oversized = frame(1, &[]);
    oversized[8..12].copy_from_slice(&(16u32 << 20).to_be_bytes());
    oversized.extend_from_slice(&[0u8; 64]);
    let mut bad_version = frame(1, &hello(2, 1, 0, 0, 1));
    bad_version[4..6].copy_from_slice(&9u16.to_be_bytes());
    let mut bad_flags = frame(1, &hello(2, 1, 0, 0, 1));
    bad_flags[7] = 0x80;
    let mut bad_hello_version = hello(2, 1, 0, 0, 1);
    bad_hello_version[1] = 9;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", pattern(3, 4096)),
        (
            "an iSCSI login",
            login_request(1, 3, true, 1, 1, Vec::new()).encode(),
        ),
        ("a 16 MiB login frame", oversized),
        ("another frame version", bad_version),
        ("unknown flags", bad_flags),
        ("an unknown kind", frame(9, &[])),
        ("a ping before login", frame(2, &[])),
        ("a message before login", frame(3, b"hello")),
        ("a proof before a hello", frame(1, &proof(&[0; 32]))),
        ("a truncated hello", frame(1, &hello(2, 1, 0, 0, 1)[..10])),
        ("an unknown login variant", frame(1, &[7, 1, 2, 3])),
        (
            "an unknown channel",
            frame(1, &{
                let mut h = hello(2, 1, 0, 0, 1);
                h[4] = 5;
                h
            }),
        ),
        (
            "another link version in the hello",
            frame(1, &bad_hello_version),
        ),
        ("half a header", b"DUET\0".to_vec()),
    ];
    for (what, bytes) in &cases {
        let mut s = connect(addr);
        let _ = s.write_all(bytes);
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("set read timeout");
        loop {
            match read_frame(&mut s) {
                Got::Closed => break,
                Got::TimedOut => panic!("{what}: the connection stayed open for 20 s"),
                Got::Frame(kind, p) => {
                    assert_ne!(kind, 1, "{what}: duetd went on with the login ({p:?})");
                }
            }
        }
    }
    // More silent connections than duetd's pending-login limit (16): each is closed by the
    // login timeout (1 s here), and the link port still answers a real hello afterwards.
    let mut silent: Vec<TcpStream> = (0..40).map(|_| connect(addr)).collect();
    for (i, s) in silent.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("set read timeout");
        match read_frame(s) {
            Got::Closed => {}
            other => panic!("silent link connection {i}: expected a close, got {other:?}"),
        }
    }
    let mut s = connect(addr);
    let (kind, _) = hello_exchange(&mut s, hello(2, 1, 0, 1, 77), "a hello after the garbage");
    assert_eq!(kind, 1, "the link port answers a hello after the garbage");
    drop(s);
    good.assert_progress("after HA link garbage");
    good.finish("during HA link garbage");
    assert_ha_unharmed(&mut d, baseline, "HA link");
}
