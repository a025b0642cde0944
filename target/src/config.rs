//! duetd's configuration: portal groups, auth groups, targets and LUNs.
//!
//! Two syntaxes describe the same blocks and are told apart by content:
//! - TOML (the native format, see `examples/single.toml`);
//! - a subset of FreeBSD's `ctl.conf(5)` (`portal-group`, `auth-group`, `target`, `lun` blocks), so
//!   an administrator can bring an existing file (see `examples/ctl.conf`).
//!
//! Both parse into the same validated [`Config`]. Every error names the file, the line and the key,
//! e.g. `examples/single.toml:12: lun 1: `size`: expected a size like 256MiB`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The default iSCSI port.
pub const ISCSI_PORT: u16 = 3260;
/// The default NOP-In ping timeout in seconds (CTL's default).
pub const DEFAULT_PING_TIMEOUT: u64 = 5;
/// The highest LUN number accepted (flat addressing, SAM-5 4.7.7.3).
pub const MAX_LUN: u16 = 16383;
/// Name of the predefined auth group that allows everyone without authentication.
pub const AUTH_GROUP_NONE: &str = "no-authentication";
/// Name of the predefined auth group that denies everyone.
pub const AUTH_GROUP_DENY: &str = "no-access";

/// A configuration error: where (file and line, when known) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

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
    fn none(name: &str) -> AuthGroup {
        AuthGroup {
            name: name.to_string(),
            auth_type: AuthType::None,
            chap: Vec::new(),
            initiator_names: Vec::new(),
        }
    }

    fn deny(name: &str) -> AuthGroup {
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
    pub ha: Option<crate::ha::config::HaConfig>,
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

    /// Reads and validates a configuration file, detecting its syntax from the content.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&name, &text)
    }

    /// Parses and validates configuration text; `file` names it in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        match detect_syntax(text) {
            Syntax::Toml => parse_toml(file, text),
            Syntax::CtlConf => parse_ctl_conf(file, text),
        }
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

/// Tells TOML from ctl.conf: ctl.conf's blocks open with a keyword, a name and `{`, which TOML
/// never writes at the start of a line.
pub fn detect_syntax(text: &str) -> Syntax {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if matches!(
            first,
            "portal-group"
                | "auth-group"
                | "target"
                | "lun"
                | "debug"
                | "timeout"
                | "maxproc"
                | "pidfile"
                | "isns-server"
                | "isns-period"
                | "isns-timeout"
        ) && !line.contains('=')
        {
            return Syntax::CtlConf;
        }
        if line.starts_with('[') || line.contains('=') {
            return Syntax::Toml;
        }
    }
    Syntax::Toml
}

// ---------------------------------------------------------------------------------------------
// Shared value parsers
// ---------------------------------------------------------------------------------------------

/// Parses a size: a number of bytes with an optional binary suffix K, M, G, T, P or E (optionally
/// followed by `iB` or `B`; all are powers of 1024, as in ctl.conf).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits_end = s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = s[..digits_end].parse().ok()?;
    let suffix = s[digits_end..].trim();
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// Parses a listen address: `host:port`, `[v6]:port`, a bare IPv4/IPv6 address (port 3260), or
/// `*`/`0.0.0.0` for every IPv4 address.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    if s == "*" {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ISCSI_PORT,
        ));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, ISCSI_PORT));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip) = inner.parse::<Ipv6Addr>() {
            return Some(SocketAddr::new(IpAddr::V6(ip), ISCSI_PORT));
        }
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        let port: u16 = port.parse().ok()?;
        if host == "*" {
            return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        }
        if host.eq_ignore_ascii_case("localhost") {
            return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    if s.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ISCSI_PORT));
    }
    None
}

/// Whether `s` is a well-formed iSCSI name (RFC 7143 §4.2.7): `iqn.YYYY-MM.reversed.domain[:x]`,
/// `eui.` + 16 hex digits, or `naa.` + 16 or 32 hex digits.
pub fn valid_iscsi_name(s: &str) -> bool {
    if s.len() > 223 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("iqn.") {
        let b = rest.as_bytes();
        b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.'
    } else if let Some(hex) = lower.strip_prefix("eui.") {
        hex.len() == 16 && hex.bytes().all(|c| c.is_ascii_hexdigit())
    } else if let Some(hex) = lower.strip_prefix("naa.") {
        (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|c| c.is_ascii_hexdigit())
    } else {
        false
    }
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

pub use duet_core::scsi::ident::{default_naa, default_serial};

/// Parses a device id given as an NAA designator: `naa.` or `0x` followed by 16 or 32 hex digits
/// (an 8-byte NAA is widened into the 16-byte form with a zero extension).
fn parse_naa(s: &str) -> Option<[u8; 16]> {
    let lower = s.trim().to_ascii_lowercase();
    let hex = lower
        .strip_prefix("naa.")
        .or_else(|| lower.strip_prefix("0x"))?;
    if !(hex.len() == 16 || hex.len() == 32) || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// The common builder: both syntaxes fill it, then `finish` validates the cross references.
// ---------------------------------------------------------------------------------------------

struct Located<T> {
    line: Option<usize>,
    value: T,
}

struct Builder {
    file: String,
    syntax: Syntax,
    ping_timeout: u64,
    io_threads: usize,
    poll_us: u64,
    portal_groups: Vec<Located<PortalGroup>>,
    auth_groups: Vec<Located<AuthGroup>>,
    targets: Vec<Located<Target>>,
}

impl Builder {
    fn new(file: &str, syntax: Syntax) -> Builder {
        Builder {
            file: file.to_string(),
            syntax,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            io_threads: 0,
            poll_us: DEFAULT_POLL_US,
            portal_groups: Vec::new(),
            auth_groups: Vec::new(),
            targets: Vec::new(),
        }
    }

    fn err(&self, line: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }

    fn finish(self) -> Result<Config, ConfigError> {
        let mut auth_groups: Vec<AuthGroup> = Vec::new();
        let mut names = BTreeSet::new();
        for ag in &self.auth_groups {
            if !names.insert(ag.value.name.clone()) {
                return Err(self.err(
                    ag.line,
                    format!("auth group `{}` is defined twice", ag.value.name),
                ));
            }
            auth_groups.push(ag.value.clone());
        }
        for builtin in [AUTH_GROUP_NONE, "none"] {
            if !names.contains(builtin) {
                auth_groups.push(AuthGroup::none(builtin));
                names.insert(builtin.to_string());
            }
        }
        for builtin in [AUTH_GROUP_DENY, "deny"] {
            if !names.contains(builtin) {
                auth_groups.push(AuthGroup::deny(builtin));
                names.insert(builtin.to_string());
            }
        }
        if !names.contains("default") {
            // ctl.conf: the predefined `default` group denies access.
            auth_groups.push(AuthGroup::deny("default"));
            names.insert("default".to_string());
        }

        let mut portal_groups: Vec<PortalGroup> = Vec::new();
        let mut pg_names = BTreeSet::new();
        let mut addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
        for pg in &self.portal_groups {
            let p = &pg.value;
            if !pg_names.insert(p.name.clone()) {
                return Err(self.err(
                    pg.line,
                    format!("portal group `{}` is defined twice", p.name),
                ));
            }
            if !names.contains(&p.discovery_auth_group) {
                return Err(self.err(
                    pg.line,
                    format!(
                        "portal group `{}`: `discovery_auth_group`: no auth group named `{}`",
                        p.name, p.discovery_auth_group
                    ),
                ));
            }
            for a in &p.listen {
                if let Some(other) = addrs.insert(*a, p.name.clone()) {
                    return Err(self.err(
                        pg.line,
                        format!(
                            "portal group `{}`: `listen`: {a} is already used by portal group `{other}`",
                            p.name
                        ),
                    ));
                }
            }
            let mut p = p.clone();
            p.tag = u16::try_from(portal_groups.len() + 1).unwrap_or(u16::MAX);
            portal_groups.push(p);
        }
        if self.syntax == Syntax::CtlConf && !pg_names.contains("default") {
            portal_groups.push(PortalGroup {
                name: "default".to_string(),
                tag: u16::try_from(portal_groups.len() + 1).unwrap_or(u16::MAX),
                listen: vec![SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    ISCSI_PORT,
                )],
                discovery_auth_group: "default".to_string(),
            });
            pg_names.insert("default".to_string());
        }

        let mut targets = Vec::new();
        let mut target_names = BTreeSet::new();
        let mut paths: BTreeMap<PathBuf, String> = BTreeMap::new();
        for t in &self.targets {
            let tv = &t.value;
            if !target_names.insert(tv.name.to_ascii_lowercase()) {
                return Err(self.err(t.line, format!("target `{}` is defined twice", tv.name)));
            }
            if !pg_names.contains(&tv.portal_group) {
                return Err(self.err(
                    t.line,
                    format!(
                        "target {}: `portal_group`: no portal group named `{}`",
                        tv.name, tv.portal_group
                    ),
                ));
            }
            if !names.contains(&tv.auth_group) {
                return Err(self.err(
                    t.line,
                    format!(
                        "target {}: `auth_group`: no auth group named `{}`",
                        tv.name, tv.auth_group
                    ),
                ));
            }
            for lun in &tv.luns {
                let desc = format!("target {} lun {}", tv.name, lun.number);
                if let Some(other) = paths.insert(lun.path.clone(), desc.clone()) {
                    return Err(self.err(
                        t.line,
                        format!(
                            "{desc}: `path`: {} is already used by {other}",
                            lun.path.display()
                        ),
                    ));
                }
            }
            targets.push(tv.clone());
        }
        Ok(Config {
            source: self.file,
            syntax: self.syntax,
            ping_timeout: self.ping_timeout,
            io_threads: self.io_threads,
            poll_us: self.poll_us,
            portal_groups,
            auth_groups,
            targets,
            ha: None,
        })
    }
}

/// Finishes a LUN whose fields were read: fills in the derived defaults and checks the values.
#[allow(clippy::too_many_arguments)]
fn make_lun(
    target: &str,
    number: u16,
    path: Option<String>,
    size: Option<u64>,
    block_size: Option<u32>,
    serial: Option<String>,
    device_id: Option<String>,
    naa: Option<[u8; 16]>,
    read_only: bool,
    create: bool,
) -> Result<Lun, String> {
    let who = format!("lun {number}");
    let path = path.ok_or_else(|| format!("{who}: `path`: missing"))?;
    if path.is_empty() {
        return Err(format!("{who}: `path`: must not be empty"));
    }
    let block_size = block_size.unwrap_or(512);
    if block_size != 512 && block_size != 4096 {
        return Err(format!(
            "{who}: `block_size`: expected 512 or 4096, got {block_size}"
        ));
    }
    if let Some(sz) = size {
        if sz == 0 || sz % u64::from(block_size) != 0 {
            return Err(format!(
                "{who}: `size`: {sz} bytes is not a positive multiple of the block size {block_size}"
            ));
        }
    }
    if create && size.is_none() {
        return Err(format!(
            "{who}: `size`: needed when the file is to be created (`create`)"
        ));
    }
    let serial = serial.unwrap_or_else(|| default_serial(target, number));
    if serial.is_empty() || serial.len() > 64 || !printable_ascii(&serial) {
        return Err(format!(
            "{who}: `serial`: expected 1 to 64 printable ASCII characters"
        ));
    }
    let device_id = device_id.unwrap_or_else(|| serial.clone());
    if device_id.is_empty() || device_id.len() > 64 || !printable_ascii(&device_id) {
        return Err(format!(
            "{who}: `device_id`: expected 1 to 64 printable ASCII characters"
        ));
    }
    let naa = naa
        .or_else(|| parse_naa(&device_id))
        .unwrap_or_else(|| default_naa(&serial));
    Ok(Lun {
        number,
        path: PathBuf::from(path),
        size,
        block_size,
        serial,
        device_id,
        naa,
        read_only,
        create,
    })
}

fn check_chap(user: &str, secret: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("CHAP user name must not be empty".into());
    }
    if secret.is_empty() {
        return Err("CHAP secret must not be empty".into());
    }
    if secret.len() > 255 {
        return Err("CHAP secret is longer than 255 bytes".into());
    }
    Ok(())
}

fn infer_auth_type(chap: &[ChapCredential]) -> AuthType {
    if chap.is_empty() {
        AuthType::None
    } else if chap.iter().all(|c| c.mutual_user.is_some()) {
        AuthType::ChapMutual
    } else {
        AuthType::Chap
    }
}

// ---------------------------------------------------------------------------------------------
// TOML
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToml {
    ping_timeout: Option<Spanned<i64>>,
    io_threads: Option<Spanned<i64>>,
    poll_us: Option<Spanned<i64>>,
    #[serde(default)]
    portal_group: BTreeMap<String, Spanned<RawPortalGroup>>,
    #[serde(default)]
    auth_group: BTreeMap<String, Spanned<RawAuthGroup>>,
    #[serde(default)]
    target: Vec<Spanned<RawTarget>>,
    /// Read by `crate::ha::config::parse_ha`.
    ha: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortalGroup {
    listen: Spanned<Vec<Spanned<String>>>,
    discovery_auth_group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChap {
    user: String,
    secret: String,
    mutual_user: Option<String>,
    mutual_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthGroup {
    auth_type: Option<Spanned<String>>,
    #[serde(default)]
    chap: Vec<Spanned<RawChap>>,
    #[serde(default)]
    initiator_names: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    alias: Option<Spanned<String>>,
    portal_group: Option<Spanned<String>>,
    auth_group: Option<Spanned<String>>,
    #[serde(default)]
    lun: Vec<Spanned<RawLun>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    number: Spanned<i64>,
    path: Option<Spanned<String>>,
    size: Option<Spanned<SizeValue>>,
    block_size: Option<Spanned<i64>>,
    serial: Option<Spanned<String>>,
    device_id: Option<Spanned<String>>,
    naa: Option<Spanned<String>>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    create: bool,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_toml(file: &str, text: &str) -> Result<Config, ConfigError> {
    let raw: RawToml = toml::from_str(text).map_err(|e| ConfigError {
        file: file.to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let at = |span: std::ops::Range<usize>| Some(line_of(text, span.start));
    let mut b = Builder::new(file, Syntax::Toml);
    let fail = |line: Option<usize>, msg: String| ConfigError {
        file: file.to_string(),
        line,
        message: msg,
    };

    if let Some(pt) = &raw.ping_timeout {
        let v = *pt.get_ref();
        if !(0..=3600).contains(&v) {
            return Err(fail(
                at(pt.span()),
                format!("`ping_timeout`: expected 0 to 3600 seconds, got {v}"),
            ));
        }
        b.ping_timeout = v as u64;
    }
    if let Some(t) = &raw.io_threads {
        let v = *t.get_ref();
        if !(0..=MAX_IO_THREADS as i64).contains(&v) {
            return Err(fail(
                at(t.span()),
                format!("`io_threads`: expected 0 (one per CPU) to {MAX_IO_THREADS}, got {v}"),
            ));
        }
        b.io_threads = v as usize;
    }
    if let Some(t) = &raw.poll_us {
        let v = *t.get_ref();
        if !(0..=MAX_POLL_US as i64).contains(&v) {
            return Err(fail(
                at(t.span()),
                format!("`poll_us`: expected 0 (off) to {MAX_POLL_US} microseconds, got {v}"),
            ));
        }
        b.poll_us = v as u64;
    }

    for (name, ag) in &raw.auth_group {
        let line = at(ag.span());
        let ag = ag.get_ref();
        let mut chap = Vec::new();
        for c in &ag.chap {
            let cl = at(c.span());
            let c = c.get_ref();
            check_chap(&c.user, &c.secret)
                .map_err(|m| fail(cl, format!("auth group `{name}`: `chap`: {m}")))?;
            match (&c.mutual_user, &c.mutual_secret) {
                (Some(mu), Some(ms)) => check_chap(mu, ms).map_err(|m| {
                    fail(cl, format!("auth group `{name}`: `chap`: mutual: {m}"))
                })?,
                (None, None) => {}
                _ => {
                    return Err(fail(
                        cl,
                        format!(
                            "auth group `{name}`: `chap`: give both `mutual_user` and `mutual_secret`, or neither"
                        ),
                    ))
                }
            }
            chap.push(ChapCredential {
                user: c.user.clone(),
                secret: c.secret.clone(),
                mutual_user: c.mutual_user.clone(),
                mutual_secret: c.mutual_secret.clone(),
            });
        }
        let mut initiator_names = Vec::new();
        for n in &ag.initiator_names {
            if !valid_iscsi_name(n.get_ref()) {
                return Err(fail(
                    at(n.span()),
                    format!(
                        "auth group `{name}`: `initiator_names`: `{}` is not an iSCSI name (iqn.…, eui.… or naa.…)",
                        n.get_ref()
                    ),
                ));
            }
            initiator_names.push(n.get_ref().clone());
        }
        let auth_type = match &ag.auth_type {
            None => infer_auth_type(&chap),
            Some(t) => {
                let tl = at(t.span());
                let ty = match t.get_ref().as_str() {
                    "none" => AuthType::None,
                    "chap" => AuthType::Chap,
                    "chap-mutual" => AuthType::ChapMutual,
                    "deny" => AuthType::Deny,
                    other => {
                        return Err(fail(
                            tl,
                            format!(
                                "auth group `{name}`: `auth_type`: expected none, chap, chap-mutual or deny, got `{other}`"
                            ),
                        ))
                    }
                };
                check_auth_type(ty, &chap)
                    .map_err(|m| fail(tl, format!("auth group `{name}`: `auth_type`: {m}")))?;
                ty
            }
        };
        b.auth_groups.push(Located {
            line,
            value: AuthGroup {
                name: name.clone(),
                auth_type,
                chap,
                initiator_names,
            },
        });
    }

    for (name, pg) in &raw.portal_group {
        let line = at(pg.span());
        let pg = pg.get_ref();
        let mut listen = Vec::new();
        if pg.listen.get_ref().is_empty() {
            return Err(fail(
                at(pg.listen.span()),
                format!("portal group `{name}`: `listen`: give at least one address"),
            ));
        }
        for l in pg.listen.get_ref() {
            let a = parse_listen(l.get_ref()).ok_or_else(|| {
                fail(
                    at(l.span()),
                    format!(
                        "portal group `{name}`: `listen`: expected an address like 127.0.0.1:3260, got `{}`",
                        l.get_ref()
                    ),
                )
            })?;
            listen.push(a);
        }
        let discovery_auth_group = pg
            .discovery_auth_group
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_else(|| AUTH_GROUP_NONE.to_string());
        b.portal_groups.push(Located {
            line,
            value: PortalGroup {
                name: name.clone(),
                tag: 0,
                listen,
                discovery_auth_group,
            },
        });
    }

    for t in &raw.target {
        let line = at(t.span());
        let t = t.get_ref();
        let name = t.name.get_ref().clone();
        if !valid_iscsi_name(&name) {
            return Err(fail(
                at(t.name.span()),
                format!("target: `name`: `{name}` is not an iSCSI name (iqn.…, eui.… or naa.…)"),
            ));
        }
        if let Some(a) = &t.alias {
            if a.get_ref().len() > 255 || !printable_ascii(a.get_ref()) {
                return Err(fail(
                    at(a.span()),
                    format!(
                        "target {name}: `alias`: expected printable ASCII up to 255 characters"
                    ),
                ));
            }
        }
        let portal_group = match &t.portal_group {
            Some(p) => p.get_ref().clone(),
            None if raw.portal_group.len() == 1 => {
                raw.portal_group.keys().next().cloned().unwrap_or_default()
            }
            None => {
                return Err(fail(
                    line,
                    format!("target {name}: `portal_group`: missing (there is more or less than one portal group)"),
                ))
            }
        };
        let auth_group = match &t.auth_group {
            Some(a) => a.get_ref().clone(),
            None => {
                return Err(fail(
                    line,
                    format!(
                        "target {name}: `auth_group`: missing; write auth_group = \"none\" for no authentication"
                    ),
                ))
            }
        };
        let mut luns: Vec<Lun> = Vec::new();
        for l in &t.lun {
            let ll = at(l.span());
            let l = l.get_ref();
            let n = *l.number.get_ref();
            let number = u16::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_LUN)
                .ok_or_else(|| {
                    fail(
                        at(l.number.span()),
                        format!("target {name}: lun: `number`: expected 0 to {MAX_LUN}, got {n}"),
                    )
                })?;
            if luns.iter().any(|x| x.number == number) {
                return Err(fail(
                    at(l.number.span()),
                    format!("target {name}: lun {number}: `number`: defined twice"),
                ));
            }
            let size = match &l.size {
                None => None,
                Some(s) => {
                    let parsed = match s.get_ref() {
                        SizeValue::Int(i) => u64::try_from(*i).ok().filter(|v| *v > 0),
                        SizeValue::Text(t) => parse_size(t).filter(|v| *v > 0),
                    };
                    Some(parsed.ok_or_else(|| {
                        fail(
                            at(s.span()),
                            format!("lun {number}: `size`: expected a size like 256MiB"),
                        )
                    })?)
                }
            };
            let block_size = match &l.block_size {
                None => None,
                Some(bs) => Some(
                    u32::try_from(*bs.get_ref())
                        .ok()
                        .filter(|v| *v == 512 || *v == 4096)
                        .ok_or_else(|| {
                            fail(
                                at(bs.span()),
                                format!(
                                    "lun {number}: `block_size`: expected 512 or 4096, got {}",
                                    bs.get_ref()
                                ),
                            )
                        })?,
                ),
            };
            let naa = match &l.naa {
                None => None,
                Some(s) => Some(parse_naa(s.get_ref()).ok_or_else(|| {
                    fail(
                        at(s.span()),
                        format!(
                            "lun {number}: `naa`: expected naa. or 0x followed by 16 or 32 hex digits"
                        ),
                    )
                })?),
            };
            let lun = make_lun(
                &name,
                number,
                l.path.as_ref().map(|p| p.get_ref().clone()),
                size,
                block_size,
                l.serial.as_ref().map(|s| s.get_ref().clone()),
                l.device_id.as_ref().map(|s| s.get_ref().clone()),
                naa,
                l.read_only,
                l.create,
            )
            .map_err(|m| fail(ll, m))?;
            luns.push(lun);
        }
        luns.sort_by_key(|l| l.number);
        b.targets.push(Located {
            line,
            value: Target {
                name,
                alias: t.alias.as_ref().map(|a| a.get_ref().clone()),
                portal_group,
                auth_group,
                luns,
            },
        });
    }
    let _ = &raw.ha;
    let mut config = b.finish()?;
    config.ha = crate::ha::config::parse_ha(file, text)?;
    if let Some(ha) = &config.ha {
        let mut luns: Vec<u32> = Vec::new();
        for t in &config.targets {
            for l in &t.luns {
                let n = u32::from(l.number);
                if luns.contains(&n) {
                    return Err(ConfigError {
                        file: file.to_string(),
                        line: ha.line,
                        message: format!(
                            "[ha]: LUN {n} is served by two targets; LUN numbers must be unique in an HA pair"
                        ),
                    });
                }
                luns.push(n);
            }
        }
        ha.check_luns(file, &luns)?;
    }
    Ok(config)
}

fn check_auth_type(ty: AuthType, chap: &[ChapCredential]) -> Result<(), String> {
    match ty {
        AuthType::Chap | AuthType::ChapMutual if chap.is_empty() => {
            Err("needs at least one `chap` credential".into())
        }
        AuthType::ChapMutual if chap.iter().any(|c| c.mutual_user.is_none()) => {
            Err("chap-mutual needs `mutual_user` and `mutual_secret` on every credential".into())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// ctl.conf
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    /// End of a statement (newline or `;`).
    End,
}

fn tokenize(file: &str, text: &str) -> Result<Vec<(usize, Tok)>, ConfigError> {
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                out.push((line, Tok::End));
                line += 1;
            }
            ';' => out.push((line, Tok::End)),
            '{' => out.push((line, Tok::Open)),
            '}' => out.push((line, Tok::Close)),
            '#' => {
                while let Some(&n) = chars.peek() {
                    if n == '\n' {
                        break;
                    }
                    chars.next();
                }
            }
            '"' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => {
                            return Err(ConfigError {
                                file: file.to_string(),
                                line: Some(start),
                                message: "unterminated quoted string".into(),
                            })
                        }
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => s.push(e),
                            None => continue,
                        },
                        Some('\n') => {
                            line += 1;
                            s.push('\n');
                        }
                        Some(o) => s.push(o),
                    }
                }
                out.push((start, Tok::Word(s)));
            }
            c if c.is_whitespace() => {}
            c => {
                let mut s = String::new();
                s.push(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '#' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push((line, Tok::Word(s)));
            }
        }
    }
    out.push((line, Tok::End));
    Ok(out)
}

/// One ctl.conf statement: its words, and the statements of its `{ }` block if it has one.
#[derive(Debug)]
struct Stmt {
    line: usize,
    words: Vec<String>,
    block: Option<Vec<Stmt>>,
}

struct CtlParser<'a> {
    file: &'a str,
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl CtlParser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: Some(line),
            message: message.into(),
        }
    }

    /// Parses statements until `}` (when `nested`) or the end.
    fn statements(&mut self, nested: bool, depth: usize) -> Result<Vec<Stmt>, ConfigError> {
        let mut out = Vec::new();
        let mut words: Vec<String> = Vec::new();
        let mut start_line = 0usize;
        while self.pos < self.toks.len() {
            let (line, tok) = self.toks[self.pos].clone();
            self.pos += 1;
            match tok {
                Tok::Word(w) => {
                    if words.is_empty() {
                        start_line = line;
                    }
                    words.push(w);
                }
                Tok::End => {
                    if !words.is_empty() {
                        out.push(Stmt {
                            line: start_line,
                            words: std::mem::take(&mut words),
                            block: None,
                        });
                    }
                }
                Tok::Open => {
                    if words.is_empty() {
                        return Err(self.err(line, "`{` without a keyword before it"));
                    }
                    if depth >= 4 {
                        return Err(self.err(line, "blocks nested too deeply"));
                    }
                    let inner = self.statements(true, depth + 1)?;
                    out.push(Stmt {
                        line: start_line,
                        words: std::mem::take(&mut words),
                        block: Some(inner),
                    });
                }
                Tok::Close => {
                    if !nested {
                        return Err(self.err(line, "`}` without a matching `{`"));
                    }
                    if !words.is_empty() {
                        out.push(Stmt {
                            line: start_line,
                            words: std::mem::take(&mut words),
                            block: None,
                        });
                    }
                    return Ok(out);
                }
            }
        }
        if nested {
            let line = self.toks.last().map(|t| t.0).unwrap_or(1);
            return Err(self.err(line, "missing `}` at the end of the file"));
        }
        Ok(out)
    }
}

#[derive(Default)]
struct CtlLun {
    path: Option<String>,
    size: Option<u64>,
    block_size: Option<u32>,
    serial: Option<String>,
    device_id: Option<String>,
    read_only: bool,
    create: bool,
}

fn parse_ctl_conf(file: &str, text: &str) -> Result<Config, ConfigError> {
    let toks = tokenize(file, text)?;
    let mut p = CtlParser { file, toks, pos: 0 };
    let stmts = p.statements(false, 0)?;
    let err = |line: usize, m: String| ConfigError {
        file: file.to_string(),
        line: Some(line),
        message: m,
    };
    let mut b = Builder::new(file, Syntax::CtlConf);
    // Named global LUNs (`lun NAME { ... }`), referenced from targets as `lun N NAME`.
    let mut named_luns: BTreeMap<String, (usize, CtlLun)> = BTreeMap::new();
    for s in &stmts {
        if s.words[0] == "lun" && s.block.is_some() {
            let name = arg(s, 1, "lun", "a name").map_err(|m| err(s.line, m))?;
            let lun = ctl_lun_block(file, s)?;
            named_luns.insert(name.to_string(), (s.line, lun));
        }
    }
    let mut anon_ag = 0usize;
    for s in &stmts {
        let kw = s.words[0].as_str();
        match kw {
            "auth-group" => {
                let name = arg(s, 1, kw, "a name").map_err(|m| err(s.line, m))?;
                let block = block_of(s).map_err(|m| err(s.line, m))?;
                let ag = ctl_auth_block(file, name, block)?;
                b.auth_groups.push(Located {
                    line: Some(s.line),
                    value: ag,
                });
            }
            "portal-group" => {
                let name = arg(s, 1, kw, "a name").map_err(|m| err(s.line, m))?;
                let block = block_of(s).map_err(|m| err(s.line, m))?;
                let mut listen = Vec::new();
                let mut dag = "default".to_string();
                for st in block {
                    let k = st.words[0].as_str();
                    match k {
                        "listen" | "listen-iser" => {
                            let v = arg(st, 1, k, "an address").map_err(|m| err(st.line, m))?;
                            let a = parse_listen(v).ok_or_else(|| {
                                err(
                                    st.line,
                                    format!(
                                        "portal-group {name}: `listen`: expected an address like 127.0.0.1:3260, got `{v}`"
                                    ),
                                )
                            })?;
                            listen.push(a);
                        }
                        "discovery-auth-group" => {
                            dag = arg(st, 1, k, "an auth-group name")
                                .map_err(|m| err(st.line, m))?
                                .to_string();
                        }
                        "discovery-filter" | "offload" | "redirect" | "tag" | "foreign"
                        | "option" | "dscp" | "pcp" => {
                            tracing::warn!(
                                "{file}:{}: portal-group {name}: `{k}` is not supported by duetd; ignored",
                                st.line
                            );
                        }
                        _ => {
                            return Err(err(
                                st.line,
                                format!("portal-group {name}: unknown keyword `{k}`"),
                            ))
                        }
                    }
                }
                if listen.is_empty() {
                    return Err(err(
                        s.line,
                        format!("portal-group {name}: `listen`: give at least one address"),
                    ));
                }
                b.portal_groups.push(Located {
                    line: Some(s.line),
                    value: PortalGroup {
                        name: name.to_string(),
                        tag: 0,
                        listen,
                        discovery_auth_group: dag,
                    },
                });
            }
            "target" => {
                let name = arg(s, 1, kw, "an iSCSI name").map_err(|m| err(s.line, m))?;
                if !valid_iscsi_name(name) {
                    return Err(err(
                        s.line,
                        format!("target: `{name}` is not an iSCSI name (iqn.…, eui.… or naa.…)"),
                    ));
                }
                let block = block_of(s).map_err(|m| err(s.line, m))?;
                let mut alias = None;
                let mut pg = None;
                let mut ag: Option<String> = None;
                let mut own_auth: Vec<&Stmt> = Vec::new();
                let mut luns: Vec<Lun> = Vec::new();
                for st in block {
                    let k = st.words[0].as_str();
                    match k {
                        "alias" => {
                            alias = Some(
                                arg(st, 1, k, "a text")
                                    .map_err(|m| err(st.line, m))?
                                    .to_string(),
                            )
                        }
                        "portal-group" => {
                            pg = Some(
                                arg(st, 1, k, "a portal-group name")
                                    .map_err(|m| err(st.line, m))?
                                    .to_string(),
                            )
                        }
                        "auth-group" => {
                            ag = Some(
                                arg(st, 1, k, "an auth-group name")
                                    .map_err(|m| err(st.line, m))?
                                    .to_string(),
                            )
                        }
                        "auth-type" | "chap" | "chap-mutual" | "initiator-name"
                        | "initiator-portal" => own_auth.push(st),
                        "lun" => {
                            let n = arg(st, 1, k, "a number").map_err(|m| err(st.line, m))?;
                            let number = n
                                .parse::<u16>()
                                .ok()
                                .filter(|v| *v <= MAX_LUN)
                                .ok_or_else(|| {
                                    err(
                                        st.line,
                                        format!(
                                            "target {name}: lun: expected a number from 0 to {MAX_LUN}, got `{n}`"
                                        ),
                                    )
                                })?;
                            if luns.iter().any(|l| l.number == number) {
                                return Err(err(
                                    st.line,
                                    format!("target {name}: lun {number}: defined twice"),
                                ));
                            }
                            let raw = if st.block.is_some() {
                                ctl_lun_block(file, st)?
                            } else {
                                let lname = arg(st, 2, "lun", "a block or a lun name")
                                    .map_err(|m| err(st.line, m))?;
                                let (_, l) = named_luns.get(lname).ok_or_else(|| {
                                    err(st.line, format!("lun {number}: no lun named `{lname}`"))
                                })?;
                                CtlLun {
                                    path: l.path.clone(),
                                    size: l.size,
                                    block_size: l.block_size,
                                    serial: l.serial.clone(),
                                    device_id: l.device_id.clone(),
                                    read_only: l.read_only,
                                    create: l.create,
                                }
                            };
                            let lun = make_lun(
                                name,
                                number,
                                raw.path,
                                raw.size,
                                raw.block_size,
                                raw.serial,
                                raw.device_id,
                                None,
                                raw.read_only,
                                raw.create,
                            )
                            .map_err(|m| err(st.line, format!("target {name}: {m}")))?;
                            luns.push(lun);
                        }
                        "redirect" | "port" | "option" => {
                            tracing::warn!(
                                "{file}:{}: target {name}: `{k}` is not supported by duetd; ignored",
                                st.line
                            );
                        }
                        _ => {
                            return Err(err(
                                st.line,
                                format!("target {name}: unknown keyword `{k}`"),
                            ))
                        }
                    }
                }
                if !own_auth.is_empty() {
                    if ag.is_some() {
                        return Err(err(
                            own_auth[0].line,
                            format!(
                                "target {name}: `{}` cannot be used together with `auth-group`",
                                own_auth[0].words[0]
                            ),
                        ));
                    }
                    anon_ag += 1;
                    let agname = format!("target:{name}:{anon_ag}");
                    let stmts: Vec<Stmt> = own_auth
                        .iter()
                        .map(|s| Stmt {
                            line: s.line,
                            words: s.words.clone(),
                            block: None,
                        })
                        .collect();
                    let group = ctl_auth_block(file, &agname, &stmts)?;
                    b.auth_groups.push(Located {
                        line: Some(s.line),
                        value: group,
                    });
                    ag = Some(agname);
                }
                luns.sort_by_key(|l| l.number);
                b.targets.push(Located {
                    line: Some(s.line),
                    value: Target {
                        name: name.to_string(),
                        alias,
                        portal_group: pg.unwrap_or_else(|| "default".to_string()),
                        auth_group: ag.unwrap_or_else(|| "default".to_string()),
                        luns,
                    },
                });
            }
            "lun" => {} // named LUNs were read above
            "timeout" => {
                let v = arg(s, 1, kw, "seconds").map_err(|m| err(s.line, m))?;
                let t: u64 = v.parse().ok().filter(|v| *v <= 3600).ok_or_else(|| {
                    err(
                        s.line,
                        format!("`timeout`: expected 0 to 3600 seconds, got `{v}`"),
                    )
                })?;
                b.ping_timeout = t;
            }
            "debug" | "maxproc" | "pidfile" | "isns-server" | "isns-period" | "isns-timeout"
            | "transport-group" | "controller" => {
                tracing::warn!("{file}:{}: `{kw}` is not used by duetd; ignored", s.line);
            }
            _ => return Err(err(s.line, format!("unknown keyword `{kw}`"))),
        }
    }
    b.finish()
}

fn arg<'s>(s: &'s Stmt, i: usize, kw: &str, what: &str) -> Result<&'s str, String> {
    s.words
        .get(i)
        .map(|w| w.as_str())
        .ok_or_else(|| format!("`{kw}`: expected {what}"))
}

fn block_of(s: &Stmt) -> Result<&[Stmt], String> {
    s.block
        .as_deref()
        .ok_or_else(|| format!("`{}`: expected a `{{ … }}` block", s.words[0]))
}

fn ctl_auth_block(file: &str, name: &str, block: &[Stmt]) -> Result<AuthGroup, ConfigError> {
    let err = |line: usize, m: String| ConfigError {
        file: file.to_string(),
        line: Some(line),
        message: m,
    };
    let mut chap = Vec::new();
    let mut names = Vec::new();
    let mut ty: Option<(usize, AuthType)> = None;
    for st in block {
        let k = st.words[0].as_str();
        match k {
            "chap" => {
                let u = arg(st, 1, k, "a user and a secret").map_err(|m| err(st.line, m))?;
                let s = arg(st, 2, k, "a user and a secret").map_err(|m| err(st.line, m))?;
                check_chap(u, s)
                    .map_err(|m| err(st.line, format!("auth-group {name}: `chap`: {m}")))?;
                chap.push(ChapCredential {
                    user: u.into(),
                    secret: s.into(),
                    mutual_user: None,
                    mutual_secret: None,
                });
            }
            "chap-mutual" => {
                let what = "a user, a secret, a mutual user and a mutual secret";
                let u = arg(st, 1, k, what).map_err(|m| err(st.line, m))?;
                let s = arg(st, 2, k, what).map_err(|m| err(st.line, m))?;
                let mu = arg(st, 3, k, what).map_err(|m| err(st.line, m))?;
                let ms = arg(st, 4, k, what).map_err(|m| err(st.line, m))?;
                check_chap(u, s)
                    .and_then(|_| check_chap(mu, ms))
                    .map_err(|m| err(st.line, format!("auth-group {name}: `chap-mutual`: {m}")))?;
                chap.push(ChapCredential {
                    user: u.into(),
                    secret: s.into(),
                    mutual_user: Some(mu.into()),
                    mutual_secret: Some(ms.into()),
                });
            }
            "initiator-name" => {
                let n = arg(st, 1, k, "an iSCSI name").map_err(|m| err(st.line, m))?;
                if !valid_iscsi_name(n) {
                    return Err(err(
                        st.line,
                        format!("auth-group {name}: `initiator-name`: `{n}` is not an iSCSI name"),
                    ));
                }
                names.push(n.to_string());
            }
            "auth-type" => {
                let v = arg(st, 1, k, "none, chap, chap-mutual or deny")
                    .map_err(|m| err(st.line, m))?;
                let t = match v {
                    "none" => AuthType::None,
                    "chap" => AuthType::Chap,
                    "chap-mutual" => AuthType::ChapMutual,
                    "deny" => AuthType::Deny,
                    other => {
                        return Err(err(
                            st.line,
                            format!(
                                "auth-group {name}: `auth-type`: expected none, chap, chap-mutual or deny, got `{other}`"
                            ),
                        ))
                    }
                };
                ty = Some((st.line, t));
            }
            "initiator-portal" | "host-address" | "host-nqn" => {
                tracing::warn!(
                    "{file}:{}: auth-group {name}: `{k}` is not supported by duetd; ignored",
                    st.line
                );
            }
            _ => {
                return Err(err(
                    st.line,
                    format!("auth-group {name}: unknown keyword `{k}`"),
                ))
            }
        }
    }
    let auth_type = match ty {
        None => infer_auth_type(&chap),
        Some((line, t)) => {
            check_auth_type(t, &chap)
                .map_err(|m| err(line, format!("auth-group {name}: `auth-type`: {m}")))?;
            t
        }
    };
    Ok(AuthGroup {
        name: name.to_string(),
        auth_type,
        chap,
        initiator_names: names,
    })
}

fn ctl_lun_block(file: &str, s: &Stmt) -> Result<CtlLun, ConfigError> {
    let err = |line: usize, m: String| ConfigError {
        file: file.to_string(),
        line: Some(line),
        message: m,
    };
    let who = format!("lun {}", s.words.get(1).map(String::as_str).unwrap_or("?"));
    let mut l = CtlLun::default();
    for st in s.block.as_deref().unwrap_or(&[]) {
        let k = st.words[0].as_str();
        match k {
            "path" => l.path = Some(arg(st, 1, k, "a path").map_err(|m| err(st.line, m))?.into()),
            "size" => {
                let v = arg(st, 1, k, "a size").map_err(|m| err(st.line, m))?;
                l.size = Some(parse_size(v).filter(|v| *v > 0).ok_or_else(|| {
                    err(
                        st.line,
                        format!("{who}: `size`: expected a size like 256M, got `{v}`"),
                    )
                })?);
            }
            "blocksize" => {
                let v = arg(st, 1, k, "512 or 4096").map_err(|m| err(st.line, m))?;
                l.block_size = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|v| *v == 512 || *v == 4096)
                        .ok_or_else(|| {
                            err(
                                st.line,
                                format!("{who}: `blocksize`: expected 512 or 4096, got `{v}`"),
                            )
                        })?,
                );
            }
            "serial" => {
                l.serial = Some(
                    arg(st, 1, k, "a serial number")
                        .map_err(|m| err(st.line, m))?
                        .into(),
                )
            }
            "device-id" => {
                l.device_id = Some(
                    arg(st, 1, k, "a device id")
                        .map_err(|m| err(st.line, m))?
                        .into(),
                )
            }
            "option" => {
                let o = arg(st, 1, k, "a name and a value").map_err(|m| err(st.line, m))?;
                let v = arg(st, 2, k, "a name and a value").map_err(|m| err(st.line, m))?;
                let on = match v {
                    "on" | "yes" | "true" | "1" => true,
                    "off" | "no" | "false" | "0" => false,
                    other if o == "readonly" || o == "create" => {
                        return Err(err(
                            st.line,
                            format!("{who}: `option {o}`: expected on or off, got `{other}`"),
                        ))
                    }
                    _ => false,
                };
                match o {
                    "readonly" => l.read_only = on,
                    "create" => l.create = on,
                    _ => tracing::warn!(
                        "{file}:{}: {who}: `option {o}` is not supported by duetd; ignored",
                        st.line
                    ),
                }
            }
            "backend" => {
                let v = arg(st, 1, k, "a backend").map_err(|m| err(st.line, m))?;
                if v != "block" {
                    return Err(err(
                        st.line,
                        format!("{who}: `backend`: only `block` (a file or device) is supported, got `{v}`"),
                    ));
                }
            }
            "ctl-lun" | "device-type" | "uuid" => {
                tracing::warn!(
                    "{file}:{}: {who}: `{k}` is not supported by duetd; ignored",
                    st.line
                );
            }
            _ => return Err(err(st.line, format!("{who}: unknown keyword `{k}`"))),
        }
    }
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINGLE: &str = include_str!("../../examples/single.toml");
    const CTL: &str = include_str!("../../examples/ctl.conf");

    fn err_of(file: &str, text: &str) -> String {
        match Config::parse(file, text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn connections_poll_200_us_by_default_and_poll_us_0_turns_it_off() {
        assert_eq!(Config::parse("x.toml", SINGLE).unwrap().poll_us, 200);
        let text = format!("poll_us = 0\n{SINGLE}");
        assert_eq!(Config::parse("x.toml", &text).unwrap().poll_us, 0);
        let e = err_of("x.toml", &format!("poll_us = 5000\n{SINGLE}"));
        assert!(e.starts_with("x.toml:1: ") && e.contains("poll_us"), "{e}");
    }

    #[test]
    fn the_shipped_toml_example_describes_one_lun_without_authentication() {
        let c = Config::parse("examples/single.toml", SINGLE).expect("valid");
        assert_eq!(c.syntax, Syntax::Toml);
        assert_eq!(c.ping_timeout, 5);
        let t = c.target("iqn.2026-11.dev.duet:target0").expect("target");
        assert_eq!(t.luns.len(), 1);
        let l = &t.luns[0];
        assert_eq!(l.number, 1);
        assert_eq!(l.path, PathBuf::from("/tmp/duet/lun1.img"));
        assert_eq!(l.size, Some(256 << 20));
        assert_eq!(l.block_size, 512);
        assert!(l.create);
        assert!(!l.read_only);
        let pg = c.portal_group(&t.portal_group).expect("pg");
        assert_eq!(pg.listen, vec!["127.0.0.1:3260".parse().unwrap()]);
        assert_eq!(pg.tag, 1);
        let ag = c.auth_group(&t.auth_group).expect("ag");
        assert_eq!(ag.auth_type, AuthType::None);
        assert!(ag.admits_initiator("iqn.2026-11.test:anyone"));
    }

    #[test]
    fn the_shipped_ctl_conf_example_parses() {
        let c = Config::parse("examples/ctl.conf", CTL).expect("valid");
        assert_eq!(c.syntax, Syntax::CtlConf);
        assert!(!c.targets.is_empty());
        let t = &c.targets[0];
        let ag = c.auth_group(&t.auth_group).unwrap();
        assert_eq!(ag.auth_type, AuthType::Chap);
        assert_eq!(ag.chap_user("duetuser").unwrap().secret, "duetsecret12");
        assert!(t.luns.iter().any(|l| l.read_only));
    }

    #[test]
    fn a_bad_size_names_file_line_and_key() {
        let text = SINGLE.replace("size = \"256MiB\"", "size = \"lots\"");
        let line = text.lines().position(|l| l.contains("\"lots\"")).unwrap() + 1;
        assert_eq!(
            err_of("examples/single.toml", &text),
            format!("examples/single.toml:{line}: lun 1: `size`: expected a size like 256MiB")
        );
    }

    #[test]
    fn toml_syntax_errors_and_unknown_keys_carry_the_line() {
        let e = err_of(
            "x.toml",
            "ping_timeout = 5\n[[target]]\nnmae = \"iqn.2026-11.a.b:c\"\n",
        );
        assert!(e.starts_with("x.toml:3: "), "{e}");
        assert!(e.contains("nmae"), "{e}");
        let e = err_of("x.toml", "ping_timeout = \n");
        assert!(e.starts_with("x.toml:1: "), "{e}");
        let e = err_of("x.toml", "ping_timeout = 5\npoll_us = -1\n");
        assert!(e.contains("x.toml:2") && e.contains("poll_us"), "{e}");
        let e = err_of("x.toml", "ping_timeout = 5\nio_threads = 1000\n");
        assert!(e.starts_with("x.toml:2: "), "{e}");
        assert!(e.contains("io_threads"), "{e}");
    }

    #[test]
    fn toml_cross_references_are_checked() {
        let base = r#"
[portal_group.pg0]
listen = ["127.0.0.1:3260"]

[[target]]
name = "iqn.2026-11.dev.duet:t"
auth_group = "nobody"
"#;
        let e = err_of("c.toml", base);
        assert!(
            e.starts_with("c.toml:5: target iqn.2026-11.dev.duet:t: `auth_group`"),
            "{e}"
        );
        let e = err_of(
            "c.toml",
            &base.replace("\"nobody\"", "\"none\"\nportal_group = \"pg9\""),
        );
        assert!(
            e.contains("`portal_group`: no portal group named `pg9`"),
            "{e}"
        );
        let e = err_of("c.toml", &base.replace("auth_group = \"nobody\"\n", ""));
        assert!(e.contains("`auth_group`: missing"), "{e}");
    }

    #[test]
    fn toml_lun_values_are_validated() {
        let t = |lun: &str| {
            format!(
                "[portal_group.p]\nlisten = [\"127.0.0.1:3999\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\n[[target.lun]]\n{lun}\n"
            )
        };
        let e = err_of("f", &t("number = 0\npath = \"/x\"\nblock_size = 520"));
        assert_eq!(e, "f:9: lun 0: `block_size`: expected 512 or 4096, got 520");
        let e = err_of("f", &t("number = 70000\npath = \"/x\""));
        assert!(
            e.starts_with("f:7: target iqn.2026-11.dev.duet:t: lun: `number`"),
            "{e}"
        );
        let e = err_of("f", &t("number = 1\npath = \"/x\"\nsize = 1000"));
        assert!(
            e.contains("not a positive multiple of the block size 512"),
            "{e}"
        );
        let e = err_of("f", &t("number = 1\npath = \"/x\"\ncreate = true"));
        assert!(
            e.contains("`size`: needed when the file is to be created"),
            "{e}"
        );
        let e = err_of("f", &t("number = 1"));
        assert!(e.contains("lun 1: `path`: missing"), "{e}");
        let ok = Config::parse("f", &t("number = 3\npath = \"/x\"\nsize = 4096\nnaa = \"naa.600140500000000000000000000000AB\"")).unwrap();
        assert_eq!(ok.targets[0].luns[0].naa[15], 0xAB);
    }

    #[test]
    fn toml_chap_groups() {
        let text = r#"
[auth_group.a]
chap = [{ user = "u", secret = "s3cr3ts3cr3t" }]
initiator_names = ["iqn.2026-11.test:init1"]

[auth_group.m]
chap = [{ user = "u", secret = "s", mutual_user = "t", mutual_secret = "ts" }]

[auth_group.bad]
chap = [{ user = "u", secret = "s", mutual_user = "t" }]
"#;
        let e = err_of("a.toml", text);
        assert!(
            e.starts_with("a.toml:10: auth group `bad`: `chap`: give both"),
            "{e}"
        );
        let c = Config::parse(
            "a.toml",
            &text.replace(", mutual_user = \"t\" }]\n", " }]\n"),
        )
        .unwrap();
        let a = c.auth_group("a").unwrap();
        assert_eq!(a.auth_type, AuthType::Chap);
        assert!(a.admits_initiator("IQN.2026-11.test:init1"));
        assert!(!a.admits_initiator("iqn.2026-11.test:init2"));
        assert_eq!(c.auth_group("m").unwrap().auth_type, AuthType::ChapMutual);
        assert_eq!(c.auth_group("none").unwrap().auth_type, AuthType::None);
        assert!(!c
            .auth_group("deny")
            .unwrap()
            .admits_initiator("iqn.2026-11.test:x"));
    }

    #[test]
    fn sizes_and_addresses() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("99999999999E"), None);
        assert_eq!(
            parse_listen("0.0.0.0"),
            Some("0.0.0.0:3260".parse().unwrap())
        );
        assert_eq!(parse_listen("[::]"), Some("[::]:3260".parse().unwrap()));
        assert_eq!(
            parse_listen("[::1]:3261"),
            Some("[::1]:3261".parse().unwrap())
        );
        assert_eq!(
            parse_listen("localhost:3262"),
            Some("127.0.0.1:3262".parse().unwrap())
        );
        assert_eq!(parse_listen("nowhere"), None);
        assert!(valid_iscsi_name("iqn.2026-11.dev.duet:target0"));
        assert!(valid_iscsi_name("eui.0123456789ABCDEF"));
        assert!(!valid_iscsi_name("iqn.26-11.x"));
        assert!(!valid_iscsi_name("target0"));
    }

    #[test]
    fn defaults_are_stable_and_distinct() {
        let a = default_serial("iqn.2026-11.dev.duet:t", 1);
        assert_eq!(a, default_serial("IQN.2026-11.dev.duet:t", 1));
        assert_ne!(a, default_serial("iqn.2026-11.dev.duet:t", 2));
        let n = default_naa(&a);
        assert_eq!(n[0] >> 4, 6);
        assert_ne!(n, default_naa("other"));
    }

    #[test]
    fn ctl_conf_errors_name_the_line() {
        let text = "portal-group pg0 {\n\tlisten 127.0.0.1\n}\n\ntarget iqn.2026-11.dev.duet:t {\n\tportal-group pg0\n\tauth-group no-authentication\n\tlun 0 {\n\t\tpath /tmp/x\n\t\tblocksize 520\n\t}\n}\n";
        assert_eq!(
            err_of("ctl.conf", text),
            "ctl.conf:10: lun 0: `blocksize`: expected 512 or 4096, got `520`"
        );
        let e = err_of("ctl.conf", &text.replace("blocksize 520", "sise 4G"));
        assert_eq!(e, "ctl.conf:10: lun 0: unknown keyword `sise`");
        let e = err_of("ctl.conf", &text.replace("}\n}\n", "}\n"));
        assert!(e.contains("missing `}`"), "{e}");
        let e = err_of(
            "ctl.conf",
            &text
                .replace("auth-group no-authentication", "auth-group x")
                .replace("blocksize 520", "blocksize 512\n\t\tsize 1M"),
        );
        assert_eq!(
            e,
            "ctl.conf:5: target iqn.2026-11.dev.duet:t: `auth_group`: no auth group named `x`"
        );
        let ok = Config::parse(
            "ctl.conf",
            &text.replace("blocksize 520", "blocksize 4096\n\t\tsize 1G"),
        )
        .unwrap();
        assert_eq!(ok.targets[0].luns[0].block_size, 4096);
        assert_eq!(ok.portal_group("pg0").unwrap().listen[0].port(), 3260);
    }

    #[test]
    fn ctl_conf_target_level_chap_and_named_luns() {
        let text = r#"
lun disk1 {
    path /tmp/disk1.img
    size 16M
    option create on
}
portal-group pg0 {
    discovery-auth-group no-authentication
    listen 127.0.0.1:3300
}
target iqn.2026-11.dev.duet:t {
    portal-group pg0
    chap-mutual user secretsecret tuser tsecretsecret
    initiator-name iqn.2026-11.test:init1
    lun 0 disk1
}
"#;
        let c = Config::parse("c", text).unwrap();
        let t = &c.targets[0];
        let ag = c.auth_group(&t.auth_group).unwrap();
        assert_eq!(ag.auth_type, AuthType::ChapMutual);
        assert_eq!(ag.chap[0].mutual_user.as_deref(), Some("tuser"));
        assert_eq!(t.luns[0].size, Some(16 << 20));
        assert!(t.luns[0].create);
        // Without an auth-group, ctl.conf's `default` denies.
        let c = Config::parse("c", &text.replace("    chap-mutual user secretsecret tuser tsecretsecret\n    initiator-name iqn.2026-11.test:init1\n", "")).unwrap();
        assert_eq!(
            c.auth_group(&c.targets[0].auth_group).unwrap().auth_type,
            AuthType::Deny
        );
    }

    #[test]
    fn syntax_is_detected_from_content() {
        assert_eq!(detect_syntax(SINGLE), Syntax::Toml);
        assert_eq!(detect_syntax(CTL), Syntax::CtlConf);
        assert_eq!(detect_syntax("# c\n\ntarget iqn.x {\n}"), Syntax::CtlConf);
        assert_eq!(detect_syntax("[[target]]\n"), Syntax::Toml);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn parsers_never_panic_on_arbitrary_text(s in "\\PC{0,400}") {
            let _ = Config::parse("p", &s);
            let _ = parse_ctl_conf("p", &s);
            let _ = parse_toml("p", &s);
        }

        #[test]
        fn parsers_never_panic_on_config_like_text(
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    "target", "lun", "portal-group", "auth-group", "{", "}", "\n", "\"", "path",
                    "size", "blocksize", "4096", "chap", "x", "iqn.2026-11.a.b:c", "listen",
                    "[[target]]", "[[target.lun]]", "=", "number", "1", "[portal_group.p]", "#",
                    "option", "readonly", "on", "lun", "0", "name",
                ]),
                0..60,
            )
        ) {
            let s = words.join(" ");
            let _ = Config::parse("p", &s);
            let _ = parse_ctl_conf("p", &s);
        }

        #[test]
        fn sizes_never_panic(s in "\\PC{0,30}") {
            let _ = parse_size(&s);
            let _ = parse_listen(&s);
            let _ = valid_iscsi_name(&s);
            let _ = parse_naa(&s);
        }
    }
}
