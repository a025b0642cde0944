//! The validated configuration: portal groups, auth groups, targets and LUNs, with the defaults
//! and limits of its keys. Plain data and lookups; it is built only by `build.rs` (the `[ha]`
//! section by `ha.rs`) and never parsed here.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::Serialize;

use super::ha::HaConfig;

/// The default NOP-In ping timeout in seconds (CTL's default).
pub const DEFAULT_PING_TIMEOUT: u64 = 5;
/// The `ping_timeout` (ctl.conf: `timeout`) values accepted, in seconds.
pub const PING_TIMEOUTS: RangeInclusive<i64> = 0..=3600;
/// Name of the predefined auth group that allows everyone without authentication.
pub const AUTH_GROUP_NONE: &str = "no-authentication";
/// Name of the predefined auth group that denies everyone.
pub const AUTH_GROUP_DENY: &str = "no-access";

/// Which syntax a configuration file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Syntax {
    Toml,
    CtlConf,
}

/// How initiators of an auth group authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    /// No authentication (the initiator-name list, if any, still applies).
    None,
    /// One-way CHAP: the initiator proves it knows a secret.
    Chap,
    /// Mutual CHAP: the target proves its own secret in return.
    ChapMutual,
    /// Nobody gets in.
    Deny,
}

/// One CHAP credential: what the initiator sends (`user`, `secret`) and, for mutual CHAP, what the
/// target answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChapCredential {
    pub user: String,
    #[serde(skip_serializing)]
    pub secret: String,
    pub mutual_user: Option<String>,
    #[serde(skip_serializing)]
    pub mutual_secret: Option<String>,
}

/// An auth group: who may log in, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuthGroup {
    pub name: String,
    pub auth_type: AuthType,
    pub chap: Vec<ChapCredential>,
    /// Initiator names allowed in; empty = any name.
    pub initiator_names: Vec<String>,
}

impl AuthGroup {
    /// A group that lets everyone in without authentication.
    pub(super) fn none(name: &str) -> AuthGroup {
        AuthGroup {
            name: name.to_string(),
            auth_type: AuthType::None,
            chap: Vec::new(),
            initiator_names: Vec::new(),
        }
    }

    /// A group that lets nobody in.
    pub(super) fn deny(name: &str) -> AuthGroup {
        AuthGroup {
            auth_type: AuthType::Deny,
            ..AuthGroup::none(name)
        }
    }

    /// Whether an initiator of this name passes the name ACL (case-insensitively, as iSCSI names
    /// are compared after normalisation to lower case).
    pub fn admits_initiator(&self, initiator_name: &str) -> bool {
        self.auth_type != AuthType::Deny
            && (self.initiator_names.is_empty()
                || self
                    .initiator_names
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(initiator_name)))
    }

    /// The credential for a CHAP user name, if any.
    pub fn chap_user(&self, user: &str) -> Option<&ChapCredential> {
        self.chap.iter().find(|c| c.user == user)
    }
}

/// A portal group: the addresses a set of targets listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortalGroup {
    pub name: String,
    /// The iSCSI target portal group tag (1-based, in order of definition).
    pub tag: u16,
    pub listen: Vec<SocketAddr>,
    /// The auth group that guards discovery sessions on these portals.
    pub discovery_auth_group: String,
}

/// A logical unit backed by a file or a block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lun {
    pub number: u16,
    pub path: PathBuf,
    /// Size in bytes; `None` = the size of the existing file or device.
    pub size: Option<u64>,
    pub block_size: u32,
    /// Unit serial number (VPD page 0x80), printable ASCII.
    pub serial: String,
    /// The T10 vendor designator text (VPD page 0x83), printable ASCII.
    pub device_id: String,
    /// The 16-byte NAA IEEE Registered Extended designator (NAA 6) for VPD page 0x83.
    pub naa: [u8; 16],
    pub read_only: bool,
    /// Create the file (and extend it to `size`) if it is missing or shorter.
    pub create: bool,
    /// Open the backend with `O_DIRECT`, bypassing the page cache: `direct = true`, and every LUN
    /// of a controller with `[ha]` (where `direct = false` is refused).
    pub direct: bool,
}

/// A target: an iSCSI name with its LUNs, reachable through one portal group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub portal_group: String,
    pub auth_group: String,
    pub luns: Vec<Lun>,
}

/// The most threads `io_threads` may ask for.
pub const MAX_IO_THREADS: usize = 256;

/// The default `poll_us`: long enough to bridge the gaps of a forwarding pipeline (secondary,
/// link, primary) and to catch the next command of a host that answers at once, short enough
/// that an idle connection costs nothing (the same order as Linux's guest halt-polling).
pub const DEFAULT_POLL_US: u64 = 200;

/// The longest `poll_us` accepted (1 ms).
pub const MAX_POLL_US: u64 = 1000;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Where it was read from (for messages).
    pub source: String,
    pub syntax: Syntax,
    /// Seconds of silence after which a NOP-In ping is sent and, after as many again without an
    /// answer, the connection is dropped. 0 = off.
    pub ping_timeout: u64,
    /// Threads that run iSCSI connections (`io_threads`); 0 = one per CPU.
    pub io_threads: usize,
    /// Microseconds a connection's thread keeps polling its socket after the connection was last
    /// busy, before it sleeps (`poll_us`); 0 = sleep at once.
    pub poll_us: u64,
    pub portal_groups: Vec<PortalGroup>,
    pub auth_groups: Vec<AuthGroup>,
    pub targets: Vec<Target>,
    /// The two-controller settings (`[ha]`), when this controller is one of an HA pair.
    pub ha: Option<HaConfig>,
}

impl Config {
    /// This controller's HA id, 0 when HA is off.
    pub fn ha_id(&self) -> u8 {
        self.ha.as_ref().map_or(0, |h| h.id)
    }

    /// The HA mode (Active/Standby when HA is off).
    pub fn ha_mode(&self) -> duet_core::alua::HaMode {
        self.ha
            .as_ref()
            .map_or(duet_core::alua::HaMode::ActiveStandby, |h| h.mode)
    }

    pub fn portal_group(&self, name: &str) -> Option<&PortalGroup> {
        self.portal_groups.iter().find(|p| p.name == name)
    }

    pub fn auth_group(&self, name: &str) -> Option<&AuthGroup> {
        self.auth_groups.iter().find(|a| a.name == name)
    }

    /// The target of an iSCSI name (compared case-insensitively).
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// The targets reachable through a portal group, in configuration order.
    pub fn targets_in(&self, portal_group: &str) -> impl Iterator<Item = &Target> {
        let pg = portal_group.to_string();
        self.targets.iter().filter(move |t| t.portal_group == pg)
    }
}
