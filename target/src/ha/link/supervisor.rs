//! Starting the link and keeping it up: [`spawn`] / [`spawn_on`] start one supervisor task,
//! which sets up both connections (dialing them on the [`PeerAddr::Connect`] side, accepting
//! them on the [`PeerAddr::Listen`] side), runs the session until it breaks, and starts over,
//! with a fresh login, every [`LinkConfig::reconnect`] until shutdown.
//!
//! Both sides log in through the same [`establish`]; only where the socket comes from differs.
//! The listen side pairs the control and data connections of one dialer attempt and refuses
//! connections while its link is up.
//!
//! Touches: the network (connect, listen, accept), tokio tasks and timers, [`crate::entropy`]
//! (attempt ids) and the state shared with the handle.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::sleep;
use tracing::{debug, info, warn};

use super::channel::Channel;
use super::config::{LinkConfig, PeerAddr};
use super::handle::{LinkEvent, LinkHandle, Shared, STATE_CONNECTING, STATE_OFFLINE};
use super::handshake::{Refusal, Role};
use super::login::{establish, Authed, LoginError};
use super::session::run_session;
use super::tasks::{is_shutdown, pause, shutdown_asked, AbortOnDrop};
use crate::entropy;

/// At most this many unauthenticated connections are logging in at once on the listen side.
const MAX_PENDING_LOGINS: usize = 16;

/// Starts the link tasks on the current tokio runtime; they stop when `shutdown` turns true (or
/// its sender is dropped). An invalid configuration (`ha_id` not 1 or 2, `ha_mode` over 2, zero
/// timings) is logged and leaves the link offline (state 0) with the event stream closed.
///
/// The data channel runs on the calling runtime, without polling (see [`spawn_on`] to give it a
/// runtime of its own).
///
/// Must be called from within a tokio runtime.
pub fn spawn(
    cfg: LinkConfig,
    shutdown: watch::Receiver<bool>,
) -> (LinkHandle, mpsc::UnboundedReceiver<LinkEvent>) {
    spawn_inner(cfg, shutdown, None)
}

/// As [`spawn`], with the data channel on `data_rt`, which must be a single-threaded runtime
/// (`data_poll` relies on it). duetd puts it on a connection thread: a forwarded command and
/// its answer then cross no thread.
pub fn spawn_on(
    cfg: LinkConfig,
    shutdown: watch::Receiver<bool>,
    data_rt: tokio::runtime::Handle,
) -> (LinkHandle, mpsc::UnboundedReceiver<LinkEvent>) {
    spawn_inner(cfg, shutdown, Some(data_rt))
}

fn spawn_inner(
    cfg: LinkConfig,
    shutdown: watch::Receiver<bool>,
    data_rt: Option<tokio::runtime::Handle>,
) -> (LinkHandle, mpsc::UnboundedReceiver<LinkEvent>) {
    let (events, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared::new(events, data_rt));
    let handle = LinkHandle {
        shared: shared.clone(),
    };
    if let Err(e) = cfg.check() {
        tracing::error!("HA link not started: {e}");
        // Close the event stream: nothing will ever be reported.
        shared.close_events();
        return (handle, rx);
    }
    if cfg.secret.is_empty() {
        warn!("HA link: the shared secret is empty; any host can pose as the peer");
    }
    shared.set_state(STATE_CONNECTING);
    let cfg = Arc::new(cfg);
    tokio::spawn(async move {
        match cfg.peer.clone() {
            PeerAddr::Connect(addr) => run_connect(cfg, addr, &shared, shutdown).await,
            PeerAddr::Listen(addr) => run_listen(cfg, addr, &shared, shutdown).await,
        }
        shared.set_state(STATE_OFFLINE);
        shared.close_events();
    });
    (handle, rx)
}

/// The dialing side: both connections of one attempt, dialed together, then the session.
async fn run_connect(
    cfg: Arc<LinkConfig>,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if is_shutdown(&shutdown) {
            return;
        }
        let attempt = match entropy::bytes::<8>() {
            Ok(b) => u64::from_be_bytes(b),
            Err(e) => {
                shared.note_failure(addr, &LoginError::Random(e), false);
                if !pause(cfg.reconnect, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let dial = |channel| {
            let role = Role::Dialer { channel, attempt };
            establish(&cfg, addr, TcpStream::connect(addr), role, || false)
        };
        let both = async { tokio::join!(dial(Channel::Control), dial(Channel::Data)) };
        let result = tokio::select! {
            r = both => r,
            _ = shutdown_asked(&mut shutdown) => return,
        };
        match result {
            (Ok(control), Ok(data)) => {
                if run_session(&cfg, shared, control, data, &mut shutdown, None).await {
                    return;
                }
            }
            (Err(e), _) | (_, Err(e)) => shared.note_failure(addr, &e, true),
        }
        if !pause(cfg.reconnect, &mut shutdown).await {
            return;
        }
    }
}

/// Control and data connections of one dialer attempt, as they arrive on the listen side.
struct Pending {
    attempt: u64,
    slots: [Option<Authed>; 2],
}

/// The listening side: authenticated connections paired by attempt, then the session.
async fn run_listen(
    cfg: Arc<LinkConfig>,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(source) => {
                shared.note_failure(addr, &LoginError::Listen { addr, source }, false);
                if !pause(cfg.reconnect, &mut shutdown).await {
                    return;
                }
            }
        }
    };
    info!("HA link: listening on {addr}");
    let (authed_tx, mut authed_rx) = mpsc::unbounded_channel();
    let acceptor = tokio::spawn(accept_loop(
        cfg.clone(),
        listener,
        shared.clone(),
        authed_tx,
    ));
    let _abort = AbortOnDrop(vec![acceptor]);
    let mut pending: Option<Pending> = None;
    loop {
        let conn = tokio::select! {
            c = authed_rx.recv() => c,
            _ = shutdown_asked(&mut shutdown) => return,
        };
        let Some(conn) = conn else { return };
        let slot = conn.channel.index();
        match &mut pending {
            Some(p) if p.attempt == conn.attempt => {
                if p.slots[slot].is_some() {
                    shared.refused_logins.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %conn.addr, "{}", Refusal::ChannelTaken(conn.channel));
                    continue;
                }
                p.slots[slot] = Some(conn);
            }
            _ => {
                if pending.is_some() {
                    debug!("HA link: dropping a half-open attempt, the peer started a new one");
                }
                let attempt = conn.attempt;
                let mut slots = [None, None];
                slots[slot] = Some(conn);
                pending = Some(Pending { attempt, slots });
            }
        }
        let complete = pending
            .as_ref()
            .is_some_and(|p| p.slots.iter().all(Option::is_some));
        if !complete {
            continue;
        }
        let Some(Pending {
            slots: [Some(control), Some(data)],
            ..
        }) = pending.take()
        else {
            continue;
        };
        if run_session(
            &cfg,
            shared,
            control,
            data,
            &mut shutdown,
            Some(&mut authed_rx),
        )
        .await
        {
            return;
        }
    }
}

/// Accepts connections and logs each in (at most [`MAX_PENDING_LOGINS`] at once); the
/// authenticated ones go to `authed`.
async fn accept_loop(
    cfg: Arc<LinkConfig>,
    listener: TcpListener,
    shared: Arc<Shared>,
    authed: mpsc::UnboundedSender<Authed>,
) {
    let mut logins = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if logins.len() >= MAX_PENDING_LOGINS {
                        warn!(%peer, "HA link: too many connections logging in; dropped one");
                        continue;
                    }
                    let cfg = cfg.clone();
                    let shared = shared.clone();
                    let authed = authed.clone();
                    logins.spawn(async move {
                        let accepted = async { Ok(stream) };
                        let link_up = || shared.is_up();
                        match establish(&cfg, peer, accepted, Role::Acceptor, link_up).await {
                            Ok(conn) => {
                                debug!(%peer, "HA link: {} channel authenticated", conn.channel);
                                let _ = authed.send(conn);
                            }
                            Err(e) => shared.note_failure(peer, &e, false),
                        }
                    });
                }
                Err(e) => {
                    warn!("HA link: accept failed: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = logins.join_next(), if !logins.is_empty() => {}
        }
    }
}
