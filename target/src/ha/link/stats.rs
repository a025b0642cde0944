//! The link's counters: what [`super::LinkHandle::stats`] reports ([`LinkStats`],
//! [`ChannelStats`]) and the atomic counters the link's tasks bump ([`ChannelCounters`]).
//!
//! Plain data and relaxed atomics; no decisions.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of one channel, for frames of established links (headers, pings and byes included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Frames written.
    pub frames_sent: u64,
    /// Bytes written, headers included.
    pub bytes_sent: u64,
    /// Frames received.
    pub frames_received: u64,
    /// Bytes received, headers included.
    pub bytes_received: u64,
}

/// Counters of the link ([`super::LinkHandle::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// The control channel.
    pub control: ChannelStats,
    /// The data channel.
    pub data: ChannelStats,
    /// How many times the link came up.
    pub ups: u64,
    /// How many times the link came up again after having been down.
    pub reconnects: u64,
    /// Logins refused, by this side or by the peer (wrong secret, mode, ids, version, channel).
    pub refused_logins: u64,
    /// How many times the link went down because the peer closed it (end of stream, reset, bye).
    pub downs_closed: u64,
    /// How many times the link went down without the peer closing it: silence for
    /// `dead_after`, a refused frame, an error of this side (its own shutdown is not counted).
    pub downs_silent: u64,
}

/// The live counters of one channel.
#[derive(Default)]
pub(super) struct ChannelCounters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl ChannelCounters {
    /// One frame of `bytes` (header included) was written.
    pub(super) fn sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One frame of `bytes` (header included) was received.
    pub(super) fn received(&self, bytes: usize) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ChannelStats {
        ChannelStats {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}
