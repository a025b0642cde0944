//! The command-line values every host parses the same way: portals, byte sizes, durations.
//! Pure string handling (plus name resolution for portals).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Parses `host:port` or `host` (port 3260).
pub fn parse_portal(s: &str) -> Result<SocketAddr, String> {
    let with_port = if s.parse::<SocketAddr>().is_ok()
        || s.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.ends_with(':') && p.bytes().all(|c| c.is_ascii_digit())
        }) {
        s.to_string()
    } else {
        format!("{s}:3260")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}`: no address"))
}

/// Parses a byte count with duet-core's one size rule ([`duet_core::units::parse_size`]: a bare
/// number, or K/KiB/M/MiB/G/GiB/... as powers of 1024), for a command-line value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    duet_core::units::parse_size(s)
        .ok_or_else(|| format!("`{s}`: expected a size like 4096, 64KiB or 1MiB"))
}

/// Parses a duration: `10s`, `500ms`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("`{s}`: unknown unit `{u}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=1.0e6).contains(&secs) {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portals_sizes_and_durations() {
        assert_eq!(parse_portal("127.0.0.1").unwrap().port(), 3260);
        assert_eq!(parse_portal("127.0.0.1:3292").unwrap().port(), 3292);
        assert_eq!(parse_portal("[::1]").unwrap().port(), 3260);
        assert_eq!(parse_portal("[::1]:99").unwrap().port(), 99);
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("4q").is_err());
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
    }
}
