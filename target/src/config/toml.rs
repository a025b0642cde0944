//! The TOML syntax (the native format, see `examples/single.toml`): the raw document serde reads
//! it into, once, `[ha]` included, and the checks of each block's keys before the builder takes
//! them. Every error names the file, the line of the key (from the value's span) and the key.
//!
//! Uses `build.rs`, `ha.rs`, `model.rs`, `values.rs` and `error.rs`.

use duet_core::LunNumber;
use std::collections::BTreeMap;

use ::toml::Spanned;
use serde::Deserialize;

use super::build::{
    auth_type_named, check_auth_type, check_chap, infer_auth_type, make_lun, Builder, Located,
    LunFields,
};
use super::error::{ConfigError, Source};
use super::ha::{self, HaConfig, RawHa};
use super::model::{
    AuthGroup, ChapCredential, Config, Lun, PortalGroup, Syntax, Target, AUTH_GROUP_NONE,
    MAX_IO_THREADS, MAX_POLL_US, PING_TIMEOUTS,
};
use super::values::{
    block_size, parse_listen, parse_naa, parse_size, printable_ascii, valid_iscsi_name, LUN_NUMBERS,
};

/// The whole document, as serde reads it.
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
    ha: Option<Spanned<RawHa>>,
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
    direct: Option<Spanned<bool>>,
}

/// Reads the document: serde's errors, with the line of their span.
fn read(src: Source<'_>) -> Result<RawToml, ConfigError> {
    ::toml::from_str(src.text)
        .map_err(|e| src.err(e.span().and_then(|s| src.at(s)), e.message().trim()))
}

/// Reads only the `[ha]` table of the TOML configuration `text` (from `file`, for error
/// messages): `Ok(None)` when there is none (a stand-alone controller). The rest of the document
/// must be well-formed TOML of the configuration's shape, but is not validated.
pub fn parse_ha(file: &str, text: &str) -> Result<Option<HaConfig>, ConfigError> {
    let src = Source { file, text };
    read(src)?
        .ha
        .as_ref()
        .map(|raw| ha::validate(src, raw))
        .transpose()
}

/// Parses and validates a TOML configuration.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let src = Source { file, text };
    let raw = read(src)?;
    let mut b = Builder::new(file, Syntax::Toml);

    if let Some(v) = &raw.ping_timeout {
        b.ping_timeout = src.range(v, "`ping_timeout`", PING_TIMEOUTS, " seconds")?;
    }
    if let Some(v) = &raw.io_threads {
        let threads = 0..=MAX_IO_THREADS as i64;
        b.io_threads = src.range(v, "`io_threads`", threads, " (0: one per CPU)")?;
    }
    if let Some(v) = &raw.poll_us {
        let us = 0..=MAX_POLL_US as i64;
        b.poll_us = src.range(v, "`poll_us`", us, " microseconds (0: off)")?;
    }

    for (name, ag) in &raw.auth_group {
        b.auth_groups.push(Located {
            line: src.at(ag.span()),
            value: auth_group(src, name, ag.get_ref())?,
        });
    }
    for (name, pg) in &raw.portal_group {
        b.portal_groups.push(Located {
            line: src.at(pg.span()),
            value: portal_group(src, name, pg.get_ref())?,
        });
    }
    // A target may leave out its portal group when there is only one.
    let only_pg = match raw.portal_group.len() {
        1 => raw.portal_group.keys().next().map(String::as_str),
        _ => None,
    };
    for t in &raw.target {
        b.targets.push(Located {
            line: src.at(t.span()),
            value: target(src, src.at(t.span()), t.get_ref(), only_pg)?,
        });
    }
    let mut config = b.finish()?;
    if let Some(raw_ha) = &raw.ha {
        let ha = ha::validate(src, raw_ha)?;
        let served = config
            .targets
            .iter()
            .flat_map(|t| &t.luns)
            .map(|l| l.number);
        ha::check_luns_served(file, &ha, served)?;
        direct_on_a_pair(src, &raw.target)?;
        for l in config.targets.iter_mut().flat_map(|t| t.luns.iter_mut()) {
            l.direct = true;
        }
        let mut ha = ha;
        ha::attach_scsi_pr(file, &mut ha, &config.targets)?;
        config.ha = Some(ha);
    }
    Ok(config)
}

/// A controller of a pair opens every LUN with `O_DIRECT`: `direct = false` there is an error at
/// its line, because buffered I/O on a disk two hosts share serves each host's stale page cache
/// and lets a fenced host's kernel write old data back later.
fn direct_on_a_pair(src: Source<'_>, targets: &[Spanned<RawTarget>]) -> Result<(), ConfigError> {
    for t in targets {
        for l in &t.get_ref().lun {
            if let Some(d) = l.get_ref().direct.as_ref().filter(|d| !*d.get_ref()) {
                return Err(src.err(
                    src.at(d.span()),
                    format!(
                        "target {}: lun {}: `direct`: false is not allowed on a controller of a pair \
                         ([ha]): buffered I/O on a shared disk serves stale blocks from each host's \
                         page cache; remove the key (direct I/O is the default with [ha])",
                        t.get_ref().name.get_ref(),
                        l.get_ref().number.get_ref()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// An `[auth_group.NAME]` table.
fn auth_group(src: Source<'_>, name: &str, ag: &RawAuthGroup) -> Result<AuthGroup, ConfigError> {
    let at = |span: std::ops::Range<usize>| src.at(span);
    let fail = |line: Option<usize>, msg: String| src.err(line, msg);
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
            let ty = auth_type_named(t.get_ref()).ok_or_else(|| {
                fail(
                    tl,
                    format!(
                        "auth group `{name}`: `auth_type`: expected none, chap, chap-mutual or deny, got `{}`",
                        t.get_ref()
                    ),
                )
            })?;
            check_auth_type(ty, &chap)
                .map_err(|m| fail(tl, format!("auth group `{name}`: `auth_type`: {m}")))?;
            ty
        }
    };
    Ok(AuthGroup {
        name: name.to_string(),
        auth_type,
        chap,
        initiator_names,
    })
}

/// A `[portal_group.NAME]` table.
fn portal_group(
    src: Source<'_>,
    name: &str,
    pg: &RawPortalGroup,
) -> Result<PortalGroup, ConfigError> {
    let at = |span: std::ops::Range<usize>| src.at(span);
    let fail = |line: Option<usize>, msg: String| src.err(line, msg);
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
    Ok(PortalGroup {
        name: name.to_string(),
        tag: 0,
        listen,
        discovery_auth_group,
    })
}

/// A `[[target]]` table that starts on `line`; `only_pg` is the portal group, if there is
/// exactly one.
fn target(
    src: Source<'_>,
    line: Option<usize>,
    t: &RawTarget,
    only_pg: Option<&str>,
) -> Result<Target, ConfigError> {
    let at = |span: std::ops::Range<usize>| src.at(span);
    let fail = |line: Option<usize>, msg: String| src.err(line, msg);
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
                format!("target {name}: `alias`: expected printable ASCII up to 255 characters"),
            ));
        }
    }
    let portal_group = match (&t.portal_group, only_pg) {
        (Some(p), _) => p.get_ref().clone(),
        (None, Some(pg)) => pg.to_string(),
        (None, None) => {
            return Err(fail(
                line,
                format!(
                    "target {name}: `portal_group`: missing (there is more or less than one portal group)"
                ),
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
        let n = &l.get_ref().number;
        let key = format!("target {name}: lun: `number`");
        let number: LunNumber = src.range(n, &key, LUN_NUMBERS, "")?;
        if luns.iter().any(|x| x.number == number) {
            return Err(fail(
                at(n.span()),
                format!("target {name}: lun {number}: `number`: defined twice"),
            ));
        }
        luns.push(lun(src, &name, number, l)?);
    }
    luns.sort_by_key(|l| l.number);
    Ok(Target {
        name,
        alias: t.alias.as_ref().map(|a| a.get_ref().clone()),
        portal_group,
        auth_group,
        luns,
    })
}

/// A `[[target.lun]]` table of the target `name`, its `number` checked.
fn lun(
    src: Source<'_>,
    name: &str,
    number: LunNumber,
    l: &Spanned<RawLun>,
) -> Result<Lun, ConfigError> {
    let at = |span: std::ops::Range<usize>| src.at(span);
    let fail = |line: Option<usize>, msg: String| src.err(line, msg);
    let ll = at(l.span());
    let l = l.get_ref();
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
        Some(bs) => Some(block_size(*bs.get_ref()).ok_or_else(|| {
            fail(
                at(bs.span()),
                format!(
                    "lun {number}: `block_size`: expected 512 or 4096, got {}",
                    bs.get_ref()
                ),
            )
        })?),
    };
    let naa = match &l.naa {
        None => None,
        Some(s) => Some(parse_naa(s.get_ref()).ok_or_else(|| {
            fail(
                at(s.span()),
                format!("lun {number}: `naa`: expected naa. or 0x followed by 16 or 32 hex digits"),
            )
        })?),
    };
    let fields = LunFields {
        path: l.path.as_ref().map(|p| p.get_ref().clone()),
        size,
        block_size,
        serial: l.serial.as_ref().map(|s| s.get_ref().clone()),
        device_id: l.device_id.as_ref().map(|s| s.get_ref().clone()),
        naa,
        read_only: l.read_only,
        create: l.create,
        direct: l.direct.as_ref().map(|d| *d.get_ref()),
    };
    make_lun(name, number, fields).map_err(|m| fail(ll, m))
}
