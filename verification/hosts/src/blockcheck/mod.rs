//! The verifying block workload behind `duet-blockcheck`: what a client host's application
//! sees of a multipath device while controllers fail under it.
//!
//! Worker threads each own a disjoint, contiguous range of blocks and do single-block random
//! reads and writes at QD1 with `pread`/`pwrite` on an `O_DIRECT` descriptor. Every
//! block written is self-describing ([`block`]); every read is judged against what the worker
//! knows was acknowledged ([`expect`]). An I/O error is counted and the block becomes uncertain
//! (old or new generation), and the run goes on. Each I/O's wait is measured: the longest, and
//! every one over the threshold with its start time, so a scenario can line them up with its
//! events. At the end, a read-back of every block finds lost writes. --init and the read-back
//! move [`CHUNK_BYTES`] (runs of consecutive blocks) per I/O, each block still self-describing
//! and judged on its own.

pub mod args;
pub mod block;
pub mod device;
pub mod expect;
pub mod report;

pub use args::{validate, Args};
pub use report::{Phase, PhaseStalls, Progress, Report, Stall};

use block::{decode, encode, mix64};
use device::{AlignedBuf, Device};
use expect::{check, Expect, State, Verdict};
use report::{MAX_ERRORS, MAX_STALLS};
use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The area and settings every worker shares.
struct Cfg {
    block_size: u64,
    write_pct: u64,
    writer: u64,
    final_check: bool,
}

/// Counters and flags shared by the workers and the monitor.
struct Shared {
    t0: Instant,
    /// End --init and the workload.
    stop: AtomicBool,
    /// End the final read-back.
    abort: AtomicBool,
    /// Every worker finished --init: start the workload.
    go: AtomicBool,
    ready: AtomicUsize,
    ios: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    app_errors: AtomicU64,
    stale: AtomicU64,
    corrupt: AtomicU64,
    lost: AtomicU64,
    init_blocks: AtomicU64,
    final_blocks: AtomicU64,
    /// Per worker: submission time of the I/O in flight (ns since `t0`, plus 1), 0 when idle.
    inflight: Vec<AtomicU64>,
    /// Per phase (init, run, final): the longest wait in ns.
    max_wait: [AtomicU64; 3],
    stalls: Mutex<(Vec<Stall>, u64)>,
    errors: Mutex<Vec<String>>,
    threshold: Duration,
}

fn phase_index(p: Phase) -> usize {
    match p {
        Phase::Init => 0,
        Phase::Run => 1,
        _ => 2,
    }
}

impl Shared {
    fn since_t0(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    fn note(&self, msg: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < MAX_ERRORS {
            e.push(msg);
        }
    }

    fn stamp(&self) -> String {
        format!("[{:.3}s]", self.t0.elapsed().as_secs_f64())
    }

    fn max_stall_ms(&self) -> u64 {
        self.max_wait
            .iter()
            .map(|m| m.load(SeqCst))
            .max()
            .unwrap_or(0)
            / 1_000_000
    }

    fn waiting_ms(&self) -> u64 {
        let now = self.since_t0(Instant::now()).as_nanos() as u64;
        self.inflight
            .iter()
            .map(|s| match s.load(SeqCst) {
                0 => 0,
                s => now.saturating_sub(s - 1),
            })
            .max()
            .unwrap_or(0)
            / 1_000_000
    }
}

/// One worker: its blocks (a contiguous range), their expectations, its buffer.
struct Worker<'a> {
    id: usize,
    sh: &'a Shared,
    dev: &'a Device,
    cfg: &'a Cfg,
    /// Device block number of the worker's first block.
    base: u64,
    expect: Vec<Expect>,
    /// [`CHUNK_BYTES`] (at least one block): --init and the read-back move whole chunks.
    buf: AlignedBuf,
    rng: u64,
    /// (block, finding) already described in `errors`: the first stale or corrupt read of a
    /// block is described, its repeats only counted, so they do not crowd out the rest.
    described: HashSet<(u64, &'static str)>,
}

/// Bytes per I/O of --init and of the final read-back (a run of consecutive blocks).
pub const CHUNK_BYTES: u64 = 256 << 10;

impl Worker<'_> {
    fn rand(&mut self) -> u64 {
        self.rng = mix64(self.rng);
        self.rng
    }

    /// One timed I/O of `count` blocks from the worker's `k`th block, to or from the buffer.
    fn io(&mut self, phase: Phase, write: bool, k: usize, count: usize) -> io::Result<()> {
        let block = self.base + k as u64;
        let bs = self.cfg.block_size as usize;
        let off = block * self.cfg.block_size;
        let start = Instant::now();
        let since = self.sh.since_t0(start);
        self.sh.inflight[self.id].store(since.as_nanos() as u64 + 1, SeqCst);
        let r = if write {
            self.dev.write_at(&self.buf[..count * bs], off)
        } else {
            self.dev.read_at(&mut self.buf[..count * bs], off)
        };
        self.sh.inflight[self.id].store(0, SeqCst);
        let took = start.elapsed();
        self.sh.max_wait[phase_index(phase)].fetch_max(took.as_nanos() as u64, SeqCst);
        if took > self.sh.threshold {
            let mut s = self.sh.stalls.lock().unwrap_or_else(|p| p.into_inner());
            if s.0.len() < MAX_STALLS {
                s.0.push(Stall {
                    at_ms: since.as_millis() as u64,
                    ms: took.as_millis() as u64,
                    op: if write { "write" } else { "read" },
                    block,
                    blocks: count as u64,
                    phase,
                });
            } else {
                s.1 += 1;
            }
        }
        r
    }

    fn io_error(&self, op: &str, k: usize, count: usize, e: &io::Error) {
        let block = self.base + k as u64;
        self.sh.app_errors.fetch_add(1, SeqCst);
        let what = if count == 1 {
            format!("block {block}")
        } else {
            format!("blocks {block}..{}", block + count as u64 - 1)
        };
        self.sh.note(format!(
            "{} {op} {what} (byte {}): {e}",
            self.sh.stamp(),
            block * self.cfg.block_size
        ));
        // Do not spin while every path fails fast.
        thread::sleep(Duration::from_millis(10));
    }

    /// Describes a finding on `block` in the error list, once per block and kind.
    fn finding(&mut self, kind: &'static str, block: u64, msg: String) {
        if self.described.insert((block, kind)) {
            self.sh.note(format!("{} {kind}: {msg}", self.sh.stamp()));
        }
    }

    /// Writes the next generation of `count` blocks from the `k`th in one I/O; true when
    /// acknowledged.
    fn write(&mut self, phase: Phase, k: usize, count: usize) -> bool {
        let bs = self.cfg.block_size as usize;
        for i in k..k + count {
            let gen = self.expect[i].next_gen();
            self.expect[i].submit(gen);
            let at = (i - k) * bs;
            encode(
                &mut self.buf[at..at + bs],
                self.base + i as u64,
                gen,
                self.cfg.writer,
            );
        }
        match self.io(phase, true, k, count) {
            Ok(()) => {
                for i in k..k + count {
                    let gen = self.expect[i].tried;
                    self.expect[i].ack(gen, self.cfg.writer);
                }
                true
            }
            Err(e) => {
                self.io_error("write", k, count, &e);
                false
            }
        }
    }

    /// Reads `count` blocks from the `k`th in one I/O and judges each; false on an I/O error.
    fn read(&mut self, phase: Phase, k: usize, count: usize) -> bool {
        if let Err(e) = self.io(phase, false, k, count) {
            self.io_error("read", k, count, &e);
            return false;
        }
        let bs = self.cfg.block_size as usize;
        for i in k..k + count {
            let block = self.base + i as u64;
            let at = (i - k) * bs;
            let c = decode(&self.buf[at..at + bs], block);
            let v = check(&self.expect[i], &c, self.cfg.writer);
            if v == Verdict::Ok {
                self.expect[i].observe(&c, self.cfg.writer);
            }
            self.judge(phase, block, v);
        }
        true
    }

    fn judge(&mut self, phase: Phase, block: u64, v: Verdict) {
        match v {
            Verdict::Ok => {}
            Verdict::Old(m) if phase == Phase::Final => {
                self.sh.lost.fetch_add(1, SeqCst);
                self.finding(
                    "lost write",
                    block,
                    format!("final read-back of block {block}: {m}"),
                );
            }
            Verdict::Old(m) => {
                self.sh.stale.fetch_add(1, SeqCst);
                self.finding("stale read", block, format!("block {block}: {m}"));
            }
            Verdict::Corrupt(m) if phase == Phase::Final => {
                self.sh.corrupt.fetch_add(1, SeqCst);
                self.finding(
                    "corrupt block",
                    block,
                    format!("final read-back of block {block}: {m}"),
                );
            }
            Verdict::Corrupt(m) => {
                self.sh.corrupt.fetch_add(1, SeqCst);
                self.finding("corrupt read", block, format!("block {block}: {m}"));
            }
        }
    }

    /// Init, workload, final read-back; returns the expectations and whether the read-back
    /// covered every block.
    fn run(mut self, init: bool) -> (Vec<Expect>, bool) {
        let n = self.expect.len();
        let chunk = self.buf.len() / self.cfg.block_size as usize;
        if init {
            for k in (0..n).step_by(chunk) {
                if self.sh.stop.load(SeqCst) {
                    break;
                }
                let count = chunk.min(n - k);
                if self.write(Phase::Init, k, count) {
                    self.sh.init_blocks.fetch_add(count as u64, SeqCst);
                }
            }
        }
        self.sh.ready.fetch_add(1, SeqCst);
        while !self.sh.go.load(SeqCst) && !self.sh.stop.load(SeqCst) {
            thread::sleep(Duration::from_millis(1));
        }
        while !self.sh.stop.load(SeqCst) {
            let r = self.rand();
            let k = (r % n as u64) as usize;
            let write = (r >> 32) % 100 < self.cfg.write_pct;
            if write {
                self.write(Phase::Run, k, 1);
                self.sh.writes.fetch_add(1, SeqCst);
            } else {
                self.read(Phase::Run, k, 1);
                self.sh.reads.fetch_add(1, SeqCst);
            }
            self.sh.ios.fetch_add(1, SeqCst);
        }
        let mut complete = false;
        if self.cfg.final_check {
            complete = true;
            for k in (0..n).step_by(chunk) {
                if self.sh.abort.load(SeqCst) {
                    complete = false;
                    break;
                }
                let count = chunk.min(n - k);
                if self.read(Phase::Final, k, count) {
                    self.sh.final_blocks.fetch_add(count as u64, SeqCst);
                } else {
                    complete = false;
                }
            }
        }
        (self.expect, complete)
    }
}

fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix64(t ^ ((std::process::id() as u64) << 32))
}

/// The area of the device a run uses: (first block, blocks).
fn area(a: &Args, dev: &Device) -> Result<(u64, u64), String> {
    let p = dev.path().display();
    let bs = a.block_size;
    if !bs.is_multiple_of(dev.sector) {
        return Err(format!(
            "--block-size {bs}: not a multiple of the logical block size of {p} ({})",
            dev.sector
        ));
    }
    let mib = |m: u64| m.checked_mul(1 << 20);
    let offset = mib(a.offset_mb).ok_or("--offset-mb: too large")?;
    if offset >= dev.size {
        return Err(format!(
            "--offset-mb {}: at or beyond the end of {p} ({} bytes)",
            a.offset_mb, dev.size
        ));
    }
    let size = match a.size_mb {
        Some(m) => {
            let s = mib(m).ok_or("--size-mb: too large")?;
            if offset.saturating_add(s) > dev.size {
                return Err(format!(
                    "--offset-mb {} --size-mb {m}: beyond the end of {p} ({} bytes)",
                    a.offset_mb, dev.size
                ));
            }
            s
        }
        None => dev.size - offset,
    };
    let blocks = size / bs;
    if blocks < a.threads as u64 {
        return Err(format!(
            "{p}: the area holds {blocks} blocks of {bs} bytes, fewer than --threads {}",
            a.threads
        ));
    }
    if blocks > args::MAX_BLOCKS {
        return Err(format!(
            "{p}: the area holds {blocks} blocks of {bs} bytes, more than {} (use --size-mb or a larger --block-size)",
            args::MAX_BLOCKS
        ));
    }
    Ok((offset / bs, blocks))
}

/// Runs the workload. `signals` counts SIGTERM/SIGINT received: the first ends the workload,
/// the second cuts the final read-back short. An error means the run could not start (bad
/// usage, unusable device: exit status 2).
pub fn run(a: &Args, signals: &AtomicUsize) -> Result<Report, String> {
    validate(a)?;
    let dev = Device::open(&a.device)?;
    let (first_block, blocks) = area(a, &dev)?;
    let p = a.device.display();

    // Probe: some file systems accept the open but refuse the first direct transfer.
    let mut probe = AlignedBuf::new(a.block_size as usize);
    if let Err(e) = dev.read_at(&mut probe, first_block * a.block_size) {
        return Err(match e.raw_os_error() {
            Some(libc::EINVAL) => format!(
                "{p}: refuses O_DIRECT reads of {} bytes ({e})",
                a.block_size
            ),
            _ => format!("{p}: cannot read block {first_block}: {e}"),
        });
    }
    drop(probe);

    let state = match &a.state {
        Some(path) => State::load(path, a.block_size, first_block, blocks)?,
        None => None,
    };
    let seed = a.seed.unwrap_or_else(random_seed);
    let writer = mix64(seed ^ 0x7772_6974_6572).max(1);
    let threads = a.threads as u64;
    let cfg = Cfg {
        block_size: a.block_size,
        write_pct: a.write_pct as u64,
        writer,
        final_check: !a.no_final_check,
    };
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let sh = Shared {
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        go: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        ios: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        app_errors: AtomicU64::new(0),
        stale: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        init_blocks: AtomicU64::new(0),
        final_blocks: AtomicU64::new(0),
        inflight: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        max_wait: Default::default(),
        stalls: Mutex::new((Vec::new(), 0)),
        errors: Mutex::new(Vec::new()),
        threshold: Duration::from_millis(a.stall_threshold_ms),
    };
    if !a.quiet {
        eprintln!(
            "duet-blockcheck: {p}: {blocks} blocks of {} bytes from block {first_block}, {} threads, {}% writes, writer {writer:016x}{}",
            a.block_size,
            a.threads,
            a.write_pct,
            if state.is_some() { ", continuing from the state file" } else { "" }
        );
    }

    let chunk_bytes = CHUNK_BYTES.max(a.block_size) as usize;
    let range = |id: u64| (blocks * id / threads, blocks * (id + 1) / threads);
    let workers: Vec<Worker> = (0..threads)
        .map(|id| {
            let (from, to) = range(id);
            let expect = match &state {
                Some(s) => s.expect[from as usize..to as usize].to_vec(),
                None => vec![Expect::default(); (to - from) as usize],
            };
            Worker {
                id: id as usize,
                sh: &sh,
                dev: &dev,
                cfg: &cfg,
                base: first_block + from,
                expect,
                buf: AlignedBuf::new(chunk_bytes),
                rng: mix64(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                described: HashSet::new(),
            }
        })
        .collect();

    let duration = a.duration_s.map(Duration::from_secs_f64);
    let progress_every = Duration::from_secs_f64(a.progress_s);
    let mut stop_reason = String::new();
    let mut run_start: Option<Instant> = None;
    let mut run_end: Option<Instant> = None;
    let mut init_ms = 0;
    let mut progress_warned = false;

    let results = thread::scope(|scope| {
        let handles: Vec<_> = workers
            .into_iter()
            .map(|w| {
                let init = a.init;
                scope.spawn(move || w.run(init))
            })
            .collect();
        let mut next_progress = Instant::now() + progress_every;
        let mut last_ios = 0u64;
        let mut last_at = Instant::now();
        let mut done = false;
        while !done {
            thread::sleep(Duration::from_millis(20));
            done = handles.iter().all(|h| h.is_finished());
            let now = Instant::now();
            let mut stop = |why: &str, stop_reason: &mut String| {
                if !sh.stop.swap(true, SeqCst) {
                    *stop_reason = why.to_string();
                    run_end = Some(now);
                }
            };
            let sigs = signals.load(SeqCst);
            if sigs >= 1 {
                stop("signal", &mut stop_reason);
            }
            if sigs >= 2 {
                sh.abort.store(true, SeqCst);
            }
            if let Some(f) = &a.stop_file {
                if !sh.stop.load(SeqCst) && f.exists() {
                    stop("stop-file", &mut stop_reason);
                }
            }
            if !sh.go.load(SeqCst) && sh.ready.load(SeqCst) == a.threads {
                init_ms = sh.since_t0(now).as_millis() as u64;
                run_start = Some(now);
                if duration == Some(Duration::ZERO) {
                    stop("duration", &mut stop_reason);
                }
                sh.go.store(true, SeqCst);
            }
            if let (Some(rs), Some(d)) = (run_start, duration) {
                if now.duration_since(rs) >= d {
                    stop("duration", &mut stop_reason);
                }
            }
            if now >= next_progress || done {
                next_progress = now + progress_every;
                let ios = sh.ios.load(SeqCst);
                let secs = now.duration_since(last_at).as_secs_f64();
                let iops = if secs > 0.0 {
                    ((ios - last_ios) as f64 / secs) as u64
                } else {
                    0
                };
                last_ios = ios;
                last_at = now;
                let phase = if done {
                    Phase::Done
                } else if !sh.go.load(SeqCst) && !sh.stop.load(SeqCst) {
                    Phase::Init
                } else if !sh.stop.load(SeqCst) {
                    Phase::Run
                } else {
                    Phase::Final
                };
                let done_blocks = match phase {
                    Phase::Init => sh.init_blocks.load(SeqCst),
                    _ => sh.final_blocks.load(SeqCst),
                };
                let pr = Progress {
                    elapsed_ms: sh.since_t0(now).as_millis() as u64,
                    phase,
                    ios,
                    iops,
                    app_errors: sh.app_errors.load(SeqCst),
                    stale_reads: sh.stale.load(SeqCst),
                    corrupt_reads: sh.corrupt.load(SeqCst),
                    lost_writes: sh.lost.load(SeqCst),
                    waiting_ms: sh.waiting_ms(),
                    max_stall_ms: sh.max_stall_ms(),
                    done_blocks,
                    blocks,
                };
                if !a.quiet {
                    eprintln!("{}", pr.line());
                }
                if let Some(f) = &a.progress_file {
                    let mut line = serde_json::to_string(&pr).unwrap_or_default();
                    line.push('\n');
                    if let Err(e) = write_atomically(f, line.as_bytes()) {
                        if !progress_warned {
                            progress_warned = true;
                            eprintln!(
                                "duet-blockcheck: {}: cannot write progress: {e}",
                                f.display()
                            );
                        }
                    }
                }
            }
        }
        handles
            .into_iter()
            .map(|h| h.join())
            .collect::<Result<Vec<_>, _>>()
    });
    let results = results.map_err(|_| "a worker thread failed".to_string())?;
    let end = Instant::now();
    let final_complete = !a.no_final_check && results.iter().all(|(_, c)| *c);

    if let Some(path) = &a.state {
        let expect: Vec<Expect> = results
            .iter()
            .flat_map(|(ex, _)| ex.iter().copied())
            .collect();
        let s = State {
            format: expect::STATE_FORMAT.into(),
            block_size: a.block_size,
            first_block,
            blocks,
            expect,
        };
        if let Err(e) = s.save(path) {
            sh.note(e.clone());
            eprintln!("duet-blockcheck: {e}");
        }
    }

    let (stalls, stalls_dropped) =
        std::mem::take(&mut *sh.stalls.lock().unwrap_or_else(|p| p.into_inner()));
    let errors = std::mem::take(&mut *sh.errors.lock().unwrap_or_else(|p| p.into_inner()));
    let ms = |d: Duration| d.as_millis() as u64;
    let app_errors = sh.app_errors.load(SeqCst);
    let lost_writes = sh.lost.load(SeqCst);
    let stale_reads = sh.stale.load(SeqCst);
    let corrupt_reads = sh.corrupt.load(SeqCst);
    let ok = app_errors == 0
        && lost_writes == 0
        && stale_reads == 0
        && corrupt_reads == 0
        && (a.no_final_check || final_complete);
    let by_phase = |i: usize| sh.max_wait[i].load(SeqCst) / 1_000_000;
    Ok(Report {
        ok,
        ios: sh.ios.load(SeqCst),
        reads: sh.reads.load(SeqCst),
        writes: sh.writes.load(SeqCst),
        app_errors,
        lost_writes,
        stale_reads,
        corrupt_reads,
        max_stall_ms: sh.max_stall_ms(),
        max_stall_ms_by_phase: PhaseStalls {
            init: by_phase(0),
            run: by_phase(1),
            final_: by_phase(2),
        },
        stalls,
        stalls_dropped,
        stall_threshold_ms: a.stall_threshold_ms,
        duration_ms: match (run_start, run_end) {
            (Some(s), Some(e)) => ms(e.saturating_duration_since(s)),
            _ => 0,
        },
        elapsed_ms: ms(sh.since_t0(end)),
        init_ms: if a.init { init_ms } else { 0 },
        init_blocks: sh.init_blocks.load(SeqCst),
        final_checked_blocks: sh.final_blocks.load(SeqCst),
        final_check_complete: final_complete,
        errors,
        stop_reason,
        device: a.device.display().to_string(),
        block_size: a.block_size,
        first_block,
        blocks,
        threads: a.threads,
        write_pct: a.write_pct,
        writer: format!("{writer:016x}"),
        start_unix_ms,
    })
}
