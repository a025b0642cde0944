//! `duet-load`: a lean iSCSI load generator for benchmarks (reads and writes, latency histogram).
//!
//! It runs on the same cores as the target under test, so every session is one tokio task that
//! owns its TCP socket outright: no locks, no channels, no per-command task or allocation. The
//! task keeps `qd` commands in flight, frames PDUs itself (BHS taken from duet-core's [`Pdu`]
//! constructors, data segments shared with one write payload, sent with vectored writes) and
//! parses answers with duet-core's [`Codec`]. It works with any RFC 7143 target: it negotiates
//! `InitialR2T=No`, `ImmediateData=Yes` and large bursts, and honours whatever the target answers
//! (immediate data, unsolicited Data-Out, R2T, Data-In with the S bit or a SCSI Response, NOP-In
//! pings, Reject).
//!
//! - [`Args`]: the command line (`clap`), shared with the `duet-load` binary.
//! - [`run`]: logs in every session, runs the load and returns a [`Report`].
//! - [`Histogram`]: log-linear latency buckets (about 1.6 % precision), mergeable.

use crate::initiator::{parse_read_capacity16, read16_cdb, write16_cdb, SenseInfo};
use bytes::{Bytes, BytesMut};
use duet_core::iscsi::pdu::{flags, Opcode};
use duet_core::iscsi::text::{parse_bool, parse_number};
use duet_core::iscsi::{Codec, Lun, Pdu, TaskAttr, TextPairs, BHS_LEN, RESERVED_TAG};
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// The MaxRecvDataSegmentLength this initiator declares.
pub const MAX_RECV_DATA_SEGMENT: u32 = 262_144;
/// The FirstBurstLength this initiator offers.
pub const FIRST_BURST_LENGTH: u32 = 262_144;
/// The MaxBurstLength this initiator offers.
pub const MAX_BURST_LENGTH: u32 = 16_776_192;
/// The largest `--qd`.
pub const MAX_QD: u32 = 4096;
/// The largest `--sessions`.
pub const MAX_SESSIONS: u32 = 256;
/// The largest `--block-size`.
pub const MAX_BLOCK_SIZE: u64 = 64 << 20;

/// How long in-flight commands may take to finish once the measured interval is over.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connect + login of one session.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one setup or verification command.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the logout exchange.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most slices handed to one `writev`.
const MAX_IOV: usize = 64;
/// How much room the read buffer keeps for one `read`.
const READ_CHUNK: usize = 256 * 1024;
/// ITT slot numbers at or above this are not pipeline slots (setup commands, logout).
const SETUP_SLOT: u32 = 0xfffe;
const LOGOUT_SLOT: u32 = 0xfffd;
/// Failed commands described on stderr per session (the rest are only counted).
const MAX_REPORTED_FAILURES: u32 = 3;
/// Blocks read back per session by `--verify`.
const VERIFY_BLOCKS: usize = 8;

const SCSI_GOOD: u8 = 0x00;
const SCSI_CHECK_CONDITION: u8 = 0x02;
const SENSE_KEY_UNIT_ATTENTION: u8 = 0x06;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// What each command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// READ (16).
    Read,
    /// WRITE (16) of a fixed non-trivial pattern.
    Write,
}

/// Where each command goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Uniform block-aligned offsets inside the span.
    Random,
    /// Each session walks its own slice of the span in order, wrapping.
    Seq,
}

/// iSCSI benchmark load: keeps `qd` READ/WRITE (16) commands in flight per session and reports
/// IOPS, throughput and latency percentiles.
#[derive(clap::Parser, Debug, Clone, PartialEq)]
#[command(name = "duet-load", version)]
pub struct Args {
    /// Target portal, host:port (port 3260 if omitted).
    #[arg(long, value_parser = parse_portal)]
    pub portal: SocketAddr,
    /// Target IQN.
    #[arg(long)]
    pub target: String,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    pub lun: u16,
    /// Command kind.
    #[arg(long, value_enum, default_value_t = Op::Read)]
    pub op: Op,
    /// Offset pattern.
    #[arg(long, value_enum, default_value_t = Pattern::Random)]
    pub pattern: Pattern,
    /// Bytes per command (a multiple of the LUN's block size; 4096, 64KiB, 1MiB...).
    #[arg(long = "block-size", default_value = "4096", value_parser = parse_size)]
    pub block_size: u64,
    /// Commands in flight per session.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=MAX_QD as i64))]
    pub qd: u32,
    /// Parallel sessions, each its own TCP connection and login with a distinct ISID.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_SESSIONS as i64))]
    pub sessions: u32,
    /// Measured interval (10s, 500ms, 2m; a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measured interval, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Bytes of the LUN used, from offset 0 (default: the whole LUN).
    #[arg(long, value_parser = parse_size)]
    pub span: Option<u64>,
    /// Our initiator name.
    #[arg(long, default_value = "iqn.2026-11.dev.duet:load")]
    pub initiator: String,
    /// Seed of the offset sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// After a write run, read back the last blocks each session wrote and compare them.
    #[arg(long)]
    pub verify: bool,
    /// Runtime worker threads: 0 runs everything on one thread (the cheapest).
    #[arg(long, default_value_t = 0, hide = true)]
    pub workers: u32,
}

/// Parses `host:port` or `host` (port 3260).
pub fn parse_portal(s: &str) -> Result<SocketAddr, String> {
    let with_port = if s.parse::<SocketAddr>().is_ok()
        || s.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !h.ends_with(':') && p.bytes().all(|c| c.is_ascii_digit())
        }) {
        s.to_string()
    } else {
        format!("{s}:3260")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("`{s}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}`: no address"))
}

/// Parses a byte count: a bare number, or one with K/KiB/M/MiB/G/GiB (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size like 4096, 64KiB or 1MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" | "KB" => 1 << 10,
        "m" | "M" | "MiB" | "MB" => 1 << 20,
        "g" | "G" | "GiB" | "GB" => 1 << 30,
        u => return Err(format!("`{s}`: unknown unit `{u}` (K, M, G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: too large"))
}

/// Parses a duration: `10s`, `500ms`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1000.0,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(format!("`{s}`: unknown unit `{u}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || !(0.0..=1.0e6).contains(&secs) {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// Errors and report
// ---------------------------------------------------------------------------------------------

/// Why a run could not start (every such error means exit status 2).
#[derive(Debug)]
pub enum LoadError {
    /// The options do not fit together or do not fit the LUN.
    Usage(String),
    /// The TCP connection could not be made.
    Connect { addr: SocketAddr, source: io::Error },
    /// The login failed (refused, protocol error, timeout).
    Login(String),
    /// A setup command (TEST UNIT READY, READ CAPACITY) failed.
    Setup(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Usage(m) => write!(f, "{m}"),
            LoadError::Connect { addr, source } => write!(f, "connect to {addr}: {source}"),
            LoadError::Login(m) => write!(f, "login: {m}"),
            LoadError::Setup(m) => write!(f, "setup: {m}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The outcome of a run, printed as one JSON object by `--json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub op: Op,
    pub pattern: Pattern,
    pub block_size: u64,
    pub qd: u32,
    pub sessions: u32,
    /// Length of the measured interval.
    pub seconds: f64,
    /// Commands completed with GOOD status inside the measured interval.
    pub ops: u64,
    pub bytes: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_max_us: f64,
    /// Commands that failed (status other than GOOD, Reject, lost with their connection, not
    /// answered in time), warmup and drain included, plus `--verify` mismatches.
    pub errors: u64,
    /// User + system CPU time of this process during the measured interval.
    pub client_cpu_s: f64,
    /// Blocks read back and found intact (only with `--verify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_blocks: Option<u64>,
}

impl Report {
    /// A short human summary (several lines, no trailing newline).
    pub fn summary(&self) -> String {
        let op = match self.op {
            Op::Read => "read",
            Op::Write => "write",
        };
        let pat = match self.pattern {
            Pattern::Random => "random",
            Pattern::Seq => "seq",
        };
        let per_op = if self.ops > 0 {
            self.client_cpu_s * 1e6 / self.ops as f64
        } else {
            0.0
        };
        let mut s = format!(
            "{op} {pat} {} B, qd {} x {} session(s), {:.1} s: {} ops, {:.0} IOPS, {:.1} MiB/s\n\
             latency us: mean {:.1}  p50 {:.1}  p99 {:.1}  max {:.1}\n\
             errors {}, client CPU {:.2} s ({:.2} us/op)",
            self.block_size,
            self.qd,
            self.sessions,
            self.seconds,
            self.ops,
            self.iops,
            self.mib_s,
            self.lat_mean_us,
            self.lat_p50_us,
            self.lat_p99_us,
            self.lat_max_us,
            self.errors,
            self.client_cpu_s,
            per_op,
        );
        if let Some(v) = self.verified_blocks {
            s.push_str(&format!("\nverified {v} block(s) read back intact"));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Histogram
// ---------------------------------------------------------------------------------------------

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped below 2^40 ns (about 18 minutes).
const HIST_MAX: u64 = (1 << 40) - 1;
const HIST_BUCKETS: usize = (((40 - 1 - SUB_BITS as u64) << SUB_BITS) + 2 * SUB) as usize;

/// A log-linear histogram of nanosecond values: exact below 128, then 64 buckets per power of
/// two (each at most 1/64 of its value wide). Count, sum, minimum and maximum are exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; HIST_BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        let v = v.min(HIST_MAX);
        if v < 2 * SUB {
            return v as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        (((shift as u64) << SUB_BITS) + (v >> shift)) as usize
    }

    /// The lowest value of bucket `idx` and the bucket's width.
    fn bucket(idx: usize) -> (u64, u64) {
        let idx = idx as u64;
        if idx < 2 * SUB {
            return (idx, 1);
        }
        let shift = (idx >> SUB_BITS) - 1;
        let sub = idx - (shift << SUB_BITS);
        (sub << shift, 1 << shift)
    }

    /// Records one value (nanoseconds).
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.count += 1;
        self.sum += ns as u128;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact mean, 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Exact maximum, 0 when empty.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Exact minimum, 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The value at quantile `q` (0..=1): the middle of the bucket holding the value of rank
    /// `ceil(q * count)`, kept within the exact minimum and maximum (which the first and last
    /// ranks return exactly); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == 1 {
            return self.min;
        }
        if rank == self.count {
            return self.max;
        }
        let mut seen = 0u64;
        for (idx, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = Self::bucket(idx);
                return (lo + (width - 1) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

// ---------------------------------------------------------------------------------------------
// Connection: login, framing, setup commands
// ---------------------------------------------------------------------------------------------

/// `a <= b` in serial number arithmetic (RFC 1982, 32 bits).
fn sn_le(a: u32, b: u32) -> bool {
    a == b || (b.wrapping_sub(a) as i32) > 0
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

static ZERO_PAD: [u8; 4] = [0; 4];

/// Whether a SCSI-command PDU from the target carries a StatSN (SCSI Response, Data-In with S).
fn advances_stat_sn(pdu: &Pdu) -> bool {
    match pdu.opcode() {
        Some(Opcode::ScsiResponse) => true,
        Some(Opcode::DataIn) => pdu.flags() & flags::STATUS != 0,
        _ => false,
    }
}

/// The operational values in force after login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Limits {
    /// The target's MaxRecvDataSegmentLength: the largest data segment we may send.
    max_xmit_seg: usize,
    first_burst: usize,
    initial_r2t: bool,
    immediate_data: bool,
}

/// One PDU queued for sending: its BHS, its data segment (shared, not copied) and how many of
/// its bytes (header, data, padding) are already on the wire.
struct OutPdu {
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
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    codec: Codec,
    limits: Limits,
    lun: Lun,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    out: VecDeque<OutPdu>,
    /// The target asked us to log out or announced it will drop the connection.
    leave: bool,
    logged_out: bool,
    next_gen: u32,
}

/// What went wrong on an established connection.
#[derive(Debug)]
enum ConnError {
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
struct Answer {
    status: u8,
    sense: Option<SenseInfo>,
    data: Vec<u8>,
}

fn login_keys_security(initiator: &str, target: &str) -> TextPairs {
    let mut k = TextPairs::new();
    k.push("InitiatorName", initiator);
    k.push("TargetName", target);
    k.push("SessionType", "Normal");
    k.push("AuthMethod", "None");
    k
}

fn login_keys_operational() -> TextPairs {
    let mut k = TextPairs::new();
    k.push("HeaderDigest", "None");
    k.push("DataDigest", "None");
    k.push("InitialR2T", "No");
    k.push("ImmediateData", "Yes");
    k.push(
        "MaxRecvDataSegmentLength",
        MAX_RECV_DATA_SEGMENT.to_string(),
    );
    k.push("MaxBurstLength", MAX_BURST_LENGTH.to_string());
    k.push("FirstBurstLength", FIRST_BURST_LENGTH.to_string());
    k.push("MaxOutstandingR2T", "1");
    k.push("MaxConnections", "1");
    k.push("DataPDUInOrder", "Yes");
    k.push("DataSequenceInOrder", "Yes");
    k.push("ErrorRecoveryLevel", "0");
    k.push("DefaultTime2Wait", "0");
    k.push("DefaultTime2Retain", "0");
    k.push("IFMarker", "No");
    k.push("OFMarker", "No");
    k
}

/// Derives the limits in force from the target's operational-stage answers (RFC 7143 §13:
/// InitialR2T is OR-ed, ImmediateData AND-ed, burst lengths take the minimum; keys the target
/// left out keep their defaults).
fn limits_from_answers(a: &TextPairs) -> Result<Limits, String> {
    for d in ["HeaderDigest", "DataDigest"] {
        if let Some(v) = a.get(d) {
            if v != "None" {
                return Err(format!("the target chose {d}={v}; only None is supported"));
            }
        }
    }
    let num = |k: &str| a.get(k).and_then(parse_number);
    let max_burst = num("MaxBurstLength")
        .unwrap_or(262_144)
        .min(MAX_BURST_LENGTH as u64);
    let first_burst = num("FirstBurstLength")
        .unwrap_or(65_536)
        .min(FIRST_BURST_LENGTH as u64)
        .min(max_burst);
    Ok(Limits {
        max_xmit_seg: num("MaxRecvDataSegmentLength")
            .unwrap_or(8192)
            .clamp(512, 0x00ff_ffff) as usize,
        first_burst: first_burst.max(512) as usize,
        initial_r2t: a.get("InitialR2T").and_then(parse_bool).unwrap_or(true),
        immediate_data: a.get("ImmediateData").and_then(parse_bool).unwrap_or(true),
    })
}

/// Login-phase state of one connection.
struct LoginIo {
    stream: TcpStream,
    codec: Codec,
    rbuf: BytesMut,
    isid: [u8; 6],
    cmd_sn: u32,
    exp_stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    tsih: u16,
}

impl LoginIo {
    /// One login request (and its C continuations); returns (transit, nsg, keys answered).
    async fn exchange(
        &mut self,
        csg: u8,
        nsg: u8,
        keys: &TextPairs,
    ) -> Result<(bool, u8, TextPairs), String> {
        let mut data = keys.to_bytes();
        let mut all = TextPairs::new();
        loop {
            let mut req =
                Pdu::login_request(self.isid, self.tsih, 0, self.cmd_sn, (true, csg, nsg), data);
            req.set_exp_stat_sn(self.exp_stat_sn);
            let mut out = BytesMut::new();
            self.codec.encode(&req, &mut out);
            self.stream
                .write_all(&out)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let rsp = loop {
                match self.codec.decode(&mut self.rbuf) {
                    Ok(Some(p)) => break p,
                    Ok(None) => {}
                    Err(e) => return Err(format!("bad login response: {e}")),
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) => return Err("the target closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("receive: {e}")),
                }
            };
            if rsp.opcode() != Some(Opcode::LoginResponse) {
                return Err(format!("expected a Login response, got {:?}", rsp.opcode()));
            }
            if rsp.status_class() != 0 {
                return Err(format!(
                    "refused by the target (status class {:#04x}, detail {:#04x}{})",
                    rsp.status_class(),
                    rsp.status_detail(),
                    match (rsp.status_class(), rsp.status_detail()) {
                        (2, 1) => ": authentication failed",
                        (2, 2) => ": not authorized",
                        (2, 3) => ": target not found",
                        (2, 4) => ": target removed",
                        (3, _) => ": target error",
                        _ => "",
                    }
                ));
            }
            self.exp_stat_sn = rsp.stat_sn().wrapping_add(1);
            self.exp_cmd_sn = rsp.exp_cmd_sn();
            self.max_cmd_sn = rsp.max_cmd_sn();
            self.tsih = rsp.tsih();
            let got = TextPairs::parse(&rsp.data).map_err(|e| format!("login text: {e}"))?;
            all.0.extend(got.0);
            if rsp.continue_bit() {
                data = Bytes::new();
                continue;
            }
            return Ok((rsp.login_transit(), rsp.login_nsg(), all));
        }
    }

    /// Security stage (AuthMethod=None), then operational stage; returns the limits in force.
    async fn negotiate(&mut self, initiator: &str, target: &str) -> Result<Limits, String> {
        let (mut transit, mut nsg, got) = self
            .exchange(0, 1, &login_keys_security(initiator, target))
            .await?;
        if let Some(m) = got.get("AuthMethod") {
            if m != "None" {
                return Err(format!(
                    "the target demands AuthMethod={m}; duet-load logs in without authentication"
                ));
            }
        }
        let mut rounds = 0;
        while !(transit && nsg == 1) {
            rounds += 1;
            if rounds > 4 {
                return Err("the target does not leave the security stage".into());
            }
            (transit, nsg, _) = self.exchange(0, 1, &TextPairs::new()).await?;
        }
        let (mut transit, mut nsg, mut answers) =
            self.exchange(1, 3, &login_keys_operational()).await?;
        let mut rounds = 0;
        while !(transit && nsg == 3) {
            rounds += 1;
            if rounds > 4 {
                return Err("the target does not enter full feature phase".into());
            }
            let r = self.exchange(1, 3, &TextPairs::new()).await?;
            transit = r.0;
            nsg = r.1;
            answers.0.extend(r.2 .0);
        }
        limits_from_answers(&answers)
    }
}

impl Conn {
    /// Connects and logs in; the connection is in full feature phase on return.
    async fn login(
        addr: SocketAddr,
        initiator: &str,
        target: &str,
        isid: [u8; 6],
        lun: u16,
    ) -> Result<Conn, LoadError> {
        let work = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| LoadError::Connect { addr, source })?;
            let _ = stream.set_nodelay(true);
            let mut io = LoginIo {
                stream,
                codec: Codec::new(),
                rbuf: BytesMut::with_capacity(16 * 1024),
                isid,
                cmd_sn: 1,
                exp_stat_sn: 0,
                exp_cmd_sn: 1,
                max_cmd_sn: 1,
                tsih: 0,
            };
            let limits = io
                .negotiate(initiator, target)
                .await
                .map_err(LoadError::Login)?;
            let mut codec = Codec::new();
            codec.max_recv_data_segment_length = MAX_RECV_DATA_SEGMENT;
            let mut rbuf = io.rbuf;
            rbuf.reserve(READ_CHUNK);
            Ok(Conn {
                stream: io.stream,
                rbuf,
                codec,
                limits,
                lun: Lun::from_number(lun),
                cmd_sn: io.exp_cmd_sn,
                exp_stat_sn: io.exp_stat_sn,
                max_cmd_sn: io.max_cmd_sn,
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
    fn itt(&mut self, slot: u32) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        ((self.next_gen & 0xffff) << 16) | (slot & 0xffff)
    }

    /// Queues `pdu` (no AHS) with the current ExpStatSN.
    fn enqueue(&mut self, mut pdu: Pdu) {
        pdu.set_exp_stat_sn(self.exp_stat_sn);
        let data = std::mem::take(&mut pdu.data);
        self.out.push_back(OutPdu {
            hdr: pdu.bhs,
            data,
            pos: 0,
        });
    }

    /// Queues a SCSI Command with `payload` as its write data (empty for reads): immediate data
    /// and unsolicited Data-Out as far as negotiated; the rest goes out on R2T.
    fn queue_command(&mut self, itt: u32, cdb: &[u8; 16], payload: &Bytes, read_len: u32) {
        let len = payload.len();
        let l = self.limits;
        let immediate = if l.immediate_data {
            len.min(l.max_xmit_seg).min(l.first_burst)
        } else {
            0
        };
        let unsolicited_end = if l.initial_r2t {
            immediate
        } else {
            len.min(l.first_burst)
        };
        let mut fl = 0u8;
        if len > 0 {
            fl |= flags::WRITE;
        }
        if read_len > 0 {
            fl |= flags::READ;
        }
        if unsolicited_end == immediate {
            fl |= flags::FINAL;
        }
        let edtl = if len > 0 { len as u32 } else { read_len };
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let mut cmd = Pdu::scsi_command(itt, self.lun, cdb, edtl, cmd_sn, fl, TaskAttr::Simple);
        if immediate > 0 {
            cmd.set_data(payload.slice(..immediate));
        }
        self.enqueue(cmd);
        if unsolicited_end > immediate {
            self.queue_data_out(itt, RESERVED_TAG, immediate, unsolicited_end, payload);
        }
    }

    /// Queues Data-Out PDUs carrying `payload[start..end]` (one sequence, DataSN from 0).
    fn queue_data_out(&mut self, itt: u32, ttt: u32, start: usize, end: usize, payload: &Bytes) {
        let seg = self.limits.max_xmit_seg;
        let mut pos = start;
        let mut sn = 0u32;
        while pos < end {
            let n = seg.min(end - pos);
            let fin = pos + n == end;
            let p = Pdu::data_out(
                itt,
                ttt,
                self.lun,
                sn,
                pos as u32,
                fin,
                payload.slice(pos..pos + n),
            );
            self.enqueue(p);
            pos += n;
            sn += 1;
        }
    }

    /// Writes as much of the queue as the socket takes without waiting; `Ok(true)` when the
    /// queue is empty.
    fn flush_now(&mut self) -> io::Result<bool> {
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
    async fn flush_all(&mut self) -> Result<(), ConnError> {
        while !self.flush_now()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Reads more bytes into the receive buffer, waiting for them.
    async fn read_more(&mut self) -> Result<(), ConnError> {
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(ConnError::Closed),
            _ => Ok(()),
        }
    }

    /// The next complete PDU in the receive buffer, if any.
    fn next_pdu(&mut self) -> Result<Option<Pdu>, ConnError> {
        self.codec
            .decode(&mut self.rbuf)
            .map_err(|e| ConnError::Protocol(e.to_string()))
    }

    /// Takes ExpStatSN and the CmdSN window from a target PDU.
    fn note(&mut self, pdu: &Pdu, advances_stat_sn: bool) {
        if advances_stat_sn {
            let next = pdu.stat_sn().wrapping_add(1);
            if !sn_le(next, self.exp_stat_sn) {
                self.exp_stat_sn = next;
            }
        }
        let exp = pdu.exp_cmd_sn();
        let max = pdu.max_cmd_sn();
        // A window is valid when MaxCmdSN >= ExpCmdSN - 1 (RFC 7143 §4.2.2.1).
        if sn_le(exp.wrapping_sub(1), max) && !sn_le(max, self.max_cmd_sn) {
            self.max_cmd_sn = max;
        }
    }

    /// Whether the CmdSN window lets one more command out.
    fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    /// Handles target PDUs that are not about SCSI commands' data or status. Returns the ITT a
    /// Reject refers to, if any.
    fn handle_other(&mut self, pdu: &Pdu) -> Result<Option<u32>, ConnError> {
        match pdu.opcode() {
            Some(Opcode::NopIn) => {
                self.note(pdu, pdu.itt() != RESERVED_TAG);
                if pdu.ttt() != RESERVED_TAG {
                    let mut p =
                        Pdu::nop_out(RESERVED_TAG, pdu.ttt(), self.cmd_sn, pdu.data.clone());
                    p.set_immediate(true);
                    self.enqueue(p);
                }
                Ok(None)
            }
            Some(Opcode::AsyncMessage) => {
                self.note(pdu, true);
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
                self.note(pdu, true);
                self.logged_out = true;
                Ok(None)
            }
            Some(Opcode::Reject) => {
                self.note(pdu, true);
                if pdu.data.len() >= BHS_LEN {
                    let d = &pdu.data;
                    Ok(Some(u32::from_be_bytes([d[16], d[17], d[18], d[19]])))
                } else {
                    Ok(None)
                }
            }
            Some(Opcode::TaskMgmtResponse) | Some(Opcode::TextResponse) => {
                self.note(pdu, true);
                Ok(None)
            }
            other => Err(ConnError::Protocol(format!(
                "unexpected {other:?} (opcode {:#04x}) in full feature phase",
                pdu.opcode_raw()
            ))),
        }
    }

    /// Runs one command to completion (the pipeline must be idle): setup and verification.
    async fn exec(&mut self, cdb: &[u8; 16], read_len: u32) -> Result<Answer, ConnError> {
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
                            self.note(&p, status);
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
                            self.note(&p, true);
                            if p.response() != 0 {
                                return Err(ConnError::Protocol(format!(
                                    "iSCSI response {:#04x} (target failure)",
                                    p.response()
                                )));
                            }
                            data.truncate(got);
                            return Ok(Answer {
                                status: p.status(),
                                sense: p.sense_data().and_then(|s| SenseInfo::parse(&s)),
                                data,
                            });
                        }
                        Some(Opcode::DataIn | Opcode::ScsiResponse | Opcode::R2t) => {
                            self.note(&p, advances_stat_sn(&p));
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
    async fn exec_good(
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
            if a.status == SCSI_GOOD {
                return Ok(a.data);
            }
            let ua = a.status == SCSI_CHECK_CONDITION
                && a.sense.is_some_and(|s| s.key == SENSE_KEY_UNIT_ATTENTION);
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
    async fn logout(&mut self) {
        let work = async {
            let itt = self.itt(LOGOUT_SLOT);
            let mut req = Pdu::logout_request(itt, self.cmd_sn, 0, 0);
            req.set_immediate(true);
            self.enqueue(req);
            self.flush_all().await?;
            while !self.logged_out {
                while let Some(p) = self.next_pdu()? {
                    match p.opcode() {
                        Some(Opcode::DataIn | Opcode::ScsiResponse | Opcode::R2t) => {
                            self.note(&p, advances_stat_sn(&p));
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

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast, good enough for offsets and patterns.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// Where one session's commands go, in units of one command (`block_size` bytes).
#[derive(Clone, Debug)]
struct Offsets {
    pattern: Pattern,
    rng: Rng,
    /// Random: the whole span; seq: this session's slice `[start, start + len)`.
    start: u64,
    len: u64,
    cursor: u64,
}

impl Offsets {
    /// The offsets of session `index` of `sessions` over `units` command-sized units.
    fn new(pattern: Pattern, seed: u64, index: u32, sessions: u32, units: u64) -> Offsets {
        let (start, len) = match pattern {
            Pattern::Random => (0, units),
            Pattern::Seq => {
                let s = sessions as u64;
                let i = index as u64;
                let a = units * i / s;
                let b = units * (i + 1) / s;
                (a, b - a)
            }
        };
        Offsets {
            pattern,
            rng: Rng(seed ^ (index as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93)),
            start,
            len: len.max(1),
            cursor: 0,
        }
    }

    /// The next unit.
    fn next(&mut self) -> u64 {
        match self.pattern {
            Pattern::Random => self.start + self.rng.below(self.len),
            Pattern::Seq => {
                let u = self.start + self.cursor;
                self.cursor += 1;
                if self.cursor >= self.len {
                    self.cursor = 0;
                }
                u
            }
        }
    }
}

/// The write payload: a pseudo-random pattern from `seed` and a per-run nonce, never all zeros.
fn make_payload(len: usize, seed: u64) -> Bytes {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ ((std::process::id() as u64) << 32);
    let mut rng = Rng(seed ^ nonce);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&(rng.next() | 1).to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// What every session shares.
#[derive(Clone)]
struct Plan {
    op: Op,
    qd: u32,
    /// Bytes per command.
    block_size: u32,
    /// LUN blocks per command.
    lun_blocks: u32,
    payload: Bytes,
    warmup_end: Instant,
    end: Instant,
    verify: bool,
}

/// A progress counter on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Counter(AtomicU64);

#[derive(Clone, Copy)]
struct Slot {
    itt: u32,
    busy: bool,
    sent: Instant,
    lba: u64,
    /// Data-In bytes received so far.
    received: u32,
}

/// What one session measured.
struct SessionResult {
    hist: Histogram,
    errors: u64,
    verified: u64,
}

struct Pipeline<'a> {
    plan: &'a Plan,
    slots: Vec<Slot>,
    free: Vec<u32>,
    inflight: u32,
    hist: Histogram,
    errors: u64,
    reported: u32,
    done_in_batch: u64,
    /// Most recent LBAs written with GOOD status (for `--verify`).
    written: VecDeque<u64>,
}

impl Pipeline<'_> {
    fn fail(&mut self, what: std::fmt::Arguments<'_>) {
        self.errors += 1;
        self.reported += 1;
        if self.reported <= MAX_REPORTED_FAILURES {
            eprintln!("duet-load: {what}");
        } else if self.reported == MAX_REPORTED_FAILURES + 1 {
            eprintln!("duet-load: further failures of this session are only counted");
        }
    }

    /// The busy slot `itt` names, if any.
    fn slot_of(&self, itt: u32) -> Option<usize> {
        let i = (itt & 0xffff) as usize;
        match self.slots.get(i) {
            Some(s) if s.busy && s.itt == itt => Some(i),
            _ => None,
        }
    }

    fn complete(&mut self, i: usize, now: Instant, mut outcome: Result<(), String>) {
        let s = self.slots[i];
        if outcome.is_ok() && self.plan.op == Op::Read && s.received != self.plan.block_size {
            outcome = Err(format!(
                "GOOD status after {} of {} bytes of Data-In",
                s.received, self.plan.block_size
            ));
        }
        self.slots[i].busy = false;
        self.free.push(i as u32);
        self.inflight -= 1;
        self.done_in_batch += 1;
        match outcome {
            Ok(()) => {
                if now >= self.plan.warmup_end && now < self.plan.end {
                    self.hist
                        .record(now.saturating_duration_since(s.sent).as_nanos() as u64);
                }
                if self.plan.verify {
                    if self.written.len() == VERIFY_BLOCKS {
                        self.written.pop_front();
                    }
                    if !self.written.contains(&s.lba) {
                        self.written.push_back(s.lba);
                    }
                }
            }
            Err(m) => {
                let op = match self.plan.op {
                    Op::Read => "READ",
                    Op::Write => "WRITE",
                };
                self.fail(format_args!("{op}(16) at LBA {}: {m}", s.lba));
            }
        }
    }

    /// Every command still in flight fails with `why`.
    fn fail_inflight(&mut self, why: &str) {
        let n = self.inflight as u64;
        if n > 0 {
            self.errors += n;
            eprintln!("duet-load: {n} command(s) in flight failed: {why}");
        }
        self.inflight = 0;
    }

    /// Handles one target PDU.
    fn on_pdu(&mut self, conn: &mut Conn, pdu: Pdu, now: Instant) -> Result<(), ConnError> {
        match pdu.opcode() {
            Some(Opcode::DataIn) => {
                let status = pdu.flags() & flags::STATUS != 0;
                conn.note(&pdu, status);
                if let Some(i) = self.slot_of(pdu.itt()) {
                    let s = &mut self.slots[i];
                    s.received = s.received.saturating_add(pdu.data.len() as u32);
                    if status {
                        let outcome = if pdu.status() == SCSI_GOOD {
                            Ok(())
                        } else {
                            Err(format!("SCSI status {:#04x}", pdu.status()))
                        };
                        self.complete(i, now, outcome);
                    }
                }
            }
            Some(Opcode::ScsiResponse) => {
                conn.note(&pdu, true);
                if let Some(i) = self.slot_of(pdu.itt()) {
                    let outcome = if pdu.response() != 0 {
                        Err(format!("iSCSI response {:#04x}", pdu.response()))
                    } else if pdu.status() != SCSI_GOOD {
                        let sense = pdu.sense_data().and_then(|s| SenseInfo::parse(&s));
                        Err(match sense {
                            Some(s) => format!("SCSI status {:#04x}, sense {s}", pdu.status()),
                            None => format!("SCSI status {:#04x}", pdu.status()),
                        })
                    } else {
                        Ok(())
                    };
                    self.complete(i, now, outcome);
                }
            }
            Some(Opcode::R2t) => {
                conn.note(&pdu, false);
                if let Some(i) = self.slot_of(pdu.itt()) {
                    let off = pdu.buffer_offset() as usize;
                    let len = pdu.desired_length() as usize;
                    let end = off.saturating_add(len);
                    if self.plan.op != Op::Write || len == 0 || end > self.plan.payload.len() {
                        return Err(ConnError::Protocol(format!(
                            "R2T for bytes {off}..{end} of a {}-byte {:?}",
                            self.plan.payload.len(),
                            self.plan.op
                        )));
                    }
                    let payload = self.plan.payload.clone();
                    conn.queue_data_out(self.slots[i].itt, pdu.ttt(), off, end, &payload);
                }
            }
            _ => {
                if let Some(itt) = conn.handle_other(&pdu)? {
                    if let Some(i) = self.slot_of(itt) {
                        let reason = pdu.response();
                        self.complete(i, now, Err(format!("rejected (reason {reason:#04x})")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts one command into a free slot.
    fn issue(&mut self, conn: &mut Conn, offsets: &mut Offsets, now: Instant) {
        let Some(i) = self.free.pop() else {
            return;
        };
        let lba = offsets.next() * self.plan.lun_blocks as u64;
        let itt = conn.itt(i);
        self.slots[i as usize] = Slot {
            itt,
            busy: true,
            sent: now,
            lba,
            received: 0,
        };
        self.inflight += 1;
        match self.plan.op {
            Op::Read => {
                let cdb = read16_cdb(lba, self.plan.lun_blocks);
                conn.queue_command(itt, &cdb, &Bytes::new(), self.plan.block_size);
            }
            Op::Write => {
                let cdb = write16_cdb(lba, self.plan.lun_blocks);
                let payload = &self.plan.payload;
                conn.queue_command(itt, &cdb, payload, 0);
            }
        }
    }
}

/// Runs one session's load until `plan.end`, drains, verifies (if asked) and logs out.
async fn run_session(
    mut conn: Conn,
    mut offsets: Offsets,
    plan: Plan,
    progress: Arc<Counter>,
) -> SessionResult {
    let qd = plan.qd;
    let start = Instant::now();
    let mut p = Pipeline {
        plan: &plan,
        slots: vec![
            Slot {
                itt: RESERVED_TAG,
                busy: false,
                sent: start,
                lba: 0,
                received: 0,
            };
            qd as usize
        ],
        free: (0..qd).rev().collect(),
        inflight: 0,
        hist: Histogram::new(),
        errors: 0,
        reported: 0,
        done_in_batch: 0,
        written: VecDeque::with_capacity(VERIFY_BLOCKS),
    };
    let drain_deadline = plan.end + DRAIN_TIMEOUT;
    let sleep = tokio::time::sleep_until(plan.end.into());
    tokio::pin!(sleep);
    let mut sleeping_to_end = true;
    let mut now = Instant::now();
    let mut alive = true;
    loop {
        let stopping = now >= plan.end || conn.leave;
        if !stopping {
            while p.inflight < qd && conn.window_open() {
                p.issue(&mut conn, &mut offsets, now);
            }
        } else if p.inflight == 0 {
            break;
        } else if now >= drain_deadline {
            p.fail_inflight("no answer within the drain timeout");
            // The target does not answer: skip verification and logout.
            alive = false;
            break;
        }
        if let Err(e) = conn.flush_now() {
            p.fail_inflight(&format!("send: {e}"));
            alive = false;
            break;
        }
        let interest = if conn.out.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        let mut got_data = false;
        tokio::select! {
            biased;
            r = conn.stream.ready(interest) => match r {
                Ok(ready) if ready.is_readable() => {
                    conn.rbuf.reserve(READ_CHUNK);
                    match conn.stream.try_read_buf(&mut conn.rbuf) {
                        Ok(0) => {
                            p.fail_inflight("the target closed the connection");
                            alive = false;
                            break;
                        }
                        Ok(_) => got_data = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            p.fail_inflight(&format!("receive: {e}"));
                            alive = false;
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    p.fail_inflight(&format!("socket: {e}"));
                    alive = false;
                    break;
                }
            },
            _ = &mut sleep => {
                if sleeping_to_end {
                    sleeping_to_end = false;
                    sleep.as_mut().reset(drain_deadline.into());
                }
            }
        }
        now = Instant::now();
        if got_data {
            loop {
                match conn.next_pdu() {
                    Ok(Some(pdu)) => {
                        if let Err(e) = p.on_pdu(&mut conn, pdu, now) {
                            p.fail_inflight(&e.to_string());
                            alive = false;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        p.fail_inflight(&e.to_string());
                        alive = false;
                        break;
                    }
                }
            }
            if !alive {
                break;
            }
            if p.done_in_batch > 0 {
                progress.0.fetch_add(p.done_in_batch, Ordering::Relaxed);
                p.done_in_batch = 0;
            }
        }
    }
    let mut errors = p.errors;
    let hist = std::mem::take(&mut p.hist);
    let written: Vec<u64> = p.written.iter().copied().collect();
    drop(p);
    let mut verified = 0;
    if alive {
        if plan.verify {
            for lba in written {
                let cdb = read16_cdb(lba, plan.lun_blocks);
                match conn.exec(&cdb, plan.block_size).await {
                    Ok(a) if a.status == SCSI_GOOD && a.data[..] == plan.payload[..] => {
                        verified += 1
                    }
                    Ok(a) if a.status == SCSI_GOOD => {
                        errors += 1;
                        eprintln!("duet-load: verify: LBA {lba} does not hold the data written");
                    }
                    Ok(a) => {
                        errors += 1;
                        eprintln!(
                            "duet-load: verify: READ(16) at LBA {lba}: SCSI status {:#04x}{}",
                            a.status,
                            a.sense.map(|s| format!(", sense {s}")).unwrap_or_default()
                        );
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("duet-load: verify: READ(16) at LBA {lba}: {e}");
                        break;
                    }
                }
            }
        }
        conn.logout().await;
    }
    SessionResult {
        hist,
        errors,
        verified,
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestration
// ---------------------------------------------------------------------------------------------

/// This process's user + system CPU time so far, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The ISID of session `index`: random-format (type 10b), with this process's id so that two
/// runs at once do not reinstate each other's sessions.
fn isid_for(index: u32) -> [u8; 6] {
    let pid = std::process::id();
    [
        0x80,
        (pid >> 16) as u8,
        (pid >> 8) as u8,
        pid as u8,
        (index >> 8) as u8,
        index as u8,
    ]
}

/// Checks the options that need no target.
pub fn validate(args: &Args) -> Result<(), LoadError> {
    if args.block_size == 0 || args.block_size > MAX_BLOCK_SIZE {
        return Err(LoadError::Usage(format!(
            "--block-size {} is out of range (1..={MAX_BLOCK_SIZE})",
            args.block_size
        )));
    }
    if args.duration.is_zero() {
        return Err(LoadError::Usage("--duration must be more than 0".into()));
    }
    if args.verify && args.op != Op::Write {
        return Err(LoadError::Usage("--verify needs --op write".into()));
    }
    if let Some(span) = args.span {
        if span < args.block_size {
            return Err(LoadError::Usage(format!(
                "--span {span} is smaller than --block-size {}",
                args.block_size
            )));
        }
    }
    Ok(())
}

/// Logs in every session, runs the load and gathers the report. Progress lines go to stderr
/// unless `args.quiet`. Every error returned happened before the measurement started.
pub async fn run(args: &Args) -> Result<Report, LoadError> {
    validate(args)?;
    let mut logins = tokio::task::JoinSet::new();
    for i in 0..args.sessions {
        let (addr, ini, tgt, lun) = (
            args.portal,
            args.initiator.clone(),
            args.target.clone(),
            args.lun,
        );
        logins.spawn(async move { (i, Conn::login(addr, &ini, &tgt, isid_for(i), lun).await) });
    }
    let mut conns: Vec<Option<Conn>> = (0..args.sessions).map(|_| None).collect();
    while let Some(r) = logins.join_next().await {
        let (i, c) = r.map_err(|e| LoadError::Login(format!("login task: {e}")))?;
        conns[i as usize] = Some(c?);
    }
    let mut conns: Vec<Conn> = conns.into_iter().flatten().collect();

    // Every session: clear any UNIT ATTENTION; the first also learns the LUN's geometry.
    let mut tur = [0u8; 16];
    tur[0] = 0x00; // TEST UNIT READY (a 6-byte CDB padded with zeros)
    for c in conns.iter_mut() {
        c.exec_good("TEST UNIT READY", &tur, 0).await?;
    }
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9e;
    rc16[1] = 0x10;
    rc16[10..14].copy_from_slice(&32u32.to_be_bytes());
    let cap = conns[0].exec_good("READ CAPACITY (16)", &rc16, 32).await?;
    let (blocks, lba_size) = parse_read_capacity16(&cap)
        .ok_or_else(|| LoadError::Setup("short READ CAPACITY (16) data".into()))?;
    if lba_size == 0 || !args.block_size.is_multiple_of(lba_size as u64) {
        return Err(LoadError::Usage(format!(
            "--block-size {} is not a multiple of the LUN's block size {lba_size}",
            args.block_size
        )));
    }
    let capacity = blocks.saturating_mul(lba_size as u64);
    let span = args.span.unwrap_or(capacity);
    if span > capacity {
        return Err(LoadError::Usage(format!(
            "--span {span} exceeds the LUN's {capacity} bytes"
        )));
    }
    let units = span / args.block_size;
    if units == 0 {
        return Err(LoadError::Usage(format!(
            "the span ({span} bytes) holds no {}-byte block",
            args.block_size
        )));
    }
    if args.pattern == Pattern::Seq && units < args.sessions as u64 {
        return Err(LoadError::Usage(format!(
            "the span holds {units} block(s), fewer than the {} sessions' slices",
            args.sessions
        )));
    }

    let payload = match args.op {
        Op::Write => make_payload(args.block_size as usize, args.seed),
        Op::Read => Bytes::new(),
    };
    let start = Instant::now();
    let warmup_end = start + args.warmup;
    let end = warmup_end + args.duration;
    let plan = Plan {
        op: args.op,
        qd: args.qd,
        block_size: args.block_size as u32,
        lun_blocks: (args.block_size / lba_size as u64) as u32,
        payload,
        warmup_end,
        end,
        verify: args.verify,
    };
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for (i, c) in conns.drain(..).enumerate() {
        let counter = Arc::new(Counter::default());
        counters.push(counter.clone());
        let offsets = Offsets::new(args.pattern, args.seed, i as u32, args.sessions, units);
        tasks.push(tokio::spawn(run_session(c, offsets, plan.clone(), counter)));
    }
    let progress = (!args.quiet).then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = start;
            loop {
                tick += Duration::from_secs(1);
                tokio::time::sleep_until(tick.into()).await;
                let total: u64 = counters.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
                let t = tick.duration_since(start).as_secs();
                let phase = if tick <= warmup_end { " (warmup)" } else { "" };
                eprintln!("duet-load: {t:>4}s {:>9} ops/s{phase}", total - last);
                last = total;
                if tick >= end {
                    return;
                }
            }
        })
    });
    tokio::time::sleep_until(warmup_end.into()).await;
    let cpu0 = cpu_seconds();
    tokio::time::sleep_until(end.into()).await;
    let cpu1 = cpu_seconds();

    let mut hist = Histogram::new();
    let mut errors = 0u64;
    let mut verified = 0u64;
    for t in tasks {
        match t.await {
            Ok(r) => {
                hist.merge(&r.hist);
                errors += r.errors;
                verified += r.verified;
            }
            Err(e) => {
                errors += 1;
                eprintln!("duet-load: a session task failed: {e}");
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    let seconds = args.duration.as_secs_f64();
    let ops = hist.count();
    let bytes = ops * args.block_size;
    let us = |ns: f64| (ns / 100.0).round() / 10.0;
    Ok(Report {
        op: args.op,
        pattern: args.pattern,
        block_size: args.block_size,
        qd: args.qd,
        sessions: args.sessions,
        seconds,
        ops,
        bytes,
        iops: (ops as f64 / seconds * 10.0).round() / 10.0,
        mib_s: (bytes as f64 / seconds / (1024.0 * 1024.0) * 100.0).round() / 100.0,
        lat_mean_us: us(hist.mean()),
        lat_p50_us: us(hist.quantile(0.50) as f64),
        lat_p99_us: us(hist.quantile(0.99) as f64),
        lat_max_us: us(hist.max() as f64),
        errors,
        client_cpu_s: ((cpu1 - cpu0).max(0.0) * 1000.0).round() / 1000.0,
        verified_blocks: args.verify.then_some(verified),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn histogram_buckets_cover_values_tightly() {
        let mut v = 0u64;
        while v < HIST_MAX {
            let i = Histogram::index(v);
            assert!(i < HIST_BUCKETS, "index {i} for {v}");
            let (lo, w) = Histogram::bucket(i);
            assert!(
                lo <= v && v < lo + w,
                "{v} outside bucket {i} = [{lo}, +{w})"
            );
            assert!(w == 1 || w * 64 <= lo, "bucket {i} too wide: {w} at {lo}");
            v = v * 9 / 8 + 1;
        }
        assert_eq!(Histogram::index(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn histogram_percentiles_within_two_percent() {
        // 1..=10000 us, one value each: p50 = 5000 us, p99 = 9900 us exactly in the data.
        let mut h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us * 1000);
        }
        let close = |got: u64, want: f64| ((got as f64 - want) / want).abs() < 0.02;
        assert!(
            close(h.quantile(0.5), 5_000_000.0),
            "p50 {}",
            h.quantile(0.5)
        );
        assert!(
            close(h.quantile(0.99), 9_900_000.0),
            "p99 {}",
            h.quantile(0.99)
        );
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.quantile(0.0), 1000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.mean(), 5_000_500.0);
        // Small values are exact.
        let mut s = Histogram::new();
        for v in [3, 3, 7, 100] {
            s.record(v);
        }
        assert_eq!(s.quantile(0.5), 3);
        assert_eq!(s.quantile(0.75), 7);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }

    #[test]
    fn histogram_merge_equals_recording_together() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5000u64 {
            let x = v * v * 37 + 11;
            if v % 3 == 0 {
                a.record(x)
            } else {
                b.record(x)
            }
            all.record(x);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn cli_defaults_and_values() {
        let a = Args::try_parse_from([
            "duet-load",
            "--portal",
            "127.0.0.1:3292",
            "--target",
            "iqn.x:y",
        ])
        .expect("parses");
        assert_eq!(a.portal, "127.0.0.1:3292".parse().unwrap());
        assert_eq!((a.lun, a.op, a.pattern), (0, Op::Read, Pattern::Random));
        assert_eq!((a.block_size, a.qd, a.sessions), (4096, 32, 1));
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.warmup, Duration::from_secs(1));
        assert_eq!(a.span, None);
        assert_eq!(a.initiator, "iqn.2026-11.dev.duet:load");
        assert_eq!(a.seed, 1);
        assert!(!a.json && !a.quiet && !a.verify);

        let b = Args::try_parse_from([
            "duet-load",
            "--portal",
            "127.0.0.1",
            "--target",
            "t",
            "--lun",
            "1",
            "--op",
            "write",
            "--pattern",
            "seq",
            "--block-size",
            "64KiB",
            "--qd",
            "8",
            "--sessions",
            "2",
            "--duration",
            "1500ms",
            "--warmup",
            "0",
            "--span",
            "16MiB",
            "--seed",
            "7",
            "--json",
            "--quiet",
        ])
        .expect("parses");
        assert_eq!(b.portal.port(), 3260);
        assert_eq!(
            (b.op, b.pattern, b.block_size),
            (Op::Write, Pattern::Seq, 65536)
        );
        assert_eq!((b.qd, b.sessions, b.lun, b.seed), (8, 2, 1, 7));
        assert_eq!(b.duration, Duration::from_millis(1500));
        assert_eq!(b.warmup, Duration::ZERO);
        assert_eq!(b.span, Some(16 << 20));
        assert!(b.json && b.quiet);
    }

    #[test]
    fn cli_rejects_bad_usage() {
        let base = ["duet-load", "--portal", "127.0.0.1:3260", "--target", "t"];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            Args::try_parse_from(v)
        };
        assert!(Args::try_parse_from(["duet-load", "--target", "t"]).is_err());
        assert!(with(&["--op", "trim"]).is_err());
        assert!(with(&["--qd", "0"]).is_err());
        assert!(with(&["--duration", "ten"]).is_err());
        assert!(with(&["--block-size", "4q"]).is_err());
        let v = with(&["--verify"]).expect("parses");
        assert!(matches!(validate(&v), Err(LoadError::Usage(_))));
        let z = with(&["--duration", "0s"]).expect("parses");
        assert!(matches!(validate(&z), Err(LoadError::Usage(_))));
    }

    #[test]
    fn seq_slices_partition_the_span_and_wrap() {
        let mut seen = Vec::new();
        for i in 0..3 {
            let mut o = Offsets::new(Pattern::Seq, 1, i, 3, 10);
            let first: Vec<u64> = (0..o.len).map(|_| o.next()).collect();
            assert_eq!(o.next(), first[0], "wraps to the slice start");
            seen.extend(first);
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let mut r = Offsets::new(Pattern::Random, 1, 0, 1, 7);
        assert!((0..1000).all(|_| r.next() < 7));
    }

    #[test]
    fn negotiated_limits_follow_the_answers() {
        let mut a = TextPairs::new();
        a.push("InitialR2T", "Yes");
        a.push("ImmediateData", "No");
        a.push("MaxRecvDataSegmentLength", "8192");
        a.push("FirstBurstLength", "65536");
        a.push("MaxBurstLength", "32768");
        let l = limits_from_answers(&a).expect("ok");
        assert!(l.initial_r2t && !l.immediate_data);
        assert_eq!((l.max_xmit_seg, l.first_burst), (8192, 32768));
        let mut d = TextPairs::new();
        d.push("HeaderDigest", "CRC32C");
        assert!(limits_from_answers(&d).is_err());
    }
}
