//! What the HA runtime takes from the `[ha]` section: the HA link's settings, the durations the
//! runtime waits for, and the warnings the daemon logs at start.
//!
//! The section itself ([`HaConfig`] and its parts, how it is read and validated) belongs to the
//! configuration, `crate::config`; its types are re-exported here so that the runtime finds them
//! under `ha::config`. Uses `crate::config` and `super::link`; `crate::config` does not use this
//! module.

use std::time::Duration;

use duet_core::ha::Policy;

use super::link::{LinkConfig, PeerAddr};

pub use crate::config::{
    parse_ha, HaConfig, HaLunConfig, HaPeer, DEFAULT_ADMIN_SOCKET, DEFAULT_DEAD_AFTER_MS,
    DEFAULT_FENCE_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_RECONNECT_MS, MIN_SECRET_LEN,
};
use crate::ha::fence::FenceAgent;

/// The warning [`HaConfig::warnings`] gives for `fencing = "none"`.
pub const WARN_NO_FENCING: &str =
    "fencing = none: a paused controller can land stale writes after failover";

impl HaConfig {
    /// Warnings the daemon logs at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.fencing == FenceAgent::None {
            w.push(WARN_NO_FENCING.to_string());
        }
        w
    }

    /// HA link ping interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Link silence after which the peer counts as down.
    pub fn dead_after(&self) -> Duration {
        Duration::from_millis(self.dead_after_ms)
    }

    /// Delay between HA link connection attempts.
    pub fn reconnect(&self) -> Duration {
        Duration::from_millis(self.reconnect_ms)
    }

    /// The time a fencing agent may take.
    pub fn fence_timeout(&self) -> Duration {
        Duration::from_millis(self.fence_timeout_ms)
    }

    /// Whether failover is manual (CTL's behaviour: an administrator names the primary).
    pub fn failover_manual(&self) -> bool {
        self.failover == Policy::Manual
    }

    /// The HA link's configuration.
    pub fn link_config(&self) -> LinkConfig {
        LinkConfig {
            ha_id: self.id,
            mode: self.mode.number(),
            peer: match self.peer {
                HaPeer::Listen(a) => PeerAddr::Listen(a),
                HaPeer::Connect(a) => PeerAddr::Connect(a),
            },
            secret: self.secret.as_bytes().to_vec(),
            heartbeat: self.heartbeat(),
            dead_after: self.dead_after(),
            reconnect: self.reconnect(),
            // Set from the controller's `poll_us` by the runtime.
            data_poll: Duration::ZERO,
        }
    }
}
