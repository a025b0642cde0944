//! The validating builder both syntaxes fill: each syntax reads its blocks into a [`Builder`],
//! then [`Builder::finish`] checks the cross references (names defined twice, groups that do not
//! exist, addresses and paths used twice) and adds the predefined groups. Also the rules of single
//! blocks both syntaxes share: a LUN's derived defaults ([`make_lun`]) and the auth rules.
//!
//! Uses `model.rs`, `values.rs` and `error.rs`; knows no syntax.

use duet_core::LunNumber;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::error::ConfigError;
use super::model::{
    AuthGroup, AuthType, ChapCredential, Config, Lun, PortalGroup, Syntax, Target, AUTH_GROUP_DENY,
    AUTH_GROUP_NONE, DEFAULT_PING_TIMEOUT, DEFAULT_POLL_US,
};
use super::values::{
    block_size, default_naa, default_serial, parse_naa, printable_ascii, ISCSI_PORT,
};

/// A block as read, with the line it starts on (for the cross-reference errors).
pub struct Located<T> {
    pub line: Option<usize>,
    pub value: T,
}

/// What a syntax read, before the cross references are checked.
pub struct Builder {
    file: String,
    syntax: Syntax,
    pub ping_timeout: u64,
    pub io_threads: usize,
    pub poll_us: u64,
    pub portal_groups: Vec<Located<PortalGroup>>,
    pub auth_groups: Vec<Located<AuthGroup>>,
    pub targets: Vec<Located<Target>>,
}

impl Builder {
    /// An empty configuration of `file`, with the defaults.
    pub fn new(file: &str, syntax: Syntax) -> Builder {
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
        ConfigError::new(&self.file, line, message)
    }

    /// Checks the cross references and adds the predefined groups (and, for ctl.conf, the
    /// `default` portal group); `ha` is left to the caller.
    pub fn finish(self) -> Result<Config, ConfigError> {
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

/// A LUN's fields as written (`None`: not given), in either syntax.
#[derive(Clone, Default)]
pub struct LunFields {
    pub path: Option<String>,
    pub size: Option<u64>,
    pub block_size: Option<u32>,
    pub serial: Option<String>,
    pub device_id: Option<String>,
    pub naa: Option<[u8; 16]>,
    pub read_only: bool,
    pub create: bool,
    /// `direct` as written (`None`: not given; the `[ha]` rule is the TOML parser's).
    pub direct: Option<bool>,
}

/// Finishes a LUN whose fields were read: fills in the derived defaults and checks the values.
pub fn make_lun(target: &str, number: LunNumber, f: LunFields) -> Result<Lun, String> {
    let who = format!("lun {number}");
    let path = f.path.ok_or_else(|| format!("{who}: `path`: missing"))?;
    if path.is_empty() {
        return Err(format!("{who}: `path`: must not be empty"));
    }
    let block_size = match f.block_size {
        None => 512,
        Some(b) => block_size(i64::from(b))
            .ok_or_else(|| format!("{who}: `block_size`: expected 512 or 4096, got {b}"))?,
    };
    let size = f.size;
    if let Some(sz) = size {
        if sz == 0 || sz % u64::from(block_size) != 0 {
            return Err(format!(
                "{who}: `size`: {sz} bytes is not a positive multiple of the block size {block_size}"
            ));
        }
    }
    if f.create && size.is_none() {
        return Err(format!(
            "{who}: `size`: needed when the file is to be created (`create`)"
        ));
    }
    let serial = f.serial.unwrap_or_else(|| default_serial(target, number));
    if serial.is_empty() || serial.len() > 64 || !printable_ascii(&serial) {
        return Err(format!(
            "{who}: `serial`: expected 1 to 64 printable ASCII characters"
        ));
    }
    let device_id = f.device_id.unwrap_or_else(|| serial.clone());
    if device_id.is_empty() || device_id.len() > 64 || !printable_ascii(&device_id) {
        return Err(format!(
            "{who}: `device_id`: expected 1 to 64 printable ASCII characters"
        ));
    }
    let naa = f
        .naa
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
        read_only: f.read_only,
        create: f.create,
        direct: f.direct.unwrap_or(false),
    })
}

/// An auth type by its name in either syntax (`none`, `chap`, `chap-mutual`, `deny`).
pub fn auth_type_named(name: &str) -> Option<AuthType> {
    Some(match name {
        "none" => AuthType::None,
        "chap" => AuthType::Chap,
        "chap-mutual" => AuthType::ChapMutual,
        "deny" => AuthType::Deny,
        _ => return None,
    })
}

/// Checks one CHAP user name and secret.
pub fn check_chap(user: &str, secret: &str) -> Result<(), String> {
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

/// The auth type of a group that does not name one: CHAP when it has credentials (mutual when
/// all are), else none.
pub fn infer_auth_type(chap: &[ChapCredential]) -> AuthType {
    if chap.is_empty() {
        AuthType::None
    } else if chap.iter().all(|c| c.mutual_user.is_some()) {
        AuthType::ChapMutual
    } else {
        AuthType::Chap
    }
}

/// Checks that a group's credentials fit the auth type it names.
pub fn check_auth_type(ty: AuthType, chap: &[ChapCredential]) -> Result<(), String> {
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
