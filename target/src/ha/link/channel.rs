//! The link's two connections: [`Channel::Control`] for the HA protocol's small,
//! latency-sensitive messages and pings, [`Channel::Data`] for bulk data, so that bulk data never
//! delays control messages.
//!
//! Pure data; named in the login (each connection says which channel it is) and everywhere the
//! link keeps something per channel.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One of the two connections of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// HA protocol messages and pings: small, latency-sensitive.
    Control,
    /// Bulk data (forwarded commands and their data in `ha_mode` 2).
    Data,
}

impl Channel {
    /// 0 for control, 1 for data: the index of per-channel arrays, and the channel's byte in
    /// the login proof.
    pub fn index(self) -> usize {
        match self {
            Channel::Control => 0,
            Channel::Data => 1,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Control => "control",
            Channel::Data => "data",
        })
    }
}
