//! Writes the seed corpora of the Duet fuzz targets: real PDUs, logins, CDBs, HA link frames and
//! configuration files, each in the input format its fuzz target expects.
//!
//! `cargo run --release --manifest-path fuzz/Cargo.toml -p duet-fuzz-seedgen -- fuzz/corpus`
//! (run from /work/main; the example configurations are read from `examples/`). Existing
//! `seed-*` files are overwritten; other corpus entries are left alone.

use bytes::{Bytes, BytesMut};
use duet_core::alua::{AluaState, HaMode, LunView};
use duet_core::ha::{HaMsg, LunStatus};
use duet_core::iscsi::pdu::Opcode;
use duet_core::iscsi::initiator::{
    InitiatorChap, InitiatorLogin, LoginPlan, MutualChap, OperationalOffer, Step,
};
use duet_core::iscsi::{
    Action, ChapAlgorithm, ChapConfig, ChapCredentials, Codec, Connection, IscsiConfig,
    LoginEntropy, Lun, Pdu, PortalInfo, TargetConfig, TargetLimits, TaskAttr, TextPairs,
};
use duet_hosts::scsi::{read10_cdb, write10_cdb};
use duet_core::scsi::{AluaPicture, CommandContext, LogicalUnit, LuConfig, Nexus, Prepared};
use duet_target::ha::link::{FrameHeader, FrameKind};
use duet_target::ha::proto::{self, LinkMsg, PeerReply, PeerRequest};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

fn text(pairs: &[(&str, &str)]) -> Bytes {
    let mut t = TextPairs::new();
    for (k, v) in pairs {
        t.push(*k, *v);
    }
    t.to_bytes()
}

const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
const PLAIN: &str = "iqn.2026-01.dev.duet:disk1";
const CHAP: &str = "iqn.2026-01.dev.duet:disk2";
const HOST: &str = "iqn.2026-01.dev.duet:host";

/// READ (10) and WRITE (10) CDBs, as the seeds store them.
fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    read10_cdb(lba, blocks).to_vec()
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    write10_cdb(lba, blocks).to_vec()
}

/// What the seeds' initiator offers in the operational stage.
fn offer() -> OperationalOffer {
    OperationalOffer {
        first_burst_length: 65536,
        max_burst_length: 262_144,
        default_time2wait: 2,
        ..OperationalOffer::default()
    }
}

/// A login of `HOST` to `target` with ISID [`ISID`], ITT 0x10 and CmdSN 1000 (what the
/// login_text harness puts in its Login requests).
fn plan(target: Option<&str>) -> LoginPlan {
    LoginPlan {
        target_name: target.map(str::to_string),
        itt: 0x10,
        cmd_sn: 1000,
        offer: offer(),
        ..LoginPlan::normal(HOST, PLAIN, ISID)
    }
}

/// The alice/duet credentials of the login_text harness's CHAP target.
fn creds(user: &str, secret: &[u8]) -> ChapCredentials {
    ChapCredentials {
        user: user.into(),
        secret: secret.to_vec(),
    }
}

/// The Login requests of a whole login: duet-core's initiator machine against duet-core's
/// target, configured and seeded as the login_text harness is (CHAP_I 42, challenge i*37+11).
fn login_requests(plan: LoginPlan) -> Vec<Pdu> {
    let mut chap_challenge = [0u8; 32];
    for (i, b) in chap_challenge.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    let entropy = LoginEntropy {
        chap_id: 42,
        chap_challenge,
        tsih: 1,
    };
    let config = Arc::new(IscsiConfig {
        targets: vec![
            TargetConfig {
                name: PLAIN.into(),
                ..TargetConfig::default()
            },
            TargetConfig {
                name: CHAP.into(),
                chap: vec![ChapConfig {
                    initiator: creds("alice", b"alice-secret-12"),
                    target: Some(creds("duet", b"target-secret-34")),
                }],
                ..TargetConfig::default()
            },
        ],
        limits: TargetLimits {
            queue_depth: 8,
            ..TargetLimits::default()
        },
        ..IscsiConfig::default()
    });
    let portal = PortalInfo {
        address: "127.0.0.1:3260,1".into(),
        portal_group_tag: 1,
    };
    let mut conn = Connection::new(config, portal, entropy);
    let mut ini = InitiatorLogin::new(plan);
    let mut req = ini.first_request();
    let mut sent = Vec::new();
    loop {
        sent.push(req.clone());
        conn.handle_pdu(req, 0);
        let mut rsp = None;
        while let Some(a) = conn.poll_action() {
            if let Action::Send(p) = a {
                rsp = Some(p);
            }
        }
        match rsp.map(|r| ini.handle_response(&r)) {
            Some(Ok(Step::Send(next))) => req = next,
            Some(Ok(Step::Done(_))) => return sent,
            other => panic!("the seed login failed: {other:?}"),
        }
    }
}

/// The login_text records of Login requests: stage bits (T, CSG, NSG) and text.
fn login_recs(reqs: &[Pdu]) -> Vec<u8> {
    reqs.iter()
        .flat_map(|p| rec(0, p.bhs[1], 0, 0, &p.data))
        .collect()
}

/// PDUs an initiator and a target really exchange.
fn sample_pdus() -> Vec<Pdu> {
    let mut v = Vec::new();
    let straight = LoginPlan {
        skip_security: true,
        ..plan(Some(PLAIN))
    };
    v.push(InitiatorLogin::new(straight).first_request());
    v.push(Pdu::scsi_command(
        0x11,
        Lun::from_number(0),
        &read10(0, 8),
        4096,
        1000,
        0xc0,
        TaskAttr::Simple,
    ));
    let mut w = Pdu::scsi_command(
        0x12,
        Lun::from_number(1),
        &write10(8, 2),
        1024,
        1001,
        0xa0,
        TaskAttr::Ordered,
    );
    w.set_data(Bytes::from(vec![0xa5; 512]));
    v.push(w);
    v.push(Pdu::data_out(
        0x12,
        0xffff_ffff,
        Lun::from_number(1),
        0,
        512,
        true,
        Bytes::from(vec![0x5a; 512]),
    ));
    // A 32-byte CDB: an Extended CDB AHS follows the BHS.
    let mut long = vec![0u8; 32];
    long[0] = 0x7f;
    long[7] = 0x18;
    v.push(Pdu::scsi_command(
        0x13,
        Lun::from_number(0),
        &long,
        0,
        1002,
        0x80,
        TaskAttr::Simple,
    ));
    v.push(Pdu::nop_out(
        0x14,
        0xffff_ffff,
        1003,
        Bytes::from_static(b"ping"),
    ));
    v.push(Pdu::text_request(
        0x15,
        0xffff_ffff,
        1003,
        text(&[("SendTargets", "All")]),
    ));
    v.push(Pdu::tmf_request(
        0x16,
        1,
        Lun::from_number(0),
        0x11,
        1004,
        1000,
    ));
    v.push(Pdu::logout_request(0x17, 1005, 0, 0));
    let mut rej = [0u8; 48];
    rej[0] = 0x01;
    v.push(Pdu::reject(4, &rej));
    v.push(Pdu::async_message(
        0,
        0,
        Lun::from_number(0),
        [0; 3],
        Some(&[0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2a, 0x06]),
    ));
    let mut resp = Pdu::new(Opcode::ScsiResponse);
    resp.set_status(2)
        .set_itt(0x11)
        .set_data(duet_core::iscsi::pdu::sense_segment(&[
            0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
        ]));
    v.push(resp);
    v
}

struct Out {
    root: PathBuf,
}

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)
    }
}

fn pdu_seeds(out: &Out) -> std::io::Result<()> {
    let pdus = sample_pdus();
    for (cfg, label) in [(0x00u8, "plain"), (0x03, "digests"), (0x08, "big")] {
        let mut codec = Codec::new();
        codec.header_digest = cfg & 1 != 0;
        codec.data_digest = cfg & 2 != 0;
        let mut all = vec![cfg];
        for (i, p) in pdus.iter().enumerate() {
            let mut b = BytesMut::new();
            codec.encode(p, &mut b);
            all.extend_from_slice(&b);
            if cfg == 0 || cfg == 3 {
                let mut one = vec![cfg];
                one.extend_from_slice(&b);
                out.put("pdu_decode", &format!("{label}-{i:02}"), &one)?;
            }
        }
        out.put("pdu_decode", &format!("{label}-stream"), &all)?;
    }
    // Framed mode: parts that the harness encodes with correct digests.
    for cfg in [0x10u8, 0x13] {
        let mut f = vec![cfg, 0, 0];
        for p in pdus.iter().take(5) {
            f.extend_from_slice(&p.bhs);
            f.push(p.ahs.len() as u8);
            f.extend_from_slice(&(p.data.len() as u16).to_be_bytes());
            f.extend_from_slice(&p.ahs);
            f.extend_from_slice(&p.data);
        }
        out.put("pdu_decode", &format!("framed-{cfg:02x}"), &f)?;
    }
    Ok(())
}

/// One record of the login_text target.
fn rec(kind: u8, a: u8, b: u8, c: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, a, b, c];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn raw(p: &Pdu) -> Vec<u8> {
    let mut v = p.bhs.to_vec();
    v.extend_from_slice(&p.data);
    v
}

fn login_seeds(out: &Out) -> std::io::Result<()> {
    // One-shot operational login, then a session's worth of commands.
    let login = login_recs(&login_requests(LoginPlan {
        skip_security: true,
        ..plan(Some(PLAIN))
    }));
    let mut s = login.clone();
    let mut read = Pdu::scsi_command(
        0x11,
        Lun::from_number(0),
        &read10(0, 8),
        4096,
        1000,
        0xc0,
        TaskAttr::Simple,
    );
    read.set_exp_stat_sn(1);
    s.extend(rec(1, 0, 0, 0, &raw(&read)));
    s.extend(rec(3, 0, 8, 0, &[0x11; 64]));
    let mut write = Pdu::scsi_command(
        0x12,
        Lun::from_number(0),
        &write10(0, 4),
        2048,
        1001,
        0x20,
        TaskAttr::Simple,
    );
    write.set_data(Bytes::from(vec![0x77; 1024]));
    s.extend(rec(1, 0, 0, 0, &raw(&write)));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::data_out(
            0x12,
            0xffff_ffff,
            Lun::from_number(0),
            0,
            1024,
            true,
            Bytes::from(vec![0x78; 1024]),
        )),
    ));
    s.extend(rec(3, 0, 4, 0, &[]));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::nop_out(
            0x13,
            0xffff_ffff,
            1002,
            Bytes::from_static(b"hi"),
        )),
    ));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::text_request(
            0x14,
            0xffff_ffff,
            1003,
            text(&[("SendTargets", "All")]),
        )),
    ));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::tmf_request(
            0x15,
            5,
            Lun::from_number(0),
            0xffff_ffff,
            1004,
            1000,
        )),
    ));
    s.extend(rec(3, 0, 0, 1, &[]));
    s.extend(rec(2, 40, 0, 0, &[]));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::logout_request(0x16, 1005, 0, 0)),
    ));
    out.put("login_text", "normal-session", &s)?;
    out.put("login_text", "operational-only", &login)?;

    // Security stage with AuthMethod=None, then operational.
    let s = login_recs(&login_requests(plan(Some(PLAIN))));
    out.put("login_text", "security-none", &s)?;

    // Mutual CHAP.
    let mutual = LoginPlan {
        chap: Some(InitiatorChap {
            credentials: creds("alice", b"alice-secret-12"),
            algorithms: vec![ChapAlgorithm::Md5],
            mutual: Some(MutualChap {
                target: creds("duet", b"target-secret-34"),
                id: 77,
                challenge: (1..=16).collect(),
            }),
        }),
        ..plan(Some(CHAP))
    };
    let s = login_recs(&login_requests(mutual));
    out.put("login_text", "chap-mutual", &s)?;

    // Discovery.
    let mut s = login_recs(&login_requests(LoginPlan {
        skip_security: true,
        ..plan(None)
    }));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::text_request(
            0x20,
            0xffff_ffff,
            1000,
            text(&[("SendTargets", "All")]),
        )),
    ));
    s.extend(rec(
        1,
        0,
        0,
        0,
        &raw(&Pdu::text_request(
            0x21,
            0xffff_ffff,
            1001,
            text(&[("SendTargets", PLAIN)]),
        )),
    ));
    out.put("login_text", "discovery", &s)?;
    Ok(())
}

/// One record of the cdb_decode target.
fn cdb_rec(who: u8, cdb: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = vec![who, cdb.len() as u8];
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(cdb);
    v.extend_from_slice(data);
    v
}

/// TEST UNIT READY from each of the four nexuses: clears their power-on unit attentions, so the
/// records that follow reach the command itself.
fn clear_ua() -> Vec<u8> {
    (0..4u8)
        .flat_map(|who| cdb_rec(who, &[0; 6], &[]))
        .collect()
}

fn cdb_seeds(out: &Out) -> std::io::Result<()> {
    let bs = 512usize;
    let pr_out_params = |key: u64, sa_key: u64| {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    };
    let mut unmap = vec![0u8; 24];
    unmap[1] = 22;
    unmap[3] = 16;
    unmap[8..16].copy_from_slice(&4u64.to_be_bytes());
    unmap[16..20].copy_from_slice(&8u32.to_be_bytes());
    let mut caw = vec![0u8; 16];
    caw[0] = 0x89;
    caw[13] = 1;
    let mut ws16 = vec![0u8; 16];
    ws16[0] = 0x93;
    ws16[1] = 0x08;
    ws16[13] = 4;
    let mut rc16 = vec![0u8; 16];
    rc16[0] = 0x9e;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let mut glba = vec![0u8; 16];
    glba[0] = 0x9e;
    glba[1] = 0x12;
    glba[13] = 32;
    let mut r16 = vec![0u8; 16];
    r16[0] = 0x88;
    r16[13] = 2;
    let mut w16 = r16.clone();
    w16[0] = 0x8a;
    let mut v16 = r16.clone();
    v16[0] = 0x8f;
    v16[1] = 0x02;
    let mut mode_select = vec![0u8; 4 + 12];
    mode_select[4] = 0x0a;
    mode_select[5] = 0x0a;
    mode_select[6] = 0x04; // D_SENSE
    let cmds: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("tur", vec![0; 6], vec![]),
        ("inquiry", vec![0x12, 0, 0, 0, 96, 0], vec![]),
        ("vpd00", vec![0x12, 1, 0x00, 0, 255, 0], vec![]),
        ("vpd80", vec![0x12, 1, 0x80, 0, 255, 0], vec![]),
        ("vpd83", vec![0x12, 1, 0x83, 1, 0, 0], vec![]),
        ("vpdb0", vec![0x12, 1, 0xb0, 0, 64, 0], vec![]),
        ("vpdb1", vec![0x12, 1, 0xb1, 0, 64, 0], vec![]),
        ("vpdb2", vec![0x12, 1, 0xb2, 0, 64, 0], vec![]),
        ("readcap10", vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![]),
        ("readcap16", rc16, vec![]),
        ("getlba", glba, vec![]),
        ("read6", vec![0x08, 0, 0, 1, 2, 0], vec![]),
        ("write6", vec![0x0a, 0, 0, 1, 1, 0], vec![0x42; bs]),
        ("read10", read10(3, 2), vec![]),
        ("write10", write10(3, 2), vec![0x24; 2 * bs]),
        ("read16", r16, vec![]),
        ("write16", w16, vec![0x33; 2 * bs]),
        ("verify16", v16, vec![0; 2 * bs]),
        ("caw", caw, vec![0; 2 * bs]),
        ("writesame16", ws16, vec![0x11; bs]),
        ("unmap", vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], unmap),
        ("sync", vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], vec![]),
        ("modesense6", vec![0x1a, 0, 0x3f, 0, 255, 0], vec![]),
        (
            "modesense10",
            vec![0x5a, 0x08, 0x0a, 0, 0, 0, 0, 1, 0, 0],
            vec![],
        ),
        ("modeselect6", vec![0x15, 0x10, 0, 0, 16, 0], mode_select),
        (
            "reportluns",
            vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
        ),
        (
            "rtpg",
            vec![0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
        ),
        (
            "rsoc",
            vec![0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0],
            vec![],
        ),
        (
            "stpg",
            vec![0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
            vec![0, 0, 0, 0, 0x00, 0, 0, 1],
        ),
        ("prin-keys", vec![0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], vec![]),
        ("prin-caps", vec![0x5e, 2, 0, 0, 0, 0, 0, 1, 0, 0], vec![]),
        (
            "prout-register",
            vec![0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            pr_out_params(0, 0xabc),
        ),
        (
            "prout-reserve",
            vec![0x5f, 1, 0x03, 0, 0, 0, 0, 0, 24, 0],
            pr_out_params(0xabc, 0),
        ),
        ("reserve6", vec![0x16, 0, 0, 0, 0, 0], vec![]),
        ("release6", vec![0x17, 0, 0, 0, 0, 0], vec![]),
        ("reqsense", vec![0x03, 0, 0, 0, 252, 0], vec![]),
        ("startstop", vec![0x1b, 0, 0, 0, 1, 0], vec![]),
    ];
    // Every command in turn on one LU (two files: the target reads at most 32 records).
    for (part, chunk) in cmds.chunks(cmds.len().div_ceil(2)).enumerate() {
        let mut all = vec![0u8];
        all.extend(clear_ua());
        for (_, cdb, data) in chunk {
            all.extend(cdb_rec(0, cdb, data));
        }
        out.put("cdb_decode", &format!("all-{part}"), &all)?;
    }
    for (name, cdb, data) in &cmds {
        let mut one = vec![0u8];
        one.extend(clear_ua());
        one.extend(cdb_rec(0, cdb, data));
        out.put("cdb_decode", name, &one)?;
    }
    // Reservations between two nexuses, on a 4096-byte, standby-peer LU.
    let mut pr = vec![0x01u8];
    pr.extend(clear_ua());
    pr.extend(cdb_rec(
        0,
        &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        &pr_out_params(0, 0xa),
    ));
    pr.extend(cdb_rec(
        1,
        &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        &pr_out_params(0, 0xb),
    ));
    pr.extend(cdb_rec(
        0,
        &[0x5f, 1, 0x05, 0, 0, 0, 0, 0, 24, 0],
        &pr_out_params(0xa, 0),
    ));
    pr.extend(cdb_rec(1, &write10(0, 1), &[1; 4096]));
    pr.extend(cdb_rec(
        1,
        &[0x5f, 4, 0x05, 0, 0, 0, 0, 0, 24, 0],
        &pr_out_params(0xb, 0xa),
    ));
    pr.extend(cdb_rec(0, &[0x5e, 1, 0, 0, 0, 0, 0, 1, 0, 0], &[]));
    pr.extend(cdb_rec(2, &read10(0, 1), &[]));
    pr.extend(cdb_rec(0xc0, &[], &[]));
    pr.extend(cdb_rec(0, &[0; 6], &[]));
    out.put("cdb_decode", "pr-two-nexus-4k", &pr)?;
    // The same on a standby port.
    let mut sb = vec![0x10u8];
    sb.extend(clear_ua());
    sb.extend(cdb_rec(0, &read10(0, 1), &[]));
    sb.extend(cdb_rec(0, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]));
    sb.extend(cdb_rec(0, &[0x12, 0, 0, 0, 96, 0], &[]));
    out.put("cdb_decode", "standby", &sb)?;
    Ok(())
}

fn frame(kind: FrameKind, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![1u8];
    v.extend_from_slice(
        &FrameHeader {
            kind,
            len: payload.len() as u32,
        }
        .encode(),
    );
    v.extend_from_slice(payload);
    v
}

fn ha_seeds(out: &Out) -> std::io::Result<()> {
    let nexus = Nexus::new(HOST, ISID, 129);
    let mut lu = LogicalUnit::new(LuConfig::new(1, 512, 2048, "DUETLAB0001")).expect("valid LU");
    let alua = AluaPicture::from_view(LunView::standalone(), 1, &[1, 129], &[]);
    let ctx = CommandContext {
        nexus: &nexus,
        alua: &alua,
        target_name: PLAIN,
        tpgt: 1,
        luns: &[1],
    };
    // The first command sees the power-on unit attention.
    let _ = lu.prepare(&ctx, &[0; 6], &[]);
    let plan = match lu.prepare(&ctx, &write10(4, 2), &[0x99; 1024]) {
        Prepared::Io(plan) => plan,
        Prepared::Done(o) => panic!("WRITE(10) should need the medium: {o:?}"),
    };
    let _ = AluaState::Standby;
    let msgs = [
        (
            "hello",
            LinkMsg::Ha(HaMsg::Hello {
                version: 1,
                ha_id: 1,
                mode: HaMode::ActiveActiveShared,
            }),
        ),
        ("probe", LinkMsg::Ha(HaMsg::Probe { at: 123_456 })),
        (
            "state",
            LinkMsg::Ha(HaMsg::State {
                at: Some(99),
                valid_for: 1200,
                luns: vec![LunStatus {
                    lun: 1,
                    epoch: 3,
                    primary: true,
                }],
            }),
        ),
        (
            "handover",
            LinkMsg::Ha(HaMsg::Handover { lun: 1, epoch: 4 }),
        ),
        (
            "lusync",
            LinkMsg::LuSync {
                lun: 1,
                state: lu.shared_state(),
            },
        ),
        (
            "execute",
            LinkMsg::Request {
                id: 7,
                req: PeerRequest::Execute {
                    lun: 1,
                    nexus: nexus.clone(),
                    cdb: Bytes::from(write10(4, 2)),
                    data_out: Bytes::from(vec![0x99; 64]),
                    data_len: 1024,
                    plan_only: true,
                    ask: 1,
                },
            },
        ),
        (
            "reset",
            LinkMsg::Request {
                id: 8,
                req: PeerRequest::Reset {
                    lun: 1,
                    cold: false,
                },
            },
        ),
        (
            "nexuslost",
            LinkMsg::Request {
                id: 9,
                req: PeerRequest::NexusLost {
                    lun: 1,
                    nexus: nexus.clone(),
                },
            },
        ),
        (
            "done",
            LinkMsg::Reply {
                id: 7,
                reply: PeerReply::Done {
                    status: 2,
                    sense: Some(Bytes::from_static(&[
                        0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0,
                    ])),
                    data_in: Bytes::from_static(b"data"),
                    wanted_len: 96,
                },
            },
        ),
        (
            "plan",
            LinkMsg::Reply {
                id: 7,
                reply: PeerReply::Plan {
                    ask: 1,
                    grant: 11,
                    epoch: 2,
                    plan,
                },
            },
        ),
        (
            "unavailable",
            LinkMsg::Reply {
                id: 7,
                reply: PeerReply::Unavailable {
                    reason: "not primary".into(),
                },
            },
        ),
        (
            "ack",
            LinkMsg::Reply {
                id: 8,
                reply: PeerReply::Ack,
            },
        ),
        ("release", LinkMsg::Release { grant: 11 }),
    ];
    for (name, msg) in &msgs {
        let payload = proto::encode(msg.clone()).expect("message encodes").to_vec();
        let mut bare = vec![0u8];
        bare.extend_from_slice(&payload);
        out.put("ha_frame", &format!("msg-{name}"), &bare)?;
        out.put(
            "ha_frame",
            &format!("frame-{name}"),
            &frame(FrameKind::Message, &payload),
        )?;
    }
    out.put("ha_frame", "frame-ping", &frame(FrameKind::Ping, &[]))?;
    out.put(
        "ha_frame",
        "frame-bye",
        &frame(FrameKind::Bye, b"wrong secret"),
    )?;
    out.put(
        "ha_frame",
        "frame-login",
        &frame(FrameKind::Login, &[0, 1, 1, 32]),
    )?;
    Ok(())
}

fn config_seeds(out: &Out, examples: &Path) -> std::io::Result<()> {
    for name in ["single.toml", "chap.toml"] {
        let text = std::fs::read(examples.join(name))?;
        out.put("config_toml", name, &text)?;
    }
    let ctl = std::fs::read(examples.join("ctl.conf"))?;
    out.put("config_ctl", "ctl.conf", &ctl)?;
    out.put(
        "config_ctl",
        "minimal.conf",
        b"auth-group ag0 {\n\tchap alice alice-secret-12\n\tinitiator-name iqn.2026-01.dev.duet:host\n}\n\
portal-group pg0 {\n\tdiscovery-auth-group no-authentication\n\tlisten 127.0.0.1:3260\n\tlisten [::1]\n}\n\
target iqn.2026-01.dev.duet:disk1 {\n\tauth-group ag0\n\tportal-group pg0\n\tlun 0 {\n\t\tpath /tmp/duet/lun0.img\n\t\tsize 64M\n\t\tblocksize 4096\n\t\tserial \"S0\"\n\t}\n}\n",
    )?;
    // The lab's configurations (HA sections), written by `duetd lab`'s own code.
    let dir = std::env::temp_dir().join(format!("duet-fuzz-seedgen-{}", std::process::id()));
    let mut opts = duet_target::lab::LabOptions::new(dir.clone());
    opts.size = 1 << 20;
    for mode in [0u8, 1, 2] {
        opts.mode = mode;
        let nodes =
            duet_target::lab::prepare(&opts).map_err(|e| std::io::Error::other(e.to_string()))?;
        for n in &nodes {
            let text = std::fs::read_to_string(&n.config)?;
            // The secret is random: make the seed reproducible.
            let text: String = text
                .lines()
                .map(|l| {
                    if l.starts_with("secret = ") {
                        "secret = \"0123456789abcdef0123456789abcdef\"".to_string()
                    } else {
                        l.replace(dir.to_str().unwrap_or("/"), "/tmp/x")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            out.put(
                "config_toml",
                &format!("lab-mode{mode}-{}.toml", n.name),
                text.as_bytes(),
            )?;
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| "fuzz/corpus".into()));
    let examples = PathBuf::from(args.next().unwrap_or_else(|| "examples".into()));
    let out = Out { root };
    let result = pdu_seeds(&out)
        .and_then(|()| login_seeds(&out))
        .and_then(|()| cdb_seeds(&out))
        .and_then(|()| ha_seeds(&out))
        .and_then(|()| config_seeds(&out, &examples));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seedgen: {e}");
            ExitCode::FAILURE
        }
    }
}
