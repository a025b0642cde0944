//! One logged-in `duet-load` connection, owned by one task: login (through [`crate::login`]),
//! PDUs framed by hand into a send queue (BHS from duet-core's constructors, data segments
//! shared with the write payload, sent with vectored writes), answers decoded with duet-core's
//! codec, the rules of [`crate::wire`]; setup and verification commands run one at a time, and
//! the logout.

use super::args::LoadError;
use crate::login;
use crate::scsi::{status, SenseCode};
use crate::wire::{self, Sequence, WriteLimits};
use bytes::{Bytes, BytesMut};
use duet_core::iscsi::initiator::{LoginPlan, OperationalOffer};
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::{Codec, Lun, Pdu, TaskAttr, BHS_LEN, RESERVED_TAG};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The MaxRecvDataSegmentLength this initiator declares.
pub const MAX_RECV_DATA_SEGMENT: u32 = 262_144;
/// The FirstBurstLength this initiator offers.
pub const FIRST_BURST_LENGTH: u32 = 262_144;
/// The MaxBurstLength this initiator offers.
pub const MAX_BURST_LENGTH: u32 = 16_776_192;

/// Bound on connect + login of one session.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one setup or verification command.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the logout exchange.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most slices handed to one `writev`.
const MAX_IOV: usize = 64;
/// How much room the read buffer keeps for one `read`.
pub(super) const READ_CHUNK: usize = 256 * 1024;
/// ITT slot numbers at or above this are not pipeline slots (setup commands, logout).
const SETUP_SLOT: u32 = 0xfffe;
const LOGOUT_SLOT: u32 = 0xfffd;

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

static ZERO_PAD: [u8; 4] = [0; 4];

/// One PDU queued for sending: its BHS, its data segment (shared, not copied) and how many of
/// its bytes (header, data, padding) are already on the wire.
pub(super) struct OutPdu {
    hdr: [u8; BHS_LEN],
    data: Bytes,
    pos: usize,
}

impl OutPdu {
    fn len(&self) -> usize {
        BHS_LEN + self.data.len() + pad4(self.data.len())
    }
}

/// A full-feature-phase connection owned by one task.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) rbuf: BytesMut,
    codec: Codec,
    limits: WriteLimits,
    lun: Lun,
    pub(super) seq: Sequence,
    pub(super) out: VecDeque<OutPdu>,
    /// The target asked us to log out or announced it will drop the connection.
    pub(super) leave: bool,
    logged_out: bool,
    next_gen: u32,
}

/// What went wrong on an established connection.
#[derive(Debug)]
pub(super) enum ConnError {
    Io(io::Error),
    Closed,
    Protocol(String),
    Timeout(&'static str),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "connection error: {e}"),
            ConnError::Closed => write!(f, "connection closed by the target"),
            ConnError::Protocol(m) => write!(f, "protocol error: {m}"),
            ConnError::Timeout(w) => write!(f, "timed out: {w}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// Status, sense and Data-In of one setup command.
pub(super) struct Answer {
    pub(super) status: u8,
    pub(super) sense: Option<SenseCode>,
    pub(super) data: Vec<u8>,
}

impl Conn {
    /// Connects and logs in; the connection is in full feature phase on return.
    pub(super) async fn login(
        addr: SocketAddr,
        initiator: &str,
        target: &str,
        isid: [u8; 6],
        lun: u16,
    ) -> Result<Conn, LoadError> {
        let work = async {
            let mut stream = login::connect(addr, LOGIN_TIMEOUT)
                .await
                .map_err(|e| match e {
                    login::ClientError::Connect(source) => LoadError::Connect { addr, source },
                    e => LoadError::Login(e.to_string()),
                })?;
            let mut rbuf = BytesMut::with_capacity(16 * 1024);
            let plan = LoginPlan {
                offer: OperationalOffer {
                    max_recv_data_segment_length: MAX_RECV_DATA_SEGMENT,
                    first_burst_length: FIRST_BURST_LENGTH,
                    max_burst_length: MAX_BURST_LENGTH,
                    ..OperationalOffer::default()
                },
                ..LoginPlan::normal(initiator, target, isid)
            };
            let done = login::login(&mut stream, &mut rbuf, plan)
                .await
                .map_err(|e| LoadError::Login(e.to_string()))?;
            rbuf.reserve(READ_CHUNK);
            Ok(Conn {
                stream,
                rbuf,
                codec: login::session_codec(&done),
                limits: WriteLimits::from_params(&done.params),
                lun: Lun::from_number(lun),
                seq: Sequence {
                    cmd_sn: done.cmd_sn,
                    exp_stat_sn: done.exp_stat_sn,
                    max_cmd_sn: done.max_cmd_sn,
                },
                out: VecDeque::with_capacity(256),
                leave: false,
                logged_out: false,
                next_gen: 0,
            })
        };
        tokio::time::timeout(LOGIN_TIMEOUT, work)
            .await
            .map_err(|_| LoadError::Login(format!("no answer from {addr} in {LOGIN_TIMEOUT:?}")))?
    }

    /// A fresh ITT for pipeline slot `slot` (the high 16 bits change with every command).
    pub(super) fn itt(&mut self, slot: u32) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        ((self.next_gen & 0xffff) << 16) | (slot & 0xffff)
    }

    /// Queues `pdu` (no AHS) with the current ExpStatSN.
    pub(super) fn enqueue(&mut self, mut pdu: Pdu) {
        pdu.set_exp_stat_sn(self.seq.exp_stat_sn);
        let data = std::mem::take(&mut pdu.data);
        self.out.push_back(OutPdu {
            hdr: pdu.bhs,
            data,
            pos: 0,
        });
    }

    /// Queues a SCSI Command with `payload` as its write data (empty for reads): immediate data
    /// and unsolicited Data-Out as far as negotiated; the rest goes out on R2T.
    pub(super) fn queue_command(
        &mut self,
        itt: u32,
        cdb: &[u8; 16],
        payload: &Bytes,
        read_len: u32,
    ) {
        let l = self.limits.layout(payload.len(), read_len);
        let cmd_sn = self.seq.take_cmd_sn();
        let mut cmd = Pdu::scsi_command(
            itt,
            self.lun,
            cdb,
            l.edtl,
            cmd_sn,
            l.flags,
            TaskAttr::Simple,
        );
        if l.immediate > 0 {
            cmd.set_data(payload.slice(..l.immediate));
        }
        self.enqueue(cmd);
        if l.unsolicited_end > l.immediate {
            let range = (l.immediate, l.unsolicited_end);
            self.queue_data_out(itt, RESERVED_TAG, range, payload);
        }
    }

    /// Queues Data-Out PDUs carrying `payload[start..end]` (one sequence, DataSN from 0).
    pub(super) fn queue_data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        range: (usize, usize),
        payload: &Bytes,
    ) {
        let (lun, seg) = (self.lun, self.limits.max_xmit_seg);
        for p in wire::data_out_pdus(itt, ttt, lun, payload, range, seg) {
            self.enqueue(p);
        }
    }

    /// Writes as much of the queue as the socket takes without waiting; `Ok(true)` when the
    /// queue is empty.
    pub(super) fn flush_now(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            let written = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for p in self.out.iter() {
                    if n + 3 > MAX_IOV {
                        break;
                    }
                    if p.pos < BHS_LEN {
                        iov[n] = IoSlice::new(&p.hdr[p.pos..]);
                        n += 1;
                    }
                    let dlen = p.data.len();
                    let dpos = p.pos.saturating_sub(BHS_LEN);
                    if dpos < dlen {
                        iov[n] = IoSlice::new(&p.data[dpos..]);
                        n += 1;
                    }
                    let pad = pad4(dlen);
                    let ppos = p.pos.saturating_sub(BHS_LEN + dlen);
                    if ppos < pad {
                        iov[n] = IoSlice::new(&ZERO_PAD[ppos..pad]);
                        n += 1;
                    }
                }
                match self.stream.try_write_vectored(&iov[..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            let mut w = written;
            while w > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                let rest = front.len() - front.pos;
                if w >= rest {
                    w -= rest;
                    self.out.pop_front();
                } else {
                    front.pos += w;
                    w = 0;
                }
            }
        }
        Ok(true)
    }

    /// Writes the whole queue, waiting for the socket as needed.
    pub(super) async fn flush_all(&mut self) -> Result<(), ConnError> {
        while !self.flush_now()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Reads more bytes into the receive buffer, waiting for them.
    pub(super) async fn read_more(&mut self) -> Result<(), ConnError> {
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(ConnError::Closed),
            _ => Ok(()),
        }
    }

    /// The next complete PDU in the receive buffer, if any.
    pub(super) fn next_pdu(&mut self) -> Result<Option<Pdu>, ConnError> {
        self.codec
            .decode(&mut self.rbuf)
            .map_err(|e| ConnError::Protocol(e.to_string()))
    }

    /// Takes ExpStatSN and the CmdSN window from a target PDU.
    pub(super) fn note(&mut self, pdu: &Pdu) {
        self.seq.note(pdu);
    }

    /// Whether the CmdSN window lets one more command out.
    pub(super) fn window_open(&self) -> bool {
        self.seq.window_open()
    }

    /// Handles target PDUs that are not about SCSI commands' data or status. Returns the ITT a
    /// Reject refers to, if any.
    pub(super) fn handle_other(&mut self, pdu: &Pdu) -> Result<Option<u32>, ConnError> {
        match pdu.opcode() {
            Some(Opcode::NopIn) => {
                self.note(pdu);
                if let Some(p) = wire::ping_answer(pdu, self.seq.cmd_sn) {
                    self.enqueue(p);
                }
                Ok(None)
            }
            Some(Opcode::AsyncMessage) => {
                self.note(pdu);
                if matches!(pdu.async_event(), 1..=3) {
                    if !self.leave {
                        eprintln!(
                            "duet-load: the target asks this session to end (async event {})",
                            pdu.async_event()
                        );
                    }
                    self.leave = true;
                }
                Ok(None)
            }
            Some(Opcode::LogoutResponse) => {
                self.note(pdu);
                self.logged_out = true;
                Ok(None)
            }
            Some(Opcode::Reject) => {
                self.note(pdu);
                Ok(wire::rejected_itt(pdu))
            }
            Some(Opcode::TaskMgmtResponse) | Some(Opcode::TextResponse) => {
                self.note(pdu);
                Ok(None)
            }
            other => Err(ConnError::Protocol(format!(
                "unexpected {other:?} (opcode {:#04x}) in full feature phase",
                pdu.opcode_raw()
            ))),
        }
    }

    /// Runs one command to completion (the pipeline must be idle): setup and verification.
    pub(super) async fn exec(
        &mut self,
        cdb: &[u8; 16],
        read_len: u32,
    ) -> Result<Answer, ConnError> {
        let work = async {
            while !self.window_open() {
                self.read_more().await?;
                while let Some(p) = self.next_pdu()? {
                    self.handle_other(&p)?;
                }
                self.flush_all().await?;
            }
            let itt = self.itt(SETUP_SLOT);
            self.queue_command(itt, cdb, &Bytes::new(), read_len);
            self.flush_all().await?;
            let mut data = vec![0u8; read_len as usize];
            let mut got = 0usize;
            loop {
                while let Some(p) = self.next_pdu()? {
                    match p.opcode() {
                        Some(Opcode::DataIn) if p.itt() == itt => {
                            let status = p.flags() & flags::STATUS != 0;
                            self.note(&p);
                            let off = p.buffer_offset() as usize;
                            let end = off.saturating_add(p.data.len());
                            if end > data.len() {
                                return Err(ConnError::Protocol(format!(
                                    "Data-In for bytes {off}..{end} beyond the {} asked for",
                                    data.len()
                                )));
                            }
                            data[off..end].copy_from_slice(&p.data);
                            got = got.max(end);
                            if status {
                                data.truncate(got);
                                return Ok(Answer {
                                    status: p.status(),
                                    sense: None,
                                    data,
                                });
                            }
                        }
                        Some(Opcode::ScsiResponse) if p.itt() == itt => {
                            self.note(&p);
                            if p.response() != 0 {
                                return Err(ConnError::Protocol(format!(
                                    "iSCSI response {:#04x} (target failure)",
                                    p.response()
                                )));
                            }
                            data.truncate(got);
                            return Ok(Answer {
                                status: p.status(),
                                sense: p.sense_data().and_then(|s| SenseCode::from_sense_data(&s)),
                                data,
                            });
                        }
                        Some(Opcode::DataIn | Opcode::ScsiResponse | Opcode::R2t) => {
                            self.note(&p);
                        }
                        _ => {
                            if self.handle_other(&p)? == Some(itt) {
                                return Err(ConnError::Protocol("command rejected".into()));
                            }
                        }
                    }
                }
                self.flush_all().await?;
                self.read_more().await?;
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, work)
            .await
            .map_err(|_| ConnError::Timeout("command"))?
    }

    /// Runs a no-data or read command, retrying while it reports UNIT ATTENTION (a fresh
    /// I_T nexus commonly gets one); returns the data of a GOOD status.
    pub(super) async fn exec_good(
        &mut self,
        what: &str,
        cdb: &[u8; 16],
        read_len: u32,
    ) -> Result<Vec<u8>, LoadError> {
        for _ in 0..5 {
            let a = self
                .exec(cdb, read_len)
                .await
                .map_err(|e| LoadError::Setup(format!("{what}: {e}")))?;
            if a.status == status::GOOD {
                return Ok(a.data);
            }
            let ua = a.status == status::CHECK_CONDITION
                && a.sense.is_some_and(|s| s.is_unit_attention());
            if !ua {
                return Err(LoadError::Setup(format!(
                    "{what}: SCSI status {:#04x}{}",
                    a.status,
                    a.sense.map(|s| format!(", sense {s}")).unwrap_or_default()
                )));
            }
        }
        Err(LoadError::Setup(format!(
            "{what}: UNIT ATTENTION does not clear"
        )))
    }

    /// Logs the session out (bounded); errors are ignored, the connection is dropped anyway.
    pub(super) async fn logout(&mut self) {
        let work = async {
            let itt = self.itt(LOGOUT_SLOT);
            let mut req = Pdu::logout_request(itt, self.seq.cmd_sn, 0, 0);
            req.set_immediate(true);
            self.enqueue(req);
            self.flush_all().await?;
            while !self.logged_out {
                while let Some(p) = self.next_pdu()? {
                    match p.opcode() {
                        Some(Opcode::DataIn | Opcode::ScsiResponse | Opcode::R2t) => {
                            self.note(&p);
                        }
                        _ => {
                            self.handle_other(&p)?;
                        }
                    }
                }
                if self.logged_out {
                    break;
                }
                self.flush_all().await?;
                self.read_more().await?;
            }
            Ok::<(), ConnError>(())
        };
        let _ = tokio::time::timeout(LOGOUT_TIMEOUT, work).await;
        let _ = self.stream.shutdown().await;
    }
}
