//! Property tests: PDU codec round trip and robustness, text keys, login and session robustness,
//! and the CmdSN window against a small reference model.

mod iscsi_common;

use bytes::{BufMut, Bytes, BytesMut};
use duet_core::iscsi::codec::{Codec, PduError};
use duet_core::iscsi::pdu::{Opcode, BHS_LEN};
use duet_core::iscsi::{Action, Completion, Pdu, TaskAttr, TextPairs};
use iscsi_common::*;
use proptest::prelude::*;

fn arb_opcode() -> impl Strategy<Value = Opcode> {
    prop::sample::select(Opcode::ALL.to_vec())
}

/// A well-formed AHS area: segments of type 1 or 2 with 1..40 specific bytes, each padded.
fn arb_ahs() -> impl Strategy<Value = Bytes> {
    prop::collection::vec((1u8..3, prop::collection::vec(any::<u8>(), 1..40)), 0..3).prop_map(
        |segs| {
            let mut a = BytesMut::new();
            for (t, body) in segs {
                a.put_u16(body.len() as u16 + 1);
                a.put_u8(t);
                a.put_u8(0);
                a.extend_from_slice(&body);
                while a.len() & 3 != 0 {
                    a.put_u8(0);
                }
            }
            a.freeze()
        },
    )
}

fn arb_pdu() -> impl Strategy<Value = Pdu> {
    (
        arb_opcode(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), BHS_LEN),
        arb_ahs(),
        prop::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(op, imm, raw, ahs, data)| {
            let mut bhs = [0u8; BHS_LEN];
            bhs.copy_from_slice(&raw);
            bhs[0] = op as u8 | if imm { 0x40 } else { 0 };
            let mut p = Pdu::from_parts(bhs, Bytes::new(), Bytes::new());
            p.set_ahs(ahs);
            p.set_data(Bytes::from(data));
            p
        })
}

fn codec(hd: bool, dd: bool) -> Codec {
    Codec {
        header_digest: hd,
        data_digest: dd,
        max_recv_data_segment_length: 8192,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn codec_round_trips_every_opcode(p in arb_pdu(), hd in any::<bool>(), dd in any::<bool>()) {
        let c = codec(hd, dd);
        let mut buf = BytesMut::new();
        c.encode(&p, &mut buf);
        prop_assert_eq!(buf.len() % 4, 0, "padded to 4 bytes");
        // Fed in two pieces: the first never yields a PDU early.
        let cut = buf.len() / 2;
        let mut first = buf.split_to(cut);
        prop_assert_eq!(c.decode(&mut first).unwrap(), None);
        first.unsplit(buf);
        let got = c.decode(&mut first).unwrap().expect("complete PDU");
        prop_assert!(first.is_empty());
        prop_assert_eq!(got, p);
    }

    #[test]
    fn two_pdus_back_to_back(a in arb_pdu(), b in arb_pdu(), hd in any::<bool>(), dd in any::<bool>()) {
        let c = codec(hd, dd);
        let mut buf = BytesMut::new();
        c.encode(&a, &mut buf);
        c.encode(&b, &mut buf);
        prop_assert_eq!(c.decode(&mut buf).unwrap(), Some(a));
        prop_assert_eq!(c.decode(&mut buf).unwrap(), Some(b));
        prop_assert_eq!(c.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn corrupted_digests_are_detected(p in arb_pdu(), pos in any::<prop::sample::Index>()) {
        let c = codec(true, true);
        let mut buf = BytesMut::new();
        c.encode(&p, &mut buf);
        let header_len = BHS_LEN + p.ahs.len() + 4;
        let i = pos.index(buf.len());
        // Length fields change the framing itself; flip anything else.
        prop_assume!(!(4..8).contains(&i));
        buf[i] ^= 0x01;
        match c.decode(&mut buf) {
            Err(PduError::HeaderDigest { .. }) => prop_assert!(i < header_len),
            Err(PduError::DataDigest { .. }) => prop_assert!(i >= header_len),
            other => {
                // A flipped opcode byte may still pass if only the I bit area changed? No: the
                // header digest covers it. Padding bytes are covered by the data digest.
                prop_assert!(false, "corruption at {} not detected: {:?}", i, other);
            }
        }
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600),
                           hd in any::<bool>(), dd in any::<bool>(), max in 0u32..1024) {
        let c = Codec { header_digest: hd, data_digest: dd, max_recv_data_segment_length: max };
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..10 {
            match c.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_fatal() => break,
                Err(e) => {
                    prop_assert!(e.pdu().is_some());
                    prop_assert!(e.reject_reason().is_some());
                }
            }
        }
    }

    #[test]
    fn oversized_segments_are_refused(len in 8193u32..0x00ff_ffff) {
        let mut bhs = [0u8; BHS_LEN];
        bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
        let mut buf = BytesMut::from(&bhs[..]);
        let r = Codec::new().decode(&mut buf);
        prop_assert!(
            matches!(r, Err(PduError::DataSegmentTooLong { .. })),
            "expected DataSegmentTooLong"
        );
    }

    #[test]
    fn text_round_trips(pairs in prop::collection::vec(("[A-Za-z0-9._@+-]{1,63}", "[ -~]{0,300}"), 0..20)) {
        let mut t = TextPairs::new();
        for (k, v) in &pairs {
            t.push(k.clone(), v.clone());
        }
        let parsed = TextPairs::parse(&t.to_bytes()).unwrap();
        prop_assert_eq!(parsed, t);
    }

    #[test]
    fn text_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = TextPairs::parse(&bytes);
    }

    #[test]
    fn binary_and_number_parsers_never_panic(s in "\\PC{0,40}") {
        let _ = duet_core::iscsi::text::parse_binary(&s);
        let _ = duet_core::iscsi::text::parse_number(&s);
    }

    /// Arbitrary key sets, stages and flags during login: never a panic, and every response is
    /// a Login Response.
    #[test]
    fn login_never_panics(
        steps in prop::collection::vec(
            (
                prop::collection::vec(
                    (prop::sample::select(vec![
                        "InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N",
                        "CHAP_R", "CHAP_I", "CHAP_C", "MaxRecvDataSegmentLength", "MaxBurstLength",
                        "FirstBurstLength", "HeaderDigest", "InitialR2T", "ErrorRecoveryLevel", "X-y",
                        "TargetAlias", "MaxConnections", "DefaultTime2Wait",
                    ]),
                    prop::sample::select(vec![
                        INITIATOR, TARGET, "Normal", "Discovery", "CHAP,None", "None", "CHAP", "5", "7,5",
                        "", "0x00", "0bAA==", "alice", "262144", "0", "Yes", "No", "CRC32C", "None,CRC32C",
                        "4294967296", "0xffffffffffffffffff", "Reject", "NotUnderstood",
                    ])),
                    0..8,
                ),
                0u8..4, 0u8..4, any::<bool>(), any::<bool>(),
            ),
            1..6,
        ),
        chap in any::<bool>(),
    ) {
        let cfg = config_with(limits(), if chap { Some(chap_config(true)) } else { None });
        let mut c = new_conn(cfg);
        for (pairs, csg, nsg, t, cont) in steps {
            let mut p = login_pdu(csg, nsg, t, &pairs);
            if cont {
                p.set_flags(p.flags() | 0x40);
            }
            c.handle_pdu(p, 0);
            for a in drain(&mut c) {
                if let Action::Send(r) = a {
                    prop_assert_eq!(r.opcode(), Some(Opcode::LoginResponse));
                }
            }
        }
    }

    /// Arbitrary PDUs thrown at a logged-in session never panic.
    #[test]
    fn session_never_panics(pdus in prop::collection::vec(arb_pdu(), 1..20), completions in any::<bool>()) {
        let mut c = logged_in();
        for p in pdus {
            c.handle_pdu(p, 0);
            let acts = drain(&mut c);
            if completions {
                for a in acts {
                    if let Action::Execute(cmd) = a {
                        c.complete_command(cmd.itt, Completion {
                            status: 0, sense: None,
                            data_in: Bytes::from(vec![0u8; (cmd.edtl as usize).min(100_000)]),
                            wanted_len: cmd.edtl,
                        }, 0);
                    }
                }
                drain(&mut c);
            }
        }
    }

    /// The CmdSN window against a reference model: commands execute exactly once, in CmdSN
    /// order, and only those inside the window at arrival are kept.
    #[test]
    fn cmdsn_window_matches_model(offsets in prop::collection::vec(-4i64..24, 1..60)) {
        let mut c = logged_in();
        let depth = 16u32;
        // Reference model.
        let mut exp = FIRST_CMD_SN;
        let mut held = std::collections::BTreeSet::new();
        let mut expected_order = Vec::new();
        let mut got_order = Vec::new();
        for (i, off) in offsets.into_iter().enumerate() {
            let sn = (exp as i64 + off) as u32;
            let in_window = sn.wrapping_sub(exp) < depth;
            if in_window && !held.contains(&sn) {
                held.insert(sn);
                while held.remove(&exp) {
                    expected_order.push(exp);
                    exp = exp.wrapping_add(1);
                }
            }
            let p = Pdu::scsi_command(i as u32, lun0(), &TUR, 0, sn, 0x80, TaskAttr::Simple);
            c.handle_pdu(p, 0);
            for a in drain(&mut c) {
                if let Action::Execute(cmd) = a {
                    got_order.push(cmd.cmd_sn);
                    c.complete_command(cmd.itt, Completion::default(), 0);
                }
            }
            drain(&mut c);
            prop_assert_eq!(c.session().unwrap().exp_cmd_sn(), exp);
        }
        prop_assert_eq!(got_order, expected_order);
    }
}

fn limits_with(mrdsl_burst: u32) -> duet_core::iscsi::TargetLimits {
    duet_core::iscsi::TargetLimits {
        max_burst_length: mrdsl_burst,
        ..limits()
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any byte stream, decoded and fed to a connection (login or full feature), never panics
    /// and stops producing actions once closed.
    #[test]
    fn connection_byte_stream_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4000),
                                           logged in any::<bool>()) {
        let mut c = if logged { logged_in() } else { new_conn(config()) };
        let codec = Codec::new();
        let mut buf = BytesMut::from(&bytes[..]);
        for _ in 0..50 {
            match codec.decode(&mut buf) {
                Ok(Some(p)) => c.handle_pdu(p, 0),
                Ok(None) => break,
                Err(e) => {
                    let fatal = e.is_fatal();
                    c.handle_decode_error(e, 0);
                    if fatal {
                        break;
                    }
                }
            }
            c.handle_timeout(10_000);
            let acts = drain(&mut c);
            if let Some(pos) = acts.iter().position(|a| matches!(a, Action::Close(_))) {
                prop_assert_eq!(pos, acts.len() - 1, "nothing after Close");
            }
            if c.is_closed() {
                c.handle_pdu(Pdu::nop_out(1, 0xffff_ffff, 0, Bytes::new()), 0);
                prop_assert!(drain(&mut c).is_empty());
                break;
            }
        }
    }

    /// Data-In for any read: PDUs within the initiator's MRDSL, contiguous offsets, DataSN from
    /// 0, F at every burst end, at most EDTL bytes, one status with the right residual.
    #[test]
    fn data_in_segmentation(len in 0usize..20_000, wanted in 0u32..20_000, edtl in 0u32..20_000,
                            mrdsl_k in 1u32..9, burst_k in 1u32..17) {
        let mrdsl = mrdsl_k * 512;
        let burst = burst_k * 512;
        let mrdsl_s = mrdsl.to_string();
        let mut c = logged_in_with(
            config_with(limits_with(burst), None),
            &[("MaxRecvDataSegmentLength", mrdsl_s.as_str())],
        );
        c.handle_pdu(Pdu::scsi_command(1, lun0(), &read10_cdb(0, 1), edtl, FIRST_CMD_SN, 0xc0, TaskAttr::Simple), 0);
        drain(&mut c);
        c.complete_command(1, Completion {
            status: 0, sense: None, data_in: Bytes::from(vec![5u8; len]), wanted_len: wanted,
        }, 0);
        let pdus = sent(&drain(&mut c));
        let moved = len.min(edtl as usize);
        let mut offset = 0usize;
        let mut in_burst = 0usize;
        let mut statuses = 0;
        for (i, p) in pdus.iter().enumerate() {
            match p.opcode() {
                Some(Opcode::DataIn) => {
                    prop_assert_eq!(p.data_sn(), i as u32);
                    prop_assert_eq!(p.buffer_offset() as usize, offset);
                    prop_assert!(!p.data.is_empty() && p.data.len() <= mrdsl as usize);
                    offset += p.data.len();
                    in_burst += p.data.len();
                    prop_assert!(in_burst <= burst as usize);
                    if in_burst == burst as usize || offset == moved {
                        prop_assert!(p.final_bit());
                        in_burst = 0;
                    } else {
                        prop_assert!(!p.final_bit());
                    }
                    if p.flags() & 0x01 != 0 {
                        statuses += 1;
                        prop_assert_eq!(i, pdus.len() - 1);
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    statuses += 1;
                    prop_assert_eq!(i, pdus.len() - 1);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(offset, moved);
        prop_assert_eq!(statuses, 1);
        let last = pdus.last().unwrap();
        let (flag, residual) = if wanted > edtl {
            (0x04, wanted - edtl)
        } else if (moved as u32) < edtl {
            (0x02, edtl - moved as u32)
        } else {
            (0, 0)
        };
        prop_assert_eq!(last.flags() & 0x06, flag);
        prop_assert_eq!(last.residual_count(), residual);
    }
}
