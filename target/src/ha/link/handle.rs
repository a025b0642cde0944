//! What the layer above holds of the link: the [`LinkHandle`] (send, state, counters), the
//! [`LinkEvent`]s it receives, and the state the handle shares with the link's tasks
//! ([`Shared`]: the live session's queues, the event gate, the counters).
//!
//! The gate is the one place that decides whether a received message is still delivered: only
//! readers of the live session may deliver, and nothing is delivered after the `Down` that ended
//! their connection. Locks come from [`crate::sync`] (poisoning ignored).
//!
//! Touches no socket and no clock: queues, locks and atomics only.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::channel::Channel;
use super::frame::{FrameKind, Outgoing, MAX_PAYLOAD};
use super::login::LoginError;
use super::stats::{ChannelCounters, LinkStats};
use crate::sync::{lock, Mutex};

/// Link states, as CTL reports them (`kern.cam.ctl.ha_link`).
pub(super) const STATE_OFFLINE: u8 = 0;
pub(super) const STATE_CONNECTING: u8 = 1;
pub(super) const STATE_ONLINE: u8 = 2;

/// What the link reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// Both channels are connected and authenticated; the peer is `peer_id`.
    Up {
        /// The peer's `ha_id`.
        peer_id: u8,
    },
    /// The link went down (only after an `Up`; every `Up` is followed by at most one `Down`).
    Down {
        /// Why, for the log.
        reason: String,
        /// Whether the peer closed it or it went silent.
        kind: DownKind,
    },
    /// A message from the peer. Messages of one channel arrive in the order they were sent; none
    /// from a connection arrives after the `Down` that ended it.
    Message {
        /// The channel it came on.
        channel: Channel,
        /// The payload, exactly as handed to the peer's [`LinkHandle::send`].
        payload: Bytes,
    },
}

/// How the link went down: the one distinction the layer above acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownKind {
    /// The peer's end closed a connection of the link: end of stream (FIN), a reset (RST), or a
    /// bye. Most likely the peer's process exited: the kernel closes its sockets even on a crash.
    Closed,
    /// The peer did not close it: nothing arrived for `dead_after` (the peer may be dead, paused,
    /// or alive behind a cut network), or the link failed on this side (a frame it refuses, an
    /// error of its own, its shutdown). Whether the peer is alive is unknown.
    Silent,
}

impl fmt::Display for DownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DownKind::Closed => "closed by the peer",
            DownKind::Silent => "silent",
        })
    }
}

/// [`LinkHandle::send`] failed: the link is not up (or the payload is longer than
/// [`MAX_PAYLOAD`], which the peer would refuse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HA link is down")]
pub struct LinkDown;

/// A handler of the data channel's messages: called on the link's reader task, in order; it
/// must not block.
pub type DataHandler = Box<dyn Fn(Bytes) + Send + Sync>;

/// The queues of the current link, while it is up.
pub(super) struct SessionTx {
    pub(super) control: mpsc::UnboundedSender<Outgoing>,
    pub(super) data: mpsc::UnboundedSender<Outgoing>,
}

/// Who may deliver events: only readers of the live session (`live`, 0 = none).
pub(super) struct Gate {
    pub(super) live: u64,
    pub(super) events: mpsc::UnboundedSender<LinkEvent>,
}

/// The state shared by the handle and the link's tasks.
pub(super) struct Shared {
    pub(super) state: AtomicU8,
    pub(super) session: Mutex<Option<SessionTx>>,
    pub(super) gate: Mutex<Gate>,
    pub(super) channels: [ChannelCounters; 2],
    pub(super) ups: AtomicU64,
    pub(super) refused_logins: AtomicU64,
    /// Downs by [`DownKind`]: closed by the peer, silent.
    downs: [AtomicU64; 2],
    /// The last warning logged about failed attempts: repeats are logged at debug level only.
    pub(super) last_warning: Mutex<Option<String>>,
    /// Takes the data channel's messages on the reader task (see [`LinkHandle::handle_data`]).
    data_handler: OnceLock<DataHandler>,
    /// The single-threaded runtime that runs the data channel (`None`: the data channel runs on
    /// the runtime that started the link, without polling).
    pub(super) data_rt: Option<tokio::runtime::Handle>,
}

impl Shared {
    /// Offline, with no session, reporting to `events`.
    pub(super) fn new(
        events: mpsc::UnboundedSender<LinkEvent>,
        data_rt: Option<tokio::runtime::Handle>,
    ) -> Self {
        Shared {
            state: AtomicU8::new(STATE_OFFLINE),
            session: Mutex::new(None),
            gate: Mutex::new(Gate { live: 0, events }),
            channels: Default::default(),
            ups: AtomicU64::new(0),
            refused_logins: AtomicU64::new(0),
            downs: Default::default(),
            last_warning: Mutex::new(None),
            data_handler: OnceLock::new(),
            data_rt,
        }
    }

    pub(super) fn set_state(&self, new: u8) {
        let old = self.state.swap(new, Ordering::SeqCst);
        if old != new {
            info!("HA link status changed from {old} to {new}");
        }
    }

    /// Counts one down of the link (not this side's shutdown).
    pub(super) fn note_down(&self, kind: DownKind) {
        self.downs[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the link is up (state 2).
    pub(super) fn is_up(&self) -> bool {
        self.state.load(Ordering::SeqCst) == STATE_ONLINE
    }

    /// Closes the event stream: nothing will be reported any more.
    pub(super) fn close_events(&self) {
        lock(&self.gate).events = mpsc::unbounded_channel().0;
    }

    /// Hands a received message to the layer above if session `generation` is still live.
    pub(super) fn deliver(&self, generation: u64, channel: Channel, payload: Bytes) {
        let gate = lock(&self.gate);
        if gate.live == generation {
            match (channel, self.data_handler.get()) {
                // Under the gate's lock, like the events: nothing is handled after the `Down`.
                (Channel::Data, Some(handle)) => handle(payload),
                _ => {
                    let _ = gate.events.send(LinkEvent::Message { channel, payload });
                }
            }
        }
    }

    /// Logs a failed attempt: at warn level unless it repeats the previous one (or, with
    /// `quiet_io`, is only the network's).
    pub(super) fn note_failure(&self, peer: SocketAddr, err: &LoginError, quiet_io: bool) {
        if err.is_refusal() {
            self.refused_logins.fetch_add(1, Ordering::Relaxed);
        }
        let text = err.to_string();
        let repeated = {
            let mut last = lock(&self.last_warning);
            let repeated = last.as_deref() == Some(text.as_str());
            *last = Some(text.clone());
            repeated
        };
        if repeated || (quiet_io && err.is_io()) {
            debug!(%peer, "{text}");
        } else {
            warn!(%peer, "{text}");
        }
    }
}

/// A cloneable handle on the link: send messages, read its state and counters.
#[derive(Clone)]
pub struct LinkHandle {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkHandle")
            .field("state", &self.state())
            .finish()
    }
}

impl LinkHandle {
    /// Queues one message on `channel`. `Err(LinkDown)` when the link is not up: messages are
    /// never kept across a reconnect (the protocol above tolerates loss). A payload longer than
    /// [`MAX_PAYLOAD`] is not sent either (it is logged and refused with `Err(LinkDown)`).
    pub fn send(&self, channel: Channel, payload: Bytes) -> Result<(), LinkDown> {
        self.send_parts(channel, payload, Bytes::new())
    }

    /// Queues one message whose payload is `head` followed by `bulk`, both sent as they are
    /// (one vectored write, no copy); the peer receives them as one payload.
    pub fn send_parts(&self, channel: Channel, head: Bytes, bulk: Bytes) -> Result<(), LinkDown> {
        let len = head.len() + bulk.len();
        if len > MAX_PAYLOAD {
            warn!("HA link: refused to send a {len}-byte message (the maximum is {MAX_PAYLOAD})");
            return Err(LinkDown);
        }
        let session = lock(&self.shared.session);
        let Some(tx) = session.as_ref() else {
            return Err(LinkDown);
        };
        let tx = match channel {
            Channel::Control => &tx.control,
            Channel::Data => &tx.data,
        };
        tx.send(Outgoing::in_parts(FrameKind::Message, head, bulk))
            .map_err(|_| LinkDown)
    }

    /// Delivers the data channel's messages to `handler`, on the reader task, instead of as
    /// [`LinkEvent::Message`]s: one task hand-off less on the forwarded-command path. The same
    /// guarantees hold: in order, none after the `Down` that ended their connection. Set once;
    /// later calls are ignored.
    pub fn handle_data(&self, handler: DataHandler) {
        let _ = self.shared.data_handler.set(handler);
    }

    /// Whether the link is up (state 2).
    pub fn is_up(&self) -> bool {
        self.state() == STATE_ONLINE
    }

    /// CTL's link state: 0 offline (not configured or shut down), 1 configured but not
    /// established, 2 established.
    pub fn state(&self) -> u8 {
        self.shared.state.load(Ordering::SeqCst)
    }

    /// The link's counters.
    pub fn stats(&self) -> LinkStats {
        let ups = self.shared.ups.load(Ordering::Relaxed);
        LinkStats {
            control: self.shared.channels[0].snapshot(),
            data: self.shared.channels[1].snapshot(),
            ups,
            reconnects: ups.saturating_sub(1),
            refused_logins: self.shared.refused_logins.load(Ordering::Relaxed),
            downs_closed: self.shared.downs[DownKind::Closed as usize].load(Ordering::Relaxed),
            downs_silent: self.shared.downs[DownKind::Silent as usize].load(Ordering::Relaxed),
        }
    }
}
