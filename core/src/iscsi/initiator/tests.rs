//! The initiator's login machine against core's own target side ([`Connection`]), both pure:
//! PDUs are handed across through the codec's wire format, no sockets.

use super::*;
use crate::iscsi::config::{ChapConfig, IscsiConfig, LoginEntropy, PortalInfo, TargetConfig};
use crate::iscsi::connection::{Action, Connection};
use crate::iscsi::Codec;
use bytes::BytesMut;
use std::sync::Arc;

const TARGET: &str = "iqn.2026-01.dev.duet:disk";
const HOST: &str = "iqn.2026-01.dev.duet:host";
const ISID: [u8; 6] = [0x80, 0, 0, 0, 0, 7];

fn entropy() -> LoginEntropy {
    let mut chap_challenge = [0u8; 32];
    for (i, b) in chap_challenge.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    LoginEntropy {
        chap_id: 42,
        chap_challenge,
        tsih: 0x1234,
    }
}

fn creds(user: &str, secret: &str) -> ChapCredentials {
    ChapCredentials {
        user: user.into(),
        secret: secret.as_bytes().to_vec(),
    }
}

fn config(chap: Vec<ChapConfig>) -> Arc<IscsiConfig> {
    Arc::new(IscsiConfig {
        targets: vec![TargetConfig {
            name: TARGET.into(),
            alias: Some("disk".into()),
            chap,
            ..TargetConfig::default()
        }],
        ..IscsiConfig::default()
    })
}

/// Through the wire format, as a socket would carry it.
fn wire(p: &Pdu) -> Pdu {
    let codec = Codec::new();
    let mut buf = BytesMut::new();
    codec.encode(p, &mut buf);
    codec.decode(&mut buf).unwrap().expect("a whole PDU")
}

/// Runs a login to the end; returns its outcome, the target's connection and the number of
/// requests sent.
fn run(
    config: Arc<IscsiConfig>,
    plan: LoginPlan,
) -> (Result<LoginResult, LoginError>, Connection, usize) {
    let portal = PortalInfo {
        address: "127.0.0.1:3260,1".into(),
        portal_group_tag: 1,
    };
    let mut conn = Connection::new(config, portal, entropy());
    let mut ini = InitiatorLogin::new(plan);
    let mut req = ini.first_request();
    for n in 1..=20 {
        conn.handle_pdu(wire(&req), 0);
        let mut rsp = None;
        while let Some(a) = conn.poll_action() {
            if let Action::Send(p) = a {
                rsp = Some(p);
            }
        }
        let rsp = rsp.expect("the target answers every login request");
        match ini.handle_response(&wire(&rsp)) {
            Ok(Step::Send(p)) => req = p,
            Ok(Step::Done(r)) => return (Ok(r), conn, n),
            Err(e) => return (Err(e), conn, n),
        }
    }
    panic!("the login did not end");
}

#[test]
fn no_authentication_negotiates_what_the_target_settles() {
    let (r, conn, n) = run(config(vec![]), LoginPlan::normal(HOST, TARGET, ISID));
    let r = r.unwrap();
    assert_eq!(n, 2, "security, then operational");
    assert!(conn.is_full_feature());
    assert_eq!(r.tsih, 0x1234);
    assert_eq!(r.cmd_sn, 1);
    assert_eq!(r.target_alias.as_deref(), Some("disk"));
    assert_eq!(r.portal_group_tag, Some(1));
    let target = conn.params().unwrap();
    // The same values on both sides, each in the target's terms.
    assert_eq!(
        r.params.max_recv_data_segment_length,
        target.max_recv_data_segment_length
    );
    assert_eq!(
        r.params.max_xmit_data_segment_length,
        target.max_xmit_data_segment_length
    );
    assert_eq!(r.params.max_burst_length, target.max_burst_length);
    assert_eq!(r.params.first_burst_length, target.first_burst_length);
    assert_eq!(r.params.initial_r2t, target.initial_r2t);
    assert_eq!(r.params.immediate_data, target.immediate_data);
    assert_eq!(r.params.max_outstanding_r2t, target.max_outstanding_r2t);
    assert_eq!(r.params.default_time2wait, target.default_time2wait);
    assert_eq!(r.params.default_time2retain, target.default_time2retain);
    assert_eq!(r.params.queue_depth, target.queue_depth);
    assert_eq!(conn.identity().unwrap().isid, ISID);
}

#[test]
fn straight_to_the_operational_stage() {
    let plan = LoginPlan {
        skip_security: true,
        offer: OperationalOffer {
            initial_r2t: true,
            immediate_data: false,
            max_recv_data_segment_length: 65_536,
            ..OperationalOffer::default()
        },
        ..LoginPlan::normal(HOST, TARGET, ISID)
    };
    let (r, conn, n) = run(config(vec![]), plan);
    let r = r.unwrap();
    assert_eq!(n, 1);
    assert!(r.params.initial_r2t && !r.params.immediate_data);
    assert_eq!(conn.params().unwrap().max_xmit_data_segment_length, 65_536);
}

#[test]
fn one_way_chap() {
    let cfg = config(vec![ChapConfig {
        initiator: creds("alice", "alice-secret-12"),
        target: None,
    }]);
    let plan = LoginPlan {
        chap: Some(InitiatorChap::md5("alice", "alice-secret-12")),
        ..LoginPlan::normal(HOST, TARGET, ISID)
    };
    let (r, conn, n) = run(cfg.clone(), plan.clone());
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(n, 4, "AuthMethod, CHAP_A, CHAP_R, operational");
    assert!(conn.is_full_feature());

    let wrong = LoginPlan {
        chap: Some(InitiatorChap::md5("alice", "not-the-secret")),
        ..plan.clone()
    };
    assert_eq!(
        run(cfg.clone(), wrong).0,
        Err(LoginError::Rejected {
            class: 2,
            detail: 1
        })
    );
    let none = LoginPlan { chap: None, ..plan };
    assert_eq!(
        run(cfg, none).0,
        Err(LoginError::Rejected {
            class: 2,
            detail: 1
        })
    );
}

#[test]
fn mutual_chap_with_every_algorithm() {
    let cfg = config(vec![ChapConfig {
        initiator: creds("alice", "alice-secret-12"),
        target: Some(creds("target", "target-secret-1")),
    }]);
    for alg in [
        ChapAlgorithm::Md5,
        ChapAlgorithm::Sha1,
        ChapAlgorithm::Sha256,
    ] {
        let mutual = MutualChap {
            target: creds("target", "target-secret-1"),
            id: 77,
            challenge: (1..=16).collect(),
        };
        let plan = LoginPlan {
            chap: Some(InitiatorChap {
                credentials: creds("alice", "alice-secret-12"),
                algorithms: vec![alg],
                mutual: Some(mutual.clone()),
            }),
            ..LoginPlan::normal(HOST, TARGET, ISID)
        };
        let (r, _, _) = run(cfg.clone(), plan.clone());
        assert!(r.is_ok(), "{alg:?}: {r:?}");

        // A target that does not know the secret we expect fails mutual authentication.
        let mut bad = plan;
        bad.chap.as_mut().unwrap().mutual = Some(MutualChap {
            target: creds("target", "another-secret"),
            ..mutual
        });
        assert!(matches!(run(cfg.clone(), bad).0, Err(LoginError::Auth(_))));
    }
}

#[test]
fn refusals_carry_class_and_detail() {
    let unknown = LoginPlan::normal(HOST, "iqn.2026-01.dev.duet:nothing", ISID);
    let e = run(config(vec![]), unknown).0.unwrap_err();
    assert_eq!(
        e,
        LoginError::Rejected {
            class: 2,
            detail: 3
        }
    );
    assert_eq!(
        e.to_string(),
        "refused by the target (status class 0x02, detail 0x03: target not found)"
    );
}

#[test]
fn discovery_session() {
    let plan = LoginPlan {
        target_name: None,
        ..LoginPlan::normal(HOST, TARGET, ISID)
    };
    let (r, conn, _) = run(config(vec![]), plan);
    assert!(r.is_ok(), "{r:?}");
    assert!(conn.is_full_feature());
}

#[test]
fn answers_a_digest_we_did_not_offer_with_an_error() {
    let mut a = TextPairs::new();
    a.push("HeaderDigest", "CRC32C");
    assert!(matches!(
        OperationalOffer::default().settle(&a),
        Err(LoginError::Protocol(_))
    ));
    // Keys left out keep their defaults, bounded by the offer.
    let p = OperationalOffer::default()
        .settle(&TextPairs::new())
        .unwrap();
    assert_eq!(p.max_recv_data_segment_length, 8192);
    assert_eq!(p.max_burst_length, 262_144);
    assert_eq!(p.first_burst_length, 65_536);
    assert!(p.initial_r2t && p.immediate_data);
}

#[test]
fn settled_values_follow_the_answers() {
    let mut a = TextPairs::new();
    a.push("InitialR2T", "Yes");
    a.push("ImmediateData", "No");
    a.push("MaxRecvDataSegmentLength", "8192");
    a.push("FirstBurstLength", "65536");
    a.push("MaxBurstLength", "32768");
    a.push("MaxOutstandingR2T", "Reject");
    let p = OperationalOffer::default().settle(&a).unwrap();
    assert!(p.initial_r2t && !p.immediate_data);
    assert_eq!(p.max_recv_data_segment_length, 8192);
    assert_eq!((p.max_burst_length, p.first_burst_length), (32768, 32768));
    assert_eq!(p.max_outstanding_r2t, 1, "a rejected key keeps its default");
    // Our own offer bounds what the target may answer, and OR/AND apply to our side too.
    let strict = OperationalOffer {
        initial_r2t: true,
        immediate_data: false,
        first_burst_length: 4096,
        ..OperationalOffer::default()
    };
    let mut yes = TextPairs::new();
    yes.push("InitialR2T", "No");
    yes.push("ImmediateData", "Yes");
    yes.push("FirstBurstLength", "65536");
    let q = strict.settle(&yes).unwrap();
    assert!(q.initial_r2t && !q.immediate_data);
    assert_eq!(q.first_burst_length, 4096);
}

#[test]
fn anything_but_a_login_response_is_a_protocol_error() {
    let mut ini = InitiatorLogin::new(LoginPlan::normal(HOST, TARGET, ISID));
    let _ = ini.first_request();
    let nop = Pdu::new(Opcode::NopIn);
    assert!(matches!(
        ini.handle_response(&nop),
        Err(LoginError::Protocol(_))
    ));
}
