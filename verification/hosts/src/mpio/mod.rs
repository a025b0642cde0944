//! A multipath, ALUA-aware workload over [`crate::session`] sessions, with an oracle that checks
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
//!
//! Parts: `config` (what to run, errors), `report` (what comes out), `block` (the
//! self-describing blocks), `classify` (which outcome is retried how, path preference) and
//! `shared` (the paths, the oracle and the workers); this file starts and ends a run.

mod block;
mod classify;
mod config;
mod report;
mod shared;

pub use block::{decode_block, encode_block, BlockContent, BLOCK_MAGIC, HEADER_LEN};
pub use config::{MpioConfig, MpioError};
pub use report::{PathReport, Report, Stall, StateChange, STALL_THRESHOLD};

use crate::session::Session;
use block::mix64;
use bytes::Bytes;
use shared::{lock, progress, refresher, BlockState, Path, PathHealth, PathState, Shared, Stats};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};

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
    let (nblocks, bs) = crate::scsi::parse_read_capacity16(&cap.data)
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
            let r = me
                .exec_retry(&crate::scsi::read16_cdb(lba, 1), Bytes::new(), bs)
                .await;
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
    // Latencies in milliseconds, to the microsecond.
    let ms = |ns: u64| (ns / 1000) as f64 / 1000.0;
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
        max_latency_ms: ms(st.hist.max()),
        p50_latency_ms: ms(st.hist.quantile(0.50)),
        p99_latency_ms: ms(st.hist.quantile(0.99)),
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
