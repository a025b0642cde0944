//! What the iSCSI layer needs to know about the targets it serves, the randomness a login
//! consumes, session identity and TSIH allocation.

use super::params::TargetLimits;
use std::collections::BTreeSet;

/// CHAP credentials: a user name and its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapCredentials {
    pub user: String,
    pub secret: Vec<u8>,
}

/// CHAP requirements of a target (or of discovery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapConfig {
    /// What the initiator must prove it knows (CHAP_N / secret checked against CHAP_R).
    pub initiator: ChapCredentials,
    /// What the target answers with when the initiator asks for mutual CHAP; without it a
    /// mutual challenge fails the login.
    pub target: Option<ChapCredentials>,
}

/// One iSCSI target as the iSCSI layer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TargetConfig {
    /// The iSCSI name (`iqn.…`).
    pub name: String,
    /// Sent as TargetAlias when present.
    pub alias: Option<String>,
    /// Initiator names allowed to log in; empty = everyone.
    pub allowed_initiators: Vec<String>,
    /// CHAP credentials, any of which may log in; empty = no CHAP required.
    pub chap: Vec<ChapConfig>,
    /// Refuse every login to this target (2/2).
    pub deny_all: bool,
    /// `TargetAddress` values (`ip:port,tpgt`, IPv6 in brackets) reported by SendTargets; when
    /// empty, the connection's own portal is reported.
    pub addresses: Vec<String>,
}

impl TargetConfig {
    /// Whether `initiator` may log in to this target.
    pub fn admits(&self, initiator: &str) -> bool {
        !self.deny_all
            && (self.allowed_initiators.is_empty()
                || self.allowed_initiators.iter().any(|i| i == initiator))
    }
}

/// Everything the iSCSI layer of one portal needs; shared by all its connections.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IscsiConfig {
    pub targets: Vec<TargetConfig>,
    /// CHAP credentials for Discovery sessions, any of which may log in; empty = none needed.
    pub discovery_chap: Vec<ChapConfig>,
    /// Refuse every Discovery session (2/2).
    pub discovery_deny: bool,
    pub limits: TargetLimits,
}

impl IscsiConfig {
    /// The target called `name`.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// The portal a connection arrived on.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PortalInfo {
    /// This portal's `TargetAddress` value, `ip:port,tpgt`.
    pub address: String,
    /// TargetPortalGroupTag of this portal.
    pub portal_group_tag: u16,
}

/// Random values a login may consume, drawn by the runtime when the connection is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginEntropy {
    /// CHAP_I the target sends.
    pub chap_id: u8,
    /// Challenge bytes; the first `digest length` bytes (16/20/32) are sent as CHAP_C.
    pub chap_challenge: [u8; 32],
    /// The TSIH to give the session if the login succeeds (non-zero; see [`TsihAllocator`]).
    pub tsih: u16,
}

/// Session type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// Who is on the other end of a logged-in session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionIdentity {
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub session_type: SessionType,
    /// The target logged in to (None for Discovery).
    pub target_name: Option<String>,
    /// The portal group the session arrived on.
    pub portal_group_tag: u16,
}

impl SessionIdentity {
    /// The SCSI initiator port name, `InitiatorName,i,0x<ISID>` (RFC 7143 §4.2.7.1): the key
    /// for reservations and unit attentions.
    pub fn initiator_port(&self) -> String {
        format!(
            "{},i,{}",
            self.initiator_name,
            super::text::format_hex(&self.isid)
        )
    }

    /// Whether `other` is the same initiator port on the same target (session reinstatement:
    /// the older session must be closed).
    pub fn same_nexus(&self, other: &SessionIdentity) -> bool {
        self.initiator_name == other.initiator_name
            && self.isid == other.isid
            && self.target_name == other.target_name
            && self.portal_group_tag == other.portal_group_tag
    }
}

/// Hands out non-zero TSIHs that are not in use.
#[derive(Clone, Debug, Default)]
pub struct TsihAllocator {
    used: BTreeSet<u16>,
    next: u16,
}

impl TsihAllocator {
    pub fn new() -> TsihAllocator {
        TsihAllocator {
            used: BTreeSet::new(),
            next: 1,
        }
    }

    /// A free TSIH, now marked used; `None` when all 65535 are taken.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.used.len() >= 0xffff {
            return None;
        }
        loop {
            let t = self.next.max(1);
            self.next = t.wrapping_add(1);
            if self.used.insert(t) {
                return Some(t);
            }
        }
    }

    /// Returns a TSIH to the pool.
    pub fn release(&mut self, tsih: u16) {
        self.used.remove(&tsih);
    }

    /// How many TSIHs are in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsih_allocation_skips_zero_and_used() {
        let mut a = TsihAllocator::new();
        let x = a.allocate().unwrap();
        let y = a.allocate().unwrap();
        assert!(x != 0 && y != 0 && x != y);
        a.release(x);
        assert_eq!(a.in_use(), 1);
    }

    #[test]
    fn initiator_port_name() {
        let id = SessionIdentity {
            initiator_name: "iqn.a".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 1,
            session_type: SessionType::Normal,
            target_name: Some("iqn.t".into()),
            portal_group_tag: 1,
        };
        assert_eq!(id.initiator_port(), "iqn.a,i,0x800000000001");
    }
}
