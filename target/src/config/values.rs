//! Value parsers both syntaxes share: sizes, listen addresses, iSCSI names, NAA designators,
//! block sizes and LUN numbers. Each is a pure function of one written value; none knows the file,
//! the line or the key (the callers name those in their errors, see `error.rs`).
//!
//! The default serial number and NAA designator of a LUN are the core's naming rule
//! (`duet_core::scsi::ident`), re-exported here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

pub use duet_core::scsi::ident::{default_naa, default_serial};

/// The default iSCSI port.
pub const ISCSI_PORT: u16 = 3260;
/// The highest LUN number accepted (flat addressing, SAM-5 4.7.7.3).
pub use duet_core::MAX_LUN;
/// The LUN numbers accepted, for the range checks of `error.rs`.
pub const LUN_NUMBERS: RangeInclusive<i64> = 0..=MAX_LUN as i64;
/// The logical block sizes a LUN may have.
pub const BLOCK_SIZES: [u32; 2] = [512, 4096];

/// A block size, if it is one of [`BLOCK_SIZES`].
pub fn block_size(n: i64) -> Option<u32> {
    u32::try_from(n).ok().filter(|v| BLOCK_SIZES.contains(v))
}

pub use duet_core::units::parse_size;

/// Parses a listen address: `host:port`, `[v6]:port`, a bare IPv4/IPv6 address (port 3260), or
/// `*`/`0.0.0.0` for every IPv4 address.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Some(a) = parse_host_port(s) {
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
    }
    if s.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ISCSI_PORT));
    }
    None
}

/// Parses an address with a port: `host:port` or `[v6]:port`, where the host is an IP address or
/// `localhost` (127.0.0.1).
pub fn parse_host_port(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    host.eq_ignore_ascii_case("localhost")
        .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
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

/// Whether every byte is printable ASCII (0x20 to 0x7e).
pub fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Parses a device id given as an NAA designator: `naa.` or `0x` followed by 16 or 32 hex digits
/// (an 8-byte NAA is widened into the 16-byte form with a zero extension).
pub fn parse_naa(s: &str) -> Option<[u8; 16]> {
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
