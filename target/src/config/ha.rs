//! The `[ha]` section of duetd's TOML configuration: this controller's place in the pair, the HA
//! link, the arbiter, fencing and lease timing.
//!
//! ```toml
//! [ha]
//! id = 1                          # 1 | 2 (required)
//! mode = 1                        # ha_mode 0 | 1 | 2 (default 1)
//! role = "primary"                # primary | secondary (default: id 1 primary, id 2 secondary)
//! peer = "listen 127.0.0.1:7777"  # or "connect ADDR:PORT" (required)
//! failover = "automatic"          # automatic (default) | manual
//! quorum = "/srv/duet/quorum.img" # required with failover = automatic
//! quorum_create = true            # create and format the quorum file if missing (default false)
//! fencing = "process"             # process | "exec COMMAND" | scsi-pr | none; required with automatic failover
//!                                 #   process: lab only (both controllers on one host; the peer
//!                                 #   address must be loopback); "exec COMMAND": power fencing,
//!                                 #   the command exits 0 only once the peer is confirmed off;
//!                                 #   scsi-pr: shared SCSI disks (see [`crate::ha::pr_fence`])
//! peer_pidfile = "/run/duet/ctrl-b.pid"  # for fencing = process
//! pidfile = "/run/duet/ctrl-a.pid"       # our own pid file (for the peer's process agent; kept at exit)
//! secret = "at-least-16-bytes"    # pre-shared HA link secret (required)
//! admin_socket = "/run/duet/ctrl-a.sock" # duetctl's socket (default /run/duet/duetd.sock)
//! lease_ms = 4000                 # lease timing, see duet_core::ha::Timing
//! renew_ms = 1000
//! drift_ms = 200
//! margin_ms = 1000
//! heartbeat_ms = 150              # HA link ping interval
//! dead_after_ms = 600             # link silence after which the peer is down (>= 3 x heartbeat_ms)
//! reconnect_ms = 200              # delay between HA link connection attempts
//! failback = false                # give LUNs back to their preferred node when it is healthy again
//! fence_timeout_ms = 5000
//! cluster_id = "vault-pair"       # for fencing = scsi-pr: names the pair (default: the first target's name)
//! pr_key = "0x5d1e0a2b3c4d0001"   # for scsi-pr: this controller's key (default: from cluster_id and id)
//! peer_pr_key = "0x5d1e0a2b3c4d0002" # for scsi-pr: the peer's key (default: from cluster_id and its id)
//! [ha.lun.1]                      # per-LUN override of `role`
//! role = "secondary"
//! ```
//!
//! The validated form is [`HaConfig`]; [`validate`] builds it from the raw table the TOML
//! document was read into (`toml.rs` reads the document once, `[ha]` included). Every error names
//! the file and the line, like the rest of the configuration.
//!
//! Uses `error.rs`, `values.rs`, the fencing agents of `crate::ha::fence` and the core's HA types.
//! What the HA runtime derives from an [`HaConfig`] (link settings, durations, start-up warnings)
//! is in `crate::ha::config`, which re-exports these types; this file does not use it.

use duet_core::LunNumber;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use ::toml::Spanned;
use duet_core::alua::HaMode;
use duet_core::ha::{self, peer_of, Fencing, LunConfig, Policy, Role, Timing};
use serde::{Deserialize, Serialize, Serializer};

use super::error::{in_range, range_error, ConfigError, Source};
use super::values::{parse_host_port, LUN_NUMBERS, MAX_LUN};
use crate::ha::fence::FenceAgent;
use crate::ha::pr_fence::ScsiPrConfig;
use duet_core::scsi::host_pr::derive_key;

mod pr;
pub use pr::attach_scsi_pr;
use pr::parse_pr_key;

/// Default path of duetctl's admin socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/duet/duetd.sock";
/// Default HA link ping interval (ms).
pub const DEFAULT_HEARTBEAT_MS: u64 = 150;
/// Default link silence after which the peer counts as down (ms): four ping intervals. The
/// link's control channel has a thread of its own (`crate::ha::runtime`), so I/O load does not
/// delay its pings.
pub const DEFAULT_DEAD_AFTER_MS: u64 = 600;
/// `dead_after_ms` must be at least this many ping intervals: one late or lost ping, and the
/// scheduling jitter of both sides, must not take the link down.
pub const MIN_PINGS_PER_DEAD_AFTER: u64 = 3;
/// Default delay between HA link connection attempts (ms).
pub const DEFAULT_RECONNECT_MS: u64 = 200;
/// Default time a fencing agent may take (ms).
pub const DEFAULT_FENCE_TIMEOUT_MS: u64 = 5000;
/// The shortest link secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// The longest duration accepted for any `*_ms` key: one hour.
const MAX_MS: i64 = 3_600_000;

/// Where the HA link comes from: this controller listens for its peer, or connects to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HaPeer {
    /// Accept the peer's connection on this address.
    Listen(SocketAddr),
    /// Connect to the peer at this address.
    Connect(SocketAddr),
}

impl HaPeer {
    /// The address listened on or connected to.
    pub fn addr(&self) -> SocketAddr {
        match self {
            HaPeer::Listen(a) | HaPeer::Connect(a) => *a,
        }
    }
}

impl fmt::Display for HaPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaPeer::Listen(a) => write!(f, "listen {a}"),
            HaPeer::Connect(a) => write!(f, "connect {a}"),
        }
    }
}

impl FromStr for HaPeer {
    type Err = String;

    /// Parses `listen ADDR:PORT` or `connect ADDR:PORT` (`localhost` is accepted as a host).
    fn from_str(s: &str) -> Result<HaPeer, String> {
        let s = s.trim();
        let (verb, addr) = s.split_once(char::is_whitespace).ok_or_else(|| {
            format!("expected \"listen ADDR:PORT\" or \"connect ADDR:PORT\", got `{s}`")
        })?;
        let addr = addr.trim();
        let Some(a) = parse_host_port(addr) else {
            return Err(format!(
                "`{addr}` is not an address with a port, like 127.0.0.1:7777"
            ));
        };
        match verb {
            "listen" => Ok(HaPeer::Listen(a)),
            "connect" => {
                if a.port() == 0 || a.ip().is_unspecified() {
                    return Err(format!("cannot connect to `{a}`"));
                }
                Ok(HaPeer::Connect(a))
            }
            other => Err(format!(
                "expected \"listen ADDR:PORT\" or \"connect ADDR:PORT\", got `{other} …`"
            )),
        }
    }
}

impl Serialize for HaPeer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A per-LUN override of the preferred role (`[ha.lun.N]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HaLunConfig {
    pub lun: LunNumber,
    #[serde(serialize_with = "ser_role")]
    pub role: Role,
    /// Line of the `[ha.lun.N]` table, for later errors.
    #[serde(skip)]
    pub line: Option<usize>,
}

/// The validated `[ha]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HaConfig {
    /// `ha_id`: 1 or 2.
    pub id: u8,
    /// `ha_mode`.
    #[serde(serialize_with = "ser_mode")]
    pub mode: HaMode,
    /// `ha_role`: the role this controller prefers for LUNs without an override.
    #[serde(serialize_with = "ser_role")]
    pub role: Role,
    pub peer: HaPeer,
    /// Automatic or manual failover (naive is refused).
    #[serde(serialize_with = "ser_policy")]
    pub failover: Policy,
    /// The quorum area (file or block device); always set with automatic failover.
    pub quorum: Option<PathBuf>,
    pub quorum_create: bool,
    pub fencing: FenceAgent,
    /// This controller's own pid file.
    pub pidfile: Option<PathBuf>,
    /// The pre-shared HA link secret (left out of serialized output).
    #[serde(serialize_with = "ser_secret")]
    pub secret: String,
    pub admin_socket: PathBuf,
    pub timing: Timing,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub reconnect_ms: u64,
    pub failback: bool,
    pub fence_timeout_ms: u64,
    /// The name of the pair the `scsi-pr` keys are derived from (`None`: the first target's
    /// name, filled in by [`attach_scsi_pr`]).
    pub cluster_id: Option<String>,
    /// Per-LUN role overrides, sorted by LUN.
    pub luns: Vec<HaLunConfig>,
    /// Line of the `[ha]` table, for later errors.
    #[serde(skip)]
    pub line: Option<usize>,
}

fn ser_role<S: Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role_name(*r))
}

fn ser_mode<S: Serializer>(m: &HaMode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(m.number())
}

fn ser_policy<S: Serializer>(p: &Policy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

fn ser_secret<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("(redacted)")
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Secondary => "secondary",
    }
}

impl HaConfig {
    /// The HA state machine's configuration for a controller serving `luns` (the target's LUN
    /// numbers), with this section's per-LUN overrides.
    pub fn core_config(&self, luns: &[LunNumber]) -> ha::Config {
        ha::Config {
            ha_id: self.id,
            mode: self.mode,
            policy: self.failover,
            fencing: match self.fencing {
                FenceAgent::None => Fencing::None,
                _ => Fencing::Agent,
            },
            role: self.role,
            luns: luns
                .iter()
                .map(|&lun| LunConfig {
                    lun,
                    role: self.luns.iter().find(|l| l.lun == lun).map(|l| l.role),
                })
                .collect(),
            timing: self.timing,
            failback: self.failback,
        }
    }

    /// Checks that every `[ha.lun.N]` override names one of `luns` (the LUNs the targets serve).
    pub fn check_luns(&self, file: &str, luns: &[LunNumber]) -> Result<(), ConfigError> {
        match self.luns.iter().find(|l| !luns.contains(&l.lun)) {
            None => Ok(()),
            Some(l) => Err(ConfigError::new(
                file,
                l.line,
                format!("[ha.lun.{}]: no target serves LUN {}", l.lun, l.lun),
            )),
        }
    }
}

/// Whether `ip` is a loopback address (127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6): an HA
/// link there connects two controllers of one host.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Environment for an exec fencing agent: who is fencing whom.
fn fence_env(id: u8, peer: &HaPeer) -> Vec<(String, String)> {
    vec![
        ("DUET_FENCE_PEER_ID".into(), peer_of(id).to_string()),
        ("DUET_FENCE_SELF_ID".into(), id.to_string()),
        ("DUET_FENCE_PEER_LINK".into(), peer.to_string()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Reading the raw table
// ---------------------------------------------------------------------------------------------

/// The `[ha]` table as the TOML document holds it (a field of `toml.rs`'s raw document).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    id: Option<Spanned<i64>>,
    mode: Option<Spanned<i64>>,
    role: Option<Spanned<String>>,
    peer: Option<Spanned<String>>,
    failover: Option<Spanned<String>>,
    quorum: Option<Spanned<String>>,
    quorum_create: Option<Spanned<bool>>,
    fencing: Option<Spanned<String>>,
    peer_pidfile: Option<Spanned<String>>,
    pidfile: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    admin_socket: Option<Spanned<String>>,
    lease_ms: Option<Spanned<i64>>,
    renew_ms: Option<Spanned<i64>>,
    drift_ms: Option<Spanned<i64>>,
    margin_ms: Option<Spanned<i64>>,
    heartbeat_ms: Option<Spanned<i64>>,
    dead_after_ms: Option<Spanned<i64>>,
    reconnect_ms: Option<Spanned<i64>>,
    failback: Option<Spanned<bool>>,
    fence_timeout_ms: Option<Spanned<i64>>,
    cluster_id: Option<Spanned<String>>,
    pr_key: Option<Spanned<String>>,
    peer_pr_key: Option<Spanned<String>>,
    #[serde(default)]
    lun: BTreeMap<String, Spanned<RawHaLun>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaLun {
    role: Option<Spanned<String>>,
}

/// The line of the `[ha]` header if the text has one (the table's span may start elsewhere, e.g.
/// at a `[ha.lun.N]` header when there is no plain `[ha]`).
fn ha_header_line(text: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .is_some_and(|inner| inner.trim() == "ha")
                && !l.starts_with("[[")
        })
        .map(|i| i + 1)
}

/// Validates the `[ha]` table `raw` of the TOML text `src`. Errors name the file and line.
pub fn validate(src: Source<'_>, raw: &Spanned<RawHa>) -> Result<HaConfig, ConfigError> {
    let table_line = ha_header_line(src.text).or(src.at(raw.span()));
    let raw = raw.get_ref();
    let fail_raw = |line: Option<usize>, message: String| src.err(line, message);
    let fail = |line: Option<usize>, message: String| fail_raw(line, format!("[ha]: {message}"));
    let at = |s: std::ops::Range<usize>| src.at(s);
    let missing = |key: &str, why: &str| fail(table_line, format!("`{key}`: missing{why}"));

    let id: u8 = match &raw.id {
        None => return Err(missing("id", " (1 or 2)")),
        Some(v) => src.range(v, "[ha]: `id`", 1..=2, "")?,
    };
    let mode = match &raw.mode {
        None => HaMode::ActiveActiveShared,
        Some(v) => {
            let modes = 0..=2;
            in_range(*v.get_ref(), &modes)
                .and_then(HaMode::from_number)
                .ok_or_else(|| {
                    range_error(
                        src.file,
                        at(v.span()),
                        "[ha]: `mode`",
                        v.get_ref(),
                        &modes,
                        "",
                    )
                })?
        }
    };
    let parse_role = |v: &Spanned<String>| match v.get_ref().as_str() {
        "primary" => Ok(Role::Primary),
        "secondary" => Ok(Role::Secondary),
        other => Err(format!(
            "`role`: expected primary or secondary, got `{other}`"
        )),
    };
    let role = match &raw.role {
        None if id == 2 => Role::Secondary,
        None => Role::Primary,
        Some(v) => parse_role(v).map_err(|m| fail(at(v.span()), m))?,
    };
    let peer = match &raw.peer {
        None => {
            return Err(missing(
                "peer",
                " (\"listen ADDR:PORT\" or \"connect ADDR:PORT\")",
            ))
        }
        Some(v) => v
            .get_ref()
            .parse::<HaPeer>()
            .map_err(|m| fail(at(v.span()), format!("`peer`: {m}")))?,
    };
    let failover = match &raw.failover {
        None => Policy::Automatic,
        Some(v) => match v.get_ref().as_str() {
            "automatic" => Policy::Automatic,
            "manual" => Policy::Manual,
            "naive" => {
                return Err(fail(
                    at(v.span()),
                    "`failover`: \"naive\" is unsafe (two primaries on a cut link) and exists \
                     only in the model checker; use automatic or manual"
                        .into(),
                ))
            }
            other => {
                return Err(fail(
                    at(v.span()),
                    format!("`failover`: expected automatic or manual, got `{other}`"),
                ))
            }
        },
    };
    let path_of = |key: &str, v: &Spanned<String>| {
        if v.get_ref().trim().is_empty() {
            Err(fail(
                at(v.span()),
                format!("`{key}`: expected a path, got an empty string"),
            ))
        } else {
            Ok(PathBuf::from(v.get_ref()))
        }
    };
    let quorum = match &raw.quorum {
        Some(v) => Some(path_of("quorum", v)?),
        None if failover == Policy::Automatic => return Err(missing(
            "quorum",
            " (a file or block device both controllers reach; required with automatic failover)",
        )),
        None => None,
    };
    let quorum_create = raw.quorum_create.as_ref().is_some_and(|v| *v.get_ref());
    let peer_pidfile = raw
        .peer_pidfile
        .as_ref()
        .map(|v| path_of("peer_pidfile", v))
        .transpose()?;
    let fencing = match &raw.fencing {
        None if failover == Policy::Automatic => {
            return Err(missing(
                "fencing",
                " (\"process\", \"exec COMMAND\", \"scsi-pr\" or \"none\"; required with automatic failover)",
            ))
        }
        None => FenceAgent::None,
        Some(v) => {
            let s = v.get_ref().trim();
            let (word, rest) = s
                .split_once(char::is_whitespace)
                .map(|(w, r)| (w, r.trim()))
                .unwrap_or((s, ""));
            match (word, rest) {
                ("none", "") => FenceAgent::None,
                ("process", "") if !is_loopback(peer.addr().ip()) => {
                    return Err(fail(
                        at(v.span()),
                        format!(
                            "`fencing`: \"process\" is the lab agent: it kills the peer's process \
                             on this host, so it needs the HA link on loopback (127.0.0.0/8 or \
                             ::1), not `peer = \"{peer}\"`; controllers on two hosts need \
                             \"exec COMMAND\" (power fencing) or SCSI reservations"
                        ),
                    ))
                }
                ("process", "") => match &peer_pidfile {
                    Some(p) => FenceAgent::Process { pidfile: p.clone() },
                    None => {
                        return Err(fail(
                            at(v.span()),
                            "`fencing`: \"process\" needs `peer_pidfile` (the pid file the peer writes)"
                                .into(),
                        ))
                    }
                },
                ("exec", "") => {
                    return Err(fail(
                        at(v.span()),
                        "`fencing`: \"exec\" needs a command, e.g. \"exec /usr/local/sbin/fence-peer\""
                            .into(),
                    ))
                }
                ("exec", cmd) => FenceAgent::Exec {
                    command: cmd.to_string(),
                    env: fence_env(id, &peer),
                },
                ("scsi-pr", "") => match &quorum {
                    Some(q) => FenceAgent::ScsiPr(ScsiPrConfig {
                        key: 0,
                        peer_key: 0,
                        quorum: q.clone(),
                        luns: Vec::new(),
                    }),
                    None => {
                        return Err(fail(
                            at(v.span()),
                            "`fencing`: \"scsi-pr\" needs `quorum` (the shared quorum device, \
                             which the pair reserves like the LUNs)"
                                .into(),
                        ))
                    }
                },
                _ => {
                    return Err(fail(
                        at(v.span()),
                        format!(
                            "`fencing`: expected \"process\", \"exec COMMAND\", \"scsi-pr\" or \"none\", got `{s}`"
                        ),
                    ))
                }
            }
        }
    };
    let mut fencing = fencing;
    let cluster_id = match &raw.cluster_id {
        Some(v) if v.get_ref().trim().is_empty() => {
            return Err(fail(
                at(v.span()),
                "`cluster_id`: expected a name, got an empty string".into(),
            ))
        }
        v => v.as_ref().map(|v| v.get_ref().clone()),
    };
    let pr_key = |key: &str,
                  v: &Option<Spanned<String>>|
     -> Result<Option<(u64, Option<usize>)>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let line = at(v.span());
        if !matches!(fencing, FenceAgent::ScsiPr(_)) {
            return Err(fail(
                line,
                format!("`{key}`: only used with fencing = \"scsi-pr\""),
            ));
        }
        match parse_pr_key(v.get_ref()) {
            Ok(k) => Ok(Some((k, line))),
            Err(m) => Err(fail(line, format!("`{key}`: {m}"))),
        }
    };
    let own_key = pr_key("pr_key", &raw.pr_key)?;
    let peer_key = pr_key("peer_pr_key", &raw.peer_pr_key)?;
    if let FenceAgent::ScsiPr(pr) = &mut fencing {
        let derived = |ha_id| cluster_id.as_deref().map_or(0, |c| derive_key(c, ha_id));
        pr.key = own_key.map_or_else(|| derived(id), |(k, _)| k);
        pr.peer_key = peer_key.map_or_else(|| derived(peer_of(id)), |(k, _)| k);
        if pr.key != 0 && pr.key == pr.peer_key {
            let line = peer_key.or(own_key).and_then(|(_, l)| l).or(table_line);
            return Err(fail(
                line,
                format!(
                    "`pr_key` and `peer_pr_key` are both {}: the two controllers need different keys",
                    crate::ha::pr_fence::hex(pr.key)
                ),
            ));
        }
    }
    let pidfile = raw
        .pidfile
        .as_ref()
        .map(|v| path_of("pidfile", v))
        .transpose()?;
    let secret = match &raw.secret {
        None => {
            return Err(missing(
                "secret",
                " (the pre-shared HA link secret, at least 16 bytes)",
            ))
        }
        Some(v) if v.get_ref().len() < MIN_SECRET_LEN => {
            return Err(fail(
                at(v.span()),
                format!(
                    "`secret`: must be at least {MIN_SECRET_LEN} bytes, got {}",
                    v.get_ref().len()
                ),
            ))
        }
        Some(v) => v.get_ref().clone(),
    };
    let admin_socket = match &raw.admin_socket {
        None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        Some(v) => path_of("admin_socket", v)?,
    };
    // Every duration is at least 1 ms, except the drift bound, which may be 0.
    let ms = |key: &str, v: &Option<Spanned<i64>>, default: u64| -> Result<u64, ConfigError> {
        let min = i64::from(key != "drift_ms");
        match v {
            None => Ok(default),
            Some(v) => src.range(v, &format!("[ha]: `{key}`"), min..=MAX_MS, " milliseconds"),
        }
    };
    let d = Timing::default();
    let timing = Timing {
        lease_ms: ms("lease_ms", &raw.lease_ms, d.lease_ms)?,
        renew_ms: ms("renew_ms", &raw.renew_ms, d.renew_ms)?,
        drift_ms: ms("drift_ms", &raw.drift_ms, d.drift_ms)?,
        margin_ms: ms("margin_ms", &raw.margin_ms, d.margin_ms)?,
    };
    let heartbeat_ms = ms("heartbeat_ms", &raw.heartbeat_ms, DEFAULT_HEARTBEAT_MS)?;
    let dead_after_ms = ms("dead_after_ms", &raw.dead_after_ms, DEFAULT_DEAD_AFTER_MS)?;
    let reconnect_ms = ms("reconnect_ms", &raw.reconnect_ms, DEFAULT_RECONNECT_MS)?;
    let fence_timeout_ms = ms(
        "fence_timeout_ms",
        &raw.fence_timeout_ms,
        DEFAULT_FENCE_TIMEOUT_MS,
    )?;
    if dead_after_ms < heartbeat_ms.saturating_mul(MIN_PINGS_PER_DEAD_AFTER) {
        let line = raw
            .dead_after_ms
            .as_ref()
            .or(raw.heartbeat_ms.as_ref())
            .and_then(|v| at(v.span()))
            .or(table_line);
        return Err(fail(
            line,
            format!(
                "`dead_after_ms` ({dead_after_ms}) must be at least {MIN_PINGS_PER_DEAD_AFTER} \
                 times `heartbeat_ms` ({heartbeat_ms}), {}: with less, one late ping would \
                 take the link down",
                heartbeat_ms.saturating_mul(MIN_PINGS_PER_DEAD_AFTER)
            ),
        ));
    }
    let failback = raw.failback.as_ref().is_some_and(|v| *v.get_ref());

    let mut luns = Vec::new();
    for (key, t) in &raw.lun {
        let line = at(t.span());
        let lun: LunNumber = key
            .parse::<i64>()
            .ok()
            .and_then(|n| in_range(n, &LUN_NUMBERS))
            .ok_or_else(|| {
                fail_raw(
                    line,
                    format!("[ha.lun.{key}]: expected a LUN number 0 to {MAX_LUN}"),
                )
            })?;
        let role = match &t.get_ref().role {
            None => {
                return Err(fail_raw(
                    line,
                    format!("[ha.lun.{lun}]: `role`: missing (primary or secondary)"),
                ))
            }
            Some(v) => {
                parse_role(v).map_err(|m| fail_raw(at(v.span()), format!("[ha.lun.{lun}]: {m}")))?
            }
        };
        if luns.iter().any(|l: &HaLunConfig| l.lun == lun) {
            return Err(fail_raw(
                line,
                format!("[ha.lun.{key}]: LUN {lun} is given twice"),
            ));
        }
        luns.push(HaLunConfig { lun, role, line });
    }
    luns.sort_by_key(|l| l.lun);

    let cfg = HaConfig {
        id,
        mode,
        role,
        peer,
        failover,
        quorum,
        quorum_create,
        fencing,
        pidfile,
        secret,
        admin_socket,
        timing,
        heartbeat_ms,
        dead_after_ms,
        reconnect_ms,
        failback,
        fence_timeout_ms,
        cluster_id,
        luns,
        line: table_line,
    };
    let override_luns: Vec<LunNumber> = cfg.luns.iter().map(|l| l.lun).collect();
    if let Err(e) = cfg.core_config(&override_luns).validate() {
        // Point at the key the complaint is about, when it was written.
        let key_line = |v: &Option<Spanned<i64>>| v.as_ref().and_then(|v| at(v.span()));
        let line = match &e {
            ha::ConfigError::MarginNotAboveDrift { .. } => {
                key_line(&raw.margin_ms).or(key_line(&raw.drift_ms))
            }
            ha::ConfigError::RenewNotBelowLease { .. } => {
                key_line(&raw.renew_ms).or(key_line(&raw.lease_ms))
            }
            ha::ConfigError::LeaseNotAboveMargin { .. } => {
                key_line(&raw.lease_ms).or(key_line(&raw.margin_ms))
            }
            _ => None,
        }
        .or(table_line);
        return Err(fail(line, e.to_string()));
    }
    Ok(cfg)
}

/// Checks `[ha]` against the LUNs the targets serve: in an HA pair a LUN number names one LUN
/// (the pair's state is kept per LUN number), and every `[ha.lun.N]` override names a served LUN.
pub fn check_luns_served(
    file: &str,
    ha: &HaConfig,
    served: impl IntoIterator<Item = LunNumber>,
) -> Result<(), ConfigError> {
    let mut luns: Vec<LunNumber> = Vec::new();
    for n in served {
        if luns.contains(&n) {
            return Err(ConfigError::new(
                file,
                ha.line,
                format!(
                    "[ha]: LUN {n} is served by two targets; LUN numbers must be unique in an HA pair"
                ),
            ));
        }
        luns.push(n);
    }
    ha.check_luns(file, &luns)
}
