//! `duetd lab`: the two-controller lab on loopback.
//!
//! Two separate `duetd` processes, ctrl-a (HA id 1, primary, portal 127.0.0.1:3260) and ctrl-b
//! (HA id 2, secondary, portal 127.0.0.2:3260), share one LUN file (`DIR/da0.img`) and a quorum
//! area (`DIR/quorum.img`), fence each other with the `process` agent and talk over an HA link on
//! loopback. They export `iqn.2016-01.local.beast:target0` LUN 1. The lab writes their
//! configuration files into DIR, so each controller can also be stopped and started by hand
//! (`duetd --config DIR/ctrl-a.toml`).
//!
//! The lab reads commands on its standard input (see [`CONSOLE_HELP`]): `restart a` stops
//! ctrl-a cleanly (as `duetctl shutdown` does: it hands its LUNs over first), starts it again and
//! waits until the pair is joined again; `rolling` does that for ctrl-b, then ctrl-a.

use duet_core::LunNumber;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ha::quorum::FileQuorum;

/// The lab's target name (the seed's).
pub const LAB_TARGET: &str = "iqn.2016-01.local.beast:target0";
/// The lab's LUN number.
pub const LAB_LUN: LunNumber = 1;

/// What `duetd lab` was asked for.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Where the LUN file, quorum area, configurations, sockets, pid files and logs go.
    pub dir: PathBuf,
    /// HA mode 0, 1 or 2.
    pub mode: u8,
    /// Size of the LUN in bytes.
    pub size: u64,
    /// iSCSI port of both portals (127.0.0.1 and 127.0.0.2).
    pub iscsi_port: u16,
    /// TCP port of the HA link (ctrl-a listens on 127.0.0.1, ctrl-b connects).
    pub link_port: u16,
    /// `automatic` or `manual`.
    pub failover: String,
    /// Lease in milliseconds (renew = lease / 4, margin = lease / 4).
    pub lease_ms: u64,
}

impl LabOptions {
    /// The defaults of `duetd lab` in `dir`.
    pub fn new(dir: PathBuf) -> LabOptions {
        LabOptions {
            dir,
            mode: 1,
            size: 256 << 20,
            iscsi_port: 3260,
            link_port: 7777,
            failover: "automatic".into(),
            lease_ms: 1200,
        }
    }
}

/// One controller of the lab.
#[derive(Clone, Debug)]
pub struct LabNode {
    /// "ctrl-a" or "ctrl-b".
    pub name: &'static str,
    pub ha_id: u8,
    pub portal: (Ipv4Addr, u16),
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl LabNode {
    /// The iSCSI URL of the lab LUN through this controller (libiscsi syntax).
    pub fn url(&self) -> String {
        format!(
            "iscsi://{}:{}/{}/{}",
            self.portal.0, self.portal.1, LAB_TARGET, LAB_LUN
        )
    }
}

/// Why the lab could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Quorum(String),
    #[error("{0}")]
    Usage(String),
    #[error("cannot make a link secret: {0}")]
    Random(std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A fresh link secret from the operating system's randomness.
fn random_secret() -> Result<String, LabError> {
    let buf: [u8; 24] = crate::entropy::bytes().map_err(LabError::Random)?;
    Ok(buf.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Creates the LUN file, the quorum area and both configuration files; returns the two nodes.
pub fn prepare(opts: &LabOptions) -> Result<[LabNode; 2], LabError> {
    if opts.mode > 2 {
        return Err(LabError::Usage(format!(
            "--mode {}: expected 0, 1 or 2",
            opts.mode
        )));
    }
    if opts.size < 1 << 20 || !opts.size.is_multiple_of(4096) {
        return Err(LabError::Usage(
            "--size: at least 1MiB and a multiple of 4KiB".into(),
        ));
    }
    std::fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
    let dir = std::fs::canonicalize(&opts.dir).map_err(io_err(&opts.dir))?;
    let image = dir.join("da0.img");
    {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&image)
            .map_err(io_err(&image))?;
        let len = f.metadata().map_err(io_err(&image))?.len();
        if len < opts.size {
            f.set_len(opts.size).map_err(io_err(&image))?;
        }
    }
    let quorum = dir.join("quorum.img");
    FileQuorum::open(&quorum, true).map_err(|e| LabError::Quorum(e.to_string()))?;
    let secret = random_secret()?;
    let nodes = [
        LabNode {
            name: "ctrl-a",
            ha_id: 1,
            portal: (Ipv4Addr::new(127, 0, 0, 1), opts.iscsi_port),
            config: dir.join("ctrl-a.toml"),
            socket: dir.join("ctrl-a.sock"),
            pidfile: dir.join("ctrl-a.pid"),
            log: dir.join("ctrl-a.log"),
        },
        LabNode {
            name: "ctrl-b",
            ha_id: 2,
            portal: (Ipv4Addr::new(127, 0, 0, 2), opts.iscsi_port),
            config: dir.join("ctrl-b.toml"),
            socket: dir.join("ctrl-b.sock"),
            pidfile: dir.join("ctrl-b.pid"),
            log: dir.join("ctrl-b.log"),
        },
    ];
    for (i, n) in nodes.iter().enumerate() {
        let peer = &nodes[1 - i];
        let link = if n.ha_id == 1 {
            format!("listen 127.0.0.1:{}", opts.link_port)
        } else {
            format!("connect 127.0.0.1:{}", opts.link_port)
        };
        let lease = opts.lease_ms.max(400);
        let text = format!(
            r#"# {name} of the Duet lab (written by `duetd lab`; start by hand with
#   duetd --config {config}
ping_timeout = 5
# Both controllers of the lab share this machine: one connection thread each.
io_threads = 1

[portal_group.pg0]
listen = ["{ip}:{port}"]
discovery_auth_group = "none"

[[target]]
name = "{target}"
alias = "duet lab"
portal_group = "pg0"
auth_group = "none"

[[target.lun]]
number = {lun}
path = "{image}"
size = {size}
block_size = 512
serial = "DUETLAB0001"

[ha]
id = {id}
mode = {mode}
role = "{role}"
peer = "{link}"
failover = "{failover}"
quorum = "{quorum}"
fencing = "process"
peer_pidfile = "{peer_pid}"
pidfile = "{pid}"
secret = "{secret}"
admin_socket = "{socket}"
lease_ms = {lease}
renew_ms = {renew}
drift_ms = {drift}
margin_ms = {margin}
heartbeat_ms = 150
dead_after_ms = 600
"#,
            name = n.name,
            config = n.config.display(),
            ip = n.portal.0,
            port = n.portal.1,
            target = LAB_TARGET,
            lun = LAB_LUN,
            image = image.display(),
            size = opts.size,
            id = n.ha_id,
            mode = opts.mode,
            role = if n.ha_id == 1 { "primary" } else { "secondary" },
            link = link,
            failover = opts.failover,
            quorum = quorum.display(),
            peer_pid = peer.pidfile.display(),
            pid = n.pidfile.display(),
            secret = secret,
            socket = n.socket.display(),
            lease = lease,
            renew = lease / 4,
            drift = lease / 20,
            margin = lease / 4,
        );
        write_private(&n.config, &text)?;
    }
    Ok(nodes)
}

/// Writes a file readable by its owner only (it holds the link secret).
fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

/// Starts one controller as a child process of `duetd` (the binary at `exe`); its standard error
/// goes to the lab's, each line prefixed with the controller's name, and to its log file.
pub fn spawn_node(exe: &Path, node: &LabNode, echo: bool) -> Result<Child, LabError> {
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(io_err(exe))?;
    if let Some(err) = child.stderr.take() {
        let name = node.name;
        let log = node.log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .ok();
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if echo {
                    eprintln!("{name} | {line}");
                }
            }
        });
    }
    Ok(child)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(9)) => "killed by SIGKILL (fenced by its peer, or kill -9)".into(),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

/// Reads a pid file (its first line holds the pid).
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a running duetd serving `config`.
fn is_our_duetd(pid: i32, config: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("duetd") && text.contains(&*config.to_string_lossy())
}

/// Runs the lab in the foreground until SIGINT/SIGTERM; returns the process exit code.
pub fn run(opts: &LabOptions) -> i32 {
    let nodes = match prepare(opts) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("duetd lab: {e}");
            return if matches!(e, LabError::Usage(_)) {
                2
            } else {
                1
            };
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("duetd lab: cannot find my own executable: {e}");
            return 1;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let s = stop.clone();
        // A plain flag: the loop below polls it.
        if let Err(e) = register_flag(sig, s) {
            eprintln!("duetd lab: cannot handle signals: {e}");
            return 1;
        }
    }
    let mut children: Vec<Option<Child>> = Vec::new();
    for n in &nodes {
        match spawn_node(&exe, n, true) {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                eprintln!("duetd lab: cannot start {}: {e}", n.name);
                stop_all(&nodes, &mut children);
                return 1;
            }
        }
    }
    print_banner(opts, &nodes, &exe);
    let console = spawn_console();
    let mut last_check = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        while let Ok(line) = console.try_recv() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            console_command(&line, &exe, &nodes, &mut children, &stop);
        }
        if last_check.elapsed() < Duration::from_millis(500) {
            continue;
        }
        last_check = Instant::now();
        for (i, slot) in children.iter_mut().enumerate() {
            if let Some(c) = slot {
                if let Ok(Some(st)) = c.try_wait() {
                    let n = &nodes[i];
                    eprintln!(
                        "duetd lab: {} ({}) {}; start it again with `start {}` here, or: {} \
                         --config {}",
                        n.name,
                        n.url(),
                        describe(st),
                        &n.name[5..],
                        exe.display(),
                        n.config.display()
                    );
                    *slot = None;
                }
            }
        }
    }
    eprintln!("duetd lab: stopping both controllers");
    stop_all(&nodes, &mut children);
    0
}

/// The lab's console commands (read from standard input, one per line).
pub const CONSOLE_HELP: &str = "\
duetd lab commands (type them here, one per line):
  restart a|b   stop the controller cleanly (it hands its LUNs to the peer, as
                `duetctl shutdown` does), start it again, wait until the pair is joined
  rolling       restart b, then restart a (a rolling restart)
  stop a|b      stop the controller cleanly and leave it stopped
  start a|b     start a stopped controller and wait until the pair is joined
  status        each controller's pid, link state and role for LUN 1
  help          this text";

/// Reads standard input line by line on a thread of its own; the lines arrive on the receiver.
/// At the end of the input (e.g. `< /dev/null`) the thread ends and nothing more arrives.
fn spawn_console() -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// How long the console waits for a stopped controller to come back and rejoin.
const REJOIN_BOUND: Duration = Duration::from_secs(30);

/// The state of the pair as the console sees it: both controllers answer, the HA link is up on
/// both, one is primary for LUN 1 and the other its secondary. Returns the primary's name.
fn joined(nodes: &[LabNode; 2]) -> Option<&'static str> {
    let view = |n: &LabNode| -> Option<(u8, String, Option<u8>)> {
        let ha: crate::admin::HaInfo = crate::admin::request(
            &n.socket,
            &crate::admin::Request::Ha,
            Duration::from_secs(2),
        )
        .ok()?
        .into_data()
        .ok()?;
        let l = ha.luns.iter().find(|l| l.lun == LAB_LUN)?;
        Some((ha.link_state, l.role.clone(), l.primary))
    };
    let (a, b) = (view(&nodes[0])?, view(&nodes[1])?);
    if a.0 != 2 || b.0 != 2 || a.2.is_none() || a.2 != b.2 {
        return None;
    }
    match (a.1.as_str(), b.1.as_str()) {
        ("primary", "secondary") => Some(nodes[0].name),
        ("secondary", "primary") => Some(nodes[1].name),
        _ => None,
    }
}

fn status_line(n: &LabNode) -> String {
    let pid = read_pid(&n.pidfile).filter(|&p| is_our_duetd(p, &n.config));
    let ha = crate::admin::request(
        &n.socket,
        &crate::admin::Request::Ha,
        Duration::from_secs(2),
    )
    .ok()
    .and_then(|r| r.into_data::<crate::admin::HaInfo>().ok());
    match (pid, ha) {
        (None, _) => format!("{}: not running", n.name),
        (Some(p), None) => format!("{}: pid {p}, not answering", n.name),
        (Some(p), Some(h)) => {
            let role = h
                .luns
                .iter()
                .find(|l| l.lun == LAB_LUN)
                .map(|l| format!("{} (epoch {}, {})", l.role, l.epoch, l.local_alua))
                .unwrap_or_else(|| "no LUN".into());
            format!(
                "{}: pid {p}, link state {}, LUN {LAB_LUN} {role}",
                n.name, h.link_state
            )
        }
    }
}

/// Stops one controller cleanly through its admin socket (`duetctl shutdown`) and reaps it if
/// it is the lab's child. Returns whether it is gone.
fn console_stop(n: &LabNode, child: &mut Option<Child>) -> bool {
    let running = read_pid(&n.pidfile).is_some_and(|p| is_our_duetd(p, &n.config));
    if !running {
        eprintln!("duetd lab: {} is not running", n.name);
        if let Some(c) = child.as_mut() {
            let _ = c.try_wait();
        }
        *child = None;
        return true;
    }
    eprintln!(
        "duetd lab: stopping {} (it hands its LUNs over first)",
        n.name
    );
    match crate::admin::shutdown(&n.socket, Duration::from_secs(30)) {
        Ok((info, exited)) => eprintln!(
            "duetd lab: {}: {} (hand-over {} ms); {}",
            n.name,
            info.message,
            info.handover_ms,
            if exited { "exited" } else { "still running" }
        ),
        Err(e) => {
            eprintln!("duetd lab: {}: shutdown failed: {e}", n.name);
            return false;
        }
    }
    if let Some(c) = child.as_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(Some(st)) = c.try_wait() {
            eprintln!("duetd lab: {} {}", n.name, describe(st));
            *child = None;
        }
    }
    child.is_none() && !read_pid(&n.pidfile).is_some_and(|p| is_our_duetd(p, &n.config))
}

/// Starts one controller as the lab's child and waits until the pair is joined again.
fn console_start(exe: &Path, nodes: &[LabNode; 2], i: usize, child: &mut Option<Child>) -> bool {
    let n = &nodes[i];
    if read_pid(&n.pidfile).is_some_and(|p| is_our_duetd(p, &n.config)) {
        eprintln!("duetd lab: {} is already running", n.name);
    } else {
        match spawn_node(exe, n, true) {
            Ok(c) => {
                eprintln!("duetd lab: started {} (pid {})", n.name, c.id());
                *child = Some(c);
            }
            Err(e) => {
                eprintln!("duetd lab: cannot start {}: {e}", n.name);
                return false;
            }
        }
    }
    let deadline = Instant::now() + REJOIN_BOUND;
    loop {
        if let Some(p) = joined(nodes) {
            eprintln!("duetd lab: the pair is joined again: {p} is primary");
            return true;
        }
        if Instant::now() > deadline {
            eprintln!(
                "duetd lab: the pair did not join within {} s: {}; {}",
                REJOIN_BOUND.as_secs(),
                status_line(&nodes[0]),
                status_line(&nodes[1])
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Carries out one console command.
fn console_command(
    line: &str,
    exe: &Path,
    nodes: &[LabNode; 2],
    children: &mut [Option<Child>],
    stop: &AtomicBool,
) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let node = |w: Option<&&str>| -> Option<usize> {
        match w.map(|w| w.trim_start_matches("ctrl-")) {
            Some("a") => Some(0),
            Some("b") => Some(1),
            _ => None,
        }
    };
    match (words.first().copied(), node(words.get(1))) {
        (None, _) => {}
        (Some("help"), _) => eprintln!("{CONSOLE_HELP}"),
        (Some("status"), _) => {
            for n in nodes {
                eprintln!("{}", status_line(n));
            }
        }
        (Some("stop"), Some(i)) => {
            console_stop(&nodes[i], &mut children[i]);
        }
        (Some("start"), Some(i)) => {
            console_start(exe, nodes, i, &mut children[i]);
        }
        (Some("restart"), Some(i)) => {
            if console_stop(&nodes[i], &mut children[i]) && !stop.load(Ordering::SeqCst) {
                console_start(exe, nodes, i, &mut children[i]);
            }
        }
        (Some("rolling"), _) => {
            for i in [1, 0] {
                if stop.load(Ordering::SeqCst)
                    || !console_stop(&nodes[i], &mut children[i])
                    || stop.load(Ordering::SeqCst)
                    || !console_start(exe, nodes, i, &mut children[i])
                {
                    eprintln!("duetd lab: rolling restart stopped");
                    return;
                }
            }
            eprintln!("duetd lab: rolling restart done");
        }
        _ => eprintln!(
            "duetd lab: unknown command `{}`\n{CONSOLE_HELP}",
            line.trim()
        ),
    }
}

/// Stops the lab's controllers: the children, and controllers started by hand from the lab's
/// configuration files (found through their pid files).
pub fn stop_all(nodes: &[LabNode], children: &mut [Option<Child>]) {
    for n in nodes {
        if let Some(pid) = read_pid(&n.pidfile) {
            if is_our_duetd(pid, &n.config) {
                // SAFETY: plain kill(2) on a pid that runs our own duetd.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
    for c in children.iter_mut().flatten() {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGCONT);
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut().flatten() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn print_banner(opts: &LabOptions, nodes: &[LabNode; 2], exe: &Path) {
    let duetctl = exe
        .parent()
        .map(|p| p.join("duetctl"))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "duetctl".into());
    let mode = match opts.mode {
        0 => "0 (Active/Standby)",
        1 => "1 (Active/Active, both controllers on the shared disk)",
        _ => "2 (Active/Active, the secondary forwards to the primary)",
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut s = String::new();
    let _ = writeln!(s, "\nDuet lab: ha_mode {mode}, failover {}", opts.failover);
    let _ = writeln!(s, "  directory  {}", opts.dir.display());
    for n in nodes {
        let _ = writeln!(
            s,
            "  {}     ha id {}, {:9}  {}",
            n.name,
            n.ha_id,
            if n.ha_id == 1 { "primary" } else { "secondary" },
            n.url()
        );
    }
    let _ = writeln!(s, "\nLook around:");
    let _ = writeln!(s, "  {duetctl} --socket {} ha", a.socket.display());
    let _ = writeln!(s, "  {duetctl} --socket {} portlist", b.socket.display());
    let _ = writeln!(s, "  {duetctl} --socket {} stat", a.socket.display());
    let _ = writeln!(s, "  iscsi-inq {}", a.url());
    let _ = writeln!(s, "  iscsi-ls -s iscsi://{}:{}", b.portal.0, b.portal.1);
    let _ = writeln!(
        s,
        "\nWatch a failover (ctrl-b takes over by itself, no admin needed):"
    );
    let _ = writeln!(s, "  kill -9 $(head -n1 {})", a.pidfile.display());
    let _ = writeln!(s, "  {duetctl} --socket {} ha", b.socket.display());
    let _ = writeln!(
        s,
        "  {} --config {}     # ctrl-a rejoins as secondary",
        exe.display(),
        a.config.display()
    );
    let _ = writeln!(
        s,
        "Planned switchover:  {duetctl} --socket {} switchover",
        a.socket.display()
    );
    let _ = writeln!(
        s,
        "Planned stop:        {duetctl} --socket {} shutdown   # hands over, then exits",
        a.socket.display()
    );
    let _ = writeln!(
        s,
        "\nType `restart b`, `restart a` or `rolling` here for a rolling restart (`help` lists the"
    );
    let _ = writeln!(s, "commands). Ctrl-C stops both controllers.\n");
    eprint!("{s}");
}

/// Sets `flag` when signal `sig` arrives.
fn register_flag(sig: libc::c_int, flag: Arc<AtomicBool>) -> std::io::Result<()> {
    use std::sync::OnceLock;
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::SeqCst);
        }
    }
    let _ = FLAG.set(flag);
    // SAFETY: installs an async-signal-safe handler (one atomic store).
    let r = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if r == libc::SIG_ERR {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
