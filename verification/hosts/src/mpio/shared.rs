//! The state a `duet-mpio` run shares between its workers: the paths (one session each, their
//! ALUA state, reconnection), the oracle (per block: newest acknowledged version, writes in
//! flight) and the statistics; the workers, the refresher and the progress line. Commands go
//! round-robin over the best tier of paths and are retried as [`super::classify`] says.

use super::block::{decode_block, encode_block, mix64, BlockContent};
use super::classify::{alua_label, classify, tier, Attempt};
use super::config::MpioConfig;
use super::report::{Stall, StateChange, STALL_THRESHOLD};
use crate::histogram::Histogram;
use crate::scsi;
use crate::session::{InitError, LoginOptions, ScsiResult, Session};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How often paths are refreshed with RTPG.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a lost path is logged in again.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
/// How many error/violation messages a report keeps.
const KEEP_MESSAGES: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BlockState {
    /// Highest acknowledged version.
    pub(super) acked: u64,
    /// Next version to write; versions `1..next` (or `baseline..next`) were issued.
    pub(super) next: u64,
    /// The version found (or written) before the load; older writers' content is accepted only
    /// at this version.
    pub(super) baseline: u64,
    pub(super) writing: bool,
    /// Writes started on this block (to tell whether a read overlapped one).
    pub(super) writes_started: u64,
}

#[derive(Default)]
pub(super) struct Stats {
    pub(super) ops: u64,
    pub(super) reads: u64,
    pub(super) writes: u64,
    pub(super) acked_writes: u64,
    pub(super) bytes: u64,
    pub(super) errors: u64,
    pub(super) error_messages: Vec<String>,
    pub(super) stale_reads: u64,
    pub(super) corrupt_reads: u64,
    pub(super) torn_reads: u64,
    pub(super) lost_writes: u64,
    pub(super) violations: Vec<String>,
    pub(super) blocks_checked: u64,
    pub(super) retries: BTreeMap<String, u64>,
    pub(super) hist: Histogram,
    pub(super) stalls: Vec<Stall>,
    pub(super) last_completion: Option<Instant>,
    pub(super) load_ms: u64,
}

impl Stats {
    pub(super) fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.error_messages.len() < KEEP_MESSAGES {
            self.error_messages.push(msg);
        }
    }

    pub(super) fn violation(&mut self, msg: String) {
        if self.violations.len() < KEEP_MESSAGES {
            self.violations.push(msg);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PathHealth {
    Down,
    Up,
}

pub(super) struct PathState {
    pub(super) session: Option<Arc<Session>>,
    pub(super) health: PathHealth,
    pub(super) rtpi: Option<u16>,
    pub(super) alua: Option<u8>,
    pub(super) reconnecting: bool,
    pub(super) label: String,
}

pub(super) struct Path {
    pub(super) addr: SocketAddr,
    pub(super) isid: [u8; 6],
    pub(super) st: Mutex<PathState>,
    pub(super) ops: AtomicU64,
    pub(super) changes: Mutex<Vec<StateChange>>,
}

pub(super) struct Shared {
    pub(super) cfg: MpioConfig,
    pub(super) block_size: AtomicU64,
    pub(super) writer: u32,
    pub(super) paths: Vec<Arc<Path>>,
    pub(super) rr: AtomicUsize,
    /// When a path was last found usable.
    pub(super) last_usable: Mutex<Instant>,
    pub(super) oracle: Mutex<Vec<BlockState>>,
    pub(super) stats: Mutex<Stats>,
    pub(super) start: Instant,
    pub(super) load_start: Mutex<Option<Instant>>,
    pub(super) in_load: AtomicBool,
    pub(super) shutdown: AtomicBool,
    pub(super) refresh_requested: AtomicU64,
    pub(super) refresh_notify: Notify,
    pub(super) refresh_done: watch::Sender<u64>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why one attempt did not finish the command.
impl Shared {
    pub(super) fn ms_since_start(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(super) fn set_label(&self, path: &Path, st: &mut PathState) {
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
    pub(super) fn pick(&self, avoid: &[usize]) -> Option<(usize, Arc<Session>)> {
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

    pub(super) fn retry_noted(&self, reason: &str) {
        *lock(&self.stats)
            .retries
            .entry(reason.to_string())
            .or_insert(0) += 1;
    }

    /// Asks for an RTPG refresh of every path; returns the generation to wait for.
    pub(super) fn request_refresh(&self) -> u64 {
        let g = self.refresh_requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.refresh_notify.notify_one();
        g
    }

    pub(super) async fn wait_refresh(&self, g: u64, within: Duration) {
        let mut rx = self.refresh_done.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|d| *d >= g)).await;
    }

    /// Marks path `i` down if `session` is still its session, and starts reconnecting it.
    pub(super) fn mark_down(self: &Arc<Self>, i: usize, session: &Arc<Session>) {
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

    pub(super) async fn reconnect(self: Arc<Self>, i: usize) {
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

    pub(super) fn login_options(&self, i: usize) -> LoginOptions {
        LoginOptions {
            isid: self.paths[i].isid,
            chap: self.cfg.chap.clone(),
            nop_interval: self.cfg.nop_interval,
            nop_timeout: self.cfg.nop_timeout,
            ..LoginOptions::default()
        }
    }

    /// Logs in on path `i` and learns its relative port id and ALUA state.
    pub(super) async fn open_path(
        &self,
        i: usize,
    ) -> Result<(Session, Option<u16>, Option<u8>), InitError> {
        let s = Session::login(
            self.paths[i].addr,
            &self.cfg.initiator,
            &self.cfg.target,
            &self.login_options(i),
        )
        .await?;
        let probe = async {
            let page = retry_ua(|| s.inquiry_vpd(self.cfg.lun, 0x83)).await?;
            let rtpi = crate::scsi::parse_relative_port_id(&page);
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
    pub(super) async fn refresh_all(self: &Arc<Self>) {
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
    pub(super) async fn exec_retry(
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

    pub(super) fn bs(&self) -> u32 {
        self.block_size.load(Ordering::Relaxed) as u32
    }

    /// Notes a completion of the load phase for latency and stall accounting.
    pub(super) fn completed(&self, st: &mut Stats, issued: Instant) {
        let now = Instant::now();
        st.hist.record_duration(now - issued);
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
    pub(super) async fn write_block(self: &Arc<Self>, lba: u64, version: u64, load: bool) -> bool {
        let bs = self.bs();
        let data = Bytes::from(encode_block(lba, version, self.writer, bs as usize));
        let issued = Instant::now();
        let r = self.exec_retry(&scsi::write16_cdb(lba, 1), data, 0).await;
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
    pub(super) async fn read_block(
        self: &Arc<Self>,
        lba: u64,
        load: bool,
        final_check: bool,
    ) -> Option<u64> {
        let bs = self.bs();
        let at_issue = lock(&self.oracle)[lba as usize];
        let acked_at_issue = at_issue.acked;
        let issued = Instant::now();
        let r = self
            .exec_retry(&scsi::read16_cdb(lba, 1), Bytes::new(), bs)
            .await;
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
    pub(super) async fn each_block<F, Fut>(self: &Arc<Self>, f: F)
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

    pub(super) async fn worker(self: Arc<Self>, index: usize) {
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

    pub(super) fn path_summary(&self) -> String {
        self.paths
            .iter()
            .map(|p| format!("{}={}", p.addr, lock(&p.st).label))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The ALUA state code of the port `rtpi` (via RTPG on `s`); with an unknown port id, the state
/// of the only group if there is exactly one.
pub(super) async fn path_state(
    s: &Session,
    lun: u16,
    rtpi: Option<u16>,
) -> Result<Option<u8>, InitError> {
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
pub(super) async fn retry_ua<T, F, Fut>(f: F) -> Result<T, InitError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, InitError>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Err(InitError::Scsi { sense: Some(s), .. }) if s.is_unit_attention() && n < 8 => n += 1,
            r => return r,
        }
    }
}

pub(super) async fn refresher(me: Arc<Shared>) {
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

pub(super) async fn progress(me: Arc<Shared>) {
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
