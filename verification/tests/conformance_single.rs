//! End-to-end conformance of a single `duetd` controller against a real initiator: libiscsi's
//! tools (`iscsi-ls`, `iscsi-inq`, `iscsi-readcapacity16`) and its conformance suite
//! `iscsi-test-cu`.
//!
//! Each test starts its own `duetd` on free loopback ports with a fresh directory, and a guard
//! stops it (by PID) and removes the directory whatever happens. Every external program runs with
//! a time bound. The `duetd` binary is taken from `DUETD` if set, else from the build directory
//! that holds this test (where `cargo test --workspace` puts it), else it is built with cargo into
//! a separate directory.

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const TARGET: &str = "iqn.2026-11.dev.duet:target0";
const INIT1: &str = "iqn.2026-11.test:init1";
const INIT2: &str = "iqn.2026-11.test:init2";

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

fn have_libiscsi_tools() -> bool {
    [
        "iscsi-ls",
        "iscsi-inq",
        "iscsi-readcapacity16",
        "iscsi-test-cu",
    ]
    .iter()
    .all(|t| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Skips the calling test (with a loud message) when libiscsi's tools are missing, unless CI
/// demands them.
macro_rules! require_tools {
    () => {
        if !have_libiscsi_tools() {
            if std::env::var_os("CI").is_some() {
                panic!("libiscsi-bin (iscsi-ls, iscsi-inq, iscsi-test-cu) is not installed");
            }
            eprintln!("SKIPPED: libiscsi-bin is not installed (apt-get install libiscsi-bin)");
            return;
        }
    };
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `duetd` binary to test.
fn duetd() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DUETD") {
            return PathBuf::from(p);
        }
        // build/<profile>/deps/conformance_single-HASH -> build/<profile>/duetd
        if let Ok(exe) = std::env::current_exe() {
            if let Some(profile_dir) = exe.parent().and_then(|d| d.parent()) {
                let cand = profile_dir.join("duetd");
                if cand.is_file() {
                    eprintln!("conformance: using {}", cand.display());
                    return cand;
                }
            }
        }
        // Not built alongside this test (e.g. `cargo test -p duet-verification`): build it in a
        // separate target directory, so as not to wait on the lock of the running build.
        let release = !cfg!(debug_assertions);
        let dir = workspace_root().join("build").join("conformance-duetd");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root())
            .args(["build", "-p", "duet-target", "--bin", "duetd"])
            .env("CARGO_TARGET_DIR", &dir);
        if release {
            cmd.arg("--release");
        }
        eprintln!("conformance: building duetd into {}", dir.display());
        let st = cmd.status().expect("run cargo build for duetd");
        assert!(
            st.success(),
            "cargo build -p duet-target --bin duetd failed"
        );
        dir.join(if release { "release" } else { "debug" })
            .join("duetd")
    })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn fresh_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("duet-conf-{}-{tag}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// A running `duetd`; dropping it kills the process (by PID) and removes its directory.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    ports: Vec<u16>,
    log: PathBuf,
}

impl Daemon {
    /// Starts duetd with a configuration produced by `config(dir, ports)`.
    fn start(tag: &str, nports: usize, config: impl Fn(&Path, &[u16]) -> String) -> Daemon {
        let dir = fresh_dir(tag);
        let ports: Vec<u16> = (0..nports).map(|_| free_port()).collect();
        let cfg = dir.join("duet.toml");
        fs::write(&cfg, config(&dir, &ports)).expect("write config");
        let log = dir.join("duetd.log");
        let logf = fs::File::create(&log).expect("log file");
        let child = Command::new(duetd())
            .arg("--config")
            .arg(&cfg)
            .env(
                "RUST_LOG",
                std::env::var("DUET_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log file"))
            .stderr(logf)
            .spawn()
            .expect("start duetd");
        let mut d = Daemon {
            child: Some(child),
            dir,
            ports,
            log,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for &p in &self.ports.clone() {
            loop {
                if TcpStream::connect(("127.0.0.1", p)).is_ok() {
                    break;
                }
                if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                    panic!("duetd exited early ({st}):\n{}", self.log_text());
                }
                assert!(
                    Instant::now() < deadline,
                    "duetd did not listen on port {p} within 20 s:\n{}",
                    self.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn log_text(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        let from = lines.len().saturating_sub(80);
        lines[from..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn url(&self, port_index: usize, lun: u32) -> String {
        format!(
            "iscsi://127.0.0.1:{}/{TARGET}/{lun}",
            self.ports[port_index]
        )
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- duetd log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What a bounded run of an external program produced.
struct Run {
    /// `None` when it was killed for running past its time bound.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs a program with a time bound; output goes through files so that nothing blocks.
fn run_bounded(
    dir: &Path,
    prog: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Run {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let out_p = dir.join(format!("run-{n}.out"));
    let err_p = dir.join(format!("run-{n}.err"));
    let out = fs::File::create(&out_p).expect("stdout file");
    let err = fs::File::create(&err_p).expect("stderr file");
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {prog}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("wait for {prog}: {e}"),
        }
    };
    let read = |p: &Path| {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(p) {
            let mut b = Vec::new();
            let _ = f.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        s
    };
    Run {
        status,
        stdout: read(&out_p),
        stderr: read(&err_p),
    }
}

fn plain_config(dir: &Path, ports: &[u16]) -> String {
    let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        r#"ping_timeout = 5

[portal_group.pg0]
listen = [{listen}]

[[target]]
name = "{TARGET}"
alias = "conformance"
portal_group = "pg0"
auth_group = "none"

[[target.lun]]
number = 1
path = "{img}"
size = "64MiB"
block_size = 512
serial = "DUETCONF0001"
create = true
"#,
        listen = listen.join(", "),
        img = dir.join("lun1.img").display()
    )
}

const CHAP_USER: &str = "duetuser";
const CHAP_SECRET: &str = "duetsecret12";
const MUTUAL_USER: &str = "duetmutual";
const MUTUAL_SECRET: &str = "duetsecret34";
const TARGET_USER: &str = "duettarget";
const TARGET_SECRET: &str = "targetsecret56";

/// A CHAP-protected target: one-way CHAP for `user`/`secret`, mutual when `target` is given.
fn chap_config_for(
    dir: &Path,
    ports: &[u16],
    user: &str,
    secret: &str,
    target: Option<(&str, &str)>,
) -> String {
    let mutual = match target {
        Some((u, s)) => format!(", mutual_user = \"{u}\", mutual_secret = \"{s}\""),
        None => String::new(),
    };
    format!(
        r#"ping_timeout = 5

[auth_group.chap0]
chap = [{{ user = "{user}", secret = "{secret}"{mutual} }}]
initiator_names = ["{INIT1}", "{INIT2}"]

[portal_group.pg0]
listen = ["127.0.0.1:{p}"]

[[target]]
name = "{TARGET}"
portal_group = "pg0"
auth_group = "chap0"

[[target.lun]]
number = 1
path = "{img}"
size = "16MiB"
create = true
"#,
        p = ports[0],
        img = dir.join("lun1.img").display()
    )
}

fn chap_config(dir: &Path, ports: &[u16]) -> String {
    chap_config_for(dir, ports, CHAP_USER, CHAP_SECRET, None)
}

fn mutual_chap_config(dir: &Path, ports: &[u16]) -> String {
    chap_config_for(
        dir,
        ports,
        MUTUAL_USER,
        MUTUAL_SECRET,
        Some((TARGET_USER, TARGET_SECRET)),
    )
}

// ------------------------------------------------------------------------------------------
// CUnit output
// ------------------------------------------------------------------------------------------

/// The results iscsi-test-cu reported.
#[derive(Debug, Default)]
struct Summary {
    /// From CUnit's "Run Summary" table: tests run, passed, failed.
    ran: Option<usize>,
    passed: Option<usize>,
    failed: Option<usize>,
    failed_tests: Vec<String>,
    skipped_tests: Vec<String>,
}

fn parse_cunit(out: &str) -> Summary {
    let mut s = Summary::default();
    let mut suite = String::new();
    let mut test: Option<String> = None;
    let mut skipped_here = false;
    let finish = |s: &mut Summary, test: &mut Option<String>, skipped: &mut bool, failed: bool| {
        if let Some(t) = test.take() {
            if failed {
                s.failed_tests.push(t);
            } else if *skipped {
                s.skipped_tests.push(t);
            }
        }
        *skipped = false;
    };
    for line in out.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("Suite: ") {
            suite = rest.trim().to_string();
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Test: ") {
            finish(&mut s, &mut test, &mut skipped_here, false);
            let name = rest.split(" ...").next().unwrap_or(rest).trim();
            test = Some(format!("{suite}.{name}"));
            skipped_here = false;
        }
        if trimmed.contains("[SKIPPED]") {
            skipped_here = true;
        }
        if test.is_some() {
            if trimmed.ends_with("...FAILED") || trimmed == "FAILED" {
                finish(&mut s, &mut test, &mut skipped_here, true);
            } else if trimmed.ends_with("...passed") || trimmed == "passed" {
                finish(&mut s, &mut test, &mut skipped_here, false);
            }
        }
        if trimmed.starts_with("tests ") || trimmed.starts_with("tests\t") {
            let nums: Vec<usize> = trimmed
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            // tests  Total  Ran  Passed  Failed  Inactive
            if nums.len() >= 4 {
                s.ran = Some(nums[1]);
                s.passed = Some(nums[2]);
                s.failed = Some(nums[3]);
            }
        }
    }
    s
}

/// Runs iscsi-test-cu and asserts that nothing failed, printing the failed and skipped tests.
fn run_test_cu(d: &Daemon, extra: &[&str], urls: &[String], limit: Duration) -> Summary {
    let mut args: Vec<&str> = vec!["--dataloss", "-i", INIT1, "-I", INIT2];
    args.extend_from_slice(extra);
    for u in urls {
        args.push(u);
    }
    let r = run_bounded(&d.dir, "iscsi-test-cu", &args, &[], limit);
    let out = r.all();
    // Kept for reading after the run: build/iscsi-test-cu-<test>.log.
    let dir_name = d
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tag = dir_name.split('-').nth(3).unwrap_or("run");
    let _ = fs::write(
        workspace_root()
            .join("build")
            .join(format!("iscsi-test-cu-{tag}.log")),
        &out,
    );
    let sum = parse_cunit(&out);
    eprintln!(
        "iscsi-test-cu {}: ran {:?} passed {:?} failed {:?}",
        extra.join(" "),
        sum.ran,
        sum.passed,
        sum.failed
    );
    eprintln!("skipped ({}):", sum.skipped_tests.len());
    for t in &sum.skipped_tests {
        eprintln!("  {t}");
    }
    eprintln!("failed ({}):", sum.failed_tests.len());
    for t in &sum.failed_tests {
        eprintln!("  {t}");
    }
    assert!(
        r.status.is_some(),
        "iscsi-test-cu ran past {limit:?}; output tail:\n{}",
        tail(&out, 60)
    );
    assert!(
        sum.ran.is_some(),
        "no CUnit run summary in the output:\n{}",
        tail(&out, 60)
    );
    assert!(
        sum.failed == Some(0) && sum.failed_tests.is_empty(),
        "iscsi-test-cu reported failures: {:?}\noutput tail:\n{}",
        sum.failed_tests,
        tail(&out, 80)
    );
    sum
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn cunit_summary_parser_reads_results() {
    let out = "\
Suite: SCSI.Read10
  Test: Simple ...passed
  Test: BeyondEol ...
[SKIPPED] READ10 is not implemented.
passed
  Test: Flags ...FAILED
    1. test_read10_flags.c:50  - status == 0
  Test: DataSn ...    [FAILED] WRITE10 command failed with status 2 / sense key COMMAND ABORTED(0x0b)
    [FAILED] WRITE10 command failed with status 2 / sense key COMMAND ABORTED(0x0b)
passed
Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      1      1    n/a      0        0
               tests      4      4      3      1        0
             asserts     10     10      9      1      n/a
";
    let s = parse_cunit(out);
    assert_eq!((s.ran, s.passed, s.failed), (Some(4), Some(3), Some(1)));
    assert_eq!(s.failed_tests, vec!["SCSI.Read10.Flags".to_string()]);
    assert_eq!(s.skipped_tests, vec!["SCSI.Read10.BeyondEol".to_string()]);
}

#[test]
fn iscsi_ls_discovers_the_target_and_its_lun() {
    require_tools!();
    let d = Daemon::start("ls", 1, plain_config);
    let portal = format!("iscsi://127.0.0.1:{}", d.ports[0]);
    let r = run_bounded(
        &d.dir,
        "iscsi-ls",
        &["-s", "-i", INIT1, &portal],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "iscsi-ls failed:\n{}", r.all());
    let out = r.all();
    assert!(
        out.contains(&format!(
            "Target:{TARGET} Portal:127.0.0.1:{},1",
            d.ports[0]
        )),
        "{out}"
    );
    assert!(out.contains("Lun:1"), "LUN 1 not listed:\n{out}");
    assert!(
        out.contains("DIRECT_ACCESS"),
        "device type not shown:\n{out}"
    );
}

#[test]
fn iscsi_inq_reads_standard_inquiry_and_every_vpd_page() {
    require_tools!();
    let d = Daemon::start("inq", 1, plain_config);
    let url = d.url(0, 1);
    let inq = |extra: &[&str]| {
        let mut args = vec!["-i", INIT1];
        args.extend_from_slice(extra);
        args.push(&url);
        let r = run_bounded(&d.dir, "iscsi-inq", &args, &[], Duration::from_secs(30));
        assert!(r.ok(), "iscsi-inq {extra:?} failed:\n{}", r.all());
        r.stdout
    };
    let std_inq = inq(&[]);
    assert!(
        std_inq.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{std_inq}"
    );
    assert!(std_inq.contains("Vendor:DUET"), "{std_inq}");
    assert!(
        std_inq.contains("TPGS:1"),
        "implicit ALUA not advertised:\n{std_inq}"
    );
    // iscsi-inq takes the page code as a decimal number.
    let pages = inq(&["-e", "1", "-c", "0"]);
    for p in ["0x00", "0x80", "0x83", "0xb0", "0xb1", "0xb2"] {
        assert!(
            pages.contains(&format!("Page:{p}")),
            "page {p} not listed as supported:\n{pages}"
        );
    }
    let serial = inq(&["-e", "1", "-c", "128"]);
    assert!(
        serial.contains("Unit Serial Number:[DUETCONF0001]"),
        "{serial}"
    );
    let ids = inq(&["-e", "1", "-c", "131"]);
    for d in [
        "NAA",
        "TARGET_PORT_GROUP",
        "RELATIVE_TARGET_PORT",
        "T10_VENDORT_ID",
    ] {
        assert!(ids.contains(d), "no {d} designator:\n{ids}");
    }
    assert!(ids.contains(&format!("[{TARGET},t,0x0001]")), "{ids}");
    let limits = inq(&["-e", "1", "-c", "176"]);
    assert!(
        limits.contains("maximum compare and write length:"),
        "{limits}"
    );
    let chars = inq(&["-e", "1", "-c", "177"]);
    assert!(chars.contains("Medium Rotation Rate:"), "{chars}");
    let prov = inq(&["-e", "1", "-c", "178"]);
    assert!(
        prov.contains("lbpu:1") && prov.contains("lbprz:1"),
        "{prov}"
    );
}

#[test]
fn iscsi_readcapacity16_reports_the_configured_size() {
    require_tools!();
    let d = Daemon::start("rc16", 1, plain_config);
    let r = run_bounded(
        &d.dir,
        "iscsi-readcapacity16",
        &["-i", INIT1, &d.url(0, 1)],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "iscsi-readcapacity16 failed:\n{}", r.all());
    let out = r.all();
    let last_lba = (64u64 << 20) / 512 - 1;
    assert!(
        out.contains(&format!("RETURNED LOGICAL BLOCK ADDRESS:{last_lba}")),
        "{out}"
    );
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
    assert!(out.contains("Total size:67108864"), "{out}");
}

#[test]
fn sigterm_stops_duetd_cleanly_with_a_session_open() {
    let mut d = Daemon::start("term", 1, plain_config);
    let mut s = raw_login(d.ports[0], INIT1);
    let st = d
        .terminate(Duration::from_secs(20))
        .expect("duetd did not exit within 20 s of SIGTERM");
    assert!(st.success(), "duetd exited with {st}:\n{}", d.log_text());
    // The session saw a logout request (Async Message, event 1) or just the end of the stream.
    while let Some((p, _)) = read_pdu(&mut s) {
        if p[0] & 0x3F == 0x32 {
            assert_eq!(p[36], 1, "an Async Message other than a logout request");
        }
    }
    assert!(
        d.log_text().contains("backends flushed"),
        "no flush at shutdown:\n{}",
        d.log_text()
    );
}

#[test]
fn iscsi_test_cu_all_passes_with_multipath() {
    require_tools!();
    let d = Daemon::start("cu", 2, plain_config);
    let urls = [d.url(0, 1), d.url(1, 1)];
    let s = run_test_cu(&d, &["-t", "ALL"], &urls, Duration::from_secs(1500));
    assert!(s.passed.unwrap_or(0) > 0);
}

fn inq_bounded(d: &Daemon, initiator: &str, url: &str, envs: &[(&str, &str)]) -> Run {
    run_bounded(
        &d.dir,
        "iscsi-inq",
        &["-i", initiator, url],
        envs,
        Duration::from_secs(30),
    )
}

fn chap_url(d: &Daemon, user: &str, secret: &str, extra: &str) -> String {
    format!(
        "iscsi://{user}%{secret}@127.0.0.1:{}/{TARGET}/1{extra}",
        d.ports[0]
    )
}

#[test]
fn one_way_chap_refuses_a_wrong_secret_and_accepts_the_right_one() {
    require_tools!();
    let d = Daemon::start("chap", 1, chap_config);

    // No credentials at all.
    let r = inq_bounded(&d, INIT1, &d.url(0, 1), &[]);
    assert!(!r.ok(), "login without CHAP was accepted:\n{}", r.all());
    // A wrong secret: login status 2/1 (authentication failure).
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, CHAP_USER, "wrongsecret99", ""),
        &[],
    );
    assert!(!r.ok(), "a wrong CHAP secret was accepted:\n{}", r.all());
    // libiscsi prints the login status as class * 256 + detail: 2/1 is 513.
    assert!(
        r.all().contains("Authentication failure(513)"),
        "not refused with login status 2/1:\n{}",
        r.all()
    );
    // An unknown user.
    let r = inq_bounded(&d, INIT1, &chap_url(&d, "nobody", CHAP_SECRET, ""), &[]);
    assert!(!r.ok(), "an unknown CHAP user was accepted:\n{}", r.all());
    // The right secret, but an initiator name outside the group's list.
    let r = inq_bounded(
        &d,
        "iqn.2026-11.test:stranger",
        &chap_url(&d, CHAP_USER, CHAP_SECRET, ""),
        &[],
    );
    assert!(!r.ok(), "an initiator outside the ACL got in:\n{}", r.all());
    // 2/2: initiator not allowed (libiscsi prints class * 256 + detail = 514).
    assert!(
        r.all().contains("(514)"),
        "not refused with 2/2:\n{}",
        r.all()
    );
    // The right one-way secret.
    let r = inq_bounded(&d, INIT1, &chap_url(&d, CHAP_USER, CHAP_SECRET, ""), &[]);
    assert!(r.ok(), "the right CHAP secret was refused:\n{}", r.all());
    assert!(r.stdout.contains("Vendor:DUET"), "{}", r.stdout);
}

#[test]
fn mutual_chap_proves_the_target_to_the_initiator() {
    require_tools!();
    let d = Daemon::start("mutual", 1, mutual_chap_config);
    let ok_args = format!("?target_user={TARGET_USER}&target_password={TARGET_SECRET}");
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, MUTUAL_USER, MUTUAL_SECRET, &ok_args),
        &[],
    );
    assert!(r.ok(), "mutual CHAP was refused:\n{}", r.all());
    assert!(r.stdout.contains("Vendor:DUET"), "{}", r.stdout);
    // The initiator expects another target secret: it must notice and give up.
    let bad_args = format!("?target_user={TARGET_USER}&target_password=notthetarget1");
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, MUTUAL_USER, MUTUAL_SECRET, &bad_args),
        &[],
    );
    assert!(
        !r.ok(),
        "a wrong target secret went unnoticed:\n{}",
        r.all()
    );
    // A wrong initiator secret is refused as with one-way CHAP.
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, MUTUAL_USER, "wrongsecret99", &ok_args),
        &[],
    );
    assert!(!r.ok(), "a wrong CHAP secret was accepted:\n{}", r.all());
    // The same credentials through libiscsi's environment variables.
    let r = inq_bounded(
        &d,
        INIT2,
        &d.url(0, 1),
        &[
            ("LIBISCSI_CHAP_USERNAME", MUTUAL_USER),
            ("LIBISCSI_CHAP_PASSWORD", MUTUAL_SECRET),
            ("LIBISCSI_CHAP_TARGET_USERNAME", TARGET_USER),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET_SECRET),
        ],
    );
    assert!(
        r.ok(),
        "mutual CHAP via environment was refused:\n{}",
        r.all()
    );
}

#[test]
fn iscsi_test_cu_chap_family_passes() {
    require_tools!();
    let scratch = fresh_dir("list");
    let list = run_bounded(
        &scratch,
        "iscsi-test-cu",
        &["--list"],
        &[],
        Duration::from_secs(30),
    );
    let _ = fs::remove_dir_all(&scratch);
    if !list.stdout.contains("iSCSICHAP") {
        eprintln!("SKIPPED: this iscsi-test-cu has no iSCSICHAP family");
        return;
    }
    let d = Daemon::start("cuchap", 1, chap_config);
    let url = format!(
        "iscsi://{CHAP_USER}%{CHAP_SECRET}@127.0.0.1:{}/{TARGET}/1",
        d.ports[0]
    );
    run_test_cu(
        &d,
        &["-t", "iSCSI.iSCSICHAP"],
        &[url],
        Duration::from_secs(300),
    );
}

/// A login by hand over a plain TCP socket (operational stage straight to full feature), so
/// that the test controls exactly what the initiator says afterwards: nothing.
fn raw_login(port: u16, initiator: &str) -> TcpStream {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut data = Vec::new();
    for kv in [
        format!("InitiatorName={initiator}"),
        format!("TargetName={TARGET}"),
        "SessionType=Normal".to_string(),
        "HeaderDigest=None".to_string(),
        "DataDigest=None".to_string(),
    ] {
        data.extend_from_slice(kv.as_bytes());
        data.push(0);
    }
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43; // immediate Login Request
    bhs[1] = 0x80 | (1 << 2) | 3; // T=1, CSG=1 (operational), NSG=3 (full feature)
    let len = data.len() as u32;
    bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0x12, 0x34, 0x56]); // ISID
    bhs[16..20].copy_from_slice(&1u32.to_be_bytes()); // ITT
    while data.len() % 4 != 0 {
        data.push(0);
    }
    s.write_all(&bhs).unwrap();
    s.write_all(&data).unwrap();
    let (rsp, _) = read_pdu(&mut s).expect("a Login Response");
    assert_eq!(rsp[0] & 0x3F, 0x23, "not a Login Response");
    assert_eq!((rsp[36], rsp[37]), (0, 0), "login refused");
    assert_eq!(
        rsp[1] & 0x83,
        0x83,
        "the target did not go to full feature phase"
    );
    s
}

/// Reads one PDU (no digests): its BHS and data segment; `None` when the connection closed.
fn read_pdu(s: &mut TcpStream) -> Option<([u8; 48], Vec<u8>)> {
    let mut bhs = [0u8; 48];
    s.read_exact(&mut bhs).ok()?;
    let ahs = bhs[4] as usize * 4;
    let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    let mut rest = vec![0u8; ahs + dlen.div_ceil(4) * 4];
    s.read_exact(&mut rest).ok()?;
    Some((bhs, rest[ahs..ahs + dlen].to_vec()))
}

#[test]
fn a_silent_initiator_is_pinged_then_dropped() {
    let d = Daemon::start("ping", 1, |dir, ports| {
        plain_config(dir, ports).replace("ping_timeout = 5", "ping_timeout = 1")
    });
    let mut s = raw_login(d.ports[0], INIT1);
    // The initiator says nothing: the target pings it with a NOP-In that asks for an answer
    // (ITT ffffffff, a valid TTT)...
    let (nop, _) = read_pdu(&mut s).expect("a NOP-In ping before the connection is dropped");
    assert_eq!(nop[0] & 0x3F, 0x20, "expected a NOP-In");
    assert_eq!(
        &nop[16..20],
        &[0xFF; 4],
        "a target ping carries ITT ffffffff"
    );
    assert_ne!(&nop[20..24], &[0xFF; 4], "a target ping asks for an answer");
    // ...and, without one, closes the connection (bounded by the 20 s read timeout).
    loop {
        match read_pdu(&mut s) {
            None => break,
            Some((p, _)) => assert_eq!(p[0] & 0x3F, 0x20, "unexpected PDU while silent"),
        }
    }
}

#[test]
fn an_answering_initiator_keeps_its_session() {
    use std::io::Write;
    let d = Daemon::start("pong", 1, |dir, ports| {
        plain_config(dir, ports).replace("ping_timeout = 5", "ping_timeout = 1")
    });
    let mut s = raw_login(d.ports[0], INIT1);
    // Answer three pings; the session must still be there.
    for _ in 0..3 {
        let (nop, _) = read_pdu(&mut s).expect("a NOP-In ping");
        assert_eq!(nop[0] & 0x3F, 0x20);
        let mut out = [0u8; 48];
        out[0] = 0x40; // immediate NOP-Out
        out[1] = 0x80;
        out[8..16].copy_from_slice(&nop[8..16]); // LUN
        out[16..20].copy_from_slice(&[0xFF; 4]); // ITT
        out[20..24].copy_from_slice(&nop[20..24]); // TTT echoed
        out[24..28].copy_from_slice(&nop[28..32]); // CmdSN = ExpCmdSN
        let exp_stat = u32::from_be_bytes([nop[24], nop[25], nop[26], nop[27]]);
        out[28..32].copy_from_slice(&exp_stat.to_be_bytes());
        s.write_all(&out).unwrap();
    }
    // A NOP-Out ping of our own is answered: the connection is alive.
    let mut ping = [0u8; 48];
    ping[0] = 0x40;
    ping[1] = 0x80;
    ping[16..20].copy_from_slice(&7u32.to_be_bytes());
    ping[20..24].copy_from_slice(&[0xFF; 4]);
    s.write_all(&ping).unwrap();
    loop {
        let (p, _) = read_pdu(&mut s).expect("the session was dropped although it answered");
        if p[0] & 0x3F == 0x20 && p[16..20] == 7u32.to_be_bytes() {
            break;
        }
    }
}

#[test]
fn a_ctl_conf_configuration_serves_the_same_way() {
    require_tools!();
    let d = Daemon::start("ctlconf", 1, |dir, ports| {
        format!(
            "# FreeBSD ctl.conf syntax\n\
             auth-group ag0 {{\n\
             \tchap {CHAP_USER} {CHAP_SECRET}\n\
             \tinitiator-name {INIT1}\n\
             }}\n\
             portal-group pg0 {{\n\
             \tdiscovery-auth-group no-authentication\n\
             \tlisten 127.0.0.1:{p}\n\
             }}\n\
             target {TARGET} {{\n\
             \tauth-group ag0\n\
             \tportal-group pg0\n\
             \tlun 1 {{\n\
             \t\tpath {img}\n\
             \t\tsize 8M\n\
             \t\tblocksize 4096\n\
             \t\tserial DUETCTL1\n\
             \t\toption create on\n\
             \t}}\n\
             }}\n",
            p = ports[0],
            img = dir.join("ctl.img").display()
        )
    });
    let portal = format!("iscsi://127.0.0.1:{}", d.ports[0]);
    let r = run_bounded(
        &d.dir,
        "iscsi-ls",
        &["-i", INIT1, &portal],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "discovery failed:\n{}", r.all());
    assert!(r.stdout.contains(TARGET), "{}", r.stdout);
    let url = chap_url(&d, CHAP_USER, CHAP_SECRET, "");
    let r = run_bounded(
        &d.dir,
        "iscsi-readcapacity16",
        &["-i", INIT1, &url],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "CHAP login failed:\n{}", r.all());
    assert!(
        r.stdout.contains("LOGICAL BLOCK LENGTH IN BYTES:4096"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Total size:8388608"), "{}", r.stdout);
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, CHAP_USER, "wrongsecret99", ""),
        &[],
    );
    assert!(
        r.all().contains("Authentication failure(513)"),
        "{}",
        r.all()
    );
}

#[test]
fn iscsi_test_cu_read_only_family_passes_on_a_read_only_lun() {
    require_tools!();
    let d = Daemon::start("ro", 1, |dir, ports| {
        plain_config(dir, ports).replace("create = true", "create = true\nread_only = true")
    });
    let s = run_test_cu(
        &d,
        &["-t", "SCSI.ReadOnly"],
        &[d.url(0, 1)],
        Duration::from_secs(300),
    );
    assert_eq!(s.passed, Some(1), "the ReadOnly test did not run");
    assert!(s.skipped_tests.is_empty(), "skipped: {:?}", s.skipped_tests);
}
