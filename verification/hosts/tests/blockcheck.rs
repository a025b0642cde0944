//! `duet-blockcheck` as a user sees it, on a regular file (in the build's temporary directory,
//! which takes `O_DIRECT`): a clean run is ok; a write lost behind its back, a block filled with
//! garbage, I/O errors are each reported, counted and make the exit status 1; the stop file and
//! SIGTERM both end the run with a result (a second signal cuts the read-back short, and the run
//! is then not ok); bad usage and a file that refuses `O_DIRECT` (a ramfs, root only, skipped
//! otherwise) are exit status 2 naming what is wrong.
//!
//! Every run is bounded (killed by PID after 30 s); each test's directory is removed at the end.

use serde_json::Value;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_duet-blockcheck");
const BS: u64 = 4096;
const LIMIT: Duration = Duration::from_secs(30);

/// A fresh directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("blockcheck-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
    /// A zero-filled file of `mb` MiB.
    fn disk(&self, mb: u64) -> PathBuf {
        let p = self.path("disk.img");
        fs::File::create(&p).unwrap().set_len(mb << 20).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running `duet-blockcheck`, its output drained by two threads; killed by PID if the test
/// ends before it does.
struct Running {
    child: Child,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Does nothing once the child has been waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Outcome {
    code: i32,
    stderr: String,
    /// The last stdout line, parsed (Null when there is none).
    json: Value,
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

fn spawn(args: &[&str], prepare: Option<fn() -> std::io::Result<()>>) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = prepare {
        // SAFETY: `f` only makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(f);
        }
    }
    let mut child = cmd.spawn().expect("start duet-blockcheck");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    Running {
        child,
        out: Some(out),
        err: Some(err),
    }
}

fn finish(mut r: Running) -> Outcome {
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "duet-blockcheck still running after {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = r.out.take().unwrap().join().unwrap();
    let err = r.err.take().unwrap().join().unwrap();
    let json = out
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}")))
        .unwrap_or(Value::Null);
    Outcome {
        code: status.code().unwrap_or(-1),
        stderr: err,
        json,
    }
}

fn run(args: &[&str]) -> Outcome {
    finish(spawn(args, None))
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("no number `{k}` in {v}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read_block(p: &Path, block: u64) -> Vec<u8> {
    let mut f = fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(block * BS)).unwrap();
    let mut b = vec![0u8; BS as usize];
    f.read_exact(&mut b).unwrap();
    b
}

fn write_block(p: &Path, block: u64, bytes: &[u8]) {
    write_at(p, block * BS, bytes)
}

fn write_at(p: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// The newest acknowledged generation of every block of a state file.
fn generations(state: &Path) -> Vec<u64> {
    let v: Value = serde_json::from_str(&fs::read_to_string(state).unwrap()).unwrap();
    v["expect"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["gen"].as_u64().unwrap())
        .collect()
}

fn assert_clean(o: &Outcome) {
    let j = &o.json;
    assert_eq!(o.code, 0, "exit status; stderr:\n{}", o.stderr);
    assert_eq!(j["ok"], true, "{j}");
    for k in ["app_errors", "lost_writes", "stale_reads", "corrupt_reads"] {
        assert_eq!(n(j, k), 0, "{k}: {j}");
    }
    assert_eq!(j["errors"].as_array().unwrap().len(), 0, "{j}");
}

#[test]
fn a_clean_run_is_ok_and_checks_every_block() {
    let d = Dir::new("clean");
    let disk = d.disk(8);
    let out = d.path("result.json");
    let progress = d.path("progress.json");
    let o = run(&[
        "--device",
        s(&disk),
        "--init",
        "--duration-s",
        "1",
        "--json-out",
        s(&out),
        "--progress-file",
        s(&progress),
        "--progress-s",
        "0.2",
    ]);
    assert_clean(&o);
    let j = &o.json;
    assert_eq!(n(j, "blocks"), 2048);
    assert_eq!(n(j, "init_blocks"), 2048, "--init wrote every block");
    assert_eq!(
        n(j, "final_checked_blocks"),
        2048,
        "the read-back read every block"
    );
    assert_eq!(j["final_check_complete"], true);
    assert!(
        n(j, "ios") > 0 && n(j, "reads") > 0 && n(j, "writes") > 0,
        "{j}"
    );
    assert_eq!(n(j, "ios"), n(j, "reads") + n(j, "writes"));
    assert_eq!(j["stop_reason"], "duration");
    assert!(j["max_stall_ms"].is_u64() && j["stalls"].is_array(), "{j}");
    // The same object in the --json-out file; the last progress says the run is done.
    let file: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(&file, j);
    let p: Value = serde_json::from_str(&fs::read_to_string(&progress).unwrap()).unwrap();
    assert_eq!(p["phase"], "done", "{p}");
    assert!(
        o.stderr.contains("ios="),
        "progress lines on stderr:\n{}",
        o.stderr
    );

    // Every block on the disk now carries the header.
    let b = read_block(&disk, 1234);
    assert_eq!(&b[..8], b"DUETBLK1");
}

#[test]
fn stalls_over_the_threshold_are_listed() {
    let d = Dir::new("stalls");
    let disk = d.disk(1);
    // A threshold of 0 ms lists every I/O (up to the cap), each with its time and block.
    let o = run(&[
        "--device",
        s(&disk),
        "--duration-s",
        "0.3",
        "--stall-threshold-ms",
        "0",
        "--threads",
        "2",
        "--quiet",
    ]);
    assert_clean(&o);
    let stalls = o.json["stalls"].as_array().unwrap();
    assert!(!stalls.is_empty(), "{}", o.json);
    for st in stalls {
        assert!(st["op"] == "read" || st["op"] == "write", "{st}");
        assert!(
            n(st, "block") < 256 && st["at_ms"].is_u64() && st["ms"].is_u64(),
            "{st}"
        );
    }
}

#[test]
fn a_lost_write_is_reported_by_the_read_back_and_a_stale_read_while_running() {
    let d = Dir::new("lost");
    let disk = d.disk(1);
    let state = d.path("state.json");
    let area = ["--device", s(&disk), "--state", s(&state), "--quiet"];
    // 1. Write generation 1 everywhere and remember it.
    let o = run(&[&area[..], &["--init", "--duration-s", "0"]].concat());
    assert_clean(&o);
    assert!(generations(&state).iter().all(|g| *g == 1));
    let old = fs::read(&disk).unwrap();
    // 2. Continue from the state: newer generations, acknowledged.
    let o = run(&[&area[..], &["--write-pct", "100", "--duration-s", "0.5"]].concat());
    assert_clean(&o);
    let gens = generations(&state);
    let victim = gens
        .iter()
        .position(|g| *g > 1)
        .expect("some block rewritten") as u64;
    // 3. The disk "loses" the newest write of one block: its old bytes are back.
    let bs = BS as usize;
    write_block(&disk, victim, &old[victim as usize * bs..][..bs]);
    let o = run(&[&area[..], &["--duration-s", "0"]].concat());
    assert_eq!(o.code, 1, "stderr:\n{}", o.stderr);
    let j = &o.json;
    assert_eq!(j["ok"], false);
    assert_eq!(n(j, "lost_writes"), 1, "{j}");
    assert_eq!(
        n(j, "corrupt_reads") + n(j, "stale_reads") + n(j, "app_errors"),
        0
    );
    let errors = j["errors"].to_string();
    assert!(
        errors.contains(&format!("block {victim}")) && errors.contains("lost write"),
        "{errors}"
    );
    // 4. Reads while the workload runs see it too, as stale reads: 16 blocks of 64 KiB, one
    // thread, so that reads hit the one stale block many times over.
    let small = d.path("small.json");
    let area16 = [
        "--device",
        s(&disk),
        "--block-size",
        "65536",
        "--threads",
        "1",
        "--state",
        s(&small),
        "--quiet",
    ];
    let o = run(&[&area16[..], &["--init", "--duration-s", "0"]].concat());
    assert_clean(&o);
    let big = 65536;
    let before = fs::read(&disk).unwrap()[3 * big..][..big].to_vec();
    let o = run(&[&area16[..], &["--write-pct", "100", "--duration-s", "0.3"]].concat());
    assert_clean(&o);
    assert!(generations(&small)[3] > 1, "block 3 rewritten");
    write_at(&disk, 3 * big as u64, &before);
    let o = run(&[&area16[..], &["--write-pct", "0", "--duration-s", "1"]].concat());
    assert_eq!(o.code, 1);
    assert!(n(&o.json, "stale_reads") >= 1, "{}", o.json);
    assert_eq!(n(&o.json, "lost_writes"), 1, "{}", o.json);
    assert!(
        o.json["errors"].to_string().contains("stale read: block 3"),
        "{}",
        o.json
    );
}

#[test]
fn a_garbage_block_is_a_corrupt_read() {
    let d = Dir::new("corrupt");
    let disk = d.disk(1);
    let state = d.path("state.json");
    let o = run(&[
        "--device",
        s(&disk),
        "--init",
        "--duration-s",
        "0",
        "--state",
        s(&state),
        "--quiet",
    ]);
    assert_clean(&o);
    write_block(&disk, 17, &[0xa5; BS as usize]);
    // A torn block: the first sector of another generation over the rest.
    let mut torn = read_block(&disk, 40);
    torn[16] ^= 0x02; // the generation field, as if another write's first sector landed
    write_block(&disk, 40, &torn);
    let o = run(&[
        "--device",
        s(&disk),
        "--duration-s",
        "0",
        "--state",
        s(&state),
        "--quiet",
    ]);
    assert_eq!(o.code, 1, "stderr:\n{}", o.stderr);
    let j = &o.json;
    assert_eq!(j["ok"], false);
    assert_eq!(n(j, "corrupt_reads"), 2, "{j}");
    assert_eq!(n(j, "lost_writes"), 0, "{j}");
    let errors = j["errors"].to_string();
    assert!(
        errors.contains("block 17") && errors.contains("magic"),
        "{errors}"
    );
    assert!(
        errors.contains("block 40") && errors.contains("checksum"),
        "{errors}"
    );
}

/// Writes past half of the 1 MiB disk fail (EFBIG, the file size limit), reads succeed.
fn half_disk_writable() -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: 512 << 10,
        rlim_max: 512 << 10,
    };
    // SAFETY: plain system calls between fork and exec.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn io_errors_are_counted_and_the_run_goes_on() {
    let d = Dir::new("eio");
    let disk = d.disk(1);
    let o = finish(spawn(
        &[
            "--device",
            s(&disk),
            "--init",
            "--duration-s",
            "1",
            "--threads",
            "2",
            "--quiet",
        ],
        Some(half_disk_writable),
    ));
    assert_eq!(o.code, 1, "stderr:\n{}", o.stderr);
    let j = &o.json;
    assert_eq!(j["ok"], false);
    // --init writes 64 blocks per I/O: the two to the upper half fail, then workload writes.
    assert!(n(j, "app_errors") >= 2, "{j}");
    assert_eq!(n(j, "init_blocks"), 128, "{j}");
    // The run went on: workload I/O, and the read-back of every block, all intact.
    assert!(n(j, "ios") > 0, "{j}");
    assert_eq!(n(j, "final_checked_blocks"), 256, "{j}");
    assert_eq!(
        n(j, "lost_writes") + n(j, "stale_reads") + n(j, "corrupt_reads"),
        0,
        "{j}"
    );
    let errors = j["errors"].to_string();
    assert!(errors.contains("write blocks 128..191"), "{errors}");
    assert!(errors.contains("File too large"), "{errors}");
}

/// Waits until the progress file says the workload runs.
fn wait_running(progress: &Path) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Ok(t) = fs::read_to_string(progress) {
            if t.contains("\"phase\":\"run\"") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "never reached the workload phase"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_stop_file_and_sigterm_end_the_run_with_a_result() {
    let d = Dir::new("stop");
    let disk = d.disk(2);
    let progress = d.path("progress.json");
    let stop = d.path("stop");
    let out = d.path("result.json");
    let base = [
        "--device",
        s(&disk),
        "--init",
        "--progress-file",
        s(&progress),
        "--progress-s",
        "0.1",
        "--json-out",
        s(&out),
        "--quiet",
    ];

    // The stop file.
    let r = spawn(&[&base[..], &["--stop-file", s(&stop)]].concat(), None);
    wait_running(&progress);
    fs::write(&stop, b"").unwrap();
    let o = finish(r);
    assert_clean(&o);
    assert_eq!(o.json["stop_reason"], "stop-file");
    assert_eq!(o.json["final_check_complete"], true);
    assert_eq!(n(&o.json, "final_checked_blocks"), 512);
    assert!(out.exists());

    // A stop file that exists before the run is refused.
    let o = run(&[&base[..], &["--stop-file", s(&stop)]].concat());
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains(s(&stop)), "{}", o.stderr);
    fs::remove_file(&stop).unwrap();
    fs::remove_file(&progress).unwrap();

    // SIGTERM.
    let r = spawn(&base, None);
    wait_running(&progress);
    let pid = r.pid();
    // SAFETY: signals our own child, by PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let o = finish(r);
    assert_clean(&o);
    assert_eq!(o.json["stop_reason"], "signal");
    assert_eq!(n(&o.json, "final_checked_blocks"), 512);
}

#[test]
fn bad_usage_is_exit_status_2_naming_the_problem() {
    let d = Dir::new("usage");
    let disk = d.disk(1);
    let missing = d.path("no-such-disk");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--device", s(&missing)], s(&missing)),
        (
            vec!["--device", s(&disk), "--block-size", "1000"],
            "--block-size",
        ),
        (vec!["--device", s(&disk), "--threads", "0"], "--threads"),
        (
            vec!["--device", s(&disk), "--write-pct", "101"],
            "--write-pct",
        ),
        (
            vec!["--device", s(&disk), "--size-mb", "2"],
            "beyond the end",
        ),
        (
            vec!["--device", s(&disk), "--offset-mb", "1"],
            "beyond the end",
        ),
        (vec!["--device", "/dev/null"], "/dev/null"),
        (vec!["--device", s(&disk), "--frobnicate"], "frobnicate"),
        (vec!["--duration-s", "1"], "--device"),
    ];
    for (args, says) in cases {
        let o = run(&args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains(says),
            "{args:?} should say `{says}`: {}",
            o.stderr
        );
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    }
    // A state file of another area.
    let state = d.path("state.json");
    let o = run(&[
        "--device",
        s(&disk),
        "--duration-s",
        "0",
        "--state",
        s(&state),
        "--quiet",
    ]);
    assert_clean(&o);
    let o = run(&[
        "--device",
        s(&disk),
        "--duration-s",
        "0",
        "--state",
        s(&state),
        "--block-size",
        "512",
    ]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("another area"), "{}", o.stderr);
}

#[test]
fn a_second_signal_cuts_the_read_back_short_and_the_run_is_not_ok() {
    use clap::Parser;
    use duet_hosts::blockcheck;
    use std::sync::atomic::AtomicUsize;
    let d = Dir::new("abort");
    let disk = d.disk(1);
    let args = blockcheck::Args::parse_from(["duet-blockcheck", "--device", s(&disk), "--quiet"]);
    // Two signals before the workload even starts: no workload, no read-back.
    let r = blockcheck::run(&args, &AtomicUsize::new(2)).unwrap();
    assert_eq!(r.stop_reason, "signal");
    assert!(!r.final_check_complete);
    assert!(!r.ok, "an incomplete read-back is not a clean run");
    assert_eq!(
        r.app_errors + r.lost_writes + r.stale_reads + r.corrupt_reads,
        0
    );
}

/// Needs root (a ramfs mount); skipped otherwise.
#[test]
fn a_file_that_refuses_o_direct_is_exit_status_2_naming_it() {
    // SAFETY: a plain system call.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to mount a ramfs");
        return;
    }
    let d = Dir::new("ramfs");
    let mnt = d.path("ram");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "ramfs", "none", s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("skipped: cannot mount a ramfs");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let img = mnt.join("x.img");
    fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
    let o = run(&["--device", s(&img), "--duration-s", "0"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains(s(&img)) && o.stderr.contains("O_DIRECT"),
        "{}",
        o.stderr
    );
}
