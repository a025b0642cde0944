//! Fencing agents: how a controller makes sure its peer has stopped before it takes over work the
//! peer might still be doing.
//!
//! The node asks with `Output::FencePeer`; the runtime runs [`fence`] and answers
//! `Input::FenceResult { ok }`. `Ok(())` means the peer can no longer issue I/O. Every agent errs
//! on the safe side: when it cannot be sure, it returns an error and the node keeps waiting.
//!
//! - [`FenceAgent::Process`]: the lab's agent, for two controllers on one host and one kernel
//!   (the configuration refuses it unless the HA link is on loopback): kill the peer's `duetd`
//!   process, found through the pid file it writes at start ([`write_pidfile`]). The pid file
//!   names the process beyond its pid (start time, kernel boot, pid namespace), so "no such
//!   process" is proof that the peer is gone only when the recorded process is gone; a missing,
//!   unreadable or incomplete pid file, or one written under another kernel or pid namespace,
//!   is a failed fence, never a success. The pid file stays when `duetd` exits, so that a
//!   cleanly stopped peer is still recognised as gone.
//! - [`FenceAgent::Exec`]: power fencing (IPMI, Redfish, a managed PDU) through an
//!   administrator's command (`sh -c COMMAND`); exit status 0 within the timeout means fenced, so
//!   the command must exit 0 only once the peer is confirmed off.
//! - [`FenceAgent::None`]: no fencing, configured explicitly (the daemon warns at start).
//!
//! [`FenceAgent::deployment`] says which deployment each agent fits (`duetd check-config`
//! prints it). [`restore_access`] is the other half of an agent that fences at the disk: a
//! controller fenced there gets its access back through it once it has rejoined.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The name a process must carry (in its `argv[0]` or executable) for the process agent to kill
/// it: a pid file pointing at anything else is stale (the pid was reused), never a target.
pub const PEER_PROCESS_NAME: &str = "duetd";

/// How often the process agent checks whether the killed peer is gone.
const POLL: Duration = Duration::from_millis(10);
/// The most of a fencing command's output kept for the log.
const OUTPUT_LIMIT: usize = 16 * 1024;
/// How long to wait for a finished command's output pipes to close (a background child of the
/// command may hold them open).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// A fencing agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceAgent {
    /// Kill the peer's `duetd` process (SIGKILL), found through the pid file the peer writes.
    /// Lab only: both controllers on one host.
    Process { pidfile: PathBuf },
    /// Run `sh -c command` with `env` added to the environment (the configuration passes
    /// `DUET_FENCE_PEER_ID`, `DUET_FENCE_SELF_ID` and `DUET_FENCE_PEER_LINK`); exit status 0
    /// within the timeout means the peer is fenced, so the command (power fencing through IPMI
    /// or Redfish) must exit 0 only once the peer is confirmed off.
    Exec {
        command: String,
        env: Vec<(String, String)>,
    },
    /// No fencing.
    None,
}

impl fmt::Display for FenceAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceAgent::Process { pidfile } => {
                write!(f, "process (pid file {})", pidfile.display())
            }
            FenceAgent::Exec { command, .. } => write!(f, "exec `{command}`"),
            FenceAgent::None => f.write_str("none"),
        }
    }
}

/// Which deployment the process agent fits (`duetd check-config`).
pub const PROCESS_DEPLOYMENT: &str = "process: the lab agent. Both controllers run on one host \
     and one kernel (the HA link must be on loopback); fencing kills the peer's duetd, found \
     through its pid file. It cannot stop a controller on another host: on two hosts use exec \
     (power fencing) or scsi-pr.";
/// Which deployment the exec agent fits (`duetd check-config`).
pub const EXEC_DEPLOYMENT: &str = "exec: power fencing for controllers on two hosts: the \
     command switches the peer off through IPMI, Redfish or a managed PDU (e.g. fence_ipmilan). \
     Exit status 0 means fenced: the command must exit 0 only once the peer is confirmed off, \
     and non-zero (or time out) whenever it is not sure.";
/// Which deployment the scsi-pr agent fits (`duetd check-config`).
pub const SCSI_PR_DEPLOYMENT: &str = "scsi-pr: controllers on two hosts sharing SCSI disks \
     (SAS, FC, iSCSI) that implement persistent reservations: each controller registers a key \
     on every shared device and the quorum device; fencing preempts the peer's key, so the \
     disks themselves refuse its I/O, late writes of a frozen host included.";
/// Which deployment fencing = none fits (`duetd check-config`).
pub const NONE_DEPLOYMENT: &str = "none: unsafe. Failover rests on lease timing alone, which \
     cannot stop writes a paused or frozen controller issued before its lease ran out; use it \
     only where losing acknowledged writes is acceptable.";

impl FenceAgent {
    /// One paragraph on the deployment the agent fits, for `duetd check-config`.
    pub fn deployment(&self) -> &'static str {
        match self {
            FenceAgent::Process { .. } => PROCESS_DEPLOYMENT,
            FenceAgent::Exec { .. } => EXEC_DEPLOYMENT,
            FenceAgent::None => NONE_DEPLOYMENT,
        }
    }
}

/// Why fencing failed: the peer may still be running.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The peer's pid file does not exist: the peer never started here, or runs elsewhere.
    #[error(
        "the peer's pid file {path} does not exist: cannot tell whether the peer runs (on \
         another host it never will; use exec or scsi-pr fencing there)"
    )]
    NoPidFile { path: PathBuf },
    /// The pid file does not say which process (beyond its pid) wrote it.
    #[error(
        "the peer's pid file {path} names process {pid} without its start time, boot and pid \
         namespace: cannot tell the peer from a process that reused its pid"
    )]
    Unidentified { path: PathBuf, pid: i32 },
    /// The pid file was written under another kernel (another boot, or another host).
    #[error(
        "the peer's pid file {path} was written under another kernel (boot id {theirs}, ours \
         {ours}): its process cannot be checked from here"
    )]
    OtherKernel {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    /// The pid file was written in another pid namespace.
    #[error(
        "the peer's pid file {path} was written in another pid namespace ({theirs}, ours \
         {ours}): its process cannot be seen from here"
    )]
    OtherPidNamespace {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    /// The pid file names a live process that is not the expected program.
    #[error(
        "the peer's pid file {path} names process {pid}, which is alive and is not {expected}; \
         not killing it"
    )]
    NotThePeer {
        path: PathBuf,
        pid: i32,
        expected: String,
    },
    /// This system's own identity (boot id, pid namespace) cannot be read.
    #[error("cannot read {what}: {source}")]
    OwnIdentity {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The peer's pid file exists but cannot be read.
    #[error("cannot read the peer's pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The peer's pid file does not hold a process id.
    #[error("the peer's pid file {path} does not hold a process id (it holds {content:?})")]
    BadPidFile { path: PathBuf, content: String },
    /// The peer's pid file names this very process: a configuration mistake.
    #[error("the peer's pid file {path} names this process ({pid}); check peer_pidfile")]
    OwnPid { path: PathBuf, pid: i32 },
    /// The kill was refused (e.g. permission).
    #[error("cannot kill the peer process {pid}: {source}")]
    Kill {
        pid: i32,
        #[source]
        source: io::Error,
    },
    /// The peer process was signalled but has not died within the timeout.
    #[error("the peer process {pid} is still alive {timeout:?} after SIGKILL")]
    StillAlive { pid: i32, timeout: Duration },
    /// The fencing command could not be started.
    #[error("cannot run the fencing command `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The fencing command ended with a non-zero status or a signal.
    #[error("the fencing command `{command}` failed ({status}){}", stderr_suffix(.stderr))]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// The fencing command did not finish within the timeout; it was killed.
    #[error("the fencing command `{command}` did not finish within {timeout:?}; killed it")]
    CommandTimeout { command: String, timeout: Duration },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

/// Fences the peer with `agent`, waiting at most `timeout` (for the process agent: for the peer to
/// die after SIGKILL; for the exec agent: for the command, which is killed on timeout).
pub async fn fence(agent: &FenceAgent, timeout: Duration) -> Result<(), FenceError> {
    match agent {
        FenceAgent::Process { pidfile } => fence_process(pidfile, PEER_PROCESS_NAME, timeout).await,
        FenceAgent::Exec { command, env } => fence_exec(command, env, timeout).await,
        FenceAgent::None => Ok(()),
    }
}

/// Restores this controller's own access to the backing devices after the peer fenced it at the
/// disk and the node has rejoined as secondary (`Output::RestoreDiskAccess`): the hook of an
/// agent that fences at the disk (the `scsi-pr` agent registers this controller's key again).
/// The process and exec agents stop the peer itself, not its access: nothing to restore.
pub async fn restore_access(agent: &FenceAgent, timeout: Duration) -> Result<(), FenceError> {
    let _ = timeout;
    match agent {
        FenceAgent::Process { .. } | FenceAgent::Exec { .. } | FenceAgent::None => Ok(()),
    }
}

/// The process agent with the expected process name spelled out: kills the process the pid file
/// `pidfile` names if it is alive and carries `expected_name` in its `argv[0]` or executable,
/// then waits until it is gone, polling every 10 ms, for up to `timeout`.
///
/// `Ok` without killing anything only when the recorded process is provably gone: the pid file
/// was written under this kernel and pid namespace, and no process with its pid *and* start time
/// is running (none with that pid, one with another start time: the pid was reused, or one that
/// has exited). Everything else fails: a missing, unreadable or incomplete pid file, one written
/// elsewhere, or a live process with the recorded identity that is not `expected_name`.
pub async fn fence_process(
    pidfile: &Path,
    expected_name: &str,
    timeout: Duration,
) -> Result<(), FenceError> {
    let path = || pidfile.to_path_buf();
    let text = match tokio::fs::read_to_string(pidfile).await {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FenceError::NoPidFile { path: path() })
        }
        Err(source) => {
            return Err(FenceError::PidFile {
                path: path(),
                source,
            })
        }
    };
    let Some(rec) = PidRecord::parse(&text).filter(|r| r.pid > 1) else {
        return Err(FenceError::BadPidFile {
            path: path(),
            content: text.chars().take(64).collect(),
        });
    };
    let pid = rec.pid;
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return Err(FenceError::OwnPid { path: path(), pid });
    }
    let (Some(start), Some(boot), Some(ns)) = (rec.start_time, &rec.boot_id, &rec.pid_ns) else {
        return Err(FenceError::Unidentified { path: path(), pid });
    };
    let ours = boot_id().map_err(|source| FenceError::OwnIdentity {
        what: BOOT_ID,
        source,
    })?;
    if *boot != ours {
        return Err(FenceError::OtherKernel {
            path: path(),
            theirs: boot.clone(),
            ours,
        });
    }
    let ours = pid_namespace("self").map_err(|source| FenceError::OwnIdentity {
        what: "/proc/self/ns/pid",
        source,
    })?;
    if *ns != ours {
        return Err(FenceError::OtherPidNamespace {
            path: path(),
            theirs: ns.clone(),
            ours,
        });
    }
    // Hold the process by a pidfd first (when the kernel has them), so that the checks below and
    // the kill are about one and the same process even if the pid is reused meanwhile: a process
    // that still shows the recorded start time after the pidfd was opened is the one the pidfd
    // holds (it wrote the pid file, so it already had the pid when the pidfd was opened).
    let handle = match PidFd::open(pid) {
        Ok(h) => h,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            tracing::info!("fence: the peer process {pid} no longer exists: the peer is gone");
            return Ok(());
        }
        Err(_) => None,
    };
    match proc_start_time(pid) {
        None => {
            tracing::info!("fence: the peer process {pid} no longer exists: the peer is gone");
            return Ok(());
        }
        Some(t) if t != start => {
            tracing::info!(
                "fence: process {pid} started at {t}, not at {start} as the peer did: the pid \
                 was reused and the peer is gone; not touching it"
            );
            return Ok(());
        }
        Some(_) => {}
    }
    let exited = match &handle {
        Some(h) => h.exited(),
        None => matches!(proc_state(pid), None | Some('Z') | Some('X')),
    };
    if exited {
        tracing::info!("fence: the peer process {pid} has already exited");
        return Ok(());
    }
    if !process_is_named(pid, expected_name) {
        return Err(FenceError::NotThePeer {
            path: path(),
            pid,
            expected: expected_name.to_string(),
        });
    }
    let sent = match &handle {
        Some(h) => h.send_sigkill(),
        None => {
            // SAFETY: kill(2) has no memory-safety preconditions.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
    };
    match sent {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            tracing::info!("fence: the peer process {pid} exited before the kill");
            return Ok(());
        }
        Err(source) => return Err(FenceError::Kill { pid, source }),
    }
    tracing::warn!("fence: sent SIGKILL to the peer process {pid}");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let gone = match &handle {
            Some(h) => h.exited(),
            None => matches!(proc_state(pid), None | Some('Z') | Some('X')),
        };
        if gone {
            tracing::warn!("fence: the peer process {pid} is gone");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(FenceError::StillAlive { pid, timeout });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The fields of `/proc/PID/stat` after the command name, from field 3 (the state) on, or `None`
/// if the process is gone.
fn proc_stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE ...": COMM may contain spaces and parentheses; the state follows the
    // last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The state letter of `/proc/PID/stat` (R, S, D, T, Z, …), or `None` if the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    proc_stat_fields(&pid.to_string())?.first()?.chars().next()
}

/// The start time of a process (field 22 of `/proc/PID/stat`: clock ticks after boot), or `None`
/// if the process is gone.
fn proc_start_time(pid: i32) -> Option<u64> {
    start_time_of(&pid.to_string())
}

fn start_time_of(pid: &str) -> Option<u64> {
    // Field 22, counted from 1 with the pid as field 1: index 19 from the state (field 3).
    proc_stat_fields(pid)?.get(19)?.parse().ok()
}

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// This kernel boot's id: two processes under one kernel share it, a reboot or another host
/// changes it.
fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string(BOOT_ID)?.trim().to_string())
}

/// The pid namespace of `pid` ("self" for this process), as `readlink /proc/PID/ns/pid` shows it.
fn pid_namespace(pid: &str) -> io::Result<String> {
    Ok(std::fs::read_link(format!("/proc/{pid}/ns/pid"))?
        .to_string_lossy()
        .into_owned())
}

/// What a pid file says: the process id on its first line (what other tools read), then what
/// identifies that process beyond its pid, one `key=value` a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    /// `start_time`: the process's start time, field 22 of `/proc/PID/stat`.
    pub start_time: Option<u64>,
    /// `boot_id`: the kernel boot the process ran under.
    pub boot_id: Option<String>,
    /// `pid_ns`: the pid namespace the pid belongs to.
    pub pid_ns: Option<String>,
}

impl PidRecord {
    /// The record of the running process `pid`, read from `/proc`.
    pub fn of(pid: i32) -> io::Result<PidRecord> {
        let gone = || io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}"));
        Ok(PidRecord {
            pid,
            start_time: Some(proc_start_time(pid).ok_or_else(gone)?),
            boot_id: Some(boot_id()?),
            pid_ns: Some(pid_namespace(&pid.to_string())?),
        })
    }

    /// The record of this process.
    pub fn this_process() -> io::Result<PidRecord> {
        let pid = i32::try_from(std::process::id()).map_err(io::Error::other)?;
        Ok(PidRecord {
            pid,
            start_time: Some(start_time_of("self").ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "cannot read /proc/self/stat")
            })?),
            boot_id: Some(boot_id()?),
            pid_ns: Some(pid_namespace("self")?),
        })
    }

    /// Reads a pid file's text; `None` when its first line is not a process id. Unknown keys are
    /// ignored.
    pub fn parse(text: &str) -> Option<PidRecord> {
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse::<i32>().ok()?;
        let mut rec = PidRecord {
            pid,
            start_time: None,
            boot_id: None,
            pid_ns: None,
        };
        for line in lines {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "start_time" => rec.start_time = v.parse().ok(),
                "boot_id" if !v.is_empty() => rec.boot_id = Some(v.to_string()),
                "pid_ns" if !v.is_empty() => rec.pid_ns = Some(v.to_string()),
                _ => {}
            }
        }
        Some(rec)
    }

    /// The pid file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("{}\n", self.pid);
        if let Some(t) = self.start_time {
            s.push_str(&format!("start_time={t}\n"));
        }
        if let Some(b) = &self.boot_id {
            s.push_str(&format!("boot_id={b}\n"));
        }
        if let Some(n) = &self.pid_ns {
            s.push_str(&format!("pid_ns={n}\n"));
        }
        s
    }
}

/// Whether the process's `argv[0]` or executable file name contains `name`.
fn process_is_named(pid: i32, name: &str) -> bool {
    let base_contains = |p: &[u8]| {
        let base = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
        String::from_utf8_lossy(base).contains(name)
    };
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
        if base_contains(argv0) {
            return true;
        }
    }
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        if base_contains(exe.as_os_str().as_encoded_bytes()) {
            return true;
        }
    }
    false
}

/// A Linux pidfd: a handle on one process that a reused pid cannot redirect.
struct PidFd(OwnedFd);

impl PidFd {
    /// `Ok(None)` when the kernel has no pidfds (or refuses them); `Err(ESRCH)` when the process
    /// does not exist.
    fn open(pid: i32) -> io::Result<Option<PidFd>> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Err(e);
            }
            return Ok(None);
        }
        let Ok(fd) = i32::try_from(fd) else {
            return Ok(None);
        };
        // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
        Ok(Some(PidFd(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn send_sigkill(&self) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) with a null siginfo and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Whether the process has exited (it may still be an unreaped zombie).
    fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
    }
}

async fn fence_exec(
    command: &str,
    env: &[(String, String)],
    timeout: Duration,
) -> Result<(), FenceError> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout kills the command's children too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| FenceError::Spawn {
        command: command.to_string(),
        source,
    })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let stdout = tokio::spawn(read_limited(child.stdout.take()));
    let stderr = tokio::spawn(read_limited(child.stderr.take()));
    tracing::warn!("fence: running `{command}`");
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(source)) => Err(FenceError::Spawn {
            command: command.to_string(),
            source,
        }),
        Err(_) => Err(FenceError::CommandTimeout {
            command: command.to_string(),
            timeout,
        }),
    };
    if status.is_err() {
        if let Some(pgid) = pgid {
            // SAFETY: kill(2) on our child's own process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = child.start_kill();
        let _ = tokio::time::timeout(OUTPUT_GRACE, child.wait()).await;
    }
    let out = collect(stdout).await;
    let err = collect(stderr).await;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!("fence: `{command}`: {line}");
    }
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!("fence: `{command}` (stderr): {line}");
    }
    let status = status?;
    if status.success() {
        tracing::warn!("fence: `{command}` succeeded");
        Ok(())
    } else {
        let status = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => status.to_string(),
        };
        Err(FenceError::CommandFailed {
            command: command.to_string(),
            status,
            stderr: err,
        })
    }
}

async fn read_limited<R: AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(mut pipe) = pipe else {
        return out;
    };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let keep = n.min(OUTPUT_LIMIT.saturating_sub(out.len()));
                out.extend_from_slice(&buf[..keep]);
            }
        }
    }
    out
}

async fn collect(task: tokio::task::JoinHandle<Vec<u8>>) -> String {
    let abort = task.abort_handle();
    match tokio::time::timeout(OUTPUT_GRACE, task).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(Err(_)) => String::new(),
        Err(_) => {
            abort.abort();
            String::new()
        }
    }
}

/// Writes this process's [`PidRecord`] to `path` atomically (a temporary file beside it, then a
/// rename), so that the peer's process agent never reads a half-written pid. Creates the
/// directory if needed. The file is left in place when the daemon exits: it then names a process
/// that is provably gone, which is what lets the peer's process agent fence a cleanly stopped
/// controller.
pub fn write_pidfile(path: &Path) -> io::Result<()> {
    write_pidfile_of(path, &PidRecord::this_process()?)
}

/// Writes `rec` to `path` as [`write_pidfile`] does.
pub fn write_pidfile_of(path: &Path, rec: &PidRecord) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid file path has no name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(rec.to_text().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_state_reads_our_own_process() {
        let me = std::process::id() as i32;
        assert!(matches!(proc_state(me), Some('R') | Some('S')));
        assert_eq!(proc_state(i32::MAX), None);
    }

    #[test]
    fn our_own_record_round_trips_through_the_pid_file_text() {
        let me = PidRecord::this_process().expect("our identity");
        assert_eq!(me.pid as u32, std::process::id());
        assert_eq!(PidRecord::of(me.pid).expect("our record"), me);
        let text = me.to_text();
        assert_eq!(text.lines().next(), Some(me.pid.to_string().as_str()));
        assert_eq!(PidRecord::parse(&text), Some(me));
        // A pid-only file (what other daemons write) parses, without identity.
        let bare = PidRecord::parse("1234\n").expect("a pid");
        assert_eq!(
            (bare.pid, bare.start_time, bare.boot_id),
            (1234, None, None)
        );
        assert_eq!(PidRecord::parse("duetd\n"), None);
        assert_eq!(PidRecord::parse(""), None);
    }

    #[test]
    fn error_messages_carry_stderr() {
        let e = FenceError::CommandFailed {
            command: "false".into(),
            status: "exit status 1".into(),
            stderr: "no power switch\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "the fencing command `false` failed (exit status 1): no power switch"
        );
    }
}
