//! Shared helpers for the iSCSI integration tests: a configured target, a scripted initiator
//! login and action inspection.
#![allow(dead_code)]

use bytes::Bytes;
use duet_core::iscsi::pdu::Opcode;
use duet_core::iscsi::{
    Action, ChapConfig, ChapCredentials, Connection, IscsiConfig, LoginEntropy, Lun, Pdu,
    PortalInfo, TargetConfig, TargetLimits, TextPairs,
};
use std::sync::Arc;

pub const TARGET: &str = "iqn.2026-01.dev.duet:disk1";
pub const OTHER_TARGET: &str = "iqn.2026-01.dev.duet:disk2";
pub const INITIATOR: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
pub const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];
pub const TSIH: u16 = 7;
pub const FIRST_CMD_SN: u32 = 1000;

pub fn limits() -> TargetLimits {
    TargetLimits {
        queue_depth: 16,
        ..TargetLimits::default()
    }
}

pub fn config_with(limits: TargetLimits, chap: Option<ChapConfig>) -> Arc<IscsiConfig> {
    Arc::new(IscsiConfig {
        targets: vec![
            TargetConfig {
                name: TARGET.into(),
                alias: Some("disk one".into()),
                allowed_initiators: vec![],
                chap: chap.into_iter().collect(),
                deny_all: false,
                addresses: vec!["127.0.0.1:3260,1".into(), "127.0.0.2:3260,2".into()],
            },
            TargetConfig {
                name: OTHER_TARGET.into(),
                alias: None,
                allowed_initiators: vec!["iqn.other".into()],
                chap: vec![],
                deny_all: false,
                addresses: vec![],
            },
        ],
        discovery_chap: vec![],
        discovery_deny: false,
        limits,
    })
}

pub fn config() -> Arc<IscsiConfig> {
    config_with(limits(), None)
}

pub fn chap_config(mutual: bool) -> ChapConfig {
    ChapConfig {
        initiator: ChapCredentials {
            user: "alice".into(),
            secret: b"alice-secret-12".to_vec(),
        },
        target: if mutual {
            Some(ChapCredentials {
                user: "duet".into(),
                secret: b"target-secret-34".to_vec(),
            })
        } else {
            None
        },
    }
}

pub fn entropy() -> LoginEntropy {
    let mut c = [0u8; 32];
    for (i, b) in c.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    LoginEntropy {
        chap_id: 42,
        chap_challenge: c,
        tsih: TSIH,
    }
}

pub fn portal() -> PortalInfo {
    PortalInfo {
        address: "127.0.0.1:3260,1".into(),
        portal_group_tag: 1,
    }
}

pub fn new_conn(cfg: Arc<IscsiConfig>) -> Connection {
    Connection::new(cfg, portal(), entropy())
}

pub fn drain(c: &mut Connection) -> Vec<Action> {
    let mut v = Vec::new();
    while let Some(a) = c.poll_action() {
        v.push(a);
    }
    v
}

pub fn sent(actions: &[Action]) -> Vec<Pdu> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

pub fn text(pairs: &[(&str, &str)]) -> Bytes {
    let mut t = TextPairs::new();
    for (k, v) in pairs {
        t.push(*k, *v);
    }
    t.to_bytes()
}

pub fn keys_of(p: &Pdu) -> TextPairs {
    TextPairs::parse(&p.data).expect("target text parses")
}

/// A Login request in stage `csg` asking to move to `nsg` (transit when `transit`).
pub fn login_pdu(csg: u8, nsg: u8, transit: bool, pairs: &[(&str, &str)]) -> Pdu {
    Pdu::login_request(
        ISID,
        0,
        0x10,
        FIRST_CMD_SN,
        (transit, csg, nsg),
        text(pairs),
    )
}

/// The keys libiscsi offers in its operational stage.
pub fn operational_keys() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "None"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("MaxOutstandingR2T", "1"),
    ]
}

/// Logs in to TARGET in one operational exchange with `overrides` replacing offered values.
/// Returns the connection in full feature phase.
pub fn logged_in_with(cfg: Arc<IscsiConfig>, overrides: &[(&str, &str)]) -> Connection {
    let mut c = new_conn(cfg);
    let mut keys: Vec<(&str, &str)> = vec![
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ];
    for (k, v) in operational_keys() {
        let v = overrides
            .iter()
            .find(|(ok, _)| *ok == k)
            .map(|(_, ov)| *ov)
            .unwrap_or(v);
        keys.push((k, v));
    }
    c.handle_pdu(login_pdu(1, 3, true, &keys), 0);
    let acts = drain(&mut c);
    assert!(
        acts.iter().any(|a| matches!(a, Action::LoginComplete(_))),
        "login should complete: {acts:?}"
    );
    assert!(c.is_full_feature());
    c
}

pub fn logged_in() -> Connection {
    logged_in_with(config(), &[])
}

pub fn lun0() -> Lun {
    Lun::from_number(0)
}

#[allow(unused_imports)]
pub use duet_core::scsi::host::{read10_cdb, write10_cdb};

pub const TUR: [u8; 6] = [0; 6];

pub fn executes(actions: &[Action]) -> Vec<duet_core::iscsi::ScsiCommand> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub fn of_opcode(pdus: &[Pdu], op: Opcode) -> Vec<Pdu> {
    pdus.iter()
        .filter(|p| p.opcode() == Some(op))
        .cloned()
        .collect()
}
