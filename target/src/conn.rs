//! One iSCSI connection, run to completion on one task of a connection thread.
//!
//! Everything the protocol decides comes from `duet_core`: the task feeds received PDUs,
//! command completions and timer expiries into [`duet_core::iscsi::Connection`] and performs
//! the actions it returns, in order. SCSI commands go to [`crate::exec`]; a command that
//! completes in place costs no thread hand-off at all. The task writes its own responses,
//! batched into vectored writes ([`Outbox`]). Touches its socket, the session registry and,
//! through `exec`, the LUs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use duet_core::iscsi::{
    Action, CloseReason, Codec, Completion, Connection, LoginEntropy, Lun as WireLun, Opcode,
    PortalInfo, SessionIdentity, SessionType,
};
use duet_core::scsi::Nexus;

use crate::build::portal_address;
use crate::entropy;
use crate::exec::{self, command::Issuer};
use crate::idle_poll::IdlePoll;
use crate::lu::Target;
use crate::outbox::{Outbox, OUTBOX_HIGH_WATER};
use crate::sessions::ConnMsg;
use crate::shared::Shared;

/// Receive buffer: grown by this much when less than [`READ_MIN_SPACE`] is free, so one read
/// takes a large Data-Out or many small PDUs.
const READ_CHUNK: usize = 256 << 10;
const READ_MIN_SPACE: usize = 32 << 10;

/// A command's result on its way back to the connection task.
struct Done {
    itt: u32,
    completion: Completion,
}

struct ConnCtx {
    shared: Arc<Shared>,
    id: u64,
    codec: Codec,
    out: Outbox,
    done_tx: mpsc::UnboundedSender<Done>,
    msg_tx: mpsc::UnboundedSender<ConnMsg>,
    identity: Option<SessionIdentity>,
    target: Option<Arc<Target>>,
    nexus: Option<Nexus>,
    /// Commands running off this task (blocking pool, HA link).
    in_flight: usize,
    closing: bool,
    peer: SocketAddr,
    /// The status of a failing Login Response, for the log.
    login_status: Option<(u8, u8)>,
}

/// Random values for one login (CHAP identifier and challenge), from the kernel. There is no
/// fallback: without random bytes the connection is refused.
fn login_entropy(tsih: u16) -> std::io::Result<LoginEntropy> {
    let buf: [u8; 33] = entropy::bytes()?;
    let mut chap_challenge = [0u8; 32];
    chap_challenge.copy_from_slice(&buf[1..33]);
    Ok(LoginEntropy {
        chap_id: buf[0],
        chap_challenge,
        tsih,
    })
}

/// One connection, run to completion on one task: it reads and decodes PDUs, feeds them to the
/// core's [`Connection`], runs short medium phases in place ([`crate::exec::run_inline`]), and
/// writes the responses itself in batches. Only medium phases that may wait for a device, and
/// commands forwarded over the HA link, leave the task.
pub(crate) async fn run_connection(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    pg: String,
    tag: u16,
    mut stop: watch::Receiver<bool>,
) {
    // The listener accepted the socket on the main runtime; register it with this thread's own
    // runtime, so that its readiness wakes this thread directly.
    let Ok(sock) = sock.into_std().and_then(TcpStream::from_std) else {
        return;
    };
    let _ = sock.set_nodelay(true);
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let Some(iscsi) = shared.iscsi.get(&pg).cloned() else {
        return;
    };
    let Some(tsih) = shared.sessions.allocate_tsih() else {
        tracing::warn!(%peer, "no free TSIH; refusing the connection");
        return;
    };
    let entropy = match login_entropy(tsih) {
        Ok(e) => e,
        Err(e) => {
            // Never a predictable CHAP challenge: no random bytes, no login.
            tracing::error!(%peer, "refusing the connection: {e}");
            shared.sessions.release_tsih(tsih);
            return;
        }
    };
    let id = shared.sessions.next_id();
    tracing::debug!(%peer, %local, conn = id, "connection accepted");
    let login_timeout = iscsi.limits.login_timeout_ms;
    let mut conn = Connection::new(
        iscsi,
        PortalInfo {
            address: portal_address(&local, tag),
            portal_group_tag: tag,
        },
        entropy,
    );
    if login_timeout > 0 {
        conn.set_login_deadline(shared.now().saturating_add(login_timeout));
    }
    let mut sock = sock;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<ConnMsg>();
    let mut cx = ConnCtx {
        shared: shared.clone(),
        id,
        codec: Codec::new(),
        out: Outbox::default(),
        done_tx,
        msg_tx,
        identity: None,
        target: None,
        nexus: None,
        in_flight: 0,
        closing: false,
        peer,
        login_status: None,
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut shutting_down = *stop.borrow();
    let mut read_open = true;
    let mut write_open = true;
    // After the connection was busy, its thread polls the socket for a moment before it sleeps:
    // the next command of a host that answers at once then costs no wake-up of this thread.
    let mut idle = IdlePoll::new(Duration::from_micros(shared.config.poll_us));
    loop {
        // Send what the last step produced before waiting for anything.
        if write_open && !cx.out.is_empty() {
            if let Err(e) = cx.out.write_some(&sock) {
                tracing::debug!(conn = id, "write failed: {e}");
                write_open = false;
                read_open = false;
                conn.shutdown(shared.now());
                cx.closing = true;
            }
        }
        if cx.closing {
            break;
        }
        if shutting_down && cx.in_flight == 0 {
            break;
        }
        // Connections share their thread: a busy one gives way now and then.
        tokio::task::consume_budget().await;
        let want_read = read_open && !shutting_down && cx.out.bytes < OUTBOX_HIGH_WATER;
        let want_write = write_open && !cx.out.is_empty();
        let interest = match (want_read, want_write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        let timeout = conn.next_timeout();
        let sleep_for = timeout.map(|t| Duration::from_millis(t.saturating_sub(shared.now())));
        tokio::select! {
            biased;
            Some(d) = done_rx.recv() => {
                // Everything completed meanwhile is answered together: one write for the batch.
                let mut next = Some(d);
                while let Some(d) = next {
                    cx.in_flight = cx.in_flight.saturating_sub(1);
                    conn.complete_command(d.itt, d.completion, shared.now());
                    drain(&mut conn, &mut cx);
                    next = done_rx.try_recv().ok();
                }
            }
            Some(m) = msg_rx.recv() => match m {
                ConnMsg::AbortTasks(lun) => {
                    let _ = conn.abort_tasks(lun.map(WireLun::from_number), shared.now());
                }
                ConnMsg::Close => {
                    conn.shutdown(shared.now());
                    cx.closing = true;
                }
                ConnMsg::TmfDone { itt, resp } => {
                    conn.complete_task_management(itt, resp, shared.now());
                }
            },
            _ = stop.changed(), if !shutting_down => {
                shutting_down = true;
                // Ask the initiator to log out; in-flight commands finish before we close.
                conn.request_logout(0, shared.now());
            }
            r = async {
                match interest {
                    Some(i) => sock.ready(i).await,
                    None => std::future::pending().await,
                }
            } => {
                let readable = match r {
                    Ok(ready) => ready.is_readable() || ready.is_read_closed(),
                    Err(_) => true,
                };
                if want_read && readable && !read_pdus(&sock, &mut buf, &mut conn, &mut cx) {
                    read_open = false;
                }
                // Writability is used at the top of the loop.
            }
            _ = async {
                match sleep_for {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                conn.handle_timeout(shared.now());
            }
            // Lowest priority: one polling round, then look again.
            _ = idle.round(), if want_read && idle.active() => continue,
        }
        idle.busy();
        drain(&mut conn, &mut cx);
    }
    // Tear down: abort what is left, send the last PDUs, tell the LUs the nexus is gone, release
    // the TSIH.
    conn.shutdown(shared.now());
    drain(&mut conn, &mut cx);
    if write_open {
        cx.out.flush(&sock).await;
        let _ = sock.shutdown().await;
    }
    if let (Some(t), Some(n)) = (&cx.target, &cx.nexus) {
        for lu in t.luns.values() {
            lu.lock().nexus_lost(n);
            shared.pair().clone().nexus_lost(lu.number, n.clone());
        }
    }
    shared.sessions.remove(id);
    shared.sessions.release_tsih(tsih);
    if let Some(idn) = &cx.identity {
        tracing::info!(conn = id, initiator = %idn.initiator_name, peer = %cx.peer, "session ended");
    }
}

/// Reads what the socket holds, without waiting, and hands every complete PDU to `conn`.
/// Returns `false` when the initiator closed the connection (or it failed): the connection is
/// then shutting down.
fn read_pdus(
    sock: &TcpStream,
    buf: &mut BytesMut,
    conn: &mut Connection,
    cx: &mut ConnCtx,
) -> bool {
    if buf.capacity() - buf.len() < READ_MIN_SPACE {
        buf.reserve(READ_CHUNK);
    }
    match sock.try_read_buf(buf) {
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::Interrupted =>
        {
            true
        }
        Ok(0) | Err(_) => {
            conn.shutdown(cx.shared.now());
            cx.closing = true;
            false
        }
        Ok(_) => {
            loop {
                match cx.codec.decode(buf) {
                    Ok(Some(pdu)) => {
                        conn.handle_pdu(pdu, cx.shared.now());
                        drain(conn, cx);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        tracing::debug!(conn = cx.id, "bad PDU: {e}");
                        conn.handle_decode_error(e, cx.shared.now());
                        drain(conn, cx);
                        if fatal {
                            break;
                        }
                    }
                }
                if cx.closing {
                    break;
                }
            }
            true
        }
    }
}

/// Words for a Login Response status (RFC 7143 §11.13.5).
fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, _) => "redirection",
        (2, 0) => "initiator error",
        (2, 1) => "authentication failed",
        (2, 2) => "initiator not allowed",
        (2, 3) => "target not found",
        (2, 4) => "target removed",
        (2, 5) => "unsupported version",
        (2, 6) => "too many connections",
        (2, 7) => "missing parameter",
        (2, 8) => "cannot include in session",
        (2, 9) => "session type not supported",
        (2, 10) => "session does not exist",
        (2, 11) => "invalid request during login",
        (3, 0) => "target error",
        (3, 1) => "service unavailable",
        (3, 2) => "out of resources",
        _ => "login failed",
    }
}

/// Performs every pending action of the connection, in order.
fn drain(conn: &mut Connection, cx: &mut ConnCtx) {
    while let Some(a) = conn.poll_action() {
        match a {
            Action::Send(pdu) => {
                if pdu.opcode() == Some(Opcode::LoginResponse) && pdu.status_class() != 0 {
                    cx.login_status = Some((pdu.status_class(), pdu.status_detail()));
                }
                cx.out.push_pdu(cx.codec.encode_vectored(&pdu));
            }
            Action::LoginComplete(done) => {
                cx.codec.configure(&done.params);
                let idn = done.identity;
                tracing::info!(conn = cx.id, initiator = %idn.initiator_name,
                    target = idn.target_name.as_deref().unwrap_or("(discovery)"),
                    peer = %cx.peer, "login");
                if idn.session_type == SessionType::Normal {
                    if let Some(t) = idn
                        .target_name
                        .as_deref()
                        .and_then(|n| cx.shared.target_by_name(n))
                    {
                        cx.target = Some(t.clone());
                        cx.nexus = Some(Nexus::new(&idn.initiator_name, idn.isid, t.rtpi));
                    }
                }
                // Session reinstatement: an older session of the same nexus is closed.
                cx.shared
                    .sessions
                    .register(cx.id, idn.clone(), cx.msg_tx.clone());
                cx.identity = Some(idn);
            }
            Action::Execute(cmd) => {
                let itt = cmd.itt;
                let from = Issuer {
                    target: cx.target.as_ref(),
                    nexus: cx.nexus.as_ref(),
                    stats: &cx.shared.stats,
                    pair: cx.shared.pair(),
                };
                let (done_tx, in_flight) = (&cx.done_tx, &mut cx.in_flight);
                // A command that leaves this task counts as running off it; its completion
                // comes back through `done_tx`.
                let later = || {
                    *in_flight += 1;
                    let done_tx = done_tx.clone();
                    move |completion| {
                        let _ = done_tx.send(Done { itt, completion });
                    }
                };
                if let Some(c) = exec::execute(&from, cmd, later) {
                    conn.complete_command(itt, c, cx.shared.now());
                }
            }
            Action::Abort { itts } => {
                tracing::debug!(conn = cx.id, ?itts, "tasks aborted");
            }
            Action::TaskManagement(req) => {
                let pair = cx.shared.pair();
                let t = exec::task_management(
                    cx.target.as_ref(),
                    cx.id,
                    &cx.shared.sessions,
                    &**pair,
                    &req,
                );
                if t.peer_reset.is_empty() {
                    conn.complete_task_management(req.itt, t.resp, cx.shared.now());
                } else {
                    // The LU that serves is the primary's: answer once it has reset too.
                    let (pair, tx, itt, resp) = (pair.clone(), cx.msg_tx.clone(), req.itt, t.resp);
                    tokio::spawn(async move {
                        pair.peer_reset(t.peer_reset, t.cold).await;
                        let _ = tx.send(ConnMsg::TmfDone { itt, resp });
                    });
                }
            }
            Action::Close(reason) => {
                match &reason {
                    CloseReason::LoggedOut => tracing::debug!(conn = cx.id, "logged out"),
                    CloseReason::LoginFailed => {
                        let (class, detail) = cx.login_status.unwrap_or((0, 0));
                        tracing::info!(
                            conn = cx.id,
                            peer = %cx.peer,
                            "login refused: status {class}/{detail} ({})",
                            login_status_text(class, detail)
                        )
                    }
                    other => tracing::warn!(conn = cx.id, peer = %cx.peer, "closing: {other:?}"),
                }
                cx.closing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_entropy_differs_between_logins() {
        let a = login_entropy(1).unwrap();
        let b = login_entropy(2).unwrap();
        assert_ne!(a.chap_challenge, b.chap_challenge);
        assert_eq!(b.tsih, 2);
    }
}
