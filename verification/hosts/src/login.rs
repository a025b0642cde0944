//! Connecting and logging in, and whole PDUs over a socket: the I/O around duet-core's
//! initiator login machine ([`InitiatorLogin`]), which makes every decision of the login. The
//! async functions serve the tokio sessions ([`crate::session`], [`crate::load`]); [`blocking`]
//! serves raw-socket tests on `std::net`. Touches the socket it is given and core's codec.

use bytes::BytesMut;
use duet_core::iscsi::initiator::{InitiatorLogin, LoginError, LoginPlan, LoginResult, Step};
use duet_core::iscsi::{Codec, Pdu};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What can go wrong while connecting, logging in or moving PDUs.
#[derive(Debug)]
pub enum ClientError {
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// Something took longer than its bound.
    Timeout(&'static str),
    /// The connection broke or was closed (the text says which).
    Io(String),
    /// The target sent bytes that are not a PDU we can decode.
    Framing(String),
    /// The login failed (refused, authentication, protocol).
    Login(LoginError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Timeout(what) => write!(f, "timed out: {what}"),
            ClientError::Io(m) => write!(f, "{m}"),
            ClientError::Framing(m) => write!(f, "bad PDU from the target: {m}"),
            ClientError::Login(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The codec of a session after `login`: no digests, and data segments up to the length we
/// declared.
pub fn session_codec(login: &LoginResult) -> Codec {
    let mut codec = Codec::new();
    codec.max_recv_data_segment_length = login.params.max_xmit_data_segment_length;
    codec
}

/// Connects to `addr` within `timeout`, with Nagle off.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::Timeout("connect"))?
        .map_err(ClientError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Encodes and sends one PDU.
pub async fn send_pdu(stream: &mut TcpStream, codec: &Codec, pdu: &Pdu) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    codec.encode(pdu, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| ClientError::Io(format!("send: {e}")))
}

/// The next PDU, reading into `rbuf` as needed (bytes after it stay in `rbuf`).
pub async fn recv_pdu(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    codec: &Codec,
) -> Result<Pdu, ClientError> {
    loop {
        match codec.decode(rbuf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(ClientError::Framing(e.to_string())),
        }
        match stream.read_buf(rbuf).await {
            Ok(0) => return Err(ClientError::Io("the target closed the connection".into())),
            Ok(_) => {}
            Err(e) => return Err(ClientError::Io(format!("receive: {e}"))),
        }
    }
}

/// Logs in on a connected stream following `plan`; on success the connection is in full
/// feature phase and `rbuf` holds whatever the target sent after the last Login Response.
pub async fn login(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    plan: LoginPlan,
) -> Result<LoginResult, ClientError> {
    let codec = Codec::new();
    let mut machine = InitiatorLogin::new(plan);
    let mut req = machine.first_request();
    loop {
        send_pdu(stream, &codec, &req).await?;
        let rsp = recv_pdu(stream, rbuf, &codec).await?;
        match machine.handle_response(&rsp).map_err(ClientError::Login)? {
            Step::Send(next) => req = next,
            Step::Done(done) => return Ok(done),
        }
    }
}

/// The same on `std::net` sockets, for tests that then speak raw bytes on the connection:
/// PDUs are read exactly (never a byte past the PDU), so the socket can be handed on.
pub mod blocking {
    use super::*;
    use std::io::{Read, Write};

    /// Encodes and sends one PDU.
    pub fn send_pdu(stream: &mut std::net::TcpStream, pdu: &Pdu) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        Codec::new().encode(pdu, &mut out);
        stream
            .write_all(&out)
            .map_err(|e| ClientError::Io(format!("send: {e}")))
    }

    /// Reads exactly one PDU (no digests, any segment length the header claims).
    pub fn recv_pdu(stream: &mut std::net::TcpStream) -> Result<Pdu, ClientError> {
        let mut bhs = [0u8; duet_core::iscsi::BHS_LEN];
        stream
            .read_exact(&mut bhs)
            .map_err(|e| ClientError::Io(format!("receive: {e}")))?;
        let ahs = bhs[4] as usize * 4;
        let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        let mut rest = vec![0u8; ahs + dlen.div_ceil(4) * 4];
        stream
            .read_exact(&mut rest)
            .map_err(|e| ClientError::Io(format!("receive: {e}")))?;
        let mut buf = BytesMut::from(&bhs[..]);
        buf.extend_from_slice(&rest);
        let mut codec = Codec::new();
        codec.max_recv_data_segment_length = duet_core::iscsi::params::MAX_SEGMENT;
        codec
            .decode(&mut buf)
            .map_err(|e| ClientError::Framing(e.to_string()))?
            .ok_or_else(|| ClientError::Framing("a PDU cut short".into()))
    }

    /// Logs in on a connected stream following `plan`.
    pub fn login(
        stream: &mut std::net::TcpStream,
        plan: LoginPlan,
    ) -> Result<LoginResult, ClientError> {
        let mut machine = InitiatorLogin::new(plan);
        let mut req = machine.first_request();
        loop {
            send_pdu(stream, &req)?;
            let rsp = recv_pdu(stream)?;
            match machine.handle_response(&rsp).map_err(ClientError::Login)? {
                Step::Send(next) => req = next,
                Step::Done(done) => return Ok(done),
            }
        }
    }
}
