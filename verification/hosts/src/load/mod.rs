//! `duet-load`: a lean iSCSI load generator for benchmarks (reads and writes, latency histogram).
//!
//! It runs on the same cores as the target under test, so every session is one tokio task that
//! owns its TCP socket outright: no locks, no channels, no per-command task or allocation. The
//! task keeps `qd` commands in flight, frames PDUs itself (BHS taken from duet-core's [`Pdu`](duet_core::iscsi::Pdu)
//! constructors, data segments shared with one write payload, sent with vectored writes) and
//! parses answers with duet-core's [`Codec`](duet_core::iscsi::Codec). It works with any RFC 7143 target: it negotiates
//! `InitialR2T=No`, `ImmediateData=Yes` and large bursts, and honours whatever the target answers
//! (immediate data, unsolicited Data-Out, R2T, Data-In with the S bit or a SCSI Response, NOP-In
//! pings, Reject).
//!
//! - [`Args`]: the command line (`clap`), shared with the `duet-load` binary.
//! - [`run`]: logs in every session, runs the load and returns a [`Report`].
//! - [`crate::histogram::Histogram`]: the latency buckets every session records into.
//!
//! Parts: `args` (the command line, errors), `conn` (one logged-in connection: framing,
//! setup commands, logout), `pipeline` (the offsets, the slots, one session's load loop); this
//! file sets a run up and gathers its [`Report`].

mod args;
mod conn;
mod pipeline;

pub use args::{Args, LoadError, Op, Pattern, MAX_BLOCK_SIZE, MAX_QD, MAX_SESSIONS};
pub use conn::{FIRST_BURST_LENGTH, MAX_BURST_LENGTH, MAX_RECV_DATA_SEGMENT};

use crate::histogram::Histogram;
use crate::scsi;
use bytes::Bytes;
use conn::Conn;
use pipeline::{make_payload, run_session, Counter, Offsets, Plan};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let rc16 = scsi::read_capacity16_cdb(32);
    let cap = conns[0].exec_good("READ CAPACITY (16)", &rc16, 32).await?;
    let (blocks, lba_size) = scsi::parse_read_capacity16(&cap)
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
}
