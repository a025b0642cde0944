//! A shared iSCSI session on tokio: one session over one TCP connection, with many commands
//! outstanding, for the multipath host ([`crate::mpio`]).
//!
//! [`Session::login`] connects and logs in through [`crate::login`] (duet-core's initiator
//! machine: CHAP when a secret is given, no digests, immediate data, large bursts, honouring
//! whatever the target answers). In full feature phase [`Session::exec`] sends one SCSI command
//! and waits for its outcome; any number of callers may do so at once. A reader task matches
//! responses to initiator task tags, assembles Data-In, answers R2Ts with Data-Out and target
//! pings with NOP-Out, and keeps the CmdSN window (commands wait while `CmdSN > MaxCmdSN`); the
//! rules for all of that are [`crate::wire`]'s. A pinger sends NOP-Out when the target is silent
//! and declares the connection dead when no answer comes in time. When the connection is lost
//! every outstanding command fails with [`InitError::Disconnected`].
//!
//! The helpers ([`Session::read16`], [`Session::report_target_port_groups`], ...; in `commands`)
//! send the CDBs of [`crate::scsi`] and parse the answers a multipath layer needs.

mod commands;

use crate::login::{self, ClientError};
use crate::scsi::{status, SenseCode};
use crate::wire::{self, Sequence, WriteLimits};
use bytes::{Bytes, BytesMut};
use duet_core::iscsi::initiator::{InitiatorChap, LoginError, LoginPlan, OperationalOffer};
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::{Codec, Lun, Pdu, TaskAttr, RESERVED_TAG};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// The MaxRecvDataSegmentLength this initiator declares.
pub const MAX_RECV_DATA_SEGMENT: u32 = 262_144;
/// The FirstBurstLength and MaxBurstLength this initiator offers.
pub const BURST_LENGTH: u32 = 16 * 1024 * 1024;

/// What can go wrong in a session.
#[derive(Debug)]
pub enum InitError {
    /// The TCP connection could not be made.
    Connect(std::io::Error),
    /// Something took longer than its bound (connect, login, logout).
    Timeout(&'static str),
    /// The login failed: refused (Status-Class/Status-Detail), authentication, protocol.
    Login(LoginError),
    /// The target broke the protocol (or sent something this initiator does not handle).
    Protocol(String),
    /// The target rejected the command's PDU with this Reject reason.
    Rejected { reason: u8 },
    /// The connection is gone; the command's outcome is unknown (a write may have landed).
    Disconnected,
    /// A helper's command ended with a status other than GOOD.
    Scsi {
        status: u8,
        sense: Option<SenseCode>,
    },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Connect(e) => write!(f, "connect: {e}"),
            InitError::Timeout(what) => write!(f, "timed out: {what}"),
            InitError::Login(e) => write!(f, "login: {e}"),
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

impl From<ClientError> for InitError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Connect(e) => InitError::Connect(e),
            ClientError::Timeout(what) => InitError::Timeout(what),
            ClientError::Io(_) => InitError::Disconnected,
            ClientError::Framing(m) => InitError::Protocol(format!("login: {m}")),
            ClientError::Login(e) => InitError::Login(e),
        }
    }
}

/// The outcome of one SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    /// SCSI status byte.
    pub status: u8,
    /// Sense of a CHECK CONDITION, when the target sent parsable sense data.
    pub sense: Option<SenseCode>,
    /// Data-In received (up to the requested length).
    pub data: Bytes,
}

impl ScsiResult {
    /// Whether the status is GOOD.
    pub fn is_good(&self) -> bool {
        self.status == status::GOOD
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

/// How to log in and keep the connection alive.
#[derive(Clone, Debug)]
pub struct LoginOptions {
    /// The ISID; paths of one host differ in it.
    pub isid: [u8; 6],
    /// CHAP credentials, when the target asks for CHAP.
    pub chap: Option<InitiatorChap>,
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

struct Pending {
    tx: oneshot::Sender<Result<ScsiResult, InitError>>,
    lun: Lun,
    data_out: Bytes,
    buf: Vec<u8>,
    received: usize,
}

struct State {
    seq: Sequence,
    next_itt: u32,
    pending: HashMap<u32, Pending>,
    logout: Option<(u32, oneshot::Sender<()>)>,
    closed: bool,
    last_rx: Instant,
}

impl State {
    /// A task tag that is not the reserved one and not in use.
    fn take_itt(&mut self) -> u32 {
        let mut itt = self.next_itt;
        while itt == RESERVED_TAG || self.pending.contains_key(&itt) {
            itt = itt.wrapping_add(1);
        }
        self.next_itt = itt.wrapping_add(1);
        itt
    }
}

struct Inner {
    addr: SocketAddr,
    limits: WriteLimits,
    tsih: u16,
    state: Mutex<State>,
    window: Notify,
    tx: mpsc::UnboundedSender<Pdu>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    logout_requested: AtomicBool,
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
    fn note_sequence(&self, pdu: &Pdu) {
        let mut st = self.lock();
        st.last_rx = Instant::now();
        if st.seq.note(pdu) {
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
                self.note_sequence(&pdu);
                self.data_in(&pdu, status);
            }
            Opcode::ScsiResponse => {
                self.note_sequence(&pdu);
                self.scsi_response(&pdu);
            }
            Opcode::R2t => {
                self.note_sequence(&pdu);
                self.r2t(&pdu);
            }
            Opcode::NopIn => {
                self.note_sequence(&pdu);
                let cmd_sn = self.lock().seq.cmd_sn;
                if let Some(p) = wire::ping_answer(&pdu, cmd_sn) {
                    self.send(p);
                }
            }
            Opcode::AsyncMessage => {
                self.note_sequence(&pdu);
                match pdu.async_event() {
                    // The target asks us to log out (it is shutting down or moving the port).
                    1 => self.logout_requested.store(true, Ordering::SeqCst),
                    // It will drop the connection or every connection: stop using this one.
                    2 | 3 => self.logout_requested.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
            Opcode::LogoutResponse => {
                self.note_sequence(&pdu);
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
                self.note_sequence(&pdu);
                if let Some(itt) = wire::rejected_itt(&pdu) {
                    self.fail_one(
                        itt,
                        InitError::Rejected {
                            reason: pdu.response(),
                        },
                    );
                }
            }
            Opcode::TaskMgmtResponse | Opcode::TextResponse => {
                self.note_sequence(&pdu);
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
        let sense = pdu
            .sense_data()
            .and_then(|s| SenseCode::from_sense_data(&s));
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
        let seg = self.limits.max_xmit_seg;
        for p in wire::data_out_pdus(itt, pdu.ttt(), lun, &data, (off, end), seg) {
            self.send(p);
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

impl Session {
    /// Connects to `addr` and logs in to `target_iqn` as `initiator_iqn`; returns the session in
    /// full feature phase with its reader, writer and pinger tasks running.
    pub async fn login(
        addr: SocketAddr,
        initiator_iqn: &str,
        target_iqn: &str,
        opts: &LoginOptions,
    ) -> Result<Session, InitError> {
        let mut stream = login::connect(addr, opts.connect_timeout).await?;
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let plan = LoginPlan {
            chap: opts.chap.clone(),
            offer: OperationalOffer {
                max_recv_data_segment_length: MAX_RECV_DATA_SEGMENT,
                first_burst_length: BURST_LENGTH,
                max_burst_length: BURST_LENGTH,
                ..OperationalOffer::default()
            },
            ..LoginPlan::normal(initiator_iqn, target_iqn, opts.isid)
        };
        let done = tokio::time::timeout(
            opts.login_timeout,
            login::login(&mut stream, &mut rbuf, plan),
        )
        .await
        .map_err(|_| InitError::Timeout("login"))??;

        let codec = login::session_codec(&done);
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            addr,
            limits: WriteLimits::from_params(&done.params),
            tsih: done.tsih,
            state: Mutex::new(State {
                seq: Sequence {
                    cmd_sn: done.cmd_sn,
                    exp_stat_sn: done.exp_stat_sn,
                    max_cmd_sn: done.max_cmd_sn,
                },
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

    /// The portal this session is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The TSIH the target gave the session.
    pub fn tsih(&self) -> u16 {
        self.inner.tsih
    }

    /// The parameters in force.
    pub fn limits(&self) -> WriteLimits {
        self.inner.limits
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
                if st.seq.window_open() {
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
        let itt = st.take_itt();
        let cmd_sn = st.seq.take_cmd_sn();
        let limits = self.inner.limits;
        let l = limits.layout(data_out.len(), data_in_len);
        let mut cmd = Pdu::scsi_command(itt, lun, cdb, l.edtl, cmd_sn, l.flags, TaskAttr::Simple);
        if l.immediate > 0 {
            cmd.set_data(data_out.slice(..l.immediate));
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
        let unsolicited = (l.immediate, l.unsolicited_end);
        let seg = limits.max_xmit_seg;
        for p in wire::data_out_pdus(itt, RESERVED_TAG, lun, &data_out, unsolicited, seg) {
            self.inner.send(p);
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
            let itt = st.take_itt();
            let (tx, rx) = oneshot::channel();
            st.logout = Some((itt, tx));
            let mut req = Pdu::logout_request(itt, st.seq.cmd_sn, 0, 0);
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
            pdu.set_exp_stat_sn(inner.lock().seq.exp_stat_sn);
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
            (st.closed, st.last_rx, st.seq.cmd_sn)
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
            let itt = inner.lock().take_itt();
            let mut p = Pdu::nop_out(itt, RESERVED_TAG, cmd_sn, Bytes::new());
            p.set_immediate(true);
            inner.send(p);
            pinged_at = Some(Instant::now());
        }
    }
}
