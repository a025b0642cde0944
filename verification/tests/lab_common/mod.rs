//! A harness for end-to-end tests of the two-controller lab (`duetd lab`).
//!
//! Every [`Lab`] runs in a network namespace of its own (`ip netns add duet-<pid>-<n>`), so the
//! lab's fixed ports (iSCSI 3260 on 127.0.0.1 and 127.0.0.2, HA link 7777) never collide with
//! anything else on the machine and the HA link can be cut with `iptables` without touching the
//! host. Everything the harness starts (the lab, restarted controllers, `duet-mpio`,
//! `iscsi-test-cu`) runs through `ip netns exec`; `duetctl` talks to the controllers over their
//! Unix admin sockets from outside.
//!
//! Dropping a [`Lab`] kills every process it started and every controller named by the lab's pid
//! files (SIGCONT, then SIGKILL, by PID, after checking `/proc/PID/cmdline`), then every process
//! still left in the namespace, deletes the namespace and removes the lab directory, also when
//! the test panics; on a panic it first prints the tail of the controllers' logs and copies them
//! to `build/failover-logs/<namespace>/`.
//!
//! Tests that use a lab are serialized by a process-wide lock held by the [`Lab`] (they load both
//! CPUs and measure stalls). Without root (no `ip netns add`), [`Lab::start`] prints why and
//! returns `None`: the caller returns early, the test is skipped.

#![allow(dead_code)]

use crate::support::{
    duetctl, duetd, have_program, read_lossy, tail, try_run_bounded, wait_bounded, wait_until,
    workspace_root, Run,
};
use serde_json::Value;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The lab's target name.
pub const LAB_TARGET: &str = "iqn.2016-01.local.beast:target0";
/// The lab's LUN.
pub const LAB_LUN: u64 = 1;
/// iSCSI port of both portals inside the namespace.
pub const ISCSI_PORT: u16 = 3260;
/// HA link port inside the namespace.
pub const LINK_PORT: u16 = 7777;

/// How long a lab may take to come up (both controllers linked, ctrl-a primary).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of every short helper command (`duetctl`, `iptables`, `ip`).
const SHORT_COMMAND: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// Serialization, binaries and commands
// ------------------------------------------------------------------------------------------

/// Takes the process-wide lock that serializes lab tests (even if a previous test panicked
/// while holding it).
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `duet-mpio` binary (duet-hosts'; see [`crate::support::package_binary`]; `DUET_MPIO`
/// overrides).
pub fn duet_mpio() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| crate::support::package_binary("duet-hosts", "duet-mpio", "DUET_MPIO"))
}

/// Runs `prog args` with a time bound (see [`try_run_bounded`]); a program that cannot start
/// gives a [`Run`] without status whose standard error says why.
fn run_bounded(scratch: &Path, prog: &Path, args: &[&str], limit: Duration) -> Run {
    try_run_bounded(scratch, prog, args, &[], limit).unwrap_or_else(Run::not_started)
}

// ------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------

fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Whether `pid` is a live (not zombie) process whose command line contains `needle`.
fn alive_with(pid: i32, needle: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    !zombie && cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// Sends `sig` to `pid`; true when it was delivered.
fn signal(pid: i32, sig: libc::c_int) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) on a positive pid (never a process group), checked by the callers to
    // belong to this lab.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// SIGCONT then SIGKILL: a stopped process must be able to die.
fn cont_and_kill(pid: i32) {
    signal(pid, libc::SIGCONT);
    signal(pid, libc::SIGKILL);
}

// ------------------------------------------------------------------------------------------
// The lab
// ------------------------------------------------------------------------------------------

/// One controller of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// ctrl-a: HA id 1, primary at start, portal 127.0.0.1.
    A,
    /// ctrl-b: HA id 2, secondary at start, portal 127.0.0.2.
    B,
}

impl Node {
    /// "ctrl-a" or "ctrl-b".
    pub fn name(self) -> &'static str {
        match self {
            Node::A => "ctrl-a",
            Node::B => "ctrl-b",
        }
    }
    /// HA id: 1 or 2.
    pub fn ha_id(self) -> u64 {
        match self {
            Node::A => 1,
            Node::B => 2,
        }
    }
    /// The other controller.
    pub fn peer(self) -> Node {
        match self {
            Node::A => Node::B,
            Node::B => Node::A,
        }
    }
    /// Its iSCSI portal inside the namespace.
    pub fn portal(self) -> String {
        match self {
            Node::A => format!("127.0.0.1:{ISCSI_PORT}"),
            Node::B => format!("127.0.0.2:{ISCSI_PORT}"),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of `duetd lab` beyond the mode.
#[derive(Clone, Debug, Default)]
pub struct LabOpts {
    /// `--size` (e.g. "64MiB"); the lab's default when `None`.
    pub size: Option<String>,
    /// `--lease-ms`; the lab's default (1200) when `None`.
    pub lease_ms: Option<u64>,
    /// `--failover automatic|manual`; automatic when `None`.
    pub failover: Option<String>,
}

/// What `duetctl ha --json` says about LUN 1 of one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunView {
    /// 0, 1 or 2.
    pub link_state: u64,
    /// "primary", "secondary", ...
    pub role: String,
    pub epoch: u64,
    /// HA id of the primary it knows, if any.
    pub primary: Option<u64>,
}

impl LunView {
    /// Extracts LUN 1's view from a `duetctl ha --json` document.
    pub fn from_ha(ha: &Value) -> Option<LunView> {
        let lun = ha
            .get("luns")?
            .as_array()?
            .iter()
            .find(|l| l.get("lun").and_then(Value::as_u64) == Some(LAB_LUN))?;
        Some(LunView {
            link_state: ha.get("link_state")?.as_u64()?,
            role: lun.get("role")?.as_str()?.to_string(),
            epoch: lun.get("epoch").and_then(Value::as_u64).unwrap_or(0),
            primary: lun.get("primary").and_then(Value::as_u64),
        })
    }
}

/// A running two-controller lab in its own network namespace. See the module documentation.
pub struct Lab {
    /// The namespace's name.
    pub ns: String,
    /// The lab directory (configurations, pid files, sockets, logs, LUN image).
    pub dir: PathBuf,
    /// HA mode 0, 1 or 2.
    pub mode: u8,
    lab: Option<Child>,
    restarted: Vec<Child>,
    links_cut: bool,
    // Last field: released after the cleanup in `drop`.
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Starts `duetd lab --mode MODE` in a fresh namespace and waits (at most 20 s) until both
    /// controllers report link state 2 and ctrl-a as LUN 1's primary. `None` (with a message on
    /// standard error) when network namespaces are not available, e.g. without root. Panics
    /// with the logs when the lab does not come up.
    pub fn start(mode: u8, opts: LabOpts) -> Option<Lab> {
        let serial = serial();
        let (ns, dir) = match make_namespace() {
            Ok(v) => v,
            Err(why) => {
                eprintln!("SKIPPED: cannot create a network namespace ({why}); run as root");
                return None;
            }
        };
        // From here on the Lab owns the namespace and the directory: a panic cleans up.
        let mut lab = Lab {
            ns,
            dir,
            mode,
            lab: None,
            restarted: Vec::new(),
            links_cut: false,
            _serial: serial,
        };
        let log = fs::File::create(lab.dir.join("lab.log"))
            .unwrap_or_else(|e| panic!("create {}/lab.log: {e}", lab.dir.display()));
        let mut args: Vec<String> = vec![
            "lab".into(),
            "--dir".into(),
            lab.dir.display().to_string(),
            "--mode".into(),
            mode.to_string(),
            "--port".into(),
            ISCSI_PORT.to_string(),
            "--link-port".into(),
            LINK_PORT.to_string(),
        ];
        if let Some(s) = &opts.size {
            args.extend(["--size".into(), s.clone()]);
        }
        if let Some(l) = opts.lease_ms {
            args.extend(["--lease-ms".into(), l.to_string()]);
        }
        if let Some(f) = &opts.failover {
            args.extend(["--failover".into(), f.clone()]);
        }
        let child = lab
            .ns_command(duetd())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start duetd lab: {e}"));
        lab.lab = Some(child);
        let ready = wait_until(
            || {
                if let Some(Ok(Some(st))) = lab.lab.as_mut().map(|c| c.try_wait()) {
                    panic!(
                        "duetd lab exited early ({st}):\n{}",
                        tail(&read_lossy(&lab.dir.join("lab.log")), 60)
                    );
                }
                [Node::A, Node::B].iter().all(|&n| {
                    lab.view(n)
                        .is_some_and(|v| v.link_state == 2 && v.primary == Some(1))
                })
            },
            START_TIMEOUT,
        );
        assert!(
            ready,
            "the lab (mode {mode}) did not come up within {START_TIMEOUT:?}: ctrl-a {:?}, ctrl-b {:?}",
            lab.view(Node::A),
            lab.view(Node::B)
        );
        Some(lab)
    }

    /// A command that runs `prog` inside the lab's namespace.
    pub fn ns_command(&self, prog: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(prog);
        c
    }

    /// Runs `prog args` inside the namespace with a time bound.
    pub fn ns_run(&self, prog: &str, args: &[&str], limit: Duration) -> Run {
        let mut all = vec!["netns", "exec", &self.ns, prog];
        all.extend_from_slice(args);
        run_bounded(&self.dir, Path::new("ip"), &all, limit)
    }

    /// The node's configuration file.
    pub fn config(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{}.toml", node.name()))
    }

    /// The node's admin socket.
    pub fn socket(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{}.sock", node.name()))
    }

    /// The node's log file.
    pub fn log_path(&self, node: Node) -> PathBuf {
        self.dir.join(format!("{}.log", node.name()))
    }

    /// The pid the node's pid file names, if that process is a live duetd.
    pub fn pid(&self, node: Node) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.dir.join(format!("{}.pid", node.name())))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        alive_with(pid, "duetd").then_some(pid)
    }

    /// Whether the node's process is alive.
    pub fn alive(&self, node: Node) -> bool {
        self.pid(node).is_some()
    }

    fn signal_node(&self, node: Node, sig: libc::c_int, what: &str) -> i32 {
        let pid = self
            .pid(node)
            .unwrap_or_else(|| panic!("{what} {node}: it is not running"));
        assert!(signal(pid, sig), "{what} {node} (pid {pid}) failed");
        pid
    }

    /// kill -9 of the node; returns its pid.
    pub fn kill9(&self, node: Node) -> i32 {
        let pid = self.signal_node(node, libc::SIGKILL, "kill -9");
        // Wait (bounded) until it is gone or a zombie.
        let _ = wait_until(|| !alive_with(pid, "duetd"), Duration::from_secs(5));
        pid
    }

    /// SIGTERM of the node (a clean stop); waits, bounded, until it has exited. Returns whether
    /// it exited within `limit`.
    pub fn sigterm(&self, node: Node, limit: Duration) -> bool {
        let pid = self.signal_node(node, libc::SIGTERM, "SIGTERM");
        wait_until(|| !alive_with(pid, "duetd"), limit)
    }

    /// SIGSTOP of the node; returns its pid.
    pub fn sigstop(&self, node: Node) -> i32 {
        self.signal_node(node, libc::SIGSTOP, "SIGSTOP")
    }

    /// SIGCONT of a pid stopped by [`Lab::sigstop`] (the process may have been killed since).
    pub fn sigcont(&self, pid: i32) {
        if alive_with(pid, "duetd") {
            signal(pid, libc::SIGCONT);
        }
    }

    /// Starts the node again from its configuration file (`duetd --config DIR/ctrl-X.toml`),
    /// inside the namespace; its standard error is appended to its log.
    pub fn restart(&mut self, node: Node) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(node))
            .unwrap_or_else(|e| panic!("open the log of {node}: {e}"));
        let config = self.config(node);
        let child = self
            .ns_command(duetd())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("restart {node}: {e}"));
        self.restarted.push(child);
    }

    fn iptables(&self, op: &str) {
        let port = LINK_PORT.to_string();
        for chain in ["INPUT", "OUTPUT"] {
            for dir in ["--dport", "--sport"] {
                let r = self.ns_run(
                    "iptables",
                    &[op, chain, "-p", "tcp", dir, &port, "-j", "DROP"],
                    SHORT_COMMAND,
                );
                assert!(
                    r.ok(),
                    "iptables {op} {chain} {dir} {port} in {}: {}",
                    self.ns,
                    r.all()
                );
            }
        }
    }

    /// Cuts the HA link in both directions (established connections stall too).
    pub fn cut_link(&mut self) {
        self.links_cut = true;
        self.iptables("-A");
    }

    /// Undoes [`Lab::cut_link`].
    pub fn heal_link(&mut self) {
        if self.links_cut {
            self.iptables("-D");
            self.links_cut = false;
        }
    }

    /// Runs `duetctl --socket <node's socket> ARGS` (outside the namespace).
    pub fn duetctl(&self, node: Node, args: &[&str]) -> Run {
        let sock = self.socket(node).display().to_string();
        let mut all = vec!["--socket", sock.as_str()];
        all.extend_from_slice(args);
        run_bounded(&self.dir, duetctl(), &all, SHORT_COMMAND)
    }

    /// `duetctl switchover` on the node (it hands its primary role to the peer).
    pub fn switchover(&self, node: Node) -> Run {
        self.duetctl(node, &["switchover"])
    }

    /// `duetctl ha --json` of the node; `Value::Null` when it does not answer.
    pub fn ha(&self, node: Node) -> Value {
        let r = self.duetctl(node, &["ha", "--json"]);
        if !r.ok() {
            return Value::Null;
        }
        serde_json::from_str(&r.stdout).unwrap_or(Value::Null)
    }

    /// LUN 1 as the node sees it; `None` when it does not answer.
    pub fn view(&self, node: Node) -> Option<LunView> {
        LunView::from_ha(&self.ha(node))
    }

    /// Starts `duet-mpio` over both portals inside the namespace (2048 blocks, queue depth 8,
    /// 50 % writes, `--init`) for `duration`.
    pub fn start_load(&self, duration: Duration) -> Load {
        let out = self.dir.join("mpio.json");
        let err = self.dir.join("mpio.err");
        let (fo, fe) = match (fs::File::create(&out), fs::File::create(&err)) {
            (Ok(o), Ok(e)) => (o, e),
            (Err(e), _) | (_, Err(e)) => panic!("create duet-mpio output files: {e}"),
        };
        let secs = format!("{}ms", duration.as_millis());
        let child = self
            .ns_command(duet_mpio())
            .args(["--portal", &Node::A.portal(), "--portal", &Node::B.portal()])
            .args(["--target", LAB_TARGET, "--lun", "1"])
            .args(["--blocks", "2048", "--qd", "8", "--write-percent", "50"])
            .args(["--duration", &secs, "--init", "--json", "--quiet"])
            .stdin(Stdio::null())
            .stdout(fo)
            .stderr(fe)
            .spawn()
            .unwrap_or_else(|e| panic!("start duet-mpio: {e}"));
        Load {
            child: Some(child),
            started: Instant::now(),
            duration,
            out,
            err,
        }
    }

    /// The last `n` lines of the node's log.
    pub fn log_tail(&self, node: Node, n: usize) -> String {
        tail(&read_lossy(&self.log_path(node)), n)
    }

    /// Prints the tails of both controllers' logs and of the lab's to standard error.
    pub fn dump_logs(&self, n: usize) {
        for f in ["ctrl-a.log", "ctrl-b.log", "lab.log"] {
            eprintln!(
                "---- {}/{f} (last {n} lines) ----\n{}",
                self.dir.display(),
                tail(&read_lossy(&self.dir.join(f)), n)
            );
        }
    }

    /// Copies the logs and the duet-mpio report to `build/failover-logs/<namespace>/`.
    fn keep_logs(&self) {
        let keep = workspace_root()
            .join("build")
            .join("failover-logs")
            .join(&self.ns);
        if fs::create_dir_all(&keep).is_err() {
            return;
        }
        for f in [
            "ctrl-a.log",
            "ctrl-b.log",
            "lab.log",
            "mpio.json",
            "mpio.err",
            "cu.log",
        ] {
            let _ = fs::copy(self.dir.join(f), keep.join(f));
        }
        eprintln!("lab logs kept in {}", keep.display());
    }

    /// Every pid inside the namespace.
    fn ns_pids(&self) -> Vec<i32> {
        let r = run_bounded(
            &std::env::temp_dir(),
            Path::new("ip"),
            &["netns", "pids", &self.ns],
            SHORT_COMMAND,
        );
        r.stdout
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs(40);
            self.keep_logs();
        }
        // Controllers named by the pid files (the lab's children or restarted ones).
        for node in [Node::A, Node::B] {
            if let Some(pid) = self.pid(node) {
                cont_and_kill(pid);
            }
        }
        for c in self.restarted.iter_mut() {
            cont_and_kill(c.id() as i32);
        }
        if let Some(c) = self.lab.as_mut() {
            cont_and_kill(c.id() as i32);
        }
        for c in self.restarted.iter_mut().chain(self.lab.as_mut()) {
            let _ = wait_bounded(c, Duration::from_secs(10));
        }
        // Anything still in the namespace was started by this lab (it is ours alone).
        let me = std::process::id() as i32;
        let _ = wait_until(
            || {
                let left: Vec<i32> = self.ns_pids().into_iter().filter(|&p| p != me).collect();
                for &p in &left {
                    cont_and_kill(p);
                }
                left.is_empty()
            },
            Duration::from_secs(10),
        );
        let r = run_bounded(
            &std::env::temp_dir(),
            Path::new("ip"),
            &["netns", "del", &self.ns],
            SHORT_COMMAND,
        );
        if !r.ok() {
            eprintln!("warning: ip netns del {}: {}", self.ns, r.all());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Creates a namespace with loopback up and a fresh directory; `Err` says why not.
fn make_namespace() -> Result<(String, PathBuf), String> {
    static N: AtomicUsize = AtomicUsize::new(0);
    if !have_program("ip") {
        return Err("`ip` (iproute2) is not installed".into());
    }
    let n = N.fetch_add(1, Ordering::SeqCst);
    let ns = format!("duet-{}-{n}", std::process::id());
    let tmp = std::env::temp_dir();
    let r = run_bounded(&tmp, Path::new("ip"), &["netns", "add", &ns], SHORT_COMMAND);
    if !r.ok() {
        return Err(format!("ip netns add {ns}: {}", r.all().trim()));
    }
    let up = run_bounded(
        &tmp,
        Path::new("ip"),
        &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
        SHORT_COMMAND,
    );
    let dir = tmp.join(format!("duet-lab-{ns}"));
    let _ = fs::remove_dir_all(&dir);
    let made = fs::create_dir_all(&dir);
    if !up.ok() || made.is_err() {
        let _ = run_bounded(&tmp, Path::new("ip"), &["netns", "del", &ns], SHORT_COMMAND);
        let _ = fs::remove_dir_all(&dir);
        return Err(format!(
            "set up {ns}: {} {}",
            up.all().trim(),
            made.err().map(|e| e.to_string()).unwrap_or_default()
        ));
    }
    Ok((ns, dir))
}

// ------------------------------------------------------------------------------------------
// The load
// ------------------------------------------------------------------------------------------

/// A running `duet-mpio`; dropping it kills the process.
pub struct Load {
    child: Option<Child>,
    started: Instant,
    duration: Duration,
    out: PathBuf,
    err: PathBuf,
}

/// The parts of duet-mpio's JSON report the tests look at.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// duet-mpio's exit status (0 = clean); `None` when it had to be killed.
    pub exit: Option<i32>,
    pub ops: u64,
    pub errors: u64,
    pub stale_reads: u64,
    pub corrupt_reads: u64,
    pub lost_writes: u64,
    pub longest_stall_ms: u64,
    /// (start_ms, len_ms) of every stall.
    pub stalls: Vec<(u64, u64)>,
    /// The whole report as duet-mpio printed it.
    pub json: Value,
    /// duet-mpio's standard error.
    pub stderr: String,
}

impl LoadReport {
    /// 0 errors, 0 stale, 0 corrupt, 0 lost writes, some ops, exit status 0.
    pub fn clean(&self) -> bool {
        self.exit == Some(0)
            && self.ops > 0
            && self.errors == 0
            && self.stale_reads == 0
            && self.corrupt_reads == 0
            && self.lost_writes == 0
    }

    /// The stalls as `[start+len, ...]` (milliseconds).
    pub fn stalls_text(&self) -> String {
        let items: Vec<String> = self
            .stalls
            .iter()
            .map(|(s, l)| format!("{s}+{l}"))
            .collect();
        format!("[{}]", items.join(","))
    }

    /// The report without the per-path details, for assertion messages.
    pub fn summary(&self) -> String {
        let pick = |k: &str| self.json.get(k).cloned().unwrap_or(Value::Null);
        format!(
            "exit {:?}, ops {}, errors {} {}, stale {}, corrupt {}, torn {}, lost {}, violations {}, \
             longest stall {} ms, stalls {}, retries {}, paths {}",
            self.exit,
            self.ops,
            self.errors,
            pick("error_messages"),
            self.stale_reads,
            self.corrupt_reads,
            pick("torn_reads"),
            self.lost_writes,
            pick("violations"),
            self.longest_stall_ms,
            self.stalls_text(),
            pick("retries"),
            pick("paths"),
        )
    }
}

impl Load {
    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sleeps until `at` after the start of the load.
    pub fn sleep_until(&self, at: Duration) {
        if let Some(d) = at.checked_sub(self.elapsed()) {
            std::thread::sleep(d);
        }
    }

    /// Waits for duet-mpio to finish (at most its duration plus 90 s for the command deadline
    /// and the final check of every block) and parses its report. Panics when there is none.
    pub fn finish(mut self) -> LoadReport {
        let limit = (self.duration + Duration::from_secs(90)).saturating_sub(self.elapsed());
        let status = match self.child.as_mut() {
            Some(c) => wait_bounded(c, limit),
            None => None,
        };
        self.child = None;
        let out = read_lossy(&self.out);
        let stderr = read_lossy(&self.err);
        let json: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "no JSON report from duet-mpio (exit {status:?}, {e}):\nstdout: {}\nstderr: {}",
                tail(&out, 20),
                tail(&stderr, 40)
            )
        });
        let num = |k: &str| json.get(k).and_then(Value::as_u64).unwrap_or(u64::MAX);
        let stalls = json
            .get("stalls")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s.get("start_ms").and_then(Value::as_u64).unwrap_or(0),
                            s.get("len_ms").and_then(Value::as_u64).unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        LoadReport {
            exit: status.and_then(|s| s.code()),
            ops: num("ops"),
            errors: num("errors"),
            stale_reads: num("stale_reads"),
            corrupt_reads: num("corrupt_reads"),
            lost_writes: num("lost_writes"),
            longest_stall_ms: num("longest_stall_ms"),
            stalls,
            json,
            stderr,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
