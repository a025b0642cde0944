//! One established link: both authenticated connections, from the `Up` to the `Down`.
//!
//! Each channel has a writer (batching everything queued into one vectored write; on the control
//! channel it also sends the heartbeat pings) and a reader (delivering messages through the
//! event gate of [`Shared`]; on the control channel it declares the peer dead after
//! `dead_after` without a frame). The data channel's writer and reader run as one task on the
//! data runtime when there is one. The first task that ends ends the session; on shutdown the
//! peer is told with a bye.
//!
//! Touches: the two sockets it is given, [`Shared`] (queues, gate, state, counters), tokio tasks
//! and timers.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{info, warn};

use super::channel::Channel;
use super::config::LinkConfig;
use super::frame::{bye_text, Frame, FrameKind, Outgoing};
use super::handle::{
    DownKind, LinkEvent, SessionTx, Shared, STATE_CONNECTING, STATE_OFFLINE, STATE_ONLINE,
};
use super::handshake::Refusal;
use super::login::Authed;
use super::tasks::{shutdown_asked, AbortOnDrop};
use super::wire::{io_closed_by_peer, write_frames, ConnError, FrameReader};
use crate::idle_poll::IdlePoll;
use crate::sync::lock;

/// Frames one writer task sends with one vectored write.
const MAX_BATCH: usize = 32;

/// How one task of a session ended.
struct TaskEnd {
    reason: String,
    /// The control channel's reader ended (with `bye` when the peer said goodbye).
    control_reader: bool,
    bye: bool,
    /// The peer closed the connection (end of stream, reset or bye): see [`DownKind`].
    closed: bool,
}

impl TaskEnd {
    /// Ended by this side or by an error of the link, not by the peer closing.
    fn other(reason: String) -> Self {
        TaskEnd {
            reason,
            control_reader: false,
            bye: false,
            closed: false,
        }
    }

    /// Ended because the peer closed the connection.
    fn closed(reason: String) -> Self {
        TaskEnd {
            closed: true,
            ..TaskEnd::other(reason)
        }
    }

    fn kind(&self) -> DownKind {
        if self.closed {
            DownKind::Closed
        } else {
            DownKind::Silent
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runs one established link until it breaks or shutdown is asked for; returns true on shutdown.
/// On the listen side, `extra` receives further authenticated connections, which are refused.
pub(super) async fn run_session(
    cfg: &LinkConfig,
    shared: &Arc<Shared>,
    control: Authed,
    data: Authed,
    shutdown: &mut watch::Receiver<bool>,
    mut extra: Option<&mut mpsc::UnboundedReceiver<Authed>>,
) -> bool {
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let peer_id = control.peer_id;
    let peer_addr = control.addr;
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    *lock(&shared.session) = Some(SessionTx {
        control: ctl_tx.clone(),
        data: data_tx,
    });
    *lock(&shared.last_warning) = None;
    shared.ups.fetch_add(1, Ordering::Relaxed);
    info!(peer = %peer_addr, "HA link up: peer ha_id {peer_id}");
    // The state changes before the event, so that whoever sees the event sees the state.
    shared.set_state(STATE_ONLINE);
    {
        let mut gate = lock(&shared.gate);
        gate.live = generation;
        let _ = gate.events.send(LinkEvent::Up { peer_id });
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TaskEnd>();
    let task = |fut: std::pin::Pin<Box<dyn std::future::Future<Output = TaskEnd> + Send>>| {
        let done = done_tx.clone();
        tokio::spawn(async move {
            let reason = fut.await;
            let _ = done.send(reason);
        })
    };
    let mut ctl_writer = task(Box::pin(write_loop(
        control.writer,
        ctl_rx,
        Some(cfg.heartbeat),
        shared.clone(),
        Channel::Control,
    )));
    let others = AbortOnDrop(vec![
        task(Box::pin(read_loop(
            control.reader,
            Some(cfg.dead_after),
            shared.clone(),
            Channel::Control,
            generation,
            Duration::ZERO,
        ))),
        spawn_data(
            shared,
            data,
            data_rx,
            generation,
            cfg.data_poll,
            done_tx.clone(),
        ),
    ]);

    let (end, stopping) = loop {
        let extra_conn = async {
            match extra.as_deref_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(end) = done_rx.recv() => break (settle(end, &mut done_rx).await, false),
            Some(conn) = extra_conn => {
                shared.refused_logins.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %conn.addr, "{}", Refusal::ChannelTaken(conn.channel));
            }
            _ = shutdown_asked(shutdown) => break (TaskEnd::other("shut down".to_string()), true),
        }
    };
    let kind = end.kind();
    let reason = end.reason;

    // From here on nothing is sent or delivered for this session.
    *lock(&shared.session) = None;
    if stopping {
        info!(peer = %peer_addr, "HA link down: {reason}");
        shared.set_state(STATE_OFFLINE);
    } else {
        warn!(peer = %peer_addr, "HA link down ({kind}): {reason}");
        shared.set_state(STATE_CONNECTING);
        shared.note_down(kind);
    }
    {
        let mut gate = lock(&shared.gate);
        gate.live = 0;
        let _ = gate.events.send(LinkEvent::Down { reason, kind });
    }
    if stopping {
        // Tell the peer, so that it goes down at once rather than after `dead_after`.
        let bye = Outgoing::new(FrameKind::Bye, Bytes::from_static(b"peer shut down"));
        if ctl_tx.send(bye).is_ok() {
            let _ = timeout(Duration::from_millis(200), &mut ctl_writer).await;
        }
    }
    ctl_writer.abort();
    drop(others);
    stopping
}

/// How a session ended, given the first task that ended: when it is not the control reader, the
/// control reader gets a moment to report a bye the peer sent before closing (its data socket
/// may close first), which says more than "connection closed".
async fn settle(first: TaskEnd, done: &mut mpsc::UnboundedReceiver<TaskEnd>) -> TaskEnd {
    if first.control_reader {
        return first;
    }
    let control = timeout(Duration::from_millis(50), async {
        while let Some(end) = done.recv().await {
            if end.control_reader {
                return Some(end);
            }
        }
        None
    })
    .await;
    match control {
        Ok(Some(end)) if end.bye => end,
        _ => first,
    }
}

/// Sends what is queued for one channel (and, with `heartbeat`, a ping whenever nothing was
/// sent for that long) until the session's queue closes, a write fails or a bye has gone out.
async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    heartbeat: Option<Duration>,
    shared: Arc<Shared>,
    channel: Channel,
) -> TaskEnd {
    let counters = &shared.channels[channel.index()];
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
    loop {
        let next = match heartbeat {
            Some(hb) => match timeout(hb, rx.recv()).await {
                Ok(next) => next,
                Err(_) => Some(Outgoing::new(FrameKind::Ping, Bytes::new())),
            },
            None => rx.recv().await,
        };
        let Some(out) = next else {
            return TaskEnd::other(format!("{channel} channel: session closed"));
        };
        // Everything queued meanwhile goes out with the same system call, up to a bye.
        let mut bye = out.kind == FrameKind::Bye;
        batch.push(out);
        while !bye && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => {
                    bye = o.kind == FrameKind::Bye;
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        match write_frames(&mut w, &batch).await {
            Ok(()) => {
                for o in &batch {
                    counters.sent(o.wire_len());
                }
            }
            Err(e) => {
                let reason = format!("{channel} channel: write failed: {e}");
                return if io_closed_by_peer(&e) {
                    TaskEnd::closed(reason)
                } else {
                    TaskEnd::other(reason)
                };
            }
        }
        batch.clear();
        if bye {
            let _ = w.shutdown().await;
            return TaskEnd::other(format!("{channel} channel: closed by us"));
        }
    }
}

/// Runs the data channel (writer and reader, one task) on the data runtime, its socket moved to
/// that runtime's reactor; on the current runtime, without polling, when there is none.
fn spawn_data(
    shared: &Arc<Shared>,
    data: Authed,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    generation: u64,
    poll: Duration,
    done: mpsc::UnboundedSender<TaskEnd>,
) -> JoinHandle<()> {
    let sh = shared.clone();
    let Some(rt) = &shared.data_rt else {
        let run = data_loops(data.reader, data.writer, rx, sh, generation, Duration::ZERO);
        return tokio::spawn(async move {
            let _ = done.send(run.await);
        });
    };
    let FrameReader { rd, buf, max } = data.reader;
    let moved = rd
        .reunite(data.writer)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|s| s.into_std());
    rt.spawn(async move {
        let end = match moved.and_then(TcpStream::from_std) {
            Ok(s) => {
                let (rd, wr) = s.into_split();
                let reader = FrameReader { rd, buf, max };
                data_loops(reader, wr, rx, sh, generation, poll).await
            }
            Err(e) => TaskEnd::other(format!("data channel: cannot move it to its thread: {e}")),
        };
        let _ = done.send(end);
    })
}

async fn data_loops(
    reader: FrameReader,
    writer: OwnedWriteHalf,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
    generation: u64,
    poll: Duration,
) -> TaskEnd {
    tokio::select! {
        end = write_loop(writer, rx, None, shared.clone(), Channel::Data) => end,
        end = read_loop(reader, None, shared, Channel::Data, generation, poll) => end,
    }
}

async fn read_loop(
    mut r: FrameReader,
    dead_after: Option<Duration>,
    shared: Arc<Shared>,
    channel: Channel,
    generation: u64,
    poll: Duration,
) -> TaskEnd {
    let (reason, how) = read_frames(&mut r, dead_after, &shared, channel, generation, poll).await;
    TaskEnd {
        reason,
        control_reader: channel == Channel::Control,
        bye: how == ReadEnd::Bye,
        closed: how != ReadEnd::Other,
    }
}

/// How a reader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The peer said goodbye.
    Bye,
    /// The peer closed the connection without one (end of stream, reset).
    Closed,
    /// Silence for `dead_after`, a refused frame, an error of this side.
    Other,
}

/// Reads and dispatches frames until the connection ends; returns why and how.
async fn read_frames(
    r: &mut FrameReader,
    dead_after: Option<Duration>,
    shared: &Shared,
    channel: Channel,
    generation: u64,
    poll: Duration,
) -> (String, ReadEnd) {
    let counters = &shared.channels[channel.index()];
    loop {
        let next = match dead_after {
            None if !poll.is_zero() => next_polling(r, poll).await,
            Some(d) => match timeout(d, r.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let ms = d.as_millis();
                    return (
                        format!("no frame from the peer on the {channel} channel for {ms} ms"),
                        ReadEnd::Other,
                    );
                }
            },
            None => r.next().await,
        };
        let frame = match next {
            Ok(f) => f,
            Err(e) => {
                let how = if e.closed_by_peer() {
                    ReadEnd::Closed
                } else {
                    ReadEnd::Other
                };
                return (format!("{channel} channel: {e}"), how);
            }
        };
        counters.received(frame.wire_len());
        match frame.kind {
            FrameKind::Ping => {}
            FrameKind::Message => shared.deliver(generation, channel, frame.payload),
            FrameKind::Bye => {
                let text = bye_text(&frame.payload);
                return (format!("peer closed the link: {text}"), ReadEnd::Bye);
            }
            FrameKind::Login => {
                let text = format!("{channel} channel: unexpected login frame after the login");
                return (text, ReadEnd::Other);
            }
        }
    }
}

/// The next frame; for `poll` after the call, the thread keeps polling the socket (and runs its
/// other tasks) instead of sleeping, so that a frame that follows soon costs no wake-up. Only on
/// a single-threaded runtime, whose `yield_now` polls the I/O driver without blocking.
async fn next_polling(r: &mut FrameReader, poll: Duration) -> Result<Frame, ConnError> {
    let mut idle = IdlePoll::new(poll);
    loop {
        tokio::select! {
            biased;
            f = r.next() => return f,
            _ = idle.round(), if idle.active() => {}
        }
    }
}
