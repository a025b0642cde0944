//! The ctl.conf syntax: the subset of FreeBSD's `ctl.conf(5)` duetd understands (`portal-group`,
//! `auth-group`, `target` and `lun` blocks, and `timeout`), so an administrator can bring an
//! existing file (see `examples/ctl.conf`). A tokenizer, a statement parser, and the reading of
//! each block into the builder; keywords duetd does not use are warned about and ignored.
//!
//! Uses `build.rs`, `model.rs`, `values.rs` and `error.rs`.

use std::collections::BTreeMap;

use super::build::{
    auth_type_named, check_auth_type, check_chap, infer_auth_type, make_lun, Builder, Located,
    LunFields,
};
use super::error::{in_range, range_error, ConfigError};
use super::model::{
    AuthGroup, AuthType, ChapCredential, Config, Lun, PortalGroup, Syntax, Target, PING_TIMEOUTS,
};
use super::values::{block_size, parse_listen, parse_size, valid_iscsi_name, LUN_NUMBERS};

/// A token: a word (quoted or not), a brace, or the end of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    /// End of a statement (newline or `;`).
    End,
}

/// Splits ctl.conf text into tokens, each with its line.
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
                            return Err(ConfigError::new(
                                file,
                                Some(start),
                                "unterminated quoted string",
                            ))
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

/// The statement parser: tokens into nested statements.
struct CtlParser<'a> {
    file: &'a str,
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl CtlParser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.file, Some(line), message)
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

/// Parses and validates a ctl.conf configuration.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let toks = tokenize(file, text)?;
    let mut p = CtlParser { file, toks, pos: 0 };
    let stmts = p.statements(false, 0)?;
    let err = |line: usize, m: String| ConfigError::new(file, Some(line), m);
    let mut b = Builder::new(file, Syntax::CtlConf);
    // Named global LUNs (`lun NAME { ... }`), referenced from targets as `lun N NAME`.
    let mut named_luns: BTreeMap<String, LunFields> = BTreeMap::new();
    for s in &stmts {
        if s.words[0] == "lun" && s.block.is_some() {
            let name = arg(s, 1, "lun", "a name").map_err(|m| err(s.line, m))?;
            let lun = ctl_lun_block(file, s)?;
            named_luns.insert(name.to_string(), lun);
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
            "portal-group" => b.portal_groups.push(Located {
                line: Some(s.line),
                value: ctl_portal_group(file, s)?,
            }),
            "target" => {
                let (target, own_group) = ctl_target(file, s, &named_luns, &mut anon_ag)?;
                if let Some(group) = own_group {
                    b.auth_groups.push(Located {
                        line: Some(s.line),
                        value: group,
                    });
                }
                b.targets.push(Located {
                    line: Some(s.line),
                    value: target,
                });
            }
            "lun" => {} // named LUNs were read above
            "timeout" => {
                let v = arg(s, 1, kw, "seconds").map_err(|m| err(s.line, m))?;
                b.ping_timeout = v
                    .parse::<i64>()
                    .ok()
                    .and_then(|t| in_range(t, &PING_TIMEOUTS))
                    .ok_or_else(|| {
                        range_error(
                            file,
                            Some(s.line),
                            "`timeout`",
                            format_args!("`{v}`"),
                            &PING_TIMEOUTS,
                            " seconds",
                        )
                    })?;
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

/// A `portal-group NAME { … }` block.
fn ctl_portal_group(file: &str, s: &Stmt) -> Result<PortalGroup, ConfigError> {
    let err = |line: usize, m: String| ConfigError::new(file, Some(line), m);
    let kw = s.words[0].as_str();
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
            "discovery-filter" | "offload" | "redirect" | "tag" | "foreign" | "option" | "dscp"
            | "pcp" => {
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
    Ok(PortalGroup {
        name: name.to_string(),
        tag: 0,
        listen,
        discovery_auth_group: dag,
    })
}

/// A `target NAME { … }` block: the target and, when it names its own auth statements rather
/// than an `auth-group`, the group they make (named after the target and `anon_ag`, the count
/// of such groups so far).
fn ctl_target(
    file: &str,
    s: &Stmt,
    named_luns: &BTreeMap<String, LunFields>,
    anon_ag: &mut usize,
) -> Result<(Target, Option<AuthGroup>), ConfigError> {
    let err = |line: usize, m: String| ConfigError::new(file, Some(line), m);
    let kw = s.words[0].as_str();
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
    let mut own_group = None;
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
            "auth-type" | "chap" | "chap-mutual" | "initiator-name" | "initiator-portal" => {
                own_auth.push(st)
            }
            "lun" => {
                let n = arg(st, 1, k, "a number").map_err(|m| err(st.line, m))?;
                let number: u16 = n
                    .parse::<i64>()
                    .ok()
                    .and_then(|v| in_range(v, &LUN_NUMBERS))
                    .ok_or_else(|| {
                        range_error(
                            file,
                            Some(st.line),
                            &format!("target {name}: lun"),
                            format_args!("`{n}`"),
                            &LUN_NUMBERS,
                            "",
                        )
                    })?;
                if luns.iter().any(|l| l.number == number) {
                    return Err(err(
                        st.line,
                        format!("target {name}: lun {number}: defined twice"),
                    ));
                }
                let fields = if st.block.is_some() {
                    ctl_lun_block(file, st)?
                } else {
                    let lname =
                        arg(st, 2, "lun", "a block or a lun name").map_err(|m| err(st.line, m))?;
                    named_luns.get(lname).cloned().ok_or_else(|| {
                        err(st.line, format!("lun {number}: no lun named `{lname}`"))
                    })?
                };
                let lun = make_lun(name, number, fields)
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
        *anon_ag += 1;
        let agname = format!("target:{name}:{anon_ag}");
        let stmts: Vec<Stmt> = own_auth
            .iter()
            .map(|s| Stmt {
                line: s.line,
                words: s.words.clone(),
                block: None,
            })
            .collect();
        own_group = Some(ctl_auth_block(file, &agname, &stmts)?);
        ag = Some(agname);
    }
    luns.sort_by_key(|l| l.number);
    let target = Target {
        name: name.to_string(),
        alias,
        portal_group: pg.unwrap_or_else(|| "default".to_string()),
        auth_group: ag.unwrap_or_else(|| "default".to_string()),
        luns,
    };
    Ok((target, own_group))
}

/// The `i`th word of a statement (`what` it should be, for the error).
fn arg<'s>(s: &'s Stmt, i: usize, kw: &str, what: &str) -> Result<&'s str, String> {
    s.words
        .get(i)
        .map(|w| w.as_str())
        .ok_or_else(|| format!("`{kw}`: expected {what}"))
}

/// The `{ }` block of a statement that needs one.
fn block_of(s: &Stmt) -> Result<&[Stmt], String> {
    s.block
        .as_deref()
        .ok_or_else(|| format!("`{}`: expected a `{{ … }}` block", s.words[0]))
}

/// Reads an `auth-group` block (or a target's own auth statements) into a group.
fn ctl_auth_block(file: &str, name: &str, block: &[Stmt]) -> Result<AuthGroup, ConfigError> {
    let err = |line: usize, m: String| ConfigError::new(file, Some(line), m);
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
                let t = auth_type_named(v).ok_or_else(|| {
                    err(
                        st.line,
                        format!(
                            "auth-group {name}: `auth-type`: expected none, chap, chap-mutual or deny, got `{v}`"
                        ),
                    )
                })?;
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

/// Reads a `lun` block's statements (named or inside a target).
fn ctl_lun_block(file: &str, s: &Stmt) -> Result<LunFields, ConfigError> {
    let err = |line: usize, m: String| ConfigError::new(file, Some(line), m);
    let who = format!("lun {}", s.words.get(1).map(String::as_str).unwrap_or("?"));
    let mut l = LunFields::default();
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
                l.block_size =
                    Some(v.parse::<i64>().ok().and_then(block_size).ok_or_else(|| {
                        err(
                            st.line,
                            format!("{who}: `blocksize`: expected 512 or 4096, got `{v}`"),
                        )
                    })?);
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
                    other if o == "readonly" || o == "create" || o == "direct" => {
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
                    "direct" => l.direct = Some(on),
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
