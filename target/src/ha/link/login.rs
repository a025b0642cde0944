//! One connection's login over its socket, the same code on both sides: draw the nonce, run
//! the [`Handshake`] (whose [`Role`] decides who says what), carry its messages in login
//! frames, send a bye when this side refuses, and bound the whole by the login timeout.
//!
//! The decisions are the handshake's; this file only moves bytes and time. The result is an
//! [`Authed`] connection, ready for the link's session (`super::session`).
//!
//! Touches: one socket, the clock (the timeout), [`crate::entropy`] (the nonce).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::channel::Channel;
use super::config::LinkConfig;
use super::frame::{FrameKind, Outgoing, MAX_PAYLOAD};
use super::handshake::{Handshake, HandshakeError, Refusal, Role};
use super::wire::{write_frames, ConnError, FrameReader};
use crate::entropy;

/// Why a connection attempt (or the listening socket it needs) failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoginError {
    #[error("HA link: {0}")]
    Conn(#[from] ConnError),
    #[error("HA link: login timed out")]
    Timeout,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// No random bytes for a nonce or an attempt id (the error names the source).
    #[error("HA link: {0}")]
    Random(io::Error),
    #[error("HA link: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
}

impl LoginError {
    /// Whether one side refused the other's login (wrong secret, mode, ids, version, channel).
    pub(super) fn is_refusal(&self) -> bool {
        matches!(self, LoginError::Handshake(e) if e.is_refusal())
    }

    /// Whether it is only the network (no answer, connection refused or reset, timeout).
    pub(super) fn is_io(&self) -> bool {
        matches!(
            self,
            LoginError::Conn(ConnError::Io(_)) | LoginError::Timeout
        )
    }
}

/// An authenticated connection.
pub(super) struct Authed {
    pub(super) channel: Channel,
    pub(super) attempt: u64,
    pub(super) peer_id: u8,
    pub(super) addr: SocketAddr,
    pub(super) reader: FrameReader,
    pub(super) writer: OwnedWriteHalf,
}

/// Connects (`connect` yields the socket: a dial, or an accepted connection) and logs in as
/// `role`, within the login timeout. `link_up` tells whether this side's link is up (an
/// acceptor then refuses the connection).
pub(super) async fn establish(
    cfg: &LinkConfig,
    addr: SocketAddr,
    connect: impl Future<Output = io::Result<TcpStream>>,
    role: Role,
    link_up: impl Fn() -> bool,
) -> Result<Authed, LoginError> {
    let work = async {
        let stream = connect.await.map_err(ConnError::Io)?;
        login(cfg, stream, addr, role, link_up).await
    };
    timeout(cfg.login_timeout(), work)
        .await
        .unwrap_or(Err(LoginError::Timeout))
}

/// Runs the login on a fresh connection.
async fn login(
    cfg: &LinkConfig,
    stream: TcpStream,
    addr: SocketAddr,
    role: Role,
    link_up: impl Fn() -> bool,
) -> Result<Authed, LoginError> {
    let _ = stream.set_nodelay(true);
    let (rd, mut writer) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let nonce: [u8; 32] = entropy::bytes().map_err(LoginError::Random)?;
    let (mut handshake, first) = Handshake::new(cfg, role, nonce)?;
    if let Some(msg) = first {
        send_login(&mut writer, msg).await?;
    }
    let peer = loop {
        let frame = reader.next().await?;
        match handshake.on_frame(frame.kind, &frame.payload, link_up()) {
            Ok(step) => {
                if let Some(msg) = step.send {
                    send_login(&mut writer, msg).await?;
                }
                if let Some(peer) = step.done {
                    break peer;
                }
            }
            Err(HandshakeError::Refused(refusal)) => return Err(refuse(&mut writer, refusal).await),
            Err(e) => return Err(e.into()),
        }
    };
    reader.max = MAX_PAYLOAD;
    Ok(Authed {
        channel: peer.channel,
        attempt: peer.attempt,
        peer_id: peer.peer_id,
        addr,
        reader,
        writer,
    })
}

async fn send_login(w: &mut OwnedWriteHalf, msg: Vec<u8>) -> Result<(), LoginError> {
    write_frames(w, &[Outgoing::new(FrameKind::Login, Bytes::from(msg))])
        .await
        .map_err(|e| LoginError::Conn(e.into()))
}

/// Sends a bye with the refusal's reason (best effort), closes and returns the refusal.
async fn refuse(w: &mut OwnedWriteHalf, refusal: Refusal) -> LoginError {
    let bye = Outgoing::new(FrameKind::Bye, Bytes::from(refusal.for_peer()));
    let _ = write_frames(w, &[bye]).await;
    let _ = w.shutdown().await;
    HandshakeError::Refused(refusal).into()
}
