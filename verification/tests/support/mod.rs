//! What the end-to-end tests share: finding duet-target's binaries, running external programs
//! with a time bound, a single `duetd` started per test on loopback with a configuration of its
//! own, and reading libiscsi's CUnit output.
//!
//! Each test file that needs it declares `mod support;`; helper modules of a test
//! (`lab_common`, `hostile_common`) reach it as `crate::support`.
//!
//! Everything here is bounded in time and cleans up after itself: a [`Daemon`] is killed by PID
//! and its directory removed when it is dropped, and [`run_bounded`] kills a program that runs
//! past its bound.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a started `duetd` may take to listen on all its portals.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many log lines a failing test prints.
const LOG_LINES_ON_PANIC: usize = 80;

// ------------------------------------------------------------------------------------------
// The workspace and its binaries
// ------------------------------------------------------------------------------------------

/// The workspace root (the parent of `verification/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// "release" or "debug", as this test was built.
fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Finds one of duet-target's binaries (see [`package_binary`]).
pub fn target_binary(name: &str, env: &str) -> PathBuf {
    package_binary("duet-target", name, env)
}

/// Finds binary `name` of workspace package `package`: `$env` if set, else next to this test
/// binary (`<target-dir>/<profile>/<name>`, where `cargo test --workspace` puts it), else
/// `<workspace>/build/<profile>/<name>`, else builds it with cargo into
/// `<workspace>/build/test-bins` (a separate target directory, so as not to wait on the lock of
/// the running build). Panics when the build fails.
pub fn package_binary(package: &str, name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    // <target-dir>/<profile>/deps/<test>-HASH -> <target-dir>/<profile>/<name>
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(|d| d.parent()) {
            let cand = profile_dir.join(name);
            if cand.is_file() {
                return cand;
            }
        }
    }
    let cand = workspace_root().join("build").join(profile()).join(name);
    if cand.is_file() {
        return cand;
    }
    let dir = workspace_root().join("build").join("test-bins");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["build", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", &dir);
    if profile() == "release" {
        cmd.arg("--release");
    }
    eprintln!("{name} not found: building it into {}", dir.display());
    match cmd.status() {
        Ok(st) if st.success() => dir.join(profile()).join(name),
        other => panic!(
            "{name} not found (set {env}, or build it: cargo build -p {package} --bin {name}); \
             building it into {} failed: {other:?}",
            dir.display()
        ),
    }
}

/// The `duetd` binary under test (see [`target_binary`]; `DUETD` overrides).
pub fn duetd() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| target_binary("duetd", "DUETD"))
}

/// The `duetctl` binary (see [`target_binary`]; `DUETCTL` overrides).
pub fn duetctl() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| target_binary("duetctl", "DUETCTL"))
}

/// Whether a program is on `PATH`.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Whether every program in `programs` is on `PATH`. When one is missing, panics if `CI` is
/// set (CI must run these tests), else prints a SKIPPED line that names `package` and returns
/// false: the caller returns early and the test is skipped.
pub fn require_programs(programs: &[&str], package: &str) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !have_program(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{package} ({}) is not installed", missing.join(", "));
    }
    eprintln!(
        "SKIPPED: {} not installed (apt-get install {package})",
        missing.join(", ")
    );
    false
}

// ------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `pred` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(mut pred: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file's contents as text (invalid UTF-8 replaced); empty when it cannot be read.
pub fn read_lossy(p: &Path) -> String {
    let mut b = Vec::new();
    if let Ok(mut f) = fs::File::open(p) {
        let _ = f.read_to_end(&mut b);
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// A free TCP port on `ip` (bound and released at once).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A fresh, empty directory under the system's temporary directory, named after this process,
/// `tag` and a counter.
pub fn fresh_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("duet-e2e-{}-{tag}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create temp dir");
    d
}

// ------------------------------------------------------------------------------------------
// Bounded commands
// ------------------------------------------------------------------------------------------

/// What a bounded run of a program produced.
#[derive(Debug)]
pub struct Run {
    /// `None` when it was killed for running past its time bound (or could not start).
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// A run that never started: no status, `why` as its standard error.
    pub fn not_started(why: String) -> Run {
        Run {
            status: None,
            stdout: String::new(),
            stderr: why,
        }
    }

    /// Whether it exited with status 0.
    pub fn ok(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// Standard output and standard error together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Waits for `child` at most `limit`; kills it (SIGKILL) past that. `None` when killed.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs `prog args` with the extra environment `envs` and a time bound; output goes through
/// files in `scratch` (removed afterwards) so that nothing blocks on a full pipe. `Err` says why
/// it could not start.
pub fn try_run_bounded(
    scratch: &Path,
    prog: impl AsRef<OsStr>,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Result<Run, String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let prog = prog.as_ref();
    let n = N.fetch_add(1, Ordering::SeqCst);
    let out_p = scratch.join(format!(".run-{n}.out"));
    let err_p = scratch.join(format!(".run-{n}.err"));
    let (out, err) = match (fs::File::create(&out_p), fs::File::create(&err_p)) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!(
                "cannot create output files in {}: {e}",
                scratch.display()
            ))
        }
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", Path::new(prog).display()))?;
    let status = wait_bounded(&mut child, limit);
    let run = Run {
        status,
        stdout: read_lossy(&out_p),
        stderr: read_lossy(&err_p),
    };
    let _ = fs::remove_file(&out_p);
    let _ = fs::remove_file(&err_p);
    Ok(run)
}

/// [`try_run_bounded`] for a program that must start: panics when it cannot.
pub fn run_bounded(
    scratch: &Path,
    prog: impl AsRef<OsStr>,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> Run {
    try_run_bounded(scratch, prog, args, envs, limit).unwrap_or_else(|why| panic!("{why}"))
}

// ------------------------------------------------------------------------------------------
// A single duetd
// ------------------------------------------------------------------------------------------

/// What a test's configuration needs to know about where its `duetd` runs.
pub struct Site<'a> {
    /// The test's own directory.
    pub dir: &'a Path,
    /// The iSCSI portals, one per address asked for.
    pub portals: &'a [SocketAddr],
    /// Another free port on the first portal's address (the HA link, when there is one).
    pub spare_port: u16,
}

impl Site<'_> {
    /// The first portal.
    pub fn portal(&self) -> SocketAddr {
        self.portals[0]
    }

    /// The portals as the items of a TOML array: `"a:p", "b:q"`.
    pub fn listen(&self) -> String {
        let items: Vec<String> = self.portals.iter().map(|p| format!("\"{p}\"")).collect();
        items.join(", ")
    }
}

/// How a start attempt ended.
enum Ready {
    Yes,
    /// duetd could not bind a port chosen for it: another program took it meanwhile.
    PortTaken,
}

/// A running `duetd`; dropping it kills the process (by PID) and removes its directory, and,
/// when the test is panicking, prints the end of its log first.
pub struct Daemon {
    child: Option<Child>,
    /// The tag the test gave it.
    pub tag: String,
    /// The test's directory (configuration, log, LUN images).
    pub dir: PathBuf,
    /// The iSCSI portals, in the order of the addresses given to [`Daemon::start`].
    pub portals: Vec<SocketAddr>,
    /// The spare port handed to the configuration.
    pub spare_port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Starts duetd with one portal on each of `ips` (each on a free port) and the
    /// configuration `config` writes, and waits (at most 20 s) until every portal listens.
    /// A port taken by another program between choosing it and duetd binding it (tests of other
    /// processes run meanwhile) is chosen again, with a fresh directory. Panics with the log when
    /// duetd exits or does not listen in time.
    pub fn start(tag: &str, ips: &[Ipv4Addr], config: impl Fn(&Site) -> String) -> Daemon {
        assert!(!ips.is_empty(), "a daemon needs at least one portal");
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let mut d = Daemon::spawn(tag, ips, &config);
            match d.wait_ready() {
                Ready::Yes => return d,
                Ready::PortTaken if attempt < ATTEMPTS => {
                    eprintln!("duetd ({tag}): a port was taken meanwhile; choosing others");
                    drop(d);
                }
                Ready::PortTaken => panic!(
                    "duetd could not bind its ports in {ATTEMPTS} attempts:\n{}",
                    d.log_tail(LOG_LINES_ON_PANIC)
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(tag: &str, ips: &[Ipv4Addr], config: &impl Fn(&Site) -> String) -> Daemon {
        let dir = fresh_dir(tag);
        let mut taken: Vec<SocketAddr> = Vec::new();
        let mut free = |ip: Ipv4Addr| loop {
            let a = SocketAddr::new(IpAddr::V4(ip), free_port(ip));
            if !taken.contains(&a) {
                taken.push(a);
                return a;
            }
        };
        let portals: Vec<SocketAddr> = ips.iter().map(|&ip| free(ip)).collect();
        let spare_port = free(ips[0]).port();
        let cfg = dir.join("duet.toml");
        let text = config(&Site {
            dir: &dir,
            portals: &portals,
            spare_port,
        });
        fs::write(&cfg, text).expect("write config");
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
        Daemon {
            child: Some(child),
            tag: tag.to_string(),
            dir,
            portals,
            spare_port,
            log,
        }
    }

    /// Waits until every portal listens: duetd's own "listening" line for each (a connection
    /// alone could reach another program that took the port), or, when the log level hides
    /// that line, a connection while duetd still runs.
    fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        let info = std::env::var("DUET_TEST_LOG").map_or(true, |l| {
            l.contains("info") || l.contains("debug") || l.contains("trace")
        });
        loop {
            if let Some(st) = self.exit_status() {
                let log = read_lossy(&self.log);
                if log.contains("Address already in use") {
                    return Ready::PortTaken;
                }
                panic!(
                    "duetd exited early ({st}):\n{}",
                    self.log_tail(LOG_LINES_ON_PANIC)
                );
            }
            let ready = if info {
                let log = read_lossy(&self.log);
                self.portals.iter().all(|p| {
                    log.lines()
                        .any(|l| l.contains("listening") && l.contains(&format!("addr={p}")))
                })
            } else {
                self.portals
                    .iter()
                    .all(|p| TcpStream::connect_timeout(p, Duration::from_secs(1)).is_ok())
            };
            if ready {
                return Ready::Yes;
            }
            assert!(
                Instant::now() < deadline,
                "duetd did not listen on {:?} within {READY_TIMEOUT:?}:\n{}",
                self.portals,
                self.log_tail(LOG_LINES_ON_PANIC)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first portal.
    pub fn portal(&self) -> SocketAddr {
        self.portals[0]
    }

    /// `iscsi://PORTAL/TARGET/LUN` for the portal at `index`.
    pub fn url(&self, index: usize, target: &str, lun: u32) -> String {
        format!("iscsi://{}/{target}/{lun}", self.portals[index])
    }

    /// The exit status, if duetd has exited.
    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_text(), n)
    }

    /// Waits (bounded) until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(|| self.log_text().contains(needle), within)
    }

    /// The daemon's PID (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Panics (with the log) unless duetd is still running and its log shows no panic.
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.exit_status() {
            panic!("duetd died ({st}):\n{}", self.log_tail(LOG_LINES_ON_PANIC));
        }
        assert!(self.child.is_some(), "duetd is not running");
        assert!(
            !self.log_text().contains("panicked"),
            "duetd logged a panic:\n{}",
            self.log_tail(LOG_LINES_ON_PANIC)
        );
    }

    /// duetd's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of duetd");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends SIGTERM and waits (bounded) for the exit status; `None` if it is still running.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.pid();
        if pid == 0 {
            return None;
        }
        // SAFETY: kill(2) on the positive PID of our own child, which has not been reaped (we
        // hold it in `self.child`), so the PID cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(st) = self.exit_status() {
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
                self.log_tail(LOG_LINES_ON_PANIC)
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------------------------------
// Configuration of a single controller
// ------------------------------------------------------------------------------------------

/// CHAP credentials of a target's auth group (`chap0`).
#[derive(Clone, Copy, Debug)]
pub struct Chap<'a> {
    /// The initiator's CHAP name and secret.
    pub user: &'a str,
    pub secret: &'a str,
    /// The target's name and secret for mutual CHAP.
    pub mutual: Option<(&'a str, &'a str)>,
    /// The initiators the group admits (any when empty).
    pub initiator_names: &'a [&'a str],
}

/// A single controller serving one target with LUN 1 on all the site's portals (portal group
/// `pg0`). [`TargetConfig::render`] gives the TOML.
#[derive(Clone, Debug)]
pub struct TargetConfig<'a> {
    /// Seconds of silence before a session is pinged (0: never).
    pub ping_timeout: u32,
    /// The target's IQN.
    pub target: &'a str,
    /// Its alias, if any.
    pub alias: Option<&'a str>,
    /// The portal group's discovery auth group; duetd's default when `None`.
    pub discovery_auth_group: Option<&'a str>,
    /// CHAP for the target (auth group `chap0`); no authentication when `None`.
    pub chap: Option<Chap<'a>>,
    /// LUN 1's image: a file name in the site's directory, or an absolute path.
    pub image: &'a str,
    /// LUN 1's size, e.g. "16MiB".
    pub size: &'a str,
    /// LUN 1's logical block size; duetd's default when `None`.
    pub block_size: Option<u32>,
    /// LUN 1's serial number; duetd's default when `None`.
    pub serial: Option<&'a str>,
    /// TOML appended at the end (e.g. an `[ha]` table).
    pub extra: &'a str,
}

impl<'a> TargetConfig<'a> {
    /// 16 MiB LUN 1 in `lun1.img` of `target`, no authentication, 5 s ping timeout.
    pub fn new(target: &'a str) -> TargetConfig<'a> {
        TargetConfig {
            ping_timeout: 5,
            target,
            alias: None,
            discovery_auth_group: None,
            chap: None,
            image: "lun1.img",
            size: "16MiB",
            block_size: None,
            serial: None,
            extra: "",
        }
    }

    /// The configuration file's text for `site`.
    pub fn render(&self, site: &Site) -> String {
        let mut t = format!("ping_timeout = {}\n\n", self.ping_timeout);
        let auth_group = match &self.chap {
            Some(c) => {
                let mutual = match c.mutual {
                    Some((u, s)) => format!(", mutual_user = \"{u}\", mutual_secret = \"{s}\""),
                    None => String::new(),
                };
                t += &format!(
                    "[auth_group.chap0]\nchap = [{{ user = \"{}\", secret = \"{}\"{mutual} }}]\n",
                    c.user, c.secret
                );
                if !c.initiator_names.is_empty() {
                    let names: Vec<String> = c
                        .initiator_names
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect();
                    t += &format!("initiator_names = [{}]\n", names.join(", "));
                }
                t += "\n";
                "chap0"
            }
            None => "none",
        };
        t += &format!("[portal_group.pg0]\nlisten = [{}]\n", site.listen());
        if let Some(g) = self.discovery_auth_group {
            t += &format!("discovery_auth_group = \"{g}\"\n");
        }
        t += &format!("\n[[target]]\nname = \"{}\"\n", self.target);
        if let Some(a) = self.alias {
            t += &format!("alias = \"{a}\"\n");
        }
        t += &format!("portal_group = \"pg0\"\nauth_group = \"{auth_group}\"\n");
        t += &format!(
            "\n[[target.lun]]\nnumber = 1\npath = \"{}\"\nsize = \"{}\"\n",
            site.dir.join(self.image).display(),
            self.size
        );
        if let Some(b) = self.block_size {
            t += &format!("block_size = {b}\n");
        }
        if let Some(s) = self.serial {
            t += &format!("serial = \"{s}\"\n");
        }
        t += "create = true\n";
        if !self.extra.is_empty() {
            t += "\n";
            t += self.extra;
        }
        t
    }
}

// ------------------------------------------------------------------------------------------
// CUnit output of iscsi-test-cu
// ------------------------------------------------------------------------------------------

/// What iscsi-test-cu reported.
#[derive(Debug, Default)]
pub struct CuSummary {
    /// From CUnit's "Run Summary" table: tests run, passed, failed.
    pub ran: Option<usize>,
    pub passed: Option<usize>,
    pub failed: Option<usize>,
    /// `Suite.Test` of every failed test.
    pub failed_tests: Vec<String>,
    /// `Suite.Test` of every test that printed `[SKIPPED]`.
    pub skipped_tests: Vec<String>,
}

impl CuSummary {
    /// Prints the skipped and the failed tests to standard error.
    pub fn print_tests(&self) {
        eprintln!("skipped ({}):", self.skipped_tests.len());
        for t in &self.skipped_tests {
            eprintln!("  {t}");
        }
        eprintln!("failed ({}):", self.failed_tests.len());
        for t in &self.failed_tests {
            eprintln!("  {t}");
        }
    }

    /// Asserts that `run` (which produced this summary) ended within its bound `limit`,
    /// printed a run summary and reported no failure; `what` names the run in the messages.
    pub fn assert_clean(&self, run: &Run, limit: Duration, what: &str) {
        let out = run.all();
        assert!(
            run.status.is_some(),
            "iscsi-test-cu ({what}) ran past {limit:?}; output tail:\n{}",
            tail(&out, 60)
        );
        assert!(
            self.ran.is_some(),
            "no CUnit run summary in the output of iscsi-test-cu ({what}):\n{}",
            tail(&out, 60)
        );
        assert!(
            self.failed == Some(0) && self.failed_tests.is_empty(),
            "iscsi-test-cu ({what}) reported failures: {:?}\noutput tail:\n{}",
            self.failed_tests,
            tail(&out, 80)
        );
    }
}

/// Parses iscsi-test-cu's (CUnit's) output.
pub fn parse_cunit(out: &str) -> CuSummary {
    let mut s = CuSummary::default();
    let mut suite = String::new();
    let mut test: Option<String> = None;
    let mut skipped_here = false;
    let finish = |s: &mut CuSummary, test: &mut Option<String>, skipped: &mut bool, failed| {
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
            // tests  Total  Ran  Passed  Failed  Inactive
            let nums: Vec<usize> = trimmed
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if nums.len() >= 4 {
                s.ran = Some(nums[1]);
                s.passed = Some(nums[2]);
                s.failed = Some(nums[3]);
            }
        }
    }
    s
}
