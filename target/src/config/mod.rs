//! duetd's configuration: portal groups, auth groups, targets and LUNs, and the `[ha]` section.
//!
//! Two syntaxes describe the same blocks and are told apart by content:
//! - TOML (the native format, see `examples/single.toml`);
//! - a subset of FreeBSD's `ctl.conf(5)` (`portal-group`, `auth-group`, `target`, `lun` blocks), so
//!   an administrator can bring an existing file (see `examples/ctl.conf`).
//!
//! Both parse into the same validated [`Config`]. Every error names the file, the line and the key,
//! e.g. `examples/single.toml:12: lun 1: `size`: expected a size like 256MiB`.
//!
//! This file only tells the syntaxes apart and hands the text to one of them. The parts, each of
//! which uses only those listed before it:
//! - `error.rs`: [`ConfigError`], offset -> line, the range check;
//! - `values.rs`: parsers of single values (sizes, addresses, iSCSI names, NAA designators);
//! - `ha.rs`: the `[ha]` section, validated from its raw TOML table;
//! - `model.rs`: the validated [`Config`] and its parts;
//! - `build.rs`: the validating builder both syntaxes fill, and their shared rules;
//! - `toml.rs`: the TOML syntax (one document, `[ha]` included);
//! - `ctl.rs`: the ctl.conf subset.
//!
//! `crate::ha::config` re-exports the `[ha]` types and adds what the HA runtime derives from
//! them; this module does not use it.

use std::path::Path;

mod build;
mod ctl;
mod error;
mod ha;
mod model;
mod toml;
mod values;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use ha::{
    HaConfig, HaLunConfig, HaPeer, DEFAULT_ADMIN_SOCKET, DEFAULT_DEAD_AFTER_MS,
    DEFAULT_FENCE_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_RECONNECT_MS, MIN_SECRET_LEN,
};
pub use model::{
    AuthGroup, AuthType, ChapCredential, Config, Lun, PortalGroup, Syntax, Target, AUTH_GROUP_DENY,
    AUTH_GROUP_NONE, DEFAULT_PING_TIMEOUT, DEFAULT_POLL_US, MAX_IO_THREADS, MAX_POLL_US,
};
pub use toml::parse_ha;
pub use values::{
    default_naa, default_serial, parse_listen, parse_size, valid_iscsi_name, ISCSI_PORT, MAX_LUN,
};

impl Config {
    /// Reads and validates a configuration file, detecting its syntax from the content.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&name, None, format!("cannot read: {e}")))?;
        Config::parse(&name, &text)
    }

    /// Parses and validates configuration text; `file` names it in error messages.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        match detect_syntax(text) {
            Syntax::Toml => toml::parse(file, text),
            Syntax::CtlConf => ctl::parse(file, text),
        }
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
