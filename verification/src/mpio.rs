//! A multipath, ALUA-aware workload over [`crate::initiator`] sessions, with an oracle that checks
//! every byte read.
//!
//! Paths behave like Linux dm-multipath with `prio alua` and `failback immediate`: one session per
//! portal (each with its own ISID); I/O goes round-robin over the paths whose port group is
//! Active/Optimized, else over the Active/Non-optimized ones, never to Standby or Unavailable
//! ports. States come from REPORT TARGET PORT GROUPS on each path, at start, every second, and
//! at once after an ALUA-related unit attention or NOT READY. Commands are retried on unit
//! attentions, ALUA transitions, standby/unavailable ports, BUSY/TASK SET FULL, ABORTED COMMAND
//! and lost connections, until `command_deadline` (from the first issue) runs out; a lost path is
//! logged in again in the background every 200 ms.
//!
//! Every block written is self-describing ([`encode_block`]): magic, LBA, version, writer id and
//! an FNV-1a checksum over the whole block, with a fill derived from (LBA, version). Writes to one
//! block are serialised and versions per block increase, so the oracle can tell for each read
//! whether it returned a version at least as new as the newest acknowledged one when the read was
//! issued (else a *stale read*), and whether the block is intact and holds a version that was
//! ever written (else a *corrupt read*). After the load, every block is read once more: a version
//! older than the newest acknowledged one is a *lost write*.

use crate::initiator::{
    read16_cdb, write16_cdb, Chap, InitError, LoginOptions, ScsiResult, SenseInfo, Session,
    STATUS_BUSY, STATUS_CHECK_CONDITION, STATUS_GOOD, STATUS_TASK_SET_FULL,
};
use bytes::Bytes;
use duet_core::alua::AluaState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};

/// Magic at the start of every block this workload writes ("DUETMPIO").
pub const BLOCK_MAGIC: u64 = 0x4455_4554_4d50_494f;
/// Bytes of the block header (magic, lba, version, writer, reserved, checksum).
pub const HEADER_LEN: usize = 40;
/// A gap with no completion longer than this is a stall window.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(200);
/// How often paths are refreshed with RTPG.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a lost path is logged in again.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
/// How many error/violation messages a report keeps.
const KEEP_MESSAGES: usize = 10;

/// What to run.
#[derive(Clone, Debug)]
pub struct MpioConfig {
    /// One session per portal (a portal may be listed twice: two paths to one port).
    pub portals: Vec<SocketAddr>,
    /// Target IQN.
    pub target: String,
    /// LUN number.
    pub lun: u16,
    /// The working set: LBAs `0..blocks`.
    pub blocks: u64,
    /// Block size; 0 = take it from READ CAPACITY (16). A non-zero value must match it.
    pub block_size: u32,
    /// Commands in flight.
    pub queue_depth: usize,
    /// Share of writes, 0-100.
    pub write_percent: u8,
    /// How long the load runs (unless stopped earlier through the `stop` channel).
    pub duration: Duration,
    /// A command that has not completed this long after its first issue (across retries) is an
    /// error.
    pub command_deadline: Duration,
    /// Seed of the workload's random choices.
    pub seed: u64,
    /// Our initiator name.
    pub initiator: String,
    /// CHAP credentials, if the target wants CHAP.
    pub chap: Option<Chap>,
    /// Write version 1 to every block before the load (else read every block to learn its
    /// current version).
    pub init: bool,
    /// No progress line on stderr.
    pub quiet: bool,
    /// Ping the target after this long without a PDU from it.
    pub nop_interval: Duration,
    /// Drop a connection whose target stays silent this long after the ping is due.
    pub nop_timeout: Duration,
}

impl Default for MpioConfig {
    fn default() -> Self {
        MpioConfig {
            portals: Vec::new(),
            target: String::new(),
            lun: 1,
            blocks: 4096,
            block_size: 0,
            queue_depth: 8,
            write_percent: 50,
            duration: Duration::from_secs(20),
            command_deadline: Duration::from_secs(30),
            seed: 1,
            initiator: "iqn.2026-11.dev.duet:mpio".into(),
            chap: None,
            init: false,
            quiet: true,
            nop_interval: Duration::from_secs(1),
            nop_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a run could not be carried out at all (as opposed to a run that found problems, which
/// returns a [`Report`] that is not clean).
#[derive(Debug)]
pub enum MpioError {
    /// The configuration is unusable.
    Config(String),
    /// No portal could be logged in to.
    NoPath(String),
    /// The LUN could not be sized, or is smaller than the working set.
    Capacity(String),
}

impl fmt::Display for MpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpioError::Config(m) => write!(f, "configuration: {m}"),
            MpioError::NoPath(m) => write!(f, "no usable path: {m}"),
            MpioError::Capacity(m) => write!(f, "capacity: {m}"),
        }
    }
}

impl std::error::Error for MpioError {}

/// An interval with no command completion at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// Start, in ms from the start of the load.
    pub start_ms: u64,
    /// Length in ms.
    pub len_ms: u64,
}

/// A path's state as it changed during the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateChange {
    /// When, in ms from the start of the run (login).
    pub at_ms: u64,
    pub from: String,
    pub to: String,
}

/// Per-path figures.
#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    pub portal: String,
    /// Commands completed through this path (all phases).
    pub ops: u64,
    /// The last state seen.
    pub state: String,
    pub state_changes: Vec<StateChange>,
}

/// What a run did and found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Load commands completed (successfully or not).
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub acked_writes: u64,
    /// Bytes moved by successful load commands.
    pub bytes: u64,
    /// Commands that failed for the client (all phases).
    pub errors: u64,
    /// The first error messages.
    pub error_messages: Vec<String>,
    pub stale_reads: u64,
    pub corrupt_reads: u64,
    /// Reads that overlapped a write of the same block and returned a mix of two versions
    /// (allowed by SCSI; not a violation).
    pub torn_reads: u64,
    pub lost_writes: u64,
    /// The first stale/corrupt/lost findings, described.
    pub violations: Vec<String>,
    /// Blocks read by the final verification.
    pub blocks_checked: u64,
    pub max_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub stalls: Vec<Stall>,
    pub longest_stall_ms: u64,
    pub paths: Vec<PathReport>,
    /// Retries by reason (unit_attention, transitioning, standby, unavailable, busy,
    /// task_set_full, aborted_command, disconnected, no_path, ...).
    pub retries: BTreeMap<String, u64>,
    /// Length of the load phase.
    pub load_ms: u64,
    pub block_size: u32,
    pub blocks: u64,
}

impl Report {
    /// No errors, no stale or corrupt reads, no lost writes.
    pub fn clean(&self) -> bool {
        self.errors == 0
            && self.stale_reads == 0
            && self.corrupt_reads == 0
            && self.lost_writes == 0
    }
}

// ------------------------------------------------------------------------------------------
// Blocks
// ------------------------------------------------------------------------------------------

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(FNV_PRIME))
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn block_checksum(block: &[u8]) -> u64 {
    let h = fnv1a(FNV_OFFSET, &block[..32]);
    let h = fnv1a(h, &[0u8; 8]);
    fnv1a(h, &block[HEADER_LEN..])
}

/// The content of block `lba` at `version`, written by `writer`: a 40-byte header (magic, lba,
/// version, writer id, reserved, FNV-1a-64 checksum of the block with the checksum field zeroed,
/// all big-endian) followed by a fill derived from (lba, version).
pub fn encode_block(lba: u64, version: u64, writer: u32, block_size: usize) -> Vec<u8> {
    let mut b = vec![0u8; block_size.max(HEADER_LEN)];
    b[0..8].copy_from_slice(&BLOCK_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&lba.to_be_bytes());
    b[16..24].copy_from_slice(&version.to_be_bytes());
    b[24..28].copy_from_slice(&writer.to_be_bytes());
    let mut s = mix64(lba ^ mix64(version));
    for chunk in b[HEADER_LEN..].chunks_mut(8) {
        s = mix64(s);
        let bytes = s.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let c = block_checksum(&b);
    b[32..40].copy_from_slice(&c.to_be_bytes());
    b
}

/// What a block read back holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockContent {
    /// All zeros: never written.
    Zero,
    /// An intact block of this workload.
    Written { lba: u64, version: u64, writer: u32 },
    /// The magic is there but the checksum does not match: damaged, or torn by a concurrent
    /// write (`lba` is the header's).
    ChecksumMismatch {
        lba: u64,
        stored: u64,
        computed: u64,
    },
    /// Anything else.
    Corrupt(String),
}

/// Decodes and checks one block.
pub fn decode_block(b: &[u8]) -> BlockContent {
    if b.len() < HEADER_LEN {
        return BlockContent::Corrupt(format!("short block ({} bytes)", b.len()));
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_be_bytes(a)
    };
    if u64_at(0) != BLOCK_MAGIC {
        if b.iter().all(|x| *x == 0) {
            return BlockContent::Zero;
        }
        return BlockContent::Corrupt("bad magic".into());
    }
    let stored = u64_at(32);
    let computed = block_checksum(b);
    if stored != computed {
        return BlockContent::ChecksumMismatch {
            lba: u64_at(8),
            stored,
            computed,
        };
    }
    BlockContent::Written {
        lba: u64_at(8),
        version: u64_at(16),
        writer: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    }
}

// ------------------------------------------------------------------------------------------
// Shared state
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default)]
struct BlockState {
    /// Highest acknowledged version.
    acked: u64,
    /// Next version to write; versions `1..next` (or `baseline..next`) were issued.
    next: u64,
    /// The version found (or written) before the load; older writers' content is accepted only
    /// at this version.
    baseline: u64,
    writing: bool,
    /// Writes started on this block (to tell whether a read overlapped one).
    writes_started: u64,
}

#[derive(Default)]
struct Stats {
    ops: u64,
    reads: u64,
    writes: u64,
    acked_writes: u64,
    bytes: u64,
    errors: u64,
    error_messages: Vec<String>,
    stale_reads: u64,
    corrupt_reads: u64,
    torn_reads: u64,
    lost_writes: u64,
    violations: Vec<String>,
    blocks_checked: u64,
    retries: BTreeMap<String, u64>,
    hist: Histogram,
    stalls: Vec<Stall>,
    last_completion: Option<Instant>,
    load_ms: u64,
}

impl Stats {
    fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.error_messages.len() < KEEP_MESSAGES {
            self.error_messages.push(msg);
        }
    }

    fn violation(&mut self, msg: String) {
        if self.violations.len() < KEEP_MESSAGES {
            self.violations.push(msg);
        }
    }
}

/// Log-linear latency histogram in microseconds (about 1.6 % resolution).
#[derive(Default)]
struct Histogram {
    counts: BTreeMap<u32, u64>,
    total: u64,
    max_us: u64,
}

impl Histogram {
    fn bucket(us: u64) -> u32 {
        if us < 64 {
            return us as u32;
        }
        let e = 63 - us.leading_zeros(); // >= 6
        let mant = (us >> (e - 6)) & 63;
        (e - 5) * 64 + mant as u32
    }

    fn lower(b: u32) -> u64 {
        if b < 64 {
            return b as u64;
        }
        let e = b / 64 + 5;
        let mant = (b % 64) as u64;
        (64 + mant) << (e - 6)
    }

    fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        *self.counts.entry(Self::bucket(us)).or_insert(0) += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return (Self::lower(*b).min(self.max_us)) as f64 / 1000.0;
            }
        }
        self.max_us as f64 / 1000.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathHealth {
    Down,
    Up,
}

struct PathState {
    session: Option<Arc<Session>>,
    health: PathHealth,
    rtpi: Option<u16>,
    alua: Option<u8>,
    reconnecting: bool,
    label: String,
}

struct Path {
    addr: SocketAddr,
    isid: [u8; 6],
    st: Mutex<PathState>,
    ops: AtomicU64,
    changes: Mutex<Vec<StateChange>>,
}

fn alua_label(code: Option<u8>) -> &'static str {
    match code.and_then(AluaState::from_code) {
        Some(AluaState::ActiveOptimized) => "A/O",
        Some(AluaState::ActiveNonOptimized) => "A/N",
        Some(AluaState::Standby) => "standby",
        Some(AluaState::Unavailable) => "unavailable",
        Some(AluaState::Offline) => "offline",
        Some(AluaState::Transitioning) => "transitioning",
        None if code.is_some() => "unknown-state",
        None => "unknown",
    }
}

/// Path preference: 0 = A/O, 1 = A/N, 2 = unknown or transitioning, None = never.
fn tier(code: Option<u8>) -> Option<u8> {
    match code.and_then(AluaState::from_code) {
        Some(AluaState::ActiveOptimized) => Some(0),
        Some(AluaState::ActiveNonOptimized) => Some(1),
        Some(AluaState::Transitioning) | None => Some(2),
        Some(AluaState::Standby | AluaState::Unavailable | AluaState::Offline) => None,
    }
}

struct Shared {
    cfg: MpioConfig,
    block_size: AtomicU64,
    writer: u32,
    paths: Vec<Arc<Path>>,
    rr: AtomicUsize,
    /// When a path was last found usable.
    last_usable: Mutex<Instant>,
    oracle: Mutex<Vec<BlockState>>,
    stats: Mutex<Stats>,
    start: Instant,
    load_start: Mutex<Option<Instant>>,
    in_load: AtomicBool,
    shutdown: AtomicBool,
    refresh_requested: AtomicU64,
    refresh_notify: Notify,
    refresh_done: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why one attempt did not finish the command.
enum Attempt {
    Done(ScsiResult),
    Retry {
        reason: &'static str,
        delay: Duration,
        refresh: bool,
        avoid: bool,
    },
    Fail(String),
}

fn classify(r: ScsiResult) -> Attempt {
    let retry = |reason, delay_ms: u64, refresh, avoid| Attempt::Retry {
        reason,
        delay: Duration::from_millis(delay_ms),
        refresh,
        avoid,
    };
    match r.status {
        STATUS_GOOD => Attempt::Done(r),
        STATUS_BUSY => retry("busy", 50, false, false),
        STATUS_TASK_SET_FULL => retry("task_set_full", 50, false, false),
        STATUS_CHECK_CONDITION => match r.sense {
            Some(SenseInfo {
                key: 0x6,
                asc,
                ascq,
            }) => {
                let alua = (asc == 0x2a && (ascq == 0x06 || ascq == 0x03)) || asc == 0x29;
                retry("unit_attention", 0, alua, false)
            }
            Some(SenseInfo {
                key: 0x2,
                asc: 0x04,
                ascq: 0x0a,
            }) => retry("transitioning", 100, true, false),
            Some(SenseInfo {
                key: 0x2,
                asc: 0x04,
                ascq: 0x0b,
            }) => retry("standby", 0, true, true),
            Some(SenseInfo {
                key: 0x2,
                asc: 0x04,
                ascq: 0x0c,
            }) => retry("unavailable", 0, true, true),
            Some(SenseInfo { key: 0xb, .. }) => retry("aborted_command", 0, false, false),
            Some(s) => Attempt::Fail(format!("CHECK CONDITION, sense {s}")),
            None => Attempt::Fail("CHECK CONDITION without sense".into()),
        },
        s => Attempt::Fail(format!("SCSI status {s:#04x}")),
    }
}

impl Shared {
    fn ms_since_start(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn set_label(&self, path: &Path, st: &mut PathState) {
        let label = match st.health {
            PathHealth::Down => "down".to_string(),
            PathHealth::Up => alua_label(st.alua).to_string(),
        };
        if label != st.label {
            lock(&path.changes).push(StateChange {
                at_ms: self.ms_since_start(),
                from: std::mem::replace(&mut st.label, label.clone()),
                to: label,
            });
        }
    }

    /// A usable path: best tier, round-robin, avoiding `avoid` when another one is there.
    fn pick(&self, avoid: &[usize]) -> Option<(usize, Arc<Session>)> {
        let mut best: Option<u8> = None;
        let mut cands: Vec<(usize, Arc<Session>, bool)> = Vec::new();
        for (i, p) in self.paths.iter().enumerate() {
            let st = lock(&p.st);
            if st.health != PathHealth::Up {
                continue;
            }
            let Some(s) = &st.session else { continue };
            if s.is_closed() || s.logout_requested() {
                continue;
            }
            let Some(t) = tier(st.alua) else { continue };
            match best {
                Some(b) if t > b => continue,
                Some(b) if t < b => cands.clear(),
                _ => {}
            }
            best = Some(t);
            cands.push((i, s.clone(), avoid.contains(&i)));
        }
        if cands.iter().any(|c| !c.2) {
            cands.retain(|c| !c.2);
        }
        if cands.is_empty() {
            return None;
        }
        *lock(&self.last_usable) = Instant::now();
        let n = self.rr.fetch_add(1, Ordering::Relaxed) % cands.len();
        let (i, s, _) = cands.swap_remove(n);
        Some((i, s))
    }

    fn retry_noted(&self, reason: &str) {
        *lock(&self.stats)
            .retries
            .entry(reason.to_string())
            .or_insert(0) += 1;
    }

    /// Asks for an RTPG refresh of every path; returns the generation to wait for.
    fn request_refresh(&self) -> u64 {
        let g = self.refresh_requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.refresh_notify.notify_one();
        g
    }

    async fn wait_refresh(&self, g: u64, within: Duration) {
        let mut rx = self.refresh_done.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|d| *d >= g)).await;
    }

    /// Marks path `i` down if `session` is still its session, and starts reconnecting it.
    fn mark_down(self: &Arc<Self>, i: usize, session: &Arc<Session>) {
        let path = &self.paths[i];
        let spawn = {
            let mut st = lock(&path.st);
            let same = st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session));
            if !same {
                return;
            }
            st.session = None;
            st.health = PathHealth::Down;
            self.set_label(path, &mut st);
            let spawn = !st.reconnecting;
            st.reconnecting = true;
            spawn
        };
        session.close();
        if spawn {
            let me = self.clone();
            tokio::spawn(async move { me.reconnect(i).await });
        }
    }

    async fn reconnect(self: Arc<Self>, i: usize) {
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                lock(&self.paths[i].st).reconnecting = false;
                return;
            }
            tokio::time::sleep(RECONNECT_INTERVAL).await;
            if self.shutdown.load(Ordering::SeqCst) {
                lock(&self.paths[i].st).reconnecting = false;
                return;
            }
            if let Ok((s, rtpi, alua)) = self.open_path(i).await {
                let path = &self.paths[i];
                let mut st = lock(&path.st);
                st.session = Some(Arc::new(s));
                st.rtpi = rtpi;
                st.alua = alua;
                st.health = PathHealth::Up;
                st.reconnecting = false;
                self.set_label(path, &mut st);
                return;
            }
        }
    }

    fn login_options(&self, i: usize) -> LoginOptions {
        LoginOptions {
            isid: self.paths[i].isid,
            chap: self.cfg.chap.clone(),
            nop_interval: self.cfg.nop_interval,
            nop_timeout: self.cfg.nop_timeout,
            ..LoginOptions::default()
        }
    }

    /// Logs in on path `i` and learns its relative port id and ALUA state.
    async fn open_path(&self, i: usize) -> Result<(Session, Option<u16>, Option<u8>), InitError> {
        let s = Session::login(
            self.paths[i].addr,
            &self.cfg.initiator,
            &self.cfg.target,
            &self.login_options(i),
        )
        .await?;
        let probe = async {
            let page = retry_ua(|| s.inquiry_vpd(self.cfg.lun, 0x83)).await?;
            let rtpi = crate::initiator::parse_relative_port_id(&page);
            let alua = path_state(&s, self.cfg.lun, rtpi).await?;
            Ok::<_, InitError>((rtpi, alua))
        };
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok((rtpi, alua))) => Ok((s, rtpi, alua)),
            Ok(Err(e)) => {
                s.close();
                Err(e)
            }
            Err(_) => {
                s.close();
                Err(InitError::Timeout("path probe"))
            }
        }
    }

    /// Re-reads the ALUA state of every up path (each through itself).
    async fn refresh_all(self: &Arc<Self>) {
        let mut jobs = Vec::new();
        for i in 0..self.paths.len() {
            let (session, rtpi) = {
                let st = lock(&self.paths[i].st);
                match (&st.session, st.health) {
                    (Some(s), PathHealth::Up) => (s.clone(), st.rtpi),
                    _ => continue,
                }
            };
            let me = self.clone();
            jobs.push(tokio::spawn(async move {
                if session.is_closed() {
                    me.mark_down(i, &session);
                    return;
                }
                if session.logout_requested() {
                    // The target wants this session gone: let its commands finish, log out and
                    // log in again (it may well refuse, e.g. while shutting down).
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while session.outstanding() > 0 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let _ = session.logout().await;
                    me.mark_down(i, &session);
                    return;
                }
                let r = tokio::time::timeout(
                    Duration::from_secs(2),
                    path_state(&session, me.cfg.lun, rtpi),
                )
                .await;
                match r {
                    Ok(Ok(alua)) => {
                        let path = &me.paths[i];
                        let mut st = lock(&path.st);
                        if st
                            .session
                            .as_ref()
                            .is_some_and(|s| Arc::ptr_eq(s, &session))
                        {
                            st.alua = alua;
                            me.set_label(path, &mut st);
                        }
                    }
                    Ok(Err(InitError::Disconnected)) => me.mark_down(i, &session),
                    // A slow or failing RTPG keeps the last known state; commands decide.
                    _ => {}
                }
            }));
        }
        for j in jobs {
            let _ = j.await;
        }
    }

    /// Runs one command with retries until it completes or the deadline passes.
    async fn exec_retry(
        self: &Arc<Self>,
        cdb: &[u8],
        data_out: Bytes,
        data_in_len: u32,
    ) -> Result<ScsiResult, String> {
        let first = Instant::now();
        let deadline = first + self.cfg.command_deadline;
        let mut avoid: Vec<usize> = Vec::new();
        let mut attempts = 0u32;
        let mut last = String::from("no attempt");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no completion within {:?} ({attempts} attempts; last: {last})",
                    self.cfg.command_deadline
                ));
            }
            let Some((i, session)) = self.pick(&avoid) else {
                // Like a multipath device with a bounded no-path queue: once no path at all has
                // been usable for a whole deadline, fail at once instead of waiting again.
                let since = lock(&self.last_usable).elapsed();
                if since >= self.cfg.command_deadline {
                    return Err(format!("no usable path for {} ms", since.as_millis()));
                }
                self.retry_noted("no_path");
                last = "no usable path".into();
                tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
                continue;
            };
            attempts += 1;
            let r = tokio::time::timeout(
                deadline - now,
                session.exec(self.cfg.lun, cdb, data_out.clone(), data_in_len),
            )
            .await;
            let outcome = match r {
                Err(_) => {
                    return Err(format!(
                        "no completion within {:?} ({attempts} attempts; the last one on {} hung)",
                        self.cfg.command_deadline, self.paths[i].addr
                    ))
                }
                Ok(Err(e @ (InitError::Disconnected | InitError::Protocol(_)))) => {
                    self.mark_down(i, &session);
                    last = format!("{}: {e}", self.paths[i].addr);
                    Attempt::Retry {
                        reason: "disconnected",
                        delay: Duration::ZERO,
                        refresh: false,
                        avoid: true,
                    }
                }
                Ok(Err(e)) => Attempt::Fail(format!("{}: {e}", self.paths[i].addr)),
                Ok(Ok(res)) => {
                    self.paths[i].ops.fetch_add(1, Ordering::Relaxed);
                    classify(res)
                }
            };
            match outcome {
                Attempt::Done(res) => return Ok(res),
                Attempt::Fail(m) => {
                    return Err(format!(
                        "{m} (path {}, after {attempts} attempts)",
                        self.paths[i].addr
                    ))
                }
                Attempt::Retry {
                    reason,
                    delay,
                    refresh,
                    avoid: av,
                } => {
                    self.retry_noted(reason);
                    if reason != "disconnected" {
                        last = format!("{}: {reason}", self.paths[i].addr);
                    }
                    if av && !avoid.contains(&i) {
                        avoid.push(i);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if refresh {
                        let g = self.request_refresh();
                        self.wait_refresh(g, Duration::from_secs(3).min(left)).await;
                    }
                    if !delay.is_zero() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(delay.min(left)).await;
                    }
                }
            }
        }
    }

    fn bs(&self) -> u32 {
        self.block_size.load(Ordering::Relaxed) as u32
    }

    /// Notes a completion of the load phase for latency and stall accounting.
    fn completed(&self, st: &mut Stats, issued: Instant) {
        let now = Instant::now();
        st.hist.record(now - issued);
        if let Some(ls) = *lock(&self.load_start) {
            let last = st.last_completion.unwrap_or(ls);
            if now > last && now - last > STALL_THRESHOLD {
                st.stalls.push(Stall {
                    start_ms: last.saturating_duration_since(ls).as_millis() as u64,
                    len_ms: (now - last).as_millis() as u64,
                });
            }
            if st.last_completion.is_none_or(|l| now > l) {
                st.last_completion = Some(now);
            }
        }
    }

    /// Writes the next version of `lba` (the caller holds its write slot). Returns whether the
    /// write was acknowledged.
    async fn write_block(self: &Arc<Self>, lba: u64, version: u64, load: bool) -> bool {
        let bs = self.bs();
        let data = Bytes::from(encode_block(lba, version, self.writer, bs as usize));
        let issued = Instant::now();
        let r = self.exec_retry(&write16_cdb(lba, 1), data, 0).await;
        let ok = r.is_ok();
        {
            let mut o = lock(&self.oracle);
            let b = &mut o[lba as usize];
            b.writing = false;
            if ok && version > b.acked {
                b.acked = version;
            }
        }
        let mut st = lock(&self.stats);
        if load {
            st.ops += 1;
            st.writes += 1;
            self.completed(&mut st, issued);
        }
        match r {
            Ok(_) => {
                if load {
                    st.acked_writes += 1;
                    st.bytes += bs as u64;
                }
            }
            Err(e) => st.error(format!("write lba {lba} v{version}: {e}")),
        }
        ok
    }

    /// Reads `lba` and checks it. `final_check` compares with the newest acknowledged version
    /// (lost write) instead of the one at issue (stale read). Returns the version read.
    async fn read_block(self: &Arc<Self>, lba: u64, load: bool, final_check: bool) -> Option<u64> {
        let bs = self.bs();
        let at_issue = lock(&self.oracle)[lba as usize];
        let acked_at_issue = at_issue.acked;
        let issued = Instant::now();
        let r = self.exec_retry(&read16_cdb(lba, 1), Bytes::new(), bs).await;
        let now_state = lock(&self.oracle)[lba as usize];
        let mut st = lock(&self.stats);
        if load {
            st.ops += 1;
            st.reads += 1;
            self.completed(&mut st, issued);
        }
        let res = match r {
            Ok(res) => res,
            Err(e) => {
                st.error(format!("read lba {lba}: {e}"));
                return None;
            }
        };
        if load {
            st.bytes += res.data.len() as u64;
        }
        if final_check {
            st.blocks_checked += 1;
        }
        if res.data.len() != bs as usize {
            st.corrupt_reads += 1;
            st.violation(format!(
                "corrupt read of lba {lba}: {} bytes instead of {bs}",
                res.data.len()
            ));
            return None;
        }
        let version = match decode_block(&res.data) {
            // Never written (or zeroed): version 0, stale/lost if anything was acknowledged.
            BlockContent::Zero => 0,
            BlockContent::ChecksumMismatch {
                lba: got,
                stored,
                computed,
            } => {
                // A read that overlapped a write of the same block may see a mix of the old and
                // the new content (SCSI does not make them atomic): torn, not corrupt.
                let overlapped = at_issue.writing
                    || now_state.writing
                    || now_state.writes_started != at_issue.writes_started;
                if overlapped && got == lba {
                    st.torn_reads += 1;
                } else {
                    st.corrupt_reads += 1;
                    st.violation(format!(
                        "corrupt read of lba {lba}: checksum {stored:#018x} != computed {computed:#018x}"
                    ));
                }
                return None;
            }
            BlockContent::Corrupt(why) => {
                st.corrupt_reads += 1;
                st.violation(format!("corrupt read of lba {lba}: {why}"));
                return None;
            }
            BlockContent::Written {
                lba: got,
                version,
                writer,
            } => {
                if got != lba {
                    st.corrupt_reads += 1;
                    st.violation(format!(
                        "corrupt read of lba {lba}: holds lba {got} v{version}"
                    ));
                    return None;
                }
                let known = if writer == self.writer {
                    version >= 1 && version < now_state.next.max(1)
                } else {
                    version == now_state.baseline && version > 0
                };
                if !known {
                    st.corrupt_reads += 1;
                    st.violation(format!(
                        "corrupt read of lba {lba}: version {version} (writer {writer:#x}) was never written (next {}, baseline {})",
                        now_state.next, now_state.baseline
                    ));
                    return None;
                }
                version
            }
        };
        if final_check {
            if version < now_state.acked {
                st.lost_writes += 1;
                st.violation(format!(
                    "lost write at lba {lba}: holds v{version}, v{} was acknowledged",
                    now_state.acked
                ));
            }
        } else if version < acked_at_issue {
            st.stale_reads += 1;
            st.violation(format!(
                "stale read of lba {lba}: v{version}, v{acked_at_issue} was acknowledged before the read"
            ));
        }
        Some(version)
    }

    /// Runs `f(lba)` for every block with `queue_depth` in flight.
    async fn each_block<F, Fut>(self: &Arc<Self>, f: F)
    where
        F: Fn(Arc<Shared>, u64) -> Fut + Send + Sync + 'static + Clone,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..self.cfg.queue_depth.max(1) {
            let me = self.clone();
            let next = next.clone();
            let f = f.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let lba = next.fetch_add(1, Ordering::Relaxed);
                    if lba >= me.cfg.blocks {
                        return;
                    }
                    f(me.clone(), lba).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn worker(self: Arc<Self>, index: usize) {
        let mut rng = mix64(self.cfg.seed ^ mix64(index as u64 + 1));
        let mut next_rand = move || {
            rng = mix64(rng);
            rng
        };
        while self.in_load.load(Ordering::SeqCst) {
            let lba = next_rand() % self.cfg.blocks;
            let want_write = (next_rand() % 100) < self.cfg.write_percent as u64;
            let version = if want_write {
                let mut o = lock(&self.oracle);
                let b = &mut o[lba as usize];
                if b.writing {
                    None
                } else {
                    b.writing = true;
                    b.writes_started += 1;
                    let v = b.next;
                    b.next += 1;
                    Some(v)
                }
            } else {
                None
            };
            match version {
                Some(v) => {
                    self.write_block(lba, v, true).await;
                }
                None => {
                    self.read_block(lba, true, false).await;
                }
            }
        }
    }

    fn path_summary(&self) -> String {
        self.paths
            .iter()
            .map(|p| format!("{}={}", p.addr, lock(&p.st).label))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The ALUA state code of the port `rtpi` (via RTPG on `s`); with an unknown port id, the state
/// of the only group if there is exactly one.
async fn path_state(s: &Session, lun: u16, rtpi: Option<u16>) -> Result<Option<u8>, InitError> {
    let groups = retry_ua(|| s.report_target_port_groups(lun)).await?;
    Ok(match rtpi {
        Some(id) => groups
            .iter()
            .find(|g| g.ports.contains(&id))
            .map(|g| g.state_code),
        None if groups.len() == 1 => Some(groups[0].state_code),
        None => None,
    })
}

/// Retries a helper a few times while it fails with UNIT ATTENTION.
async fn retry_ua<T, F, Fut>(f: F) -> Result<T, InitError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, InitError>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Err(InitError::Scsi {
                sense: Some(SenseInfo { key: 6, .. }),
                ..
            }) if n < 8 => n += 1,
            r => return r,
        }
    }
}

async fn refresher(me: Arc<Shared>) {
    loop {
        let _ = tokio::time::timeout(REFRESH_INTERVAL, me.refresh_notify.notified()).await;
        if me.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let g = me.refresh_requested.load(Ordering::SeqCst);
        me.refresh_all().await;
        me.refresh_done.send_modify(|d| *d = (*d).max(g));
    }
}

async fn progress(me: Arc<Shared>) {
    let mut last_ops = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        if me.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let (ops, errors, bad) = {
            let st = lock(&me.stats);
            (
                st.ops,
                st.errors,
                st.stale_reads + st.corrupt_reads + st.lost_writes,
            )
        };
        eprintln!(
            "mpio {:>5.1}s: {} ops/s, {} ops, {} errors, {} violations; paths: {}",
            me.start.elapsed().as_secs_f64(),
            ops - last_ops,
            ops,
            errors,
            bad,
            me.path_summary()
        );
        last_ops = ops;
    }
}

/// Runs the workload described by `cfg`: logs in on every portal, initialises (or learns) the
/// working set, runs the load for `cfg.duration` or until `stop` turns true, then reads every
/// block once more, and reports. Errors only when the run cannot start (no portal logs in, the
/// LUN cannot be sized or is too small, bad configuration).
pub async fn run(
    cfg: MpioConfig,
    stop: Option<watch::Receiver<bool>>,
) -> Result<Report, MpioError> {
    if cfg.portals.is_empty() {
        return Err(MpioError::Config("no portal given".into()));
    }
    if cfg.blocks == 0 {
        return Err(MpioError::Config(
            "the working set is empty (blocks = 0)".into(),
        ));
    }
    if cfg.blocks > (1 << 32) {
        return Err(MpioError::Config("at most 2^32 blocks".into()));
    }
    if cfg.write_percent > 100 {
        return Err(MpioError::Config("write_percent above 100".into()));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let writer = mix64(cfg.seed ^ mix64(nanos ^ std::process::id() as u64)) as u32;
    let paths = cfg
        .portals
        .iter()
        .enumerate()
        .map(|(i, a)| {
            Arc::new(Path {
                addr: *a,
                isid: [
                    0x80,
                    0xd7,
                    (writer >> 8) as u8,
                    writer as u8,
                    (i >> 8) as u8,
                    i as u8,
                ],
                st: Mutex::new(PathState {
                    session: None,
                    health: PathHealth::Down,
                    rtpi: None,
                    alua: None,
                    reconnecting: false,
                    label: "down".into(),
                }),
                ops: AtomicU64::new(0),
                changes: Mutex::new(Vec::new()),
            })
        })
        .collect();
    let (refresh_done, _) = watch::channel(0u64);
    let me = Arc::new(Shared {
        block_size: AtomicU64::new(cfg.block_size as u64),
        writer,
        paths,
        rr: AtomicUsize::new(0),
        last_usable: Mutex::new(Instant::now()),
        oracle: Mutex::new(vec![
            BlockState {
                next: 1,
                ..BlockState::default()
            };
            cfg.blocks as usize
        ]),
        stats: Mutex::new(Stats::default()),
        start: Instant::now(),
        load_start: Mutex::new(None),
        in_load: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        refresh_requested: AtomicU64::new(0),
        refresh_notify: Notify::new(),
        refresh_done,
        cfg,
    });
    let result = run_inner(&me, stop).await;
    // Stop the background tasks and log out.
    me.shutdown.store(true, Ordering::SeqCst);
    me.in_load.store(false, Ordering::SeqCst);
    me.refresh_notify.notify_one();
    let sessions: Vec<Arc<Session>> = me
        .paths
        .iter()
        .filter_map(|p| lock(&p.st).session.take())
        .collect();
    let logouts = sessions.iter().map(|s| async move {
        let _ = tokio::time::timeout(Duration::from_secs(3), s.logout()).await;
        s.close();
    });
    for l in logouts {
        l.await;
    }
    result?;
    Ok(report(&me))
}

async fn run_inner(me: &Arc<Shared>, stop: Option<watch::Receiver<bool>>) -> Result<(), MpioError> {
    // Log in everywhere.
    let mut errors = Vec::new();
    let opens = (0..me.paths.len()).map(|i| {
        let me = me.clone();
        tokio::spawn(async move { (i, me.open_path(i).await) })
    });
    let opens: Vec<_> = opens.collect();
    for o in opens {
        let Ok((i, r)) = o.await else { continue };
        let path = &me.paths[i];
        match r {
            Ok((s, rtpi, alua)) => {
                let mut st = lock(&path.st);
                st.session = Some(Arc::new(s));
                st.rtpi = rtpi;
                st.alua = alua;
                st.health = PathHealth::Up;
                me.set_label(path, &mut st);
            }
            Err(e) => {
                errors.push(format!("{}: {e}", path.addr));
                lock(&path.st).reconnecting = true;
                let me2 = me.clone();
                tokio::spawn(async move { me2.reconnect(i).await });
            }
        }
    }
    if errors.len() == me.paths.len() {
        return Err(MpioError::NoPath(errors.join("; ")));
    }
    tokio::spawn(refresher(me.clone()));
    if !me.cfg.quiet {
        tokio::spawn(progress(me.clone()));
    }

    // Size the LUN through any path, with retries.
    let cap = me
        .exec_retry(
            &{
                let mut c = [0u8; 16];
                c[0] = 0x9e;
                c[1] = 0x10;
                c[10..14].copy_from_slice(&32u32.to_be_bytes());
                c
            },
            Bytes::new(),
            32,
        )
        .await
        .map_err(|e| MpioError::Capacity(format!("READ CAPACITY (16): {e}")))?;
    let (nblocks, bs) = crate::initiator::parse_read_capacity16(&cap.data)
        .ok_or_else(|| MpioError::Capacity("short READ CAPACITY (16) data".into()))?;
    if me.cfg.block_size != 0 && me.cfg.block_size != bs {
        return Err(MpioError::Capacity(format!(
            "the LUN has {bs}-byte blocks, not {}",
            me.cfg.block_size
        )));
    }
    if (bs as usize) < HEADER_LEN {
        return Err(MpioError::Capacity(format!(
            "{bs}-byte blocks are too small"
        )));
    }
    if me.cfg.blocks > nblocks {
        return Err(MpioError::Capacity(format!(
            "the LUN has {nblocks} blocks, the working set {}",
            me.cfg.blocks
        )));
    }
    me.block_size.store(bs as u64, Ordering::Relaxed);

    // Initialise or learn the working set.
    if me.cfg.init {
        me.each_block(|me, lba| async move {
            lock(&me.oracle)[lba as usize] = BlockState {
                acked: 0,
                next: 2,
                baseline: 0,
                writing: true,
                writes_started: 1,
            };
            me.write_block(lba, 1, false).await;
        })
        .await;
    } else {
        me.each_block(|me, lba| async move {
            // Whatever is there is the baseline; reads cannot be checked against history.
            let bs = me.bs();
            let r = me.exec_retry(&read16_cdb(lba, 1), Bytes::new(), bs).await;
            let mut st = lock(&me.stats);
            match r {
                Ok(res) => match decode_block(&res.data) {
                    BlockContent::Zero => {}
                    BlockContent::Written {
                        lba: got, version, ..
                    } if got == lba => {
                        lock(&me.oracle)[lba as usize] = BlockState {
                            acked: version,
                            next: version + 1,
                            baseline: version,
                            writing: false,
                            writes_started: 0,
                        };
                    }
                    BlockContent::Written { lba: got, .. } => {
                        st.corrupt_reads += 1;
                        st.violation(format!("baseline: lba {lba} holds lba {got}"));
                    }
                    BlockContent::Corrupt(why) => {
                        st.corrupt_reads += 1;
                        st.violation(format!("baseline: lba {lba}: {why}"));
                    }
                    BlockContent::ChecksumMismatch { .. } => {
                        st.corrupt_reads += 1;
                        st.violation(format!("baseline: lba {lba}: bad checksum"));
                    }
                },
                Err(e) => st.error(format!("baseline read lba {lba}: {e}")),
            }
        })
        .await;
    }

    // The load.
    let load_start = Instant::now();
    *lock(&me.load_start) = Some(load_start);
    me.in_load.store(true, Ordering::SeqCst);
    let workers: Vec<_> = (0..me.cfg.queue_depth.max(1))
        .map(|i| tokio::spawn(me.clone().worker(i)))
        .collect();
    let stopped = async {
        match stop {
            Some(mut rx) => {
                let _ = rx.wait_for(|s| *s).await;
                // A dropped sender without a stop request means "no early stop".
                if !*rx.borrow() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(me.cfg.duration) => {}
        _ = stopped => {}
    }
    me.in_load.store(false, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let load_end = Instant::now();
    {
        let mut st = lock(&me.stats);
        let last = st.last_completion.unwrap_or(load_start);
        if load_end > last && load_end - last > STALL_THRESHOLD {
            st.stalls.push(Stall {
                start_ms: last.saturating_duration_since(load_start).as_millis() as u64,
                len_ms: (load_end - last).as_millis() as u64,
            });
        }
    }
    *lock(&me.load_start) = None;
    lock(&me.stats).load_ms = (load_end - load_start).as_millis() as u64;

    // Final verification.
    me.each_block(|me, lba| async move {
        me.read_block(lba, false, true).await;
    })
    .await;
    Ok(())
}

fn report(me: &Shared) -> Report {
    let mut st = lock(&me.stats);
    let stalls = st.stalls.clone();
    Report {
        ops: st.ops,
        reads: st.reads,
        writes: st.writes,
        acked_writes: st.acked_writes,
        bytes: st.bytes,
        errors: st.errors,
        error_messages: st.error_messages.clone(),
        stale_reads: st.stale_reads,
        corrupt_reads: st.corrupt_reads,
        torn_reads: st.torn_reads,
        lost_writes: st.lost_writes,
        violations: st.violations.clone(),
        blocks_checked: st.blocks_checked,
        max_latency_ms: st.hist.max_us as f64 / 1000.0,
        p50_latency_ms: st.hist.quantile_ms(0.50),
        p99_latency_ms: st.hist.quantile_ms(0.99),
        longest_stall_ms: stalls.iter().map(|s| s.len_ms).max().unwrap_or(0),
        stalls,
        paths: me
            .paths
            .iter()
            .map(|p| PathReport {
                portal: p.addr.to_string(),
                ops: p.ops.load(Ordering::Relaxed),
                state: lock(&p.st).label.clone(),
                state_changes: lock(&p.changes).clone(),
            })
            .collect(),
        retries: std::mem::take(&mut st.retries),
        load_ms: st.load_ms,
        block_size: me.bs(),
        blocks: me.cfg.blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_detect_damage() {
        let b = encode_block(77, 5, 0xabcd, 512);
        assert_eq!(
            decode_block(&b),
            BlockContent::Written {
                lba: 77,
                version: 5,
                writer: 0xabcd
            }
        );
        assert_ne!(
            b,
            encode_block(77, 6, 0xabcd, 512),
            "fill depends on version"
        );
        let mut bad = b.clone();
        bad[300] ^= 1;
        assert!(matches!(
            decode_block(&bad),
            BlockContent::ChecksumMismatch { lba: 77, .. }
        ));
        let mut bad = b;
        bad[17] ^= 1; // version field
        assert!(matches!(
            decode_block(&bad),
            BlockContent::ChecksumMismatch { .. }
        ));
        assert_eq!(decode_block(&[0u8; 512]), BlockContent::Zero);
        assert!(matches!(
            decode_block(&[1u8; 512]),
            BlockContent::Corrupt(_)
        ));
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((48.0..=51.0).contains(&p50), "p50 {p50}");
        assert!((96.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.max_us, 100_000);
        for us in [0u64, 63, 64, 65, 1000, 123_456, 10_000_000] {
            let b = Histogram::bucket(us);
            let lo = Histogram::lower(b);
            assert!(lo <= us && us - lo <= us / 60 + 1, "{us} -> {lo}");
        }
    }

    #[test]
    fn sense_classification_follows_multipath_rules() {
        let cc = |key, asc, ascq| ScsiResult {
            status: STATUS_CHECK_CONDITION,
            sense: Some(SenseInfo { key, asc, ascq }),
            data: Bytes::new(),
        };
        assert!(matches!(
            classify(cc(6, 0x2a, 6)),
            Attempt::Retry {
                reason: "unit_attention",
                refresh: true,
                ..
            }
        ));
        assert!(matches!(
            classify(cc(2, 4, 0x0a)),
            Attempt::Retry {
                reason: "transitioning",
                ..
            }
        ));
        assert!(matches!(
            classify(cc(2, 4, 0x0b)),
            Attempt::Retry { avoid: true, .. }
        ));
        assert!(matches!(classify(cc(5, 0x24, 0)), Attempt::Fail(_)));
        assert!(matches!(classify(cc(3, 0x11, 0)), Attempt::Fail(_)));
        let rc = ScsiResult {
            status: 0x18,
            sense: None,
            data: Bytes::new(),
        };
        assert!(matches!(classify(rc), Attempt::Fail(_)));
        let busy = ScsiResult {
            status: STATUS_BUSY,
            sense: None,
            data: Bytes::new(),
        };
        assert!(matches!(
            classify(busy),
            Attempt::Retry { reason: "busy", .. }
        ));
    }

    #[test]
    fn path_tiers_prefer_optimized_and_skip_standby() {
        assert_eq!(tier(Some(0)), Some(0));
        assert_eq!(tier(Some(1)), Some(1));
        assert_eq!(tier(Some(0xf)), Some(2));
        assert_eq!(tier(None), Some(2));
        assert_eq!(tier(Some(2)), None);
        assert_eq!(tier(Some(3)), None);
        assert_eq!(tier(Some(0xe)), None);
    }
}
