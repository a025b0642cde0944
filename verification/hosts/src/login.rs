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
/// PDUs are read exactly (never a byte past the PDU), so the socket can be handed on. Tests that
/// malform PDUs build them with duet-core, take their [`blocking::wire_bytes`] and alter those;
/// [`blocking::recv_pdu_or_close`] tells a peer that hung up from one that cut a PDU short.
pub mod blocking {
    use super::*;
    use std::io::{ErrorKind, Read, Write};

    /// What reading one PDU off a socket gave.
    #[derive(Debug)]
    pub enum Received {
        /// A whole PDU.
        Pdu(Pdu),
        /// The peer closed (or reset) the connection after `after` bytes of a PDU (0: between
        /// PDUs, a clean close).
        Closed { after: usize },
    }

    /// The bytes `pdu` travels as (no digests; TotalAHSLength and DataSegmentLength taken from
    /// its AHS and data by core's encoder).
    pub fn wire_bytes(pdu: &Pdu) -> Vec<u8> {
        let mut out = BytesMut::new();
        Codec::new().encode(pdu, &mut out);
        out.to_vec()
    }

    /// Encodes and sends one PDU.
    pub fn send_pdu(stream: &mut std::net::TcpStream, pdu: &Pdu) -> Result<(), ClientError> {
        stream
            .write_all(&wire_bytes(pdu))
            .map_err(|e| ClientError::Io(format!("send: {e}")))
    }

    /// Fills `buf` from the stream; `Ok(n)` with `n < buf.len()` when the peer closed or reset
    /// the connection after `n` bytes.
    fn fill(stream: &mut std::net::TcpStream, buf: &mut [u8]) -> Result<usize, ClientError> {
        let mut got = 0;
        while got < buf.len() {
            match stream.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => return Err(ClientError::Io(format!("receive: {e}"))),
            }
        }
        Ok(got)
    }

    /// Reads exactly one PDU (no digests, any segment length the header claims), or reports
    /// that the peer closed the connection; a time-out or another socket error is an `Err`.
    pub fn recv_pdu_or_close(stream: &mut std::net::TcpStream) -> Result<Received, ClientError> {
        let mut bhs = [0u8; duet_core::iscsi::BHS_LEN];
        let got = fill(stream, &mut bhs)?;
        if got < bhs.len() {
            return Ok(Received::Closed { after: got });
        }
        let mut codec = Codec::new();
        codec.max_recv_data_segment_length = duet_core::iscsi::params::MAX_SEGMENT;
        let head = Pdu::from_parts(bhs, Default::default(), Default::default());
        let ahs = head.total_ahs_length_field() as usize * 4;
        let data = head.data_segment_length_field() as usize;
        let mut rest = vec![0u8; ahs + data.div_ceil(4) * 4];
        let got = fill(stream, &mut rest)?;
        if got < rest.len() {
            return Ok(Received::Closed {
                after: bhs.len() + got,
            });
        }
        let mut buf = BytesMut::from(&bhs[..]);
        buf.extend_from_slice(&rest);
        codec
            .decode(&mut buf)
            .map_err(|e| ClientError::Framing(e.to_string()))?
            .map(Received::Pdu)
            .ok_or_else(|| ClientError::Framing("a PDU cut short".into()))
    }

    /// Reads exactly one PDU; a closed connection is an error.
    pub fn recv_pdu(stream: &mut std::net::TcpStream) -> Result<Pdu, ClientError> {
        match recv_pdu_or_close(stream)? {
            Received::Pdu(p) => Ok(p),
            Received::Closed { after } => Err(ClientError::Io(format!(
                "the peer closed the connection (after {after} bytes of a PDU)"
            ))),
        }
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

#[cfg(test)]
mod tests {
    use super::blocking::{recv_pdu_or_close, wire_bytes, Received};
    use duet_core::iscsi::{Pdu, RESERVED_TAG};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// A connected pair of loopback sockets.
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn reads_whole_pdus_and_tells_a_cut_from_a_clean_close() {
        let mut p = Pdu::nop_out(5, RESERVED_TAG, 9, vec![1, 2, 3, 4, 5].into());
        p.set_immediate(true);
        let bytes = wire_bytes(&p);
        assert_eq!(bytes.len(), 48 + 8, "five data bytes padded to eight");

        let (mut tx, mut rx) = pair();
        tx.write_all(&bytes).expect("send");
        tx.write_all(&bytes[..50]).expect("send half");
        drop(tx);
        match recv_pdu_or_close(&mut rx).expect("a PDU") {
            Received::Pdu(got) => assert_eq!(got, p),
            other => panic!("expected the PDU, got {other:?}"),
        }
        match recv_pdu_or_close(&mut rx).expect("a close") {
            Received::Closed { after } => assert_eq!(after, 50),
            other => panic!("expected a close, got {other:?}"),
        }

        let (tx, mut rx) = pair();
        drop(tx);
        assert!(matches!(
            recv_pdu_or_close(&mut rx).expect("a close"),
            Received::Closed { after: 0 }
        ));
    }
}
