//! The HA link: the private transport between the two controllers of a pair (CTL's
//! `kern.cam.ctl.ha_peer`).
//!
//! The link carries opaque, already-serialized messages and reports when the peer comes and goes;
//! every decision is taken above it, by `duet_core::ha::Node`. It is two TCP connections, one per
//! [`Channel`], so that bulk data never delays control messages. The [`PeerAddr::Connect`] side
//! dials both, the [`PeerAddr::Listen`] side accepts both.
//!
//! # Wire format
//!
//! Every frame is a 12-byte header followed by its payload: magic `"DUET"`, version, kind,
//! flags, length (see `frame`). Kinds: login, ping, message (the payload handed to
//! [`LinkHandle::send`]), bye (a reason, then the connection closes). Frames with another magic,
//! version, kind or flags, or longer than [`MAX_PAYLOAD`] (1 KiB before the login completes), are
//! refused: the connection is dropped and the reason logged.
//!
//! # Login
//!
//! Every connection starts with a mutual HMAC-SHA256 challenge-response over fresh nonces from
//! [`crate::entropy`], the ids, the mode, the channel and the dialer's attempt id ([`handshake`]);
//! the acceptor never proves anything to a dialer that has not proven itself first.
//!
//! # Liveness
//!
//! Each side sends a ping on the control channel when it has sent nothing there for
//! [`LinkConfig::heartbeat`]; when nothing arrives on the control channel for
//! [`LinkConfig::dead_after`], or either socket closes, the link goes down, both sockets are
//! closed and the link is set up again, with a fresh login, every [`LinkConfig::reconnect`].
//! [`LinkEvent::Down`] says which it was ([`DownKind`]): the peer closed a connection (end of
//! stream, reset, bye: its process most likely exited) or the link went silent (no frame for
//! `dead_after`; also a refused frame, an error or the shutdown of this side).
//!
//! # Parts
//!
//! Pure, without sockets or tasks: `config` (addresses, configuration), `channel`, `frame` (the
//! codec), [`handshake`] (the login's state machine), `stats` (counters). Over sockets and tokio:
//! `tasks` (shutdown helpers), `wire` (frames on a socket), `login` (one connection's login, the
//! same code on both sides), `handle` ([`LinkHandle`], [`LinkEvent`], the state shared with the
//! tasks), `session` (one established link: readers, writers, heartbeats), `supervisor`
//! ([`spawn`]: connect or accept, reconnect). Each part uses only parts listed before it.

mod channel;
mod config;
mod frame;
mod handle;
pub mod handshake;
mod login;
mod session;
mod stats;
mod supervisor;
mod tasks;
mod wire;

pub use channel::Channel;
pub use config::{LinkConfig, PeerAddr, PeerAddrError};
pub use frame::{
    FrameError, FrameHeader, FrameKind, FRAME_MAGIC, HEADER_LEN, LINK_VERSION, MAX_LOGIN_PAYLOAD,
    MAX_PAYLOAD,
};
pub use handle::{DataHandler, DownKind, LinkDown, LinkEvent, LinkHandle};
pub use stats::{ChannelStats, LinkStats};
pub use supervisor::{spawn, spawn_on};
