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
//! Every frame is a 12-byte header followed by its payload (all integers big-endian):
//!
//! ```text
//! magic u32 = "DUET" | version u16 | kind u8 | flags u8 (0) | length u32 | payload[length]
//! ```
//!
//! Kinds: 1 login (a postcard-encoded login message), 2 ping (empty), 3 message (the payload
//! handed to [`LinkHandle::send`]), 4 bye (a UTF-8 reason, then the connection closes). Frames
//! with another magic, version, kind or flags, or longer than [`MAX_PAYLOAD`] (1 KiB before the
//! login completes), are refused: the connection is dropped and the reason logged.
//!
//! # Login
//!
//! Every connection starts with a mutual challenge-response. The dialer sends a hello (link
//! version, `ha_id`, `ha_mode`, channel, attempt id and a fresh 32-byte nonce from
//! `/dev/urandom`); the acceptor checks it and answers with its own hello; the dialer proves that it
//! knows the shared secret with HMAC-SHA256 over both nonces, both ids, the mode, the channel and
//! the attempt id; the acceptor checks that proof (in constant time) and answers with its own,
//! computed over the same fields in the other order. A recorded proof is useless later (the
//! nonces are fresh) and a proof cannot be reflected back (the order of the fields differs). The
//! acceptor never proves anything to a dialer that has not proven itself first.
//!
//! # Liveness
//!
//! Each side sends a ping on the control channel when it has sent nothing there for
//! [`LinkConfig::heartbeat`]; when nothing arrives on the control channel for
//! [`LinkConfig::dead_after`], or either socket closes, the link goes down, both sockets are
//! closed and the link is set up again, with a fresh login, every [`LinkConfig::reconnect`].

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, Read};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use crate::idle_poll::IdlePoll;

/// Version of the HA link's framing, login and message layout, checked on every frame and at
/// login (2: a message's bulk data follows its encoding, see [`crate::ha::proto`]).
pub const LINK_VERSION: u16 = 2;

/// The first four bytes of every frame: `"DUET"`.
pub const FRAME_MAGIC: u32 = u32::from_be_bytes(*b"DUET");

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 12;

/// Largest payload a frame may carry (16 MiB); longer frames are refused.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Largest payload accepted before the login completes: nobody unauthenticated makes us allocate
/// more than this.
const MAX_LOGIN_PAYLOAD: usize = 1024;

/// Longest bye reason that is kept (bytes).
const MAX_BYE_REASON: usize = 256;

/// At most this many unauthenticated connections are logging in at once on the listen side.
const MAX_PENDING_LOGINS: usize = 16;

/// Link states, as CTL reports them (`kern.cam.ctl.ha_link`).
const STATE_OFFLINE: u8 = 0;
const STATE_CONNECTING: u8 = 1;
const STATE_ONLINE: u8 = 2;

/// Where the peer is: CTL's `ha_peer`, `"listen ADDRESS:PORT"` or `"connect ADDRESS:PORT"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    /// Accept the peer's connections on this address.
    Listen(SocketAddr),
    /// Dial the peer at this address.
    Connect(SocketAddr),
}

/// A `ha_peer` value that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid HA peer {input:?}: {why} (expected \"listen ADDRESS:PORT\" or \"connect ADDRESS:PORT\")")]
pub struct PeerAddrError {
    input: String,
    why: String,
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| PeerAddrError {
            input: s.to_string(),
            why,
        };
        let mut words = s.split_whitespace();
        let (Some(verb), Some(addr), None) = (words.next(), words.next(), words.next()) else {
            return Err(err("expected two words".to_string()));
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| err(format!("{addr:?} is not an IP address with a port")))?;
        if verb.eq_ignore_ascii_case("listen") {
            Ok(PeerAddr::Listen(addr))
        } else if verb.eq_ignore_ascii_case("connect") {
            Ok(PeerAddr::Connect(addr))
        } else {
            Err(err(format!("unknown mode {verb:?}")))
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Listen(a) => write!(f, "listen {a}"),
            PeerAddr::Connect(a) => write!(f, "connect {a}"),
        }
    }
}

/// Configuration of one side of the HA link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This controller's `ha_id`, 1 or 2; the peer must have the other one.
    pub ha_id: u8,
    /// `ha_mode` 0, 1 or 2; both sides must agree.
    pub mode: u8,
    /// Where the peer is.
    pub peer: PeerAddr,
    /// The pre-shared secret that authenticates the login (HMAC-SHA256 key).
    pub secret: Vec<u8>,
    /// A ping is sent on the control channel when nothing else was sent there for this long.
    pub heartbeat: Duration,
    /// The link goes down when no frame arrives on the control channel for this long. It also
    /// bounds one connection attempt with its login (at least 1 s).
    pub dead_after: Duration,
    /// Delay between connection attempts.
    pub reconnect: Duration,
    /// How long the data channel's thread keeps polling its socket after a frame before it
    /// sleeps (the controller's `poll_us`); zero = sleep at once.
    pub data_poll: Duration,
}

impl LinkConfig {
    /// A configuration with the default timings: heartbeat 200 ms, dead after 1 s, reconnect
    /// every 200 ms.
    pub fn new(ha_id: u8, mode: u8, peer: PeerAddr, secret: Vec<u8>) -> Self {
        LinkConfig {
            ha_id,
            mode,
            peer,
            secret,
            heartbeat: Duration::from_millis(200),
            dead_after: Duration::from_secs(1),
            reconnect: Duration::from_millis(200),
            data_poll: Duration::ZERO,
        }
    }

    /// How long a connection attempt and its login may take.
    fn login_timeout(&self) -> Duration {
        self.dead_after.max(Duration::from_secs(1))
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=2).contains(&self.ha_id) {
            return Err(format!("ha_id {} is not 1 or 2", self.ha_id));
        }
        if self.mode > 2 {
            return Err(format!("ha_mode {} is not 0, 1 or 2", self.mode));
        }
        if self.heartbeat.is_zero() || self.dead_after.is_zero() {
            return Err("heartbeat and dead_after must be longer than 0".to_string());
        }
        Ok(())
    }
}

/// One of the two connections of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Channel {
    /// HA protocol messages and pings: small, latency-sensitive.
    Control,
    /// Bulk data (forwarded commands and their data in `ha_mode` 2).
    Data,
}

impl Channel {
    fn index(self) -> usize {
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

/// [`LinkHandle::send`] failed: the link is not up (or the payload is longer than
/// [`MAX_PAYLOAD`], which the peer would refuse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("HA link is down")]
pub struct LinkDown;

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

/// Counters of the link ([`LinkHandle::stats`]).
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
}

#[derive(Default)]
struct ChannelCounters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
}

impl ChannelCounters {
    fn sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn received(&self, bytes: usize) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ChannelStats {
        ChannelStats {
            frames_sent: self.frames_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            frames_received: self.frames_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A postcard-encoded login message.
    Login = 1,
    /// Keepalive, empty.
    Ping = 2,
    /// A message for the layer above.
    Message = 3,
    /// The sender closes the connection; the payload is the reason (UTF-8).
    Bye = 4,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(FrameKind::Login),
            2 => Some(FrameKind::Ping),
            3 => Some(FrameKind::Message),
            4 => Some(FrameKind::Bye),
            _ => None,
        }
    }
}

/// A frame header that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not [`FRAME_MAGIC`].
    #[error("not a Duet HA link frame (magic {0:#010x})")]
    BadMagic(u32),
    /// The frame's version is not [`LINK_VERSION`].
    #[error("unsupported HA link frame version {0} (ours is {LINK_VERSION})")]
    UnsupportedVersion(u16),
    /// The kind byte is unknown.
    #[error("unknown HA link frame kind {0}")]
    UnknownKind(u8),
    /// Reserved flag bits are set.
    #[error("unknown HA link frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// The claimed payload length exceeds the limit.
    #[error("HA link frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The claimed payload length.
        len: u32,
        /// The limit in force.
        max: usize,
    },
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Encodes the header (version [`LINK_VERSION`], no flags).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&LINK_VERSION.to_be_bytes());
        h[6] = self.kind as u8;
        h[7] = 0;
        h[8..12].copy_from_slice(&self.len.to_be_bytes());
        h
    }

    /// Decodes and checks a header; `max` is the largest payload accepted.
    pub fn decode(h: &[u8; HEADER_LEN], max: usize) -> Result<Self, FrameError> {
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = u16::from_be_bytes([h[4], h[5]]);
        if version != LINK_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let kind = FrameKind::from_u8(h[6]).ok_or(FrameError::UnknownKind(h[6]))?;
        if h[7] != 0 {
            return Err(FrameError::UnknownFlags(h[7]));
        }
        let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        if len as u64 > max as u64 {
            return Err(FrameError::TooLarge { len, max });
        }
        Ok(FrameHeader { kind, len })
    }
}

/// One received frame; the payload shares the read buffer's memory.
struct Frame {
    kind: FrameKind,
    payload: Bytes,
}

impl Frame {
    fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Why a connection broke.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed by peer in the middle of a frame")]
    ClosedMidFrame,
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Reads frames from one socket into a growing buffer, without copying payloads.
/// What a frame reader asks the socket for when it waits for a header.
const READ_CHUNK: usize = 64 * 1024;

struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    fn new(rd: OwnedReadHalf) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(8 * 1024),
            max: MAX_LOGIN_PAYLOAD,
        }
    }

    /// The next frame. Cancel-safe: bytes read so far stay in the buffer.
    async fn next(&mut self) -> Result<Frame, ConnError> {
        loop {
            if self.buf.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&self.buf[..HEADER_LEN]);
                let header = FrameHeader::decode(&h, self.max)?;
                let total = HEADER_LEN + header.len as usize;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    frame.advance(HEADER_LEN);
                    return Ok(Frame {
                        kind: header.kind,
                        payload: frame.freeze(),
                    });
                }
                // `total` is bounded by `max` (checked above) before anything is reserved.
                self.buf.reserve(total - self.buf.len());
            } else {
                // Room for many small frames per read.
                self.buf.reserve(READ_CHUNK);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    ConnError::Closed
                } else {
                    ConnError::ClosedMidFrame
                });
            }
        }
    }
}

/// One frame queued for a writer task: header and payload (in two parts, the second often
/// empty) are written with one vectored write, the payload is not copied.
struct Outgoing {
    header: [u8; HEADER_LEN],
    payload: Bytes,
    more: Bytes,
    kind: FrameKind,
}

impl Outgoing {
    fn new(kind: FrameKind, payload: Bytes) -> Self {
        Self::in_parts(kind, payload, Bytes::new())
    }

    fn in_parts(kind: FrameKind, payload: Bytes, more: Bytes) -> Self {
        let header = FrameHeader {
            kind,
            len: (payload.len() + more.len()) as u32,
        }
        .encode();
        Outgoing {
            header,
            payload,
            more,
            kind,
        }
    }

    fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len() + self.more.len()
    }
}

fn bye_text(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(MAX_BYE_REASON)];
    String::from_utf8_lossy(cut)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    version: u16,
    ha_id: u8,
    mode: u8,
    channel: Channel,
    /// Identifies one connection attempt of the dialer, so that the acceptor pairs the right
    /// control and data connections.
    attempt: u64,
    nonce: [u8; 32],
}

#[derive(Debug, Serialize, Deserialize)]
enum LoginMsg {
    Hello(Hello),
    Proof { mac: [u8; 32] },
}

/// Why this side refused a peer's login.
#[derive(Debug)]
enum Refusal {
    Version { peer: u16, ours: u16 },
    Mode { peer: u8, ours: u8 },
    SameId(u8),
    BadId(u8),
    Auth,
    ChannelTaken(Channel),
    WrongAnswer,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Version { peer, ours } => {
                write!(f, "HA link: peer has link version {peer}, ours is {ours}")
            }
            Refusal::Mode { peer, ours } => {
                write!(f, "HA link: peer has ha_mode {peer}, ours is {ours}")
            }
            Refusal::SameId(id) => write!(f, "HA link: peer has the same ha_id {id}"),
            Refusal::BadId(id) => write!(f, "HA link: peer has invalid ha_id {id}"),
            Refusal::Auth => write!(f, "HA link: peer failed authentication"),
            Refusal::ChannelTaken(ch) => {
                write!(f, "HA link: peer's {ch} channel is already connected")
            }
            Refusal::WrongAnswer => write!(f, "HA link: peer answered for another connection"),
        }
    }
}

impl Refusal {
    /// The reason as the refused peer should read it (sent in the bye frame).
    fn for_peer(&self) -> String {
        match self {
            Refusal::Version { peer, ours } => {
                format!("peer has link version {ours}, ours is {peer}")
            }
            Refusal::Mode { peer, ours } => format!("peer has ha_mode {ours}, ours is {peer}"),
            Refusal::SameId(id) => format!("peer has the same ha_id {id}"),
            Refusal::BadId(id) => format!("our ha_id {id} is invalid"),
            Refusal::Auth => "authentication failed (different secret?)".to_string(),
            Refusal::ChannelTaken(ch) => format!("our {ch} channel is already connected"),
            Refusal::WrongAnswer => "answer for another connection".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("HA link: {0}")]
    Conn(#[from] ConnError),
    #[error("HA link: login timed out")]
    Timeout,
    #[error("{0}")]
    Refused(Refusal),
    #[error("HA link: login refused by peer: {0}")]
    PeerRefused(String),
    #[error("HA link: login protocol error: {0}")]
    Protocol(String),
    #[error("HA link: cannot read /dev/urandom: {0}")]
    Random(io::Error),
}

impl LoginError {
    fn is_refusal(&self) -> bool {
        matches!(self, LoginError::Refused(_) | LoginError::PeerRefused(_))
    }
}

/// Who starts the login on a connection.
#[derive(Clone, Copy)]
enum Side {
    Dialer { channel: Channel, attempt: u64 },
    Acceptor,
}

/// An authenticated connection.
struct Authed {
    channel: Channel,
    attempt: u64,
    peer_id: u8,
    addr: SocketAddr,
    reader: FrameReader,
    writer: OwnedWriteHalf,
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// The login proof of `prover` for one connection.
#[allow(clippy::too_many_arguments)]
fn proof(
    secret: &[u8],
    prover_nonce: &[u8; 32],
    verifier_nonce: &[u8; 32],
    prover_id: u8,
    verifier_id: u8,
    mode: u8,
    channel: Channel,
    attempt: u64,
) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"duet-ha-link-login");
    mac.update(&LINK_VERSION.to_be_bytes());
    mac.update(prover_nonce);
    mac.update(verifier_nonce);
    mac.update(&[prover_id, verifier_id, mode, channel.index() as u8]);
    mac.update(&attempt.to_be_bytes());
    mac
}

async fn send_login(w: &mut OwnedWriteHalf, msg: &LoginMsg) -> Result<(), LoginError> {
    let payload = postcard::to_stdvec(msg)
        .map_err(|e| LoginError::Protocol(format!("cannot encode login message: {e}")))?;
    write_frames(w, &[Outgoing::new(FrameKind::Login, Bytes::from(payload))])
        .await
        .map_err(|e| LoginError::Conn(e.into()))?;
    Ok(())
}

async fn recv_login(r: &mut FrameReader) -> Result<LoginMsg, LoginError> {
    let frame = r.next().await?;
    match frame.kind {
        FrameKind::Login => postcard::from_bytes(&frame.payload)
            .map_err(|e| LoginError::Protocol(format!("malformed login message: {e}"))),
        FrameKind::Bye => Err(LoginError::PeerRefused(bye_text(&frame.payload))),
        kind => Err(LoginError::Protocol(format!(
            "unexpected {kind:?} frame during login"
        ))),
    }
}

/// Sends a bye with `reason` (best effort) and returns the refusal.
async fn refuse(w: &mut OwnedWriteHalf, refusal: Refusal) -> LoginError {
    let bye = Outgoing::new(FrameKind::Bye, Bytes::from(refusal.for_peer()));
    let _ = write_frames(w, &[bye]).await;
    let _ = w.shutdown().await;
    LoginError::Refused(refusal)
}

fn check_hello(cfg: &LinkConfig, hello: &Hello) -> Result<(), Refusal> {
    if hello.version != LINK_VERSION {
        return Err(Refusal::Version {
            peer: hello.version,
            ours: LINK_VERSION,
        });
    }
    if hello.mode != cfg.mode {
        return Err(Refusal::Mode {
            peer: hello.mode,
            ours: cfg.mode,
        });
    }
    if !(1..=2).contains(&hello.ha_id) {
        return Err(Refusal::BadId(hello.ha_id));
    }
    if hello.ha_id == cfg.ha_id {
        return Err(Refusal::SameId(hello.ha_id));
    }
    Ok(())
}

/// Runs the login on a fresh connection. `taken` tells the acceptor whether a channel is
/// already connected.
async fn login(
    cfg: &LinkConfig,
    stream: TcpStream,
    addr: SocketAddr,
    side: Side,
    taken: impl Fn(Channel) -> bool,
) -> Result<Authed, LoginError> {
    let _ = stream.set_nodelay(true);
    let (rd, mut writer) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let nonce: [u8; 32] = random_bytes().map_err(LoginError::Random)?;
    let (peer_id, channel, attempt) = match side {
        Side::Dialer { channel, attempt } => {
            let hello = Hello {
                version: LINK_VERSION,
                ha_id: cfg.ha_id,
                mode: cfg.mode,
                channel,
                attempt,
                nonce,
            };
            send_login(&mut writer, &LoginMsg::Hello(hello)).await?;
            let LoginMsg::Hello(theirs) = recv_login(&mut reader).await? else {
                return Err(LoginError::Protocol("expected a hello".to_string()));
            };
            if let Err(r) = check_hello(cfg, &theirs) {
                return Err(refuse(&mut writer, r).await);
            }
            if theirs.channel != channel || theirs.attempt != attempt {
                return Err(refuse(&mut writer, Refusal::WrongAnswer).await);
            }
            let mine = proof(
                &cfg.secret,
                &nonce,
                &theirs.nonce,
                cfg.ha_id,
                theirs.ha_id,
                cfg.mode,
                channel,
                attempt,
            )
            .finalize()
            .into_bytes()
            .into();
            send_login(&mut writer, &LoginMsg::Proof { mac: mine }).await?;
            let LoginMsg::Proof { mac } = recv_login(&mut reader).await? else {
                return Err(LoginError::Protocol("expected a proof".to_string()));
            };
            let expected = proof(
                &cfg.secret,
                &theirs.nonce,
                &nonce,
                theirs.ha_id,
                cfg.ha_id,
                cfg.mode,
                channel,
                attempt,
            );
            if expected.verify_slice(&mac).is_err() {
                return Err(refuse(&mut writer, Refusal::Auth).await);
            }
            (theirs.ha_id, channel, attempt)
        }
        Side::Acceptor => {
            let LoginMsg::Hello(theirs) = recv_login(&mut reader).await? else {
                return Err(LoginError::Protocol("expected a hello".to_string()));
            };
            if let Err(r) = check_hello(cfg, &theirs) {
                return Err(refuse(&mut writer, r).await);
            }
            if taken(theirs.channel) {
                return Err(refuse(&mut writer, Refusal::ChannelTaken(theirs.channel)).await);
            }
            let (channel, attempt) = (theirs.channel, theirs.attempt);
            let hello = Hello {
                version: LINK_VERSION,
                ha_id: cfg.ha_id,
                mode: cfg.mode,
                channel,
                attempt,
                nonce,
            };
            send_login(&mut writer, &LoginMsg::Hello(hello)).await?;
            let LoginMsg::Proof { mac } = recv_login(&mut reader).await? else {
                return Err(LoginError::Protocol("expected a proof".to_string()));
            };
            let expected = proof(
                &cfg.secret,
                &theirs.nonce,
                &nonce,
                theirs.ha_id,
                cfg.ha_id,
                cfg.mode,
                channel,
                attempt,
            );
            if expected.verify_slice(&mac).is_err() {
                return Err(refuse(&mut writer, Refusal::Auth).await);
            }
            let mine = proof(
                &cfg.secret,
                &nonce,
                &theirs.nonce,
                cfg.ha_id,
                theirs.ha_id,
                cfg.mode,
                channel,
                attempt,
            )
            .finalize()
            .into_bytes()
            .into();
            send_login(&mut writer, &LoginMsg::Proof { mac: mine }).await?;
            (theirs.ha_id, channel, attempt)
        }
    };
    reader.max = MAX_PAYLOAD;
    Ok(Authed {
        channel,
        attempt,
        peer_id,
        addr,
        reader,
        writer,
    })
}

// ---------------------------------------------------------------------------------------------
// Shared state and the handle
// ---------------------------------------------------------------------------------------------

/// The queues of the current link, while it is up.
struct SessionTx {
    control: mpsc::UnboundedSender<Outgoing>,
    data: mpsc::UnboundedSender<Outgoing>,
}

/// Who may deliver events: only readers of the live session (`live`, 0 = none).
struct Gate {
    live: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
}

struct Shared {
    state: AtomicU8,
    session: Mutex<Option<SessionTx>>,
    gate: Mutex<Gate>,
    channels: [ChannelCounters; 2],
    ups: AtomicU64,
    refused_logins: AtomicU64,
    /// The last warning logged about failed attempts: repeats are logged at debug level only.
    last_warning: Mutex<Option<String>>,
    /// Takes the data channel's messages on the reader task (see [`LinkHandle::handle_data`]).
    data_handler: OnceLock<DataHandler>,
    /// The single-threaded runtime that runs the data channel (`None`: the data channel runs on
    /// the runtime that started the link, without polling).
    data_rt: Option<tokio::runtime::Handle>,
}

/// A handler of the data channel's messages: called on the link's reader task, in order; it
/// must not block.
pub type DataHandler = Box<dyn Fn(Bytes) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn set_state(&self, new: u8) {
        let old = self.state.swap(new, Ordering::SeqCst);
        if old != new {
            info!("HA link status changed from {old} to {new}");
        }
    }

    fn deliver(&self, generation: u64, channel: Channel, payload: Bytes) {
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

    /// Logs a failed attempt: at warn level unless it repeats the previous one.
    fn note_failure(&self, peer: SocketAddr, err: &LoginError, quiet_io: bool) {
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
        let io_only = matches!(
            err,
            LoginError::Conn(ConnError::Io(_)) | LoginError::Timeout
        );
        if repeated || (quiet_io && io_only) {
            debug!(%peer, "{text}");
        } else {
            warn!(%peer, "{text}");
        }
    }
}

/// A cloneable handle on the link: send messages, read its state and counters.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
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
        }
    }
}

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
    let shared = Arc::new(Shared {
        state: AtomicU8::new(STATE_OFFLINE),
        session: Mutex::new(None),
        gate: Mutex::new(Gate { live: 0, events }),
        channels: Default::default(),
        ups: AtomicU64::new(0),
        refused_logins: AtomicU64::new(0),
        last_warning: Mutex::new(None),
        data_handler: OnceLock::new(),
        data_rt,
    });
    let handle = LinkHandle {
        shared: shared.clone(),
    };
    if let Err(e) = cfg.check() {
        tracing::error!("HA link not started: {e}");
        // Close the event stream: nothing will ever be reported.
        lock(&shared.gate).events = mpsc::unbounded_channel().0;
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
        lock(&shared.gate).events = mpsc::unbounded_channel().0;
    });
    (handle, rx)
}

// ---------------------------------------------------------------------------------------------
// Supervisors
// ---------------------------------------------------------------------------------------------

/// Waits until shutdown is asked for (or nobody can ask any more). Cancel-safe.
async fn shutdown_asked(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn is_shutdown(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Sleeps `d`; false if shutdown was asked for meanwhile.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = sleep(d) => true,
        _ = shutdown_asked(shutdown) => false,
    }
}

async fn dial(
    cfg: &LinkConfig,
    addr: SocketAddr,
    channel: Channel,
    attempt: u64,
) -> Result<Authed, LoginError> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| LoginError::Conn(ConnError::Io(e)))?;
        login(cfg, stream, addr, Side::Dialer { channel, attempt }, |_| {
            false
        })
        .await
    };
    timeout(cfg.login_timeout(), work)
        .await
        .unwrap_or(Err(LoginError::Timeout))
}

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
        let attempt = match random_bytes::<8>() {
            Ok(b) => u64::from_be_bytes(b),
            Err(e) => {
                shared.note_failure(addr, &LoginError::Random(e), false);
                if !pause(cfg.reconnect, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let both = async {
            tokio::join!(
                dial(&cfg, addr, Channel::Control, attempt),
                dial(&cfg, addr, Channel::Data, attempt)
            )
        };
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

async fn run_listen(
    cfg: Arc<LinkConfig>,
    addr: SocketAddr,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                let err = LoginError::Protocol(format!("cannot listen on {addr}: {e}"));
                shared.note_failure(addr, &err, false);
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
                        let taken = |_: Channel| shared.state.load(Ordering::SeqCst) == STATE_ONLINE;
                        let work = login(&cfg, stream, peer, Side::Acceptor, taken);
                        match timeout(cfg.login_timeout(), work).await.unwrap_or(Err(LoginError::Timeout)) {
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

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How one task of a session ended.
struct TaskEnd {
    reason: String,
    /// The control channel's reader ended (with `bye` when the peer said goodbye).
    control_reader: bool,
    bye: bool,
}

impl TaskEnd {
    fn other(reason: String) -> Self {
        TaskEnd {
            reason,
            control_reader: false,
            bye: false,
        }
    }
}

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
            Err(e) => return TaskEnd::other(format!("{channel} channel: write failed: {e}")),
        }
        batch.clear();
        if bye {
            let _ = w.shutdown().await;
            return TaskEnd::other(format!("{channel} channel: closed by us"));
        }
    }
}

/// Frames one writer task sends with one vectored write.
const MAX_BATCH: usize = 32;

/// Writes `frames` (headers and payloads, not copied) with as few system calls as the socket
/// allows.
async fn write_frames(w: &mut OwnedWriteHalf, frames: &[Outgoing]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 3);
    for f in frames {
        slices.push(IoSlice::new(&f.header));
        for part in [&f.payload, &f.more] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
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
    let (reason, bye) = read_frames(&mut r, dead_after, &shared, channel, generation, poll).await;
    TaskEnd {
        reason,
        control_reader: channel == Channel::Control,
        bye,
    }
}

/// Reads and dispatches frames until the connection ends; returns why, and whether with a bye.
async fn read_frames(
    r: &mut FrameReader,
    dead_after: Option<Duration>,
    shared: &Shared,
    channel: Channel,
    generation: u64,
    poll: Duration,
) -> (String, bool) {
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
                        false,
                    );
                }
            },
            None => r.next().await,
        };
        let frame = match next {
            Ok(f) => f,
            Err(e) => return (format!("{channel} channel: {e}"), false),
        };
        counters.received(frame.wire_len());
        match frame.kind {
            FrameKind::Ping => {}
            FrameKind::Message => shared.deliver(generation, channel, frame.payload),
            FrameKind::Bye => {
                let text = bye_text(&frame.payload);
                return (format!("peer closed the link: {text}"), true);
            }
            FrameKind::Login => {
                let text = format!("{channel} channel: unexpected login frame after the login");
                return (text, false);
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

/// The reason a session ended, given the first task that ended: when it is not the control
/// reader, the control reader gets a moment to report a bye the peer sent before closing (its
/// data socket may close first), which says more than "connection closed".
async fn settle(first: TaskEnd, done: &mut mpsc::UnboundedReceiver<TaskEnd>) -> String {
    if first.control_reader {
        return first.reason;
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
        Ok(Some(end)) if end.bye => end.reason,
        _ => first.reason,
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Runs one established link until it breaks or shutdown is asked for; returns true on shutdown.
/// On the listen side, `extra` receives further authenticated connections, which are refused.
async fn run_session(
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

    let (reason, stopping) = loop {
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
            _ = shutdown_asked(shutdown) => break ("shut down".to_string(), true),
        }
    };

    // From here on nothing is sent or delivered for this session.
    *lock(&shared.session) = None;
    if stopping {
        info!(peer = %peer_addr, "HA link down: {reason}");
        shared.set_state(STATE_OFFLINE);
    } else {
        warn!(peer = %peer_addr, "HA link down: {reason}");
        shared.set_state(STATE_CONNECTING);
    }
    {
        let mut gate = lock(&shared.gate);
        gate.live = 0;
        let _ = gate.events.send(LinkEvent::Down { reason });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = FrameHeader {
            kind: FrameKind::Message,
            len: 1234,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"DUET");
        assert_eq!(FrameHeader::decode(&bytes, MAX_PAYLOAD), Ok(h));
    }

    #[test]
    fn header_refusals() {
        let good = FrameHeader {
            kind: FrameKind::Ping,
            len: 0,
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::BadMagic(_))
        ));
        // A peer of the previous version (messages without a separate bulk part) is refused.
        let mut b = good;
        b[5] = 1;
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::UnsupportedVersion(1))
        );
        let mut b = good;
        b[6] = 9;
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::UnknownKind(9))
        );
        let mut b = good;
        b[7] = 1;
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::UnknownFlags(1))
        );
        let mut b = good;
        b[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            FrameHeader::decode(&b, MAX_PAYLOAD),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: MAX_PAYLOAD
            })
        );
        let err = FrameHeader::decode(&b, MAX_PAYLOAD)
            .unwrap_err()
            .to_string();
        assert!(err.contains("exceeds the maximum"), "{err}");
    }

    #[test]
    fn peer_addr_parses() {
        assert_eq!(
            "listen 127.0.0.1:7777".parse(),
            Ok(PeerAddr::Listen("127.0.0.1:7777".parse().unwrap()))
        );
        assert_eq!(
            "  connect   [::1]:99 ".parse(),
            Ok(PeerAddr::Connect("[::1]:99".parse().unwrap()))
        );
        let p: PeerAddr = "connect 127.0.0.1:1".parse().unwrap();
        assert_eq!(p.to_string().parse(), Ok(p));
        for bad in [
            "",
            "listen",
            "dial 127.0.0.1:1",
            "listen 127.0.0.1",
            "listen host:1",
            "listen 127.0.0.1:1 extra",
        ] {
            let err = bad.parse::<PeerAddr>().unwrap_err().to_string();
            assert!(err.contains("listen ADDRESS:PORT"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn proofs_are_directional() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let p1 = proof(b"s", &a, &b, 1, 2, 1, Channel::Control, 7)
            .finalize()
            .into_bytes();
        let p2 = proof(b"s", &b, &a, 2, 1, 1, Channel::Control, 7)
            .finalize()
            .into_bytes();
        assert_ne!(p1, p2);
        assert!(proof(b"s", &a, &b, 1, 2, 1, Channel::Control, 7)
            .verify_slice(&p1)
            .is_ok());
        assert!(proof(b"t", &a, &b, 1, 2, 1, Channel::Control, 7)
            .verify_slice(&p1)
            .is_err());
        assert!(proof(b"s", &a, &b, 1, 2, 1, Channel::Data, 7)
            .verify_slice(&p1)
            .is_err());
    }

    #[test]
    fn bye_text_is_bounded_and_printable() {
        let long = vec![b'a'; 10_000];
        assert_eq!(bye_text(&long).len(), MAX_BYE_REASON);
        assert_eq!(bye_text(b"bad\n\x1b[31mred"), "bad[31mred");
    }
}
