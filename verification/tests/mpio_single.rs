//! The multipath initiator and its oracle against one `duetd` controller.
//!
//! Each test starts its own `duetd` on free loopback ports (127.0.0.1 and 127.0.0.3, one portal
//! group) with a fresh directory; a guard kills it by PID and removes the directory whatever
//! happens. The `duetd` binary is taken from `DUETD` if set, else from the build directory that
//! holds this test, else it is built with cargo into a separate directory.
//!
//! - A clean run over two paths (two portals, and one portal listed twice) must report no error,
//!   no stale or corrupt read and no lost write.
//! - Rolling blocks back behind the initiator's back (writing older contents into the LUN's
//!   image file while the load runs; the target has no cache) must be caught by the oracle.

mod support;

use duet_hosts::mpio::{self, MpioConfig, Report};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use support::{Daemon, TargetConfig};

const TARGET: &str = "iqn.2026-11.dev.duet:target0";
const BLOCK: u64 = 512;

/// Starts duetd with two portals (127.0.0.1 and 127.0.0.3, one portal group) serving an 8 MiB
/// LUN 1 with 512-byte blocks.
fn start(tag: &str) -> Daemon {
    Daemon::start(
        tag,
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3)],
        |s| {
            TargetConfig {
                size: "8MiB",
                block_size: Some(BLOCK as u32),
                ..TargetConfig::new(TARGET)
            }
            .render(s)
        },
    )
}

fn config(portals: Vec<SocketAddr>, blocks: u64, duration: Duration) -> MpioConfig {
    MpioConfig {
        portals,
        target: TARGET.into(),
        lun: 1,
        blocks,
        queue_depth: 8,
        write_percent: 50,
        duration,
        command_deadline: Duration::from_secs(10),
        seed: 7,
        quiet: true,
        ..MpioConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs the workload with an outer time bound.
fn run_bounded(rt: &tokio::runtime::Runtime, cfg: MpioConfig, limit: Duration) -> Report {
    rt.block_on(async move { tokio::time::timeout(limit, mpio::run(cfg, None)).await })
        .expect("the run ends within its bound")
        .expect("the run starts")
}

fn describe(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|_| format!("{r:?}"))
}

#[test]
fn two_portals_run_clean() {
    let d = start("clean");
    let rt = runtime();
    let cfg = MpioConfig {
        init: true,
        ..config(d.portals.clone(), 1024, Duration::from_secs(5))
    };
    let r = run_bounded(&rt, cfg, Duration::from_secs(120));
    assert!(r.clean(), "the run is not clean:\n{}", describe(&r));
    assert!(r.ops > 0, "no load: {}", describe(&r));
    assert!(r.reads > 0 && r.acked_writes > 0, "{}", describe(&r));
    assert_eq!(r.blocks_checked, 1024, "every block is verified at the end");
    assert_eq!(r.block_size, 512, "block size from READ CAPACITY");
    assert_eq!(r.paths.len(), 2);
    for p in &r.paths {
        assert!(
            p.ops > 0,
            "path {} carried no I/O: {}",
            p.portal,
            describe(&r)
        );
        assert_eq!(
            p.state, "A/O",
            "a stand-alone controller is Active/Optimized"
        );
    }
}

#[test]
fn one_portal_twice_and_a_second_run_on_written_blocks() {
    let d = start("twice");
    let rt = runtime();
    let p = d.portals[0];
    let first = MpioConfig {
        init: true,
        ..config(vec![p, p], 256, Duration::from_secs(2))
    };
    let r = run_bounded(&rt, first, Duration::from_secs(60));
    assert!(r.clean(), "first run:\n{}", describe(&r));
    assert!(r.paths.iter().all(|p| p.ops > 0), "{}", describe(&r));
    // Without --init the second run learns each block's version from the disk.
    let second = config(vec![p, p], 256, Duration::from_secs(2));
    let r = run_bounded(&rt, second, Duration::from_secs(60));
    assert!(r.clean(), "second run:\n{}", describe(&r));
    assert!(r.ops > 0);
}

/// Counts blocks whose bytes in `image` differ from `snapshot`.
fn changed_blocks(image: &fs::File, snapshot: &[u8]) -> usize {
    let mut now = vec![0u8; snapshot.len()];
    if image.read_exact_at(&mut now, 0).is_err() {
        return 0;
    }
    now.chunks(BLOCK as usize)
        .zip(snapshot.chunks(BLOCK as usize))
        .filter(|(a, b)| a != b)
        .count()
}

#[test]
fn oracle_catches_blocks_rolled_back_behind_its_back() {
    let d = start("rollback");
    let rt = runtime();
    let blocks = 256u64;
    let first = MpioConfig {
        init: true,
        write_percent: 100,
        ..config(d.portals.clone(), blocks, Duration::from_secs(1))
    };
    let r = run_bounded(&rt, first, Duration::from_secs(60));
    assert!(r.clean(), "first run:\n{}", describe(&r));

    // The image as the first run left it (the target has no cache: the file is the disk).
    let image = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.dir.join("lun1.img"))
        .expect("open the LUN image");
    let mut snapshot = vec![0u8; (blocks * BLOCK) as usize];
    image.read_exact_at(&mut snapshot, 0).expect("read image");

    // Second run: learns the versions, then writes newer ones. Once many blocks have moved on
    // (so the baseline pass is over), put the old contents back and stop the load.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let second = config(d.portals.clone(), blocks, Duration::from_secs(60));
    let run = rt.spawn(async move { mpio::run(second, Some(stop_rx)).await });
    let deadline = Instant::now() + Duration::from_secs(40);
    while changed_blocks(&image, &snapshot) < 64 {
        assert!(
            Instant::now() < deadline,
            "the second run did not write 64 blocks within 40 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    image
        .write_all_at(&snapshot, 0)
        .expect("roll the blocks back");
    let _ = stop_tx.send(true);
    let r = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(90), run).await })
        .expect("the run ends within its bound")
        .expect("the run task")
        .expect("the run starts");
    assert!(!r.clean(), "the rollback went unnoticed:\n{}", describe(&r));
    assert!(
        r.lost_writes > 0 || r.stale_reads > 0,
        "expected lost writes or stale reads:\n{}",
        describe(&r)
    );
    assert_eq!(
        r.corrupt_reads,
        0,
        "old versions are intact blocks: {}",
        describe(&r)
    );
    assert_eq!(r.errors, 0, "{}", describe(&r));
}
