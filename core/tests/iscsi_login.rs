//! Login, negotiation, CHAP and discovery as an initiator sees them.

mod iscsi_common;

use duet_core::iscsi::pdu::Opcode;
use duet_core::iscsi::text::{format_base64, format_hex, parse_binary};
use duet_core::iscsi::{Action, ChapAlgorithm, CloseReason, Pdu, SessionType, TargetLimits};
use iscsi_common::*;

fn status_of(p: &Pdu) -> (u8, u8) {
    (p.status_class(), p.status_detail())
}

/// Sends one login PDU and returns (the response, all actions).
fn exchange(c: &mut duet_core::iscsi::Connection, p: Pdu) -> (Pdu, Vec<Action>) {
    c.handle_pdu(p, 0);
    let acts = drain(c);
    let resp = sent(&acts).into_iter().next().expect("a login response");
    assert_eq!(resp.opcode(), Some(Opcode::LoginResponse));
    (resp, acts)
}

fn assert_failed(acts: &[Action], resp: &Pdu, expect: (u8, u8)) {
    assert_eq!(status_of(resp), expect);
    assert!(matches!(
        acts.last(),
        Some(Action::Close(CloseReason::LoginFailed))
    ));
}

#[test]
fn operational_login_answers_every_offered_key() {
    let mut c = new_conn(config());
    let mut keys = vec![
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ];
    keys.extend(operational_keys());
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_eq!(status_of(&resp), (0, 0));
    assert!(resp.login_transit());
    assert_eq!(resp.login_csg(), 1);
    assert_eq!(resp.login_nsg(), 3);
    assert_eq!(resp.tsih(), TSIH);
    assert_eq!(resp.itt(), 0x10);
    assert_eq!(resp.exp_cmd_sn(), FIRST_CMD_SN);
    assert_eq!(resp.max_cmd_sn(), FIRST_CMD_SN + 15);
    let reply = keys_of(&resp);
    for (k, _) in operational_keys() {
        assert!(reply.contains(k), "{k} must be answered: {reply:?}");
    }
    assert_eq!(reply.get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(reply.get("TargetAlias"), Some("disk one"));
    assert_eq!(reply.get("InitialR2T"), Some("No"));
    assert_eq!(reply.get("ImmediateData"), Some("Yes"));
    assert_eq!(reply.get("MaxConnections"), Some("1"));
    assert_eq!(reply.get("ErrorRecoveryLevel"), Some("0"));
    assert_eq!(reply.get("HeaderDigest"), Some("None"));
    let outcome = acts
        .iter()
        .find_map(|a| match a {
            Action::LoginComplete(o) => Some(o.clone()),
            _ => None,
        })
        .expect("LoginComplete");
    assert_eq!(outcome.identity.initiator_name, INITIATOR);
    assert_eq!(outcome.identity.isid, ISID);
    assert_eq!(outcome.identity.tsih, TSIH);
    assert_eq!(outcome.identity.session_type, SessionType::Normal);
    assert_eq!(outcome.identity.target_name.as_deref(), Some(TARGET));
    assert_eq!(outcome.params.max_xmit_data_segment_length, 262144);
    assert_eq!(outcome.params.first_burst_length, 262144);
    assert!(!outcome.params.initial_r2t);
    assert!(c.is_full_feature());
}

#[test]
fn header_digest_crc32c_is_agreed_when_offered_first() {
    let c = logged_in_with(
        config(),
        &[("HeaderDigest", "CRC32C,None"), ("DataDigest", "CRC32C")],
    );
    let p = c.params().unwrap();
    assert!(p.header_digest);
    assert!(p.data_digest);
}

#[test]
fn unknown_keys_are_not_understood_and_bad_values_rejected() {
    let mut c = new_conn(config());
    let keys = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("X-com.example.Frob", "1"),
        ("MaxBurstLength", "12"),
        ("InitialR2T", "Maybe"),
    ];
    let (resp, _) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    let reply = keys_of(&resp);
    assert_eq!(reply.get("X-com.example.Frob"), Some("NotUnderstood"));
    assert_eq!(reply.get("MaxBurstLength"), Some("Reject"));
    assert_eq!(reply.get("InitialR2T"), Some("Reject"));
}

#[test]
fn missing_initiator_name_fails_with_2_7() {
    let mut c = new_conn(config());
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &[("TargetName", TARGET)]));
    assert_failed(&acts, &resp, (2, 7));
    assert!(c.is_closed());
}

#[test]
fn missing_target_name_fails_with_2_7_and_unknown_target_with_2_3() {
    let mut c = new_conn(config());
    let (resp, acts) = exchange(
        &mut c,
        login_pdu(1, 3, true, &[("InitiatorName", INITIATOR)]),
    );
    assert_failed(&acts, &resp, (2, 7));
    let mut c = new_conn(config());
    let keys = [("InitiatorName", INITIATOR), ("TargetName", "iqn.nope")];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 3));
}

#[test]
fn initiator_not_in_acl_is_refused() {
    let mut c = new_conn(config());
    let keys = [("InitiatorName", INITIATOR), ("TargetName", OTHER_TARGET)];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 2));
}

#[test]
fn bad_session_type_and_version_and_tsih() {
    let mut c = new_conn(config());
    let keys = [("InitiatorName", INITIATOR), ("SessionType", "Bogus")];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 9));

    let mut c = new_conn(config());
    let mut p = login_pdu(
        1,
        3,
        true,
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    p.bhs[3] = 1; // Version-min
    let (resp, acts) = exchange(&mut c, p);
    assert_failed(&acts, &resp, (2, 5));

    let mut c = new_conn(config());
    let mut p = login_pdu(
        1,
        3,
        true,
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    p.set_tsih(99);
    let (resp, acts) = exchange(&mut c, p);
    assert_failed(&acts, &resp, (2, 10));
}

#[test]
fn non_login_pdu_during_login_closes() {
    let mut c = new_conn(config());
    c.handle_pdu(Pdu::nop_out(1, 0xffff_ffff, 0, bytes::Bytes::new()), 0);
    let acts = drain(&mut c);
    assert!(matches!(
        acts.as_slice(),
        [Action::Close(CloseReason::ProtocolError(_))]
    ));
}

#[test]
fn three_stage_login_without_authentication() {
    let mut c = new_conn(config());
    let keys = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
    ];
    let (resp, _) = exchange(&mut c, login_pdu(0, 1, true, &keys));
    assert_eq!(status_of(&resp), (0, 0));
    assert!(resp.login_transit());
    assert_eq!((resp.login_csg(), resp.login_nsg()), (0, 1));
    assert_eq!(keys_of(&resp).get("AuthMethod"), Some("None"));
    assert_eq!(resp.tsih(), 0, "TSIH only in the final response");
    let first_stat_sn = resp.stat_sn();

    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &operational_keys()));
    assert_eq!((resp.login_csg(), resp.login_nsg()), (1, 3));
    assert_eq!(resp.stat_sn(), first_stat_sn + 1);
    assert_eq!(resp.tsih(), TSIH);
    assert!(acts.iter().any(|a| matches!(a, Action::LoginComplete(_))));

    // The first full-feature response carries the next StatSN.
    c.handle_pdu(
        Pdu::nop_out(5, 0xffff_ffff, FIRST_CMD_SN, bytes::Bytes::new()),
        0,
    );
    let nop_in = sent(&drain(&mut c)).remove(0);
    assert_eq!(nop_in.stat_sn(), first_stat_sn + 2);
}

#[test]
fn text_continued_over_two_login_pdus() {
    let mut c = new_conn(config());
    let all = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxConnections", "1"),
    ]);
    let mut a = Pdu::login_request(ISID, 0, 1, FIRST_CMD_SN, (false, 1, 0), all.slice(..20));
    a.set_flags(a.flags() | 0x40);
    let (resp, _) = exchange(&mut c, a);
    assert_eq!(status_of(&resp), (0, 0));
    assert!(resp.data.is_empty());
    let b = Pdu::login_request(ISID, 0, 1, FIRST_CMD_SN, (true, 1, 3), all.slice(20..));
    let (resp, acts) = exchange(&mut c, b);
    assert_eq!(keys_of(&resp).get("MaxConnections"), Some("1"));
    assert!(acts.iter().any(|a| matches!(a, Action::LoginComplete(_))));
}

// ----- CHAP -----

struct ChapRun {
    conn: duet_core::iscsi::Connection,
    alg: ChapAlgorithm,
    id: u8,
    challenge: Vec<u8>,
}

/// Runs AuthMethod and CHAP_A, returning the target's challenge.
fn chap_start(mutual: bool, chap_a: &str) -> Result<ChapRun, Box<(Pdu, Vec<Action>)>> {
    let mut c = new_conn(config_with(limits(), Some(chap_config(mutual))));
    let keys = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP,None"),
    ];
    let (resp, _) = exchange(&mut c, login_pdu(0, 1, true, &keys));
    assert_eq!(status_of(&resp), (0, 0));
    assert!(!resp.login_transit(), "no transit before authentication");
    assert_eq!(keys_of(&resp).get("AuthMethod"), Some("CHAP"));
    let (resp, acts) = exchange(&mut c, login_pdu(0, 1, true, &[("CHAP_A", chap_a)]));
    if status_of(&resp) != (0, 0) {
        return Err(Box::new((resp, acts)));
    }
    let reply = keys_of(&resp);
    let alg = ChapAlgorithm::from_number(reply.get("CHAP_A").unwrap().parse().unwrap()).unwrap();
    let id: u8 = reply.get("CHAP_I").unwrap().parse().unwrap();
    let challenge = parse_binary(reply.get("CHAP_C").unwrap()).unwrap();
    assert_eq!(challenge.len(), alg.digest_len());
    Ok(ChapRun {
        conn: c,
        alg,
        id,
        challenge,
    })
}

#[test]
fn chap_md5_one_way_succeeds_and_moves_to_operational() {
    let mut run = chap_start(false, "5").ok().unwrap();
    assert_eq!(run.alg, ChapAlgorithm::Md5);
    let r = run.alg.response(run.id, b"alice-secret-12", &run.challenge);
    let (resp, _) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            1,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &format_hex(&r))],
        ),
    );
    assert_eq!(status_of(&resp), (0, 0));
    assert!(resp.login_transit());
    assert_eq!(resp.login_nsg(), 1);
    let (resp, acts) = exchange(&mut run.conn, login_pdu(1, 3, true, &operational_keys()));
    assert_eq!(status_of(&resp), (0, 0));
    assert!(acts.iter().any(|a| matches!(a, Action::LoginComplete(_))));
}

#[test]
fn chap_algorithm_list_picks_first_supported_and_base64_responses_work() {
    let mut run = chap_start(false, "8,7,6,5").ok().unwrap();
    assert_eq!(run.alg, ChapAlgorithm::Sha256);
    let r = run.alg.response(run.id, b"alice-secret-12", &run.challenge);
    let (resp, _) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            3,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &format_base64(&r))],
        ),
    );
    assert_eq!(status_of(&resp), (0, 0));
    assert!(resp.login_transit());
}

#[test]
fn unsupported_or_empty_chap_algorithm_fails() {
    for a in ["56", "", "1,2", "abc"] {
        let Err(failed) = chap_start(false, a) else {
            panic!("CHAP_A={a} must fail")
        };
        let (resp, acts) = *failed;
        assert_failed(&acts, &resp, (2, 1));
    }
}

#[test]
fn wrong_chap_response_or_name_fails_with_2_1() {
    let mut run = chap_start(false, "5").ok().unwrap();
    let r = run.alg.response(run.id, b"wrong", &run.challenge);
    let (resp, acts) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            1,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &format_hex(&r))],
        ),
    );
    assert_failed(&acts, &resp, (2, 1));

    let mut run = chap_start(false, "5").ok().unwrap();
    let r = run.alg.response(run.id, b"alice-secret-12", &run.challenge);
    // CHAP_N is literal: "0x616c696365" is not "alice".
    let (resp, acts) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            1,
            true,
            &[("CHAP_N", "0x616c696365"), ("CHAP_R", &format_hex(&r))],
        ),
    );
    assert_failed(&acts, &resp, (2, 1));
}

#[test]
fn chap_required_but_security_stage_skipped_fails() {
    let mut c = new_conn(config_with(limits(), Some(chap_config(false))));
    let mut keys = vec![("InitiatorName", INITIATOR), ("TargetName", TARGET)];
    keys.extend(operational_keys());
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 1));
}

#[test]
fn chap_required_but_only_none_offered_fails() {
    let mut c = new_conn(config_with(limits(), Some(chap_config(false))));
    let keys = [
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
    ];
    let (resp, acts) = exchange(&mut c, login_pdu(0, 1, true, &keys));
    assert_failed(&acts, &resp, (2, 1));
}

#[test]
fn mutual_chap_returns_target_proof() {
    let mut run = chap_start(true, "5").ok().unwrap();
    let r = run.alg.response(run.id, b"alice-secret-12", &run.challenge);
    let my_challenge = [9u8; 16];
    let (resp, _) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &format_hex(&r)),
                ("CHAP_I", "77"),
                ("CHAP_C", &format_hex(&my_challenge)),
            ],
        ),
    );
    assert_eq!(status_of(&resp), (0, 0));
    assert!(resp.login_transit());
    let reply = keys_of(&resp);
    assert_eq!(reply.get("CHAP_N"), Some("duet"));
    let proof = parse_binary(reply.get("CHAP_R").unwrap()).unwrap();
    assert_eq!(
        proof,
        ChapAlgorithm::Md5.response(77, b"target-secret-34", &my_challenge)
    );
}

#[test]
fn mutual_chap_refuses_our_own_challenge_and_unconfigured_mutual() {
    let mut run = chap_start(true, "5").ok().unwrap();
    let r = run.alg.response(run.id, b"alice-secret-12", &run.challenge);
    let echoed = format_hex(&run.challenge);
    let (resp, acts) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &format_hex(&r)),
                ("CHAP_I", "1"),
                ("CHAP_C", &echoed),
            ],
        ),
    );
    assert_failed(&acts, &resp, (2, 1));

    let mut run = chap_start(false, "5").ok().unwrap();
    let r = run.alg.response(run.id, b"alice-secret-12", &run.challenge);
    let (resp, acts) = exchange(
        &mut run.conn,
        login_pdu(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &format_hex(&r)),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x0102030405"),
            ],
        ),
    );
    assert_failed(&acts, &resp, (2, 1));
}

// ----- discovery -----

#[test]
fn discovery_session_lists_admitted_targets() {
    let mut c = new_conn(config());
    let keys = [
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("MaxRecvDataSegmentLength", "8192"),
    ];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_eq!(status_of(&resp), (0, 0));
    let outcome = acts
        .iter()
        .find_map(|a| match a {
            Action::LoginComplete(o) => Some(o.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(outcome.identity.session_type, SessionType::Discovery);
    assert_eq!(outcome.identity.target_name, None);

    c.handle_pdu(
        Pdu::text_request(
            3,
            0xffff_ffff,
            FIRST_CMD_SN,
            text(&[("SendTargets", "All")]),
        ),
        0,
    );
    let resp = sent(&drain(&mut c)).remove(0);
    assert_eq!(resp.opcode(), Some(Opcode::TextResponse));
    assert_eq!(resp.flags(), 0x80, "only F");
    assert_eq!(resp.ttt(), 0xffff_ffff);
    let t = keys_of(&resp);
    let pairs: Vec<(&str, &str)> = t.iter().collect();
    assert_eq!(
        pairs,
        vec![
            ("TargetName", TARGET),
            ("TargetAddress", "127.0.0.1:3260,1"),
            ("TargetAddress", "127.0.0.2:3260,2"),
        ],
        "disk2 is not admitted for this initiator"
    );
}

#[test]
fn discovery_session_refuses_scsi_commands() {
    let mut c = new_conn(config());
    let keys = [("InitiatorName", INITIATOR), ("SessionType", "Discovery")];
    exchange(&mut c, login_pdu(1, 3, true, &keys));
    c.handle_pdu(
        Pdu::scsi_command(
            1,
            lun0(),
            &TUR,
            0,
            FIRST_CMD_SN,
            0x80,
            duet_core::iscsi::TaskAttr::Simple,
        ),
        0,
    );
    let acts = drain(&mut c);
    assert!(executes(&acts).is_empty());
    assert_eq!(sent(&acts)[0].opcode(), Some(Opcode::Reject));
}

#[test]
fn discovery_chap_is_enforced() {
    let cfg = {
        let mut c = (*config_with(TargetLimits::default(), None)).clone();
        c.discovery_chap = vec![chap_config(false)];
        std::sync::Arc::new(c)
    };
    let mut c = new_conn(cfg);
    let keys = [("InitiatorName", INITIATOR), ("SessionType", "Discovery")];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 1));
}

#[test]
fn any_of_several_chap_credentials_may_log_in() {
    let mut cfg = (*config_with(limits(), Some(chap_config(false)))).clone();
    cfg.targets[0].chap.push(duet_core::iscsi::ChapConfig {
        initiator: duet_core::iscsi::ChapCredentials {
            user: "bob".into(),
            secret: b"bob-secret-5678".to_vec(),
        },
        target: Some(duet_core::iscsi::ChapCredentials {
            user: "duet-for-bob".into(),
            secret: b"target-for-bob-9".to_vec(),
        }),
    });
    let cfg = std::sync::Arc::new(cfg);
    let run_as = |user: &str, secret: &[u8], mutual: bool| -> (Pdu, Vec<Action>) {
        let mut c = new_conn(cfg.clone());
        let keys = [
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "CHAP"),
            ("CHAP_A", "5"),
        ];
        let (resp, _) = exchange(&mut c, login_pdu(0, 1, true, &keys));
        let reply = keys_of(&resp);
        let id: u8 = reply.get("CHAP_I").unwrap().parse().unwrap();
        let ch = parse_binary(reply.get("CHAP_C").unwrap()).unwrap();
        let r = format_hex(&ChapAlgorithm::Md5.response(id, secret, &ch));
        let mut keys = vec![("CHAP_N", user), ("CHAP_R", r.as_str())];
        if mutual {
            keys.push(("CHAP_I", "3"));
            keys.push(("CHAP_C", "0x00112233445566778899"));
        }
        exchange(&mut c, login_pdu(0, 1, true, &keys))
    };
    let (resp, _) = run_as("alice", b"alice-secret-12", false);
    assert_eq!(status_of(&resp), (0, 0));
    let (resp, _) = run_as("bob", b"bob-secret-5678", true);
    assert_eq!(status_of(&resp), (0, 0));
    assert_eq!(keys_of(&resp).get("CHAP_N"), Some("duet-for-bob"));
    let (resp, acts) = run_as("bob", b"alice-secret-12", false);
    assert_failed(&acts, &resp, (2, 1));
    let (resp, acts) = run_as("alice", b"alice-secret-12", true);
    assert_failed(&acts, &resp, (2, 1));
}

#[test]
fn deny_all_refuses_logins_and_discovery_can_be_denied() {
    let mut cfg = (*config()).clone();
    cfg.targets[0].deny_all = true;
    cfg.discovery_deny = true;
    let cfg = std::sync::Arc::new(cfg);
    let mut c = new_conn(cfg.clone());
    let keys = [("InitiatorName", INITIATOR), ("TargetName", TARGET)];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 2));
    let mut c = new_conn(cfg);
    let keys = [("InitiatorName", INITIATOR), ("SessionType", "Discovery")];
    let (resp, acts) = exchange(&mut c, login_pdu(1, 3, true, &keys));
    assert_failed(&acts, &resp, (2, 2));
}
