//! Where the peer is and how one side of the HA link behaves: [`PeerAddr`] (CTL's `ha_peer`)
//! and [`LinkConfig`] (ids, mode, secret, timings), with the checks a configuration must pass
//! before the link starts.
//!
//! Pure data: no sockets, no tasks. Used by the login ([`super::handshake`] reads the ids, the
//! mode and the secret) and by the link's tasks (timings, address).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// Where the peer is: CTL's `ha_peer`, `"listen ADDRESS:PORT"` or `"connect ADDRESS:PORT"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    /// Accept the peer's connections on this address.
    Listen(SocketAddr),
    /// Dial the peer at this address.
    Connect(SocketAddr),
}

/// A `ha_peer` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid HA peer {input:?}: {why} (expected \"listen ADDRESS:PORT\" or \"connect ADDRESS:PORT\")")]
pub struct PeerAddrError {
    input: String,
    why: String,
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| PeerAddrError {
            input: s.to_string(),
            why,
        };
        let mut words = s.split_whitespace();
        let (Some(verb), Some(addr), None) = (words.next(), words.next(), words.next()) else {
            return Err(err("expected two words".to_string()));
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| err(format!("{addr:?} is not an IP address with a port")))?;
        if verb.eq_ignore_ascii_case("listen") {
            Ok(PeerAddr::Listen(addr))
        } else if verb.eq_ignore_ascii_case("connect") {
            Ok(PeerAddr::Connect(addr))
        } else {
            Err(err(format!("unknown mode {verb:?}")))
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Listen(a) => write!(f, "listen {a}"),
            PeerAddr::Connect(a) => write!(f, "connect {a}"),
        }
    }
}

/// Configuration of one side of the HA link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This controller's `ha_id`, 1 or 2; the peer must have the other one.
    pub ha_id: u8,
    /// `ha_mode` 0, 1 or 2; both sides must agree.
    pub mode: u8,
    /// Where the peer is.
    pub peer: PeerAddr,
    /// The pre-shared secret that authenticates the login (HMAC-SHA256 key).
    pub secret: Vec<u8>,
    /// A ping is sent on the control channel when nothing else was sent there for this long.
    pub heartbeat: Duration,
    /// The link goes down when no frame arrives on the control channel for this long. It also
    /// bounds one connection attempt with its login (at least 1 s).
    pub dead_after: Duration,
    /// Delay between connection attempts.
    pub reconnect: Duration,
    /// How long the data channel's thread keeps polling its socket after a frame before it
    /// sleeps (the controller's `poll_us`); zero = sleep at once.
    pub data_poll: Duration,
}

impl LinkConfig {
    /// A configuration with the default timings: heartbeat 150 ms, dead after 600 ms, reconnect
    /// every 200 ms.
    pub fn new(ha_id: u8, mode: u8, peer: PeerAddr, secret: Vec<u8>) -> Self {
        LinkConfig {
            ha_id,
            mode,
            peer,
            secret,
            heartbeat: Duration::from_millis(150),
            dead_after: Duration::from_millis(600),
            reconnect: Duration::from_millis(200),
            data_poll: Duration::ZERO,
        }
    }

    /// How long a connection attempt and its login may take.
    pub(super) fn login_timeout(&self) -> Duration {
        self.dead_after.max(Duration::from_secs(1))
    }

    /// Whether the link may start with this configuration; the reason when it may not.
    pub(super) fn check(&self) -> Result<(), String> {
        if !(1..=2).contains(&self.ha_id) {
            return Err(format!("ha_id {} is not 1 or 2", self.ha_id));
        }
        if self.mode > 2 {
            return Err(format!("ha_mode {} is not 0, 1 or 2", self.mode));
        }
        if self.heartbeat.is_zero() || self.dead_after.is_zero() {
            return Err("heartbeat and dead_after must be longer than 0".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addr_parses() {
        assert_eq!(
            "listen 127.0.0.1:7777".parse(),
            Ok(PeerAddr::Listen("127.0.0.1:7777".parse().unwrap()))
        );
        assert_eq!(
            "  connect   [::1]:99 ".parse(),
            Ok(PeerAddr::Connect("[::1]:99".parse().unwrap()))
        );
        let p: PeerAddr = "connect 127.0.0.1:1".parse().unwrap();
        assert_eq!(p.to_string().parse(), Ok(p));
        for bad in [
            "",
            "listen",
            "dial 127.0.0.1:1",
            "listen 127.0.0.1",
            "listen host:1",
            "listen 127.0.0.1:1 extra",
        ] {
            let err = bad.parse::<PeerAddr>().unwrap_err().to_string();
            assert!(err.contains("listen ADDRESS:PORT"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn config_checks() {
        let peer = PeerAddr::Listen("127.0.0.1:1".parse().unwrap());
        assert!(LinkConfig::new(1, 2, peer.clone(), Vec::new())
            .check()
            .is_ok());
        for (id, mode) in [(0, 1), (3, 1), (1, 3)] {
            assert!(LinkConfig::new(id, mode, peer.clone(), Vec::new())
                .check()
                .is_err());
        }
        let mut cfg = LinkConfig::new(2, 0, peer, Vec::new());
        cfg.heartbeat = Duration::ZERO;
        assert!(cfg.check().is_err());
        cfg.dead_after = Duration::from_millis(10);
        cfg.heartbeat = Duration::from_millis(1);
        assert_eq!(cfg.login_timeout(), Duration::from_secs(1));
    }
}
