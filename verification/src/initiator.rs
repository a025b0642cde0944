//! A small iSCSI initiator on tokio: one session over one TCP connection, with many commands
//! outstanding.
//!
//! [`Session::login`] connects, authenticates (CHAP with MD5 when a secret is given) and
//! negotiates the operational parameters (no digests, immediate data, large bursts, honouring
//! whatever the target answers). In full feature phase [`Session::exec`] sends one SCSI command
//! and waits for its outcome; any number of callers may do so at once. A reader task matches
//! responses to initiator task tags, assembles Data-In, answers R2Ts with Data-Out and target
//! pings with NOP-Out, and keeps the CmdSN window (commands wait while `CmdSN > MaxCmdSN`). A
//! pinger sends NOP-Out when the target is silent and declares the connection dead when no answer
//! comes in time. When the connection is lost every outstanding command fails with
//! [`InitError::Disconnected`].
//!
//! The helpers ([`Session::read16`], [`Session::report_target_port_groups`], ...) build the CDBs
//! and parse the answers a multipath layer needs.

use bytes::{Bytes, BytesMut};
use duet_core::alua::AluaState;
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::{ChapAlgorithm, Codec, Lun, Pdu, TaskAttr, TextPairs, RESERVED_TAG};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// The MaxRecvDataSegmentLength this initiator declares.
pub const MAX_RECV_DATA_SEGMENT: u32 = 262_144;
/// The FirstBurstLength and MaxBurstLength this initiator offers.
pub const BURST_LENGTH: u32 = 16 * 1024 * 1024;

/// SCSI status GOOD.
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;
/// SCSI status BUSY.
pub const STATUS_BUSY: u8 = 0x08;
/// SCSI status RESERVATION CONFLICT.
pub const STATUS_RESERVATION_CONFLICT: u8 = 0x18;
/// SCSI status TASK SET FULL.
pub const STATUS_TASK_SET_FULL: u8 = 0x28;

/// What can go wrong in a session.
#[derive(Debug)]
pub enum InitError {
    /// The TCP connection could not be made.
    Connect(std::io::Error),
    /// Something took longer than its bound (connect, login, logout).
    Timeout(&'static str),
    /// The target refused the login with this Status-Class/Status-Detail.
    LoginRejected { class: u8, detail: u8 },
    /// Authentication could not proceed (no secret, unsupported algorithm, bad challenge).
    Auth(String),
    /// The target broke the protocol (or sent something this initiator does not handle).
    Protocol(String),
    /// The target rejected the command's PDU with this Reject reason.
    Rejected { reason: u8 },
    /// The connection is gone; the command's outcome is unknown (a write may have landed).
    Disconnected,
    /// A helper's command ended with a status other than GOOD.
    Scsi {
        status: u8,
        sense: Option<SenseInfo>,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Connect(e) => write!(f, "connect: {e}"),
            InitError::Timeout(what) => write!(f, "timed out: {what}"),
            InitError::LoginRejected { class, detail } => {
                write!(f, "login rejected (status {class:#04x}/{detail:#04x})")
            }
            InitError::Auth(m) => write!(f, "authentication: {m}"),
            InitError::Protocol(m) => write!(f, "protocol error: {m}"),
            InitError::Rejected { reason } => write!(f, "command rejected (reason {reason:#04x})"),
            InitError::Disconnected => write!(f, "connection lost"),
            InitError::Scsi { status, sense } => match sense {
                Some(s) => write!(f, "SCSI status {status:#04x}, sense {s}"),
                None => write!(f, "SCSI status {status:#04x}"),
            },
        }
    }
}

impl std::error::Error for InitError {}

/// The sense key and additional sense code/qualifier of a CHECK CONDITION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenseInfo {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl SenseInfo {
    /// Parses fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data.
    pub fn parse(sense: &[u8]) -> Option<SenseInfo> {
        let code = *sense.first()? & 0x7f;
        match code {
            0x70 | 0x71 => Some(SenseInfo {
                key: *sense.get(2)? & 0x0f,
                asc: sense.get(12).copied().unwrap_or(0),
                ascq: sense.get(13).copied().unwrap_or(0),
            }),
            0x72 | 0x73 => Some(SenseInfo {
                key: *sense.get(1)? & 0x0f,
                asc: sense.get(2).copied().unwrap_or(0),
                ascq: sense.get(3).copied().unwrap_or(0),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for SenseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:02X}/{:02X}", self.key, self.asc, self.ascq)
    }
}

/// The outcome of one SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status byte.
    pub status: u8,
    /// Sense of a CHECK CONDITION, when the target sent parsable sense data.
    pub sense: Option<SenseInfo>,
    /// Data-In received (up to the requested length).
    pub data: Bytes,
}

impl ScsiResult {
    /// Whether the status is GOOD.
    pub fn is_good(&self) -> bool {
        self.status == STATUS_GOOD
    }

    /// `Ok(self)` when GOOD, else an [`InitError::Scsi`] describing the status.
    pub fn into_good(self) -> Result<ScsiResult, InitError> {
        if self.is_good() {
            Ok(self)
        } else {
            Err(InitError::Scsi {
                status: self.status,
                sense: self.sense,
            })
        }
    }
}

/// CHAP credentials of the initiator (one-way CHAP, MD5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: Vec<u8>,
}

/// How to log in and keep the connection alive.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    /// The ISID; paths of one host differ in it.
    pub isid: [u8; 6],
    /// CHAP credentials, when the target asks for CHAP.
    pub chap: Option<Chap>,
    /// Bound on the TCP connect.
    pub connect_timeout: Duration,
    /// Bound on the whole login exchange.
    pub login_timeout: Duration,
    /// After this long without any PDU from the target, send a NOP-Out ping.
    pub nop_interval: Duration,
    /// After `nop_interval + nop_timeout` without any PDU from the target, drop the connection.
    pub nop_timeout: Duration,
}

impl Default for LoginOptions {
    fn default() -> Self {
        LoginOptions {
            isid: [0x80, 0xd7, 0xe7, 0x00, 0x00, 0x01],
            chap: None,
            connect_timeout: Duration::from_secs(3),
            login_timeout: Duration::from_secs(5),
            nop_interval: Duration::from_secs(1),
            nop_timeout: Duration::from_secs(2),
        }
    }
}

/// The operational parameters in force after login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The target's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_xmit_data_segment: u32,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
}

/// One target port group from REPORT TARGET PORT GROUPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetPortGroup {
    /// The 4-bit asymmetric access state code (0 A/O, 1 A/N, 2 Standby, 3 Unavailable,
    /// 0xE Offline, 0xF Transitioning).
    pub state_code: u8,
    /// The decoded state, when the code is a known one.
    pub state: Option<AluaState>,
    /// The PREF bit.
    pub preferred: bool,
    pub group_id: u16,
    /// Relative target port identifiers of the group's ports.
    pub ports: Vec<u16>,
}

struct Pending {
    tx: oneshot::Sender<Result<ScsiResult, InitError>>,
    lun: Lun,
    data_out: Bytes,
    buf: Vec<u8>,
    received: usize,
}

struct State {
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    pending: HashMap<u32, Pending>,
    logout: Option<(u32, oneshot::Sender<()>)>,
    closed: bool,
    last_rx: Instant,
}

struct Inner {
    addr: SocketAddr,
    params: Negotiated,
    tsih: u16,
    state: Mutex<State>,
    window: Notify,
    tx: mpsc::UnboundedSender<Pdu>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    logout_requested: AtomicBool,
}

/// `a <= b` in serial number arithmetic (RFC 1982, 32 bits).
fn sn_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

/// `a > b` in serial number arithmetic.
fn sn_gt(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead: fails every outstanding command and stops the tasks.
    fn fail_all(&self) {
        let (pending, logout) = {
            let mut st = self.lock();
            st.closed = true;
            (std::mem::take(&mut st.pending), st.logout.take())
        };
        for (_, p) in pending {
            let _ = p.tx.send(Err(InitError::Disconnected));
        }
        drop(logout);
        self.window.notify_waiters();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
    }

    fn send(&self, pdu: Pdu) {
        let _ = self.tx.send(pdu);
    }

    fn fail_one(&self, itt: u32, err: InitError) {
        let p = self.lock().pending.remove(&itt);
        if let Some(p) = p {
            let _ = p.tx.send(Err(err));
        }
    }

    /// Updates ExpStatSN, ExpCmdSN/MaxCmdSN from a target PDU.
    fn note_sequence(&self, pdu: &Pdu, advances_stat_sn: bool) {
        let mut st = self.lock();
        st.last_rx = Instant::now();
        if advances_stat_sn {
            let next = pdu.stat_sn().wrapping_add(1);
            if sn_gt(next, st.exp_stat_sn) {
                st.exp_stat_sn = next;
            }
        }
        let exp = pdu.exp_cmd_sn();
        let max = pdu.max_cmd_sn();
        // A window is valid when MaxCmdSN >= ExpCmdSN - 1 (RFC 7143 §4.2.2.1).
        if sn_le(exp.wrapping_sub(1), max) && sn_gt(max, st.max_cmd_sn) {
            st.max_cmd_sn = max;
            drop(st);
            self.window.notify_waiters();
        }
    }

    fn handle(&self, pdu: Pdu) -> Result<(), InitError> {
        let op = match pdu.opcode() {
            Some(op) => op,
            None => {
                return Err(InitError::Protocol(format!(
                    "unknown opcode {:#04x}",
                    pdu.opcode_raw()
                )))
            }
        };
        match op {
            Opcode::DataIn => {
                let status = pdu.flags() & flags::STATUS != 0;
                self.note_sequence(&pdu, status);
                self.data_in(&pdu, status);
            }
            Opcode::ScsiResponse => {
                self.note_sequence(&pdu, true);
                self.scsi_response(&pdu);
            }
            Opcode::R2t => {
                self.note_sequence(&pdu, false);
                self.r2t(&pdu);
            }
            Opcode::NopIn => {
                self.note_sequence(&pdu, pdu.itt() != RESERVED_TAG);
                if pdu.ttt() != RESERVED_TAG {
                    let cmd_sn = self.lock().cmd_sn;
                    let mut p = Pdu::nop_out(RESERVED_TAG, pdu.ttt(), cmd_sn, pdu.data.clone());
                    p.set_immediate(true);
                    self.send(p);
                }
            }
            Opcode::AsyncMessage => {
                self.note_sequence(&pdu, true);
                match pdu.async_event() {
                    // The target asks us to log out (it is shutting down or moving the port).
                    1 => self.logout_requested.store(true, Ordering::SeqCst),
                    // It will drop the connection or every connection: stop using this one.
                    2 | 3 => self.logout_requested.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
            Opcode::LogoutResponse => {
                self.note_sequence(&pdu, true);
                let waiter = {
                    let mut st = self.lock();
                    match &st.logout {
                        Some((itt, _)) if *itt == pdu.itt() => st.logout.take(),
                        _ => None,
                    }
                };
                if let Some((_, tx)) = waiter {
                    let _ = tx.send(());
                }
            }
            Opcode::Reject => {
                self.note_sequence(&pdu, true);
                if pdu.data.len() >= 48 {
                    let itt = u32::from_be_bytes([
                        pdu.data[16],
                        pdu.data[17],
                        pdu.data[18],
                        pdu.data[19],
                    ]);
                    self.fail_one(
                        itt,
                        InitError::Rejected {
                            reason: pdu.response(),
                        },
                    );
                }
            }
            Opcode::TaskMgmtResponse | Opcode::TextResponse => {
                self.note_sequence(&pdu, true);
            }
            other => {
                return Err(InitError::Protocol(format!(
                    "unexpected {other:?} in full feature phase"
                )))
            }
        }
        Ok(())
    }

    fn data_in(&self, pdu: &Pdu, status: bool) {
        let itt = pdu.itt();
        let mut st = self.lock();
        let Some(p) = st.pending.get_mut(&itt) else {
            return;
        };
        let off = pdu.buffer_offset() as usize;
        let end = off.saturating_add(pdu.data.len());
        if end > p.buf.len() {
            let want = p.buf.len();
            drop(st);
            self.fail_one(
                itt,
                InitError::Protocol(format!(
                    "Data-In for bytes {off}..{end} beyond the {want} expected"
                )),
            );
            return;
        }
        p.buf[off..end].copy_from_slice(&pdu.data);
        p.received = p.received.max(end);
        if status {
            let p = match st.pending.remove(&itt) {
                Some(p) => p,
                None => return,
            };
            drop(st);
            let mut buf = p.buf;
            buf.truncate(p.received);
            let _ = p.tx.send(Ok(ScsiResult {
                status: pdu.status(),
                sense: None,
                data: Bytes::from(buf),
            }));
        }
    }

    fn scsi_response(&self, pdu: &Pdu) {
        let itt = pdu.itt();
        let Some(p) = self.lock().pending.remove(&itt) else {
            return;
        };
        if pdu.response() != 0 {
            let _ = p.tx.send(Err(InitError::Protocol(format!(
                "SCSI Response with iSCSI response {:#04x} (target failure)",
                pdu.response()
            ))));
            return;
        }
        let sense = pdu.sense_data().and_then(|s| SenseInfo::parse(&s));
        let mut buf = p.buf;
        buf.truncate(p.received);
        let _ = p.tx.send(Ok(ScsiResult {
            status: pdu.status(),
            sense,
            data: Bytes::from(buf),
        }));
    }

    fn r2t(&self, pdu: &Pdu) {
        let itt = pdu.itt();
        let (lun, data) = {
            let st = self.lock();
            match st.pending.get(&itt) {
                Some(p) => (p.lun, p.data_out.clone()),
                None => return,
            }
        };
        let off = pdu.buffer_offset() as usize;
        let len = pdu.desired_length() as usize;
        let end = off.saturating_add(len);
        if len == 0 || end > data.len() {
            self.fail_one(
                itt,
                InitError::Protocol(format!(
                    "R2T for {off}..{end} beyond the {} bytes to write",
                    data.len()
                )),
            );
            return;
        }
        let seg = self.params.max_xmit_data_segment.max(512) as usize;
        let mut pos = off;
        let mut sn = 0u32;
        while pos < end {
            let n = seg.min(end - pos);
            let fin = pos + n == end;
            self.send(Pdu::data_out(
                itt,
                pdu.ttt(),
                lun,
                sn,
                pos as u32,
                fin,
                data.slice(pos..pos + n),
            ));
            pos += n;
            sn += 1;
        }
    }
}

/// One logged-in iSCSI session over one connection. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct Session {
    inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("addr", &self.inner.addr)
            .field("tsih", &self.inner.tsih)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.inner.fail_all();
    }
}

/// Login-phase I/O over the whole stream.
struct LoginIo {
    stream: TcpStream,
    codec: Codec,
    rbuf: BytesMut,
}

impl LoginIo {
    async fn send(&mut self, pdu: &Pdu) -> Result<(), InitError> {
        let mut out = BytesMut::new();
        self.codec.encode(pdu, &mut out);
        self.stream
            .write_all(&out)
            .await
            .map_err(|_| InitError::Disconnected)
    }

    async fn recv(&mut self) -> Result<Pdu, InitError> {
        loop {
            match self.codec.decode(&mut self.rbuf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(InitError::Protocol(format!("login: {e}"))),
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|_| InitError::Disconnected)?;
            if n == 0 {
                return Err(InitError::Disconnected);
            }
        }
    }
}

struct LoginState {
    isid: [u8; 6],
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    tsih: u16,
}

impl LoginState {
    /// Sends one login request and gathers the whole answer (following C continuations).
    /// Returns (transit, nsg, keys).
    async fn exchange(
        &mut self,
        io: &mut LoginIo,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &TextPairs,
    ) -> Result<(bool, u8, TextPairs), InitError> {
        let mut data = keys.to_bytes();
        let mut all = TextPairs::new();
        loop {
            let mut req = Pdu::login_request(
                self.isid,
                0,
                self.itt,
                self.cmd_sn,
                (transit, csg, nsg),
                data,
            );
            req.set_exp_stat_sn(self.exp_stat_sn);
            io.send(&req).await?;
            let rsp = io.recv().await?;
            if rsp.opcode() != Some(Opcode::LoginResponse) {
                return Err(InitError::Protocol(format!(
                    "expected a Login response, got {:?}",
                    rsp.opcode()
                )));
            }
            if rsp.status_class() != 0 {
                return Err(InitError::LoginRejected {
                    class: rsp.status_class(),
                    detail: rsp.status_detail(),
                });
            }
            self.exp_stat_sn = rsp.stat_sn().wrapping_add(1);
            self.exp_cmd_sn = rsp.exp_cmd_sn();
            self.max_cmd_sn = rsp.max_cmd_sn();
            self.tsih = rsp.tsih();
            let got = TextPairs::parse(&rsp.data)
                .map_err(|e| InitError::Protocol(format!("login text: {e}")))?;
            all.0.extend(got.0);
            if rsp.continue_bit() {
                data = Bytes::new();
                continue;
            }
            return Ok((rsp.login_transit(), rsp.login_nsg(), all));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn num(keys: &TextPairs, key: &str) -> Option<u32> {
    keys.get(key)
        .and_then(duet_core::iscsi::text::parse_number)
        .map(|v| v.min(u32::MAX as u64) as u32)
}

fn boolean(keys: &TextPairs, key: &str) -> Option<bool> {
    keys.get(key).and_then(duet_core::iscsi::text::parse_bool)
}

impl Session {
    /// Connects to `addr` and logs in to `target_iqn` as `initiator_iqn`; returns the session in
    /// full feature phase with its reader, writer and pinger tasks running.
    pub async fn login(
        addr: SocketAddr,
        initiator_iqn: &str,
        target_iqn: &str,
        opts: &LoginOptions,
    ) -> Result<Session, InitError> {
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| InitError::Timeout("connect"))?
            .map_err(InitError::Connect)?;
        let _ = stream.set_nodelay(true);
        let mut io = LoginIo {
            stream,
            codec: Codec::new(),
            rbuf: BytesMut::with_capacity(64 * 1024),
        };
        let mut ls = LoginState {
            isid: opts.isid,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            tsih: 0,
        };
        let params = tokio::time::timeout(
            opts.login_timeout,
            Self::negotiate(&mut io, &mut ls, initiator_iqn, target_iqn, opts),
        )
        .await
        .map_err(|_| InitError::Timeout("login"))??;

        let mut codec = Codec::new();
        codec.max_recv_data_segment_length = MAX_RECV_DATA_SEGMENT;
        let LoginIo { stream, rbuf, .. } = io;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            addr,
            params,
            tsih: ls.tsih,
            state: Mutex::new(State {
                cmd_sn: ls.exp_cmd_sn,
                exp_stat_sn: ls.exp_stat_sn,
                max_cmd_sn: ls.max_cmd_sn,
                next_itt: 1,
                pending: HashMap::new(),
                logout: None,
                closed: false,
                last_rx: Instant::now(),
            }),
            window: Notify::new(),
            tx,
            tasks: Mutex::new(Vec::new()),
            logout_requested: AtomicBool::new(false),
        });
        let reader = tokio::spawn(reader_task(inner.clone(), rd, rbuf, codec));
        let writer = tokio::spawn(writer_task(inner.clone(), wr, rx, codec));
        let pinger = tokio::spawn(pinger_task(
            Arc::downgrade(&inner),
            opts.nop_interval,
            opts.nop_timeout,
        ));
        inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([reader, writer, pinger]);
        Ok(Session { inner })
    }

    async fn negotiate(
        io: &mut LoginIo,
        ls: &mut LoginState,
        initiator_iqn: &str,
        target_iqn: &str,
        opts: &LoginOptions,
    ) -> Result<Negotiated, InitError> {
        // Security stage.
        let mut keys = TextPairs::new();
        keys.push("InitiatorName", initiator_iqn);
        keys.push("TargetName", target_iqn);
        keys.push("SessionType", "Normal");
        keys.push(
            "AuthMethod",
            if opts.chap.is_some() {
                "CHAP,None"
            } else {
                "None"
            },
        );
        let (mut transit, mut nsg, got) = ls.exchange(io, 0, 1, true, &keys).await?;
        if got.get("AuthMethod") == Some("CHAP") {
            let chap = opts
                .chap
                .as_ref()
                .ok_or_else(|| InitError::Auth("the target demands CHAP".into()))?;
            let mut k = TextPairs::new();
            k.push("CHAP_A", "5");
            let (_, _, got) = ls.exchange(io, 0, 1, false, &k).await?;
            if got.get("CHAP_A") != Some("5") {
                return Err(InitError::Auth(format!(
                    "the target chose CHAP_A={:?}, only MD5 (5) is supported",
                    got.get("CHAP_A")
                )));
            }
            let id = got
                .get("CHAP_I")
                .and_then(duet_core::iscsi::text::parse_number)
                .filter(|v| *v <= 255)
                .ok_or_else(|| InitError::Auth("missing or bad CHAP_I".into()))?;
            let challenge = got
                .get("CHAP_C")
                .and_then(|c| duet_core::iscsi::text::parse_binary(c).ok())
                .ok_or_else(|| InitError::Auth("missing or bad CHAP_C".into()))?;
            let resp = ChapAlgorithm::Md5.response(id as u8, &chap.secret, &challenge);
            let mut k = TextPairs::new();
            k.push("CHAP_N", chap.user.clone());
            k.push("CHAP_R", hex(&resp));
            let r = ls.exchange(io, 0, 1, true, &k).await?;
            transit = r.0;
            nsg = r.1;
        }
        let mut rounds = 0;
        while !(transit && nsg == 1) {
            // The target did not let us move on yet: ask again with nothing new.
            rounds += 1;
            if rounds > 4 {
                return Err(InitError::Protocol(
                    "the target does not leave the security stage".into(),
                ));
            }
            let r = ls.exchange(io, 0, 1, true, &TextPairs::new()).await?;
            transit = r.0;
            nsg = r.1;
        }

        // Operational stage.
        let mut keys = TextPairs::new();
        keys.push("HeaderDigest", "None");
        keys.push("DataDigest", "None");
        keys.push("InitialR2T", "No");
        keys.push("ImmediateData", "Yes");
        keys.push(
            "MaxRecvDataSegmentLength",
            MAX_RECV_DATA_SEGMENT.to_string(),
        );
        keys.push("FirstBurstLength", BURST_LENGTH.to_string());
        keys.push("MaxBurstLength", BURST_LENGTH.to_string());
        keys.push("MaxOutstandingR2T", "1");
        keys.push("MaxConnections", "1");
        keys.push("DataPDUInOrder", "Yes");
        keys.push("DataSequenceInOrder", "Yes");
        keys.push("ErrorRecoveryLevel", "0");
        keys.push("DefaultTime2Wait", "0");
        keys.push("DefaultTime2Retain", "0");
        keys.push("IFMarker", "No");
        keys.push("OFMarker", "No");
        let mut answers = TextPairs::new();
        let (mut transit, mut nsg, got) = ls.exchange(io, 1, 3, true, &keys).await?;
        answers.0.extend(got.0);
        let mut rounds = 0;
        while !(transit && nsg == 3) {
            rounds += 1;
            if rounds > 4 {
                return Err(InitError::Protocol(
                    "the target does not enter full feature phase".into(),
                ));
            }
            let r = ls.exchange(io, 1, 3, true, &TextPairs::new()).await?;
            transit = r.0;
            nsg = r.1;
            answers.0.extend(r.2 .0);
        }
        for d in ["HeaderDigest", "DataDigest"] {
            if let Some(v) = answers.get(d) {
                if v != "None" {
                    return Err(InitError::Protocol(format!("the target chose {d}={v}")));
                }
            }
        }
        // Values the target did not answer keep their RFC 7143 defaults (bounded by ours).
        let max_burst = num(&answers, "MaxBurstLength")
            .unwrap_or(262_144)
            .min(BURST_LENGTH);
        Ok(Negotiated {
            max_xmit_data_segment: num(&answers, "MaxRecvDataSegmentLength")
                .unwrap_or(8192)
                .clamp(512, 0x00ff_ffff),
            first_burst_length: num(&answers, "FirstBurstLength")
                .unwrap_or(65_536)
                .min(max_burst),
            max_burst_length: max_burst,
            initial_r2t: boolean(&answers, "InitialR2T").unwrap_or(true),
            immediate_data: boolean(&answers, "ImmediateData").unwrap_or(true),
            max_outstanding_r2t: num(&answers, "MaxOutstandingR2T").unwrap_or(1).max(1),
        })
    }

    /// The portal this session is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The TSIH the target gave the session.
    pub fn tsih(&self) -> u16 {
        self.inner.tsih
    }

    /// The parameters in force.
    pub fn negotiated(&self) -> Negotiated {
        self.inner.params
    }

    /// Whether the connection is gone (every later [`Session::exec`] fails with
    /// [`InitError::Disconnected`]).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Whether the target asked (Async Message) that we log out or announced it will drop the
    /// connection.
    pub fn logout_requested(&self) -> bool {
        self.inner.logout_requested.load(Ordering::SeqCst)
    }

    /// Commands sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Drops the connection at once (no logout); outstanding commands fail with
    /// [`InitError::Disconnected`].
    pub fn close(&self) {
        self.inner.fail_all();
    }

    /// Executes one SCSI command on LUN `lun`: `data_out` is written (W bit when non-empty), and
    /// up to `data_in_len` bytes are read (R bit when non-zero). Waits for the CmdSN window.
    /// Dropping the future abandons the command (its answer is ignored).
    pub async fn exec(
        &self,
        lun: u16,
        cdb: &[u8],
        data_out: Bytes,
        data_in_len: u32,
    ) -> Result<ScsiResult, InitError> {
        if cdb.is_empty() || cdb.len() > 16 {
            return Err(InitError::Protocol(format!(
                "CDB of {} bytes (1 to 16 supported)",
                cdb.len()
            )));
        }
        let lun = Lun::from_number(lun);
        let inner = &self.inner;
        let rx = loop {
            let notified = inner.window.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = inner.lock();
                if st.closed {
                    return Err(InitError::Disconnected);
                }
                if sn_le(st.cmd_sn, st.max_cmd_sn) {
                    break self.issue(&mut st, lun, cdb, data_out, data_in_len);
                }
            }
            notified.await;
        };
        rx.await.unwrap_or(Err(InitError::Disconnected))
    }

    /// Sends a command (and its unsolicited data) under the state lock, so that CmdSN order and
    /// wire order agree.
    fn issue(
        &self,
        st: &mut State,
        lun: Lun,
        cdb: &[u8],
        data_out: Bytes,
        data_in_len: u32,
    ) -> oneshot::Receiver<Result<ScsiResult, InitError>> {
        let p = self.inner.params;
        let mut itt = st.next_itt;
        while itt == RESERVED_TAG || st.pending.contains_key(&itt) {
            itt = itt.wrapping_add(1);
        }
        st.next_itt = itt.wrapping_add(1);
        let cmd_sn = st.cmd_sn;
        st.cmd_sn = st.cmd_sn.wrapping_add(1);
        let write_len = data_out.len();
        let seg = p.max_xmit_data_segment as usize;
        let first_burst = p.first_burst_length as usize;
        let immediate = if p.immediate_data {
            write_len.min(seg).min(first_burst)
        } else {
            0
        };
        let unsolicited_end = if p.initial_r2t {
            immediate
        } else {
            write_len.min(first_burst)
        };
        let mut fl = 0u8;
        if write_len > 0 {
            fl |= flags::WRITE;
        }
        if data_in_len > 0 {
            fl |= flags::READ;
        }
        if unsolicited_end == immediate {
            fl |= flags::FINAL;
        }
        let edtl = if write_len > 0 {
            write_len as u32
        } else {
            data_in_len
        };
        let mut cmd = Pdu::scsi_command(itt, lun, cdb, edtl, cmd_sn, fl, TaskAttr::Simple);
        if immediate > 0 {
            cmd.set_data(data_out.slice(..immediate));
        }
        let (tx, rx) = oneshot::channel();
        st.pending.insert(
            itt,
            Pending {
                tx,
                lun,
                data_out: data_out.clone(),
                buf: vec![0u8; data_in_len as usize],
                received: 0,
            },
        );
        self.inner.send(cmd);
        let mut pos = immediate;
        let mut sn = 0u32;
        while pos < unsolicited_end {
            let n = seg.min(unsolicited_end - pos);
            let fin = pos + n == unsolicited_end;
            self.inner.send(Pdu::data_out(
                itt,
                RESERVED_TAG,
                lun,
                sn,
                pos as u32,
                fin,
                data_out.slice(pos..pos + n),
            ));
            pos += n;
            sn += 1;
        }
        rx
    }

    /// Logs the session out (bounded by 5 s) and closes the connection.
    pub async fn logout(&self) -> Result<(), InitError> {
        let rx = {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(InitError::Disconnected);
            }
            let mut itt = st.next_itt;
            while itt == RESERVED_TAG || st.pending.contains_key(&itt) {
                itt = itt.wrapping_add(1);
            }
            st.next_itt = itt.wrapping_add(1);
            let (tx, rx) = oneshot::channel();
            st.logout = Some((itt, tx));
            let mut req = Pdu::logout_request(itt, st.cmd_sn, 0, 0);
            req.set_immediate(true);
            self.inner.send(req);
            rx
        };
        let r = tokio::time::timeout(Duration::from_secs(5), rx).await;
        self.inner.fail_all();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(InitError::Disconnected),
            Err(_) => Err(InitError::Timeout("logout")),
        }
    }

    // ----- helpers -----

    /// READ (10) of `blocks` blocks of `block_size` bytes at `lba`.
    pub async fn read10(
        &self,
        lun: u16,
        lba: u32,
        blocks: u16,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        let mut c = [0u8; 10];
        c[0] = 0x28;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.exec(lun, &c, Bytes::new(), blocks as u32 * block_size)
            .await
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes at `lba`.
    pub async fn read16(
        &self,
        lun: u16,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        self.exec(
            lun,
            &read16_cdb(lba, blocks),
            Bytes::new(),
            blocks.saturating_mul(block_size),
        )
        .await
    }

    /// WRITE (10) of `data` (a whole number of `block_size` blocks) at `lba`.
    pub async fn write10(
        &self,
        lun: u16,
        lba: u32,
        data: Bytes,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        let blocks = (data.len() / block_size.max(1) as usize).min(u16::MAX as usize) as u16;
        let mut c = [0u8; 10];
        c[0] = 0x2a;
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.exec(lun, &c, data, 0).await
    }

    /// WRITE (16) of `data` (a whole number of `block_size` blocks) at `lba`.
    pub async fn write16(
        &self,
        lun: u16,
        lba: u64,
        data: Bytes,
        block_size: u32,
    ) -> Result<ScsiResult, InitError> {
        let blocks = (data.len() / block_size.max(1) as usize).min(u32::MAX as usize) as u32;
        self.exec(lun, &write16_cdb(lba, blocks), data, 0).await
    }

    /// TEST UNIT READY.
    pub async fn test_unit_ready(&self, lun: u16) -> Result<ScsiResult, InitError> {
        self.exec(lun, &[0u8; 6], Bytes::new(), 0).await
    }

    /// READ CAPACITY (16): `(number of blocks, block size)`.
    pub async fn read_capacity16(&self, lun: u16) -> Result<(u64, u32), InitError> {
        let mut c = [0u8; 16];
        c[0] = 0x9e;
        c[1] = 0x10;
        c[10..14].copy_from_slice(&32u32.to_be_bytes());
        let r = self.exec(lun, &c, Bytes::new(), 32).await?.into_good()?;
        parse_read_capacity16(&r.data)
            .ok_or_else(|| InitError::Protocol("short READ CAPACITY (16) data".into()))
    }

    /// INQUIRY of VPD page `page` (EVPD=1).
    pub async fn inquiry_vpd(&self, lun: u16, page: u8) -> Result<Bytes, InitError> {
        let mut c = [0u8; 6];
        c[0] = 0x12;
        c[1] = 0x01;
        c[2] = page;
        c[3..5].copy_from_slice(&1024u16.to_be_bytes());
        Ok(self
            .exec(lun, &c, Bytes::new(), 1024)
            .await?
            .into_good()?
            .data)
    }

    /// The relative target port identifier of the port this session reaches, from the Device
    /// Identification VPD page (0x83); `None` when the page has no such designator.
    pub async fn relative_port_id(&self, lun: u16) -> Result<Option<u16>, InitError> {
        let page = self.inquiry_vpd(lun, 0x83).await?;
        Ok(parse_relative_port_id(&page))
    }

    /// REPORT TARGET PORT GROUPS.
    pub async fn report_target_port_groups(
        &self,
        lun: u16,
    ) -> Result<Vec<TargetPortGroup>, InitError> {
        let mut c = [0u8; 12];
        c[0] = 0xa3;
        c[1] = 0x0a;
        c[6..10].copy_from_slice(&4096u32.to_be_bytes());
        let r = self.exec(lun, &c, Bytes::new(), 4096).await?.into_good()?;
        parse_rtpg(&r.data).ok_or_else(|| InitError::Protocol("malformed RTPG data".into()))
    }
}

/// READ (16) CDB.
pub fn read16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x88;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE (16) CDB.
pub fn write16_cdb(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = read16_cdb(lba, blocks);
    c[0] = 0x8a;
    c
}

/// Parses READ CAPACITY (16) data into `(number of blocks, block size)`.
pub fn parse_read_capacity16(d: &[u8]) -> Option<(u64, u32)> {
    let last = u64::from_be_bytes(d.get(0..8)?.try_into().ok()?);
    let bs = u32::from_be_bytes(d.get(8..12)?.try_into().ok()?);
    Some((last.checked_add(1)?, bs))
}

/// Finds the relative target port designator (type 4, association 1) in VPD page 0x83.
pub fn parse_relative_port_id(page: &[u8]) -> Option<u16> {
    if page.len() < 4 || page[1] != 0x83 {
        return None;
    }
    let end = (4 + u16::from_be_bytes([page[2], page[3]]) as usize).min(page.len());
    let mut pos = 4;
    while pos + 4 <= end {
        let kind = page[pos + 1] & 0x0f;
        let assoc = (page[pos + 1] >> 4) & 0x03;
        let len = page[pos + 3] as usize;
        let body = page.get(pos + 4..pos + 4 + len)?;
        if kind == 4 && assoc == 1 && len >= 4 {
            return Some(u16::from_be_bytes([body[2], body[3]]));
        }
        pos += 4 + len;
    }
    None
}

/// Parses REPORT TARGET PORT GROUPS data (length-only or extended header).
pub fn parse_rtpg(d: &[u8]) -> Option<Vec<TargetPortGroup>> {
    let len = u32::from_be_bytes(d.get(0..4)?.try_into().ok()?) as usize;
    let end = (4 + len).min(d.len());
    let mut pos = 4;
    // Extended header: format type 1 in byte 4 bits 6-4.
    if d.len() >= 8 && (d[4] >> 4) & 0x07 == 1 {
        pos = 8;
    }
    let mut out = Vec::new();
    while pos + 8 <= end {
        let code = d[pos] & 0x0f;
        let preferred = d[pos] & 0x80 != 0;
        let group_id = u16::from_be_bytes([d[pos + 2], d[pos + 3]]);
        let count = d[pos + 7] as usize;
        pos += 8;
        let mut ports = Vec::with_capacity(count);
        for _ in 0..count {
            let p = d.get(pos..pos + 4)?;
            ports.push(u16::from_be_bytes([p[2], p[3]]));
            pos += 4;
        }
        out.push(TargetPortGroup {
            state_code: code,
            state: AluaState::from_code(code),
            preferred,
            group_id,
            ports,
        });
    }
    Some(out)
}

async fn reader_task(inner: Arc<Inner>, mut rd: OwnedReadHalf, mut rbuf: BytesMut, codec: Codec) {
    loop {
        loop {
            match codec.decode(&mut rbuf) {
                Ok(Some(pdu)) => {
                    if inner.handle(pdu).is_err() {
                        inner.fail_all();
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => {
                    inner.fail_all();
                    return;
                }
                // A PDU we cannot parse was consumed; the stream is still in step.
                Err(_) => {}
            }
        }
        match rd.read_buf(&mut rbuf).await {
            Ok(0) | Err(_) => {
                inner.fail_all();
                return;
            }
            Ok(_) => {}
        }
    }
}

async fn writer_task(
    inner: Arc<Inner>,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Pdu>,
    codec: Codec,
) {
    let mut out = BytesMut::with_capacity(256 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(mut pdu) = next.take() {
            pdu.set_exp_stat_sn(inner.lock().exp_stat_sn);
            codec.encode(&pdu, &mut out);
            if out.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        if wr.write_all(&out).await.is_err() {
            inner.fail_all();
            return;
        }
        out.clear();
    }
}

async fn pinger_task(inner: std::sync::Weak<Inner>, interval: Duration, timeout: Duration) {
    let tick = (interval / 2).max(Duration::from_millis(50));
    let mut pinged_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (closed, last_rx, cmd_sn) = {
            let st = inner.lock();
            (st.closed, st.last_rx, st.cmd_sn)
        };
        if closed {
            return;
        }
        let silent = last_rx.elapsed();
        if silent < interval {
            pinged_at = None;
            continue;
        }
        if silent >= interval + timeout {
            inner.fail_all();
            return;
        }
        if pinged_at.is_none_or(|t| t.elapsed() >= interval) {
            let itt = {
                let mut st = inner.lock();
                let mut itt = st.next_itt;
                while itt == RESERVED_TAG || st.pending.contains_key(&itt) {
                    itt = itt.wrapping_add(1);
                }
                st.next_itt = itt.wrapping_add(1);
                itt
            };
            let mut p = Pdu::nop_out(itt, RESERVED_TAG, cmd_sn, Bytes::new());
            p.set_immediate(true);
            inner.send(p);
            pinged_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_formats_parse() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x06;
        fixed[12] = 0x2a;
        fixed[13] = 0x06;
        assert_eq!(
            SenseInfo::parse(&fixed),
            Some(SenseInfo {
                key: 6,
                asc: 0x2a,
                ascq: 6
            })
        );
        let desc = [0x72, 0x02, 0x04, 0x0a, 0, 0, 0, 0];
        assert_eq!(
            SenseInfo::parse(&desc),
            Some(SenseInfo {
                key: 2,
                asc: 4,
                ascq: 0x0a
            })
        );
        assert_eq!(SenseInfo::parse(&[0x00, 1, 2]), None);
        assert_eq!(SenseInfo::parse(&[]), None);
    }

    #[test]
    fn rtpg_parses_groups_and_ports() {
        let d = [
            0, 0, 0, 24, // length
            0x80, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1 A/O pref, port 1
            0x02, 0x8f, 0, 2, 0, 2, 0, 1, 0, 0, 0, 2, // group 2 standby, port 2
        ];
        let g = parse_rtpg(&d).expect("parses");
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].state, Some(AluaState::ActiveOptimized));
        assert!(g[0].preferred);
        assert_eq!(g[0].ports, vec![1]);
        assert_eq!(g[1].group_id, 2);
        assert_eq!(g[1].state, Some(AluaState::Standby));
        assert_eq!(g[1].ports, vec![2]);
        // A port list cut short.
        assert_eq!(parse_rtpg(&d[..26]), None);
    }

    #[test]
    fn vpd83_relative_port() {
        let page = [
            0, 0x83, 0, 16, // header
            0x02, 0x01, 0, 4, b'D', b'U', b'E', b'T', // T10 vendor id, LU
            0x61, 0x14, 0, 4, 0, 0, 0, 7, // relative target port 7
        ];
        assert_eq!(parse_relative_port_id(&page), Some(7));
        assert_eq!(parse_relative_port_id(&page[..12]), None);
    }

    #[test]
    fn serial_numbers_wrap() {
        assert!(sn_le(5, 5));
        assert!(sn_le(0xffff_fffe, 2));
        assert!(!sn_le(3, 2));
        assert!(sn_gt(1, 0xffff_ffff));
    }
}
