//! iSCSI text keys and the login state machine, driven through `Connection::handle_pdu`.
//!
//! Input: a sequence of records, each `[kind][a][b][c][len: u16 BE][len bytes]`:
//! - kind % 5 == 0: a Login Request built from the fields (a: T, C, CSG, NSG bits; b: ISID and
//!   TSIH variant; c: ITT/CmdSN/version tweaks) with the bytes as its text data segment;
//! - 1: a raw PDU: the bytes are BHS (48, zero padded) followed by its data segment;
//! - 2: time passes by `a * 256 + b` milliseconds;
//! - 3: the oldest outstanding SCSI command / TMF completes, with fields from a, b, c and bytes;
//! - 4: a decoding error of kind `a` for a PDU made of the bytes.
//!
//! Before that, every data segment of kinds 0 and 1 also goes through `TextPairs::parse` and the
//! value parsers on its own.
//!
//! Properties: nothing panics; parsed text re-encodes to an equal list; every PDU the target
//! sends encodes and decodes cleanly; a complete Login Response's text parses.
#![no_main]

use bytes::{Bytes, BytesMut};
use duet_core::iscsi::pdu::Opcode;
use duet_core::iscsi::text::{parse_binary, parse_bool, parse_list, parse_number};
use duet_core::iscsi::{
    Action, ChapConfig, ChapCredentials, Codec, Completion, Connection, IscsiConfig, LoginEntropy,
    Pdu, PduError, PortalInfo, TargetConfig, TargetLimits, TextPairs, TmfResponse, BHS_LEN,
};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const PLAIN: &str = "iqn.2026-01.dev.duet:disk1";
const CHAP: &str = "iqn.2026-01.dev.duet:disk2";

fn config() -> Arc<IscsiConfig> {
    static CFG: OnceLock<Arc<IscsiConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let chap = ChapConfig {
            initiator: ChapCredentials {
                user: "alice".into(),
                secret: b"alice-secret-12".to_vec(),
            },
            target: Some(ChapCredentials {
                user: "duet".into(),
                secret: b"target-secret-34".to_vec(),
            }),
        };
        Arc::new(IscsiConfig {
            targets: vec![
                TargetConfig {
                    name: PLAIN.into(),
                    alias: Some("disk one".into()),
                    allowed_initiators: vec![],
                    chap: vec![],
                    deny_all: false,
                    addresses: vec!["127.0.0.1:3260,1".into(), "[::1]:3260,2".into()],
                },
                TargetConfig {
                    name: CHAP.into(),
                    alias: None,
                    allowed_initiators: vec!["iqn.2026-01.dev.duet:host".into()],
                    chap: vec![chap.clone()],
                    deny_all: false,
                    addresses: vec![],
                },
            ],
            discovery_chap: vec![],
            discovery_deny: false,
            limits: TargetLimits {
                queue_depth: 8,
                ..TargetLimits::default()
            },
        })
    })
    .clone()
}

fn entropy() -> LoginEntropy {
    let mut c = [0u8; 32];
    for (i, b) in c.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    LoginEntropy {
        chap_id: 42,
        chap_challenge: c,
        tsih: 7,
    }
}

/// The text parsers on their own.
fn text_checks(data: &[u8]) {
    if let Ok(pairs) = TextPairs::parse(data) {
        let again = TextPairs::parse(&pairs.to_bytes()).expect("re-encoded text parses");
        assert_eq!(again, pairs, "text pairs do not survive re-encoding");
        for (_, v) in pairs.iter() {
            let _ = parse_binary(v);
            let _ = parse_number(v);
            let _ = parse_bool(v);
            let _ = parse_list(v);
        }
    }
}

struct Rig {
    conn: Connection,
    now: u64,
    commands: Vec<u32>,
    tmfs: Vec<u32>,
    /// Text of Login Responses with the C bit, waiting for the final piece.
    login_text: Vec<u8>,
    /// Codec of the connection's outgoing side (switches at LoginComplete).
    codec: Codec,
}

impl Rig {
    fn drain(&mut self) {
        while let Some(a) = self.conn.poll_action() {
            match a {
                Action::Send(p) => self.check_sent(&p),
                Action::LoginComplete(o) => {
                    let _ = o.identity.initiator_port();
                    self.codec = Codec::for_session(&o.params);
                }
                Action::Execute(c) => self.commands.push(c.itt),
                Action::TaskManagement(t) => self.tmfs.push(t.itt),
                Action::Abort { itts } => self.commands.retain(|i| !itts.contains(i)),
                Action::Close(_) => {}
            }
        }
    }

    fn check_sent(&mut self, p: &Pdu) {
        // Whatever the target sends must be a PDU the codec frames and reads back.
        let mut wire = BytesMut::new();
        let codec = Codec {
            max_recv_data_segment_length: 0x00ff_ffff,
            ..self.codec
        };
        codec.encode(p, &mut wire);
        match codec.decode(&mut wire) {
            Ok(Some(_)) => {}
            other => panic!("target sent {p:?} that does not decode: {other:?}"),
        }
        if p.opcode() == Some(Opcode::LoginResponse) {
            self.login_text.extend_from_slice(&p.data);
            if !p.continue_bit() {
                let text = std::mem::take(&mut self.login_text);
                if let Err(e) = TextPairs::parse(&text) {
                    panic!(
                        "login response text does not parse ({e}): {:?}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
    }
}

fn login_pdu(a: u8, b: u8, c: u8, data: &[u8]) -> Pdu {
    let isid = match b & 3 {
        0 => [0x80, 0x12, 0x34, 0x56, 0x00, 0x01],
        1 => [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01],
        2 => [0x40, 0, 0, 0, 0, b],
        _ => [0xc0, b, b, b, b, b],
    };
    let tsih = match (b >> 2) & 3 {
        0 => 0,
        1 => 7,
        2 => 1,
        _ => u16::from(b),
    };
    let mut p = Pdu::login_request(
        isid,
        tsih,
        0x10 + u32::from(c & 0x0f),
        1000 + u32::from(c >> 4),
        (a & 0x80 != 0, (a >> 2) & 3, a & 3),
        Bytes::copy_from_slice(data),
    );
    if a & 0x40 != 0 {
        p.set_flags(p.flags() | 0x40);
    }
    if a & 0x20 != 0 {
        // A version the target may not support.
        p.bhs[2] = c;
        p.bhs[3] = c >> 1;
    }
    if a & 0x10 != 0 {
        p.set_immediate(false);
    }
    p
}

fn raw_pdu(bytes: &[u8]) -> Pdu {
    let mut bhs = [0u8; BHS_LEN];
    let n = bytes.len().min(BHS_LEN);
    bhs[..n].copy_from_slice(&bytes[..n]);
    let mut p = Pdu::from_parts(bhs, Bytes::new(), Bytes::new());
    p.set_data(Bytes::copy_from_slice(bytes.get(BHS_LEN..).unwrap_or(&[])));
    p
}

fuzz_target!(|data: &[u8]| {
    let mut rig = Rig {
        conn: Connection::new(
            config(),
            PortalInfo {
                address: "127.0.0.1:3260,1".into(),
                portal_group_tag: 1,
            },
            entropy(),
        ),
        now: 0,
        commands: Vec::new(),
        tmfs: Vec::new(),
        login_text: Vec::new(),
        codec: Codec::new(),
    };
    rig.conn.set_login_deadline(60_000);
    let mut rest = data;
    let mut steps = 0;
    while rest.len() >= 6 && steps < 64 {
        steps += 1;
        let (kind, a, b, c) = (rest[0], rest[1], rest[2], rest[3]);
        let len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
        rest = &rest[6..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        match kind % 5 {
            0 => {
                text_checks(body);
                let p = login_pdu(a, b, c, body);
                rig.conn.handle_pdu(p, rig.now);
            }
            1 => {
                text_checks(body.get(BHS_LEN..).unwrap_or(&[]));
                let p = raw_pdu(body);
                rig.conn.handle_pdu(p, rig.now);
            }
            2 => {
                rig.now += u64::from(a) * 256 + u64::from(b);
                rig.conn.handle_timeout(rig.now);
            }
            3 => {
                if c & 1 == 0 && !rig.commands.is_empty() {
                    let itt = rig.commands.remove(0);
                    let completion = Completion {
                        status: if a & 1 == 0 { 0 } else { 2 },
                        sense: (a & 1 != 0).then(|| Bytes::copy_from_slice(body)),
                        data_in: if a & 1 == 0 {
                            Bytes::copy_from_slice(body)
                        } else {
                            Bytes::new()
                        },
                        wanted_len: u32::from(b) * 512 + u32::from(c),
                    };
                    rig.conn.complete_command(itt, completion, rig.now);
                } else if !rig.tmfs.is_empty() {
                    let itt = rig.tmfs.remove(0);
                    let resp = match b % 3 {
                        0 => TmfResponse::Complete,
                        1 => TmfResponse::TaskNotFound,
                        _ => TmfResponse::Rejected,
                    };
                    rig.conn.complete_task_management(itt, resp, rig.now);
                } else if a & 2 != 0 {
                    rig.conn.request_logout(u16::from(b), rig.now);
                }
            }
            _ => {
                let p = Box::new(raw_pdu(body));
                let err = match a % 3 {
                    0 => PduError::DataDigest { pdu: p },
                    1 => PduError::Malformed {
                        pdu: p,
                        reason: "fuzz",
                    },
                    _ => PduError::UnknownOpcode {
                        opcode: p.opcode_raw(),
                        pdu: p,
                    },
                };
                rig.conn.handle_decode_error(err, rig.now);
            }
        }
        rig.drain();
        if rig.conn.is_closed() {
            break;
        }
    }
    let _ = rig.conn.next_timeout();
    rig.conn.shutdown(rig.now);
    rig.drain();
});
