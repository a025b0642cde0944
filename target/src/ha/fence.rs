//! Fencing agents: how a controller makes sure its peer has stopped before it takes over work the
//! peer might still be doing.
//!
//! The node asks with `Output::FencePeer`; the runtime runs [`fence`] and answers
//! `Input::FenceResult { ok }`. `Ok(())` means the peer can no longer issue I/O. Every agent errs
//! on the safe side: when it cannot be sure, it returns an error and the node keeps waiting.
//!
//! - [`FenceAgent::Process`]: the lab's agent (both controllers on one host): kill the peer's
//!   `duetd` process, found through the pid file it writes at start ([`write_pidfile`]).
//! - [`FenceAgent::Exec`]: run an administrator's command (`sh -c COMMAND`: a power switch, IPMI,
//!   a SCSI reservation preemption); success is exit status 0 within the timeout.
//! - [`FenceAgent::None`]: no fencing, configured explicitly (the daemon warns at start).

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
    Process { pidfile: PathBuf },
    /// Run `sh -c command` with `env` added to the environment (the configuration passes
    /// `DUET_FENCE_PEER_ID`, `DUET_FENCE_SELF_ID` and `DUET_FENCE_PEER_LINK`); exit status 0
    /// within the timeout means the peer is fenced.
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

/// Why fencing failed: the peer may still be running.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
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

/// The process agent with the expected process name spelled out: kills the process named by
/// `pidfile` if it is alive and carries `expected_name` in its `argv[0]` or executable, then waits
/// until it is gone or a zombie, polling every 10 ms, for up to `timeout`.
///
/// `Ok` without killing anything when the pid file is missing, the process does not exist or is
/// already a zombie, or it is another program (the pid was reused): in each case the peer is not
/// running.
pub async fn fence_process(
    pidfile: &Path,
    expected_name: &str,
    timeout: Duration,
) -> Result<(), FenceError> {
    let text = match tokio::fs::read_to_string(pidfile).await {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::info!(
                "fence: the peer's pid file {} is missing: the peer is not running",
                pidfile.display()
            );
            return Ok(());
        }
        Err(source) => {
            return Err(FenceError::PidFile {
                path: pidfile.to_path_buf(),
                source,
            })
        }
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => p,
        _ => {
            return Err(FenceError::BadPidFile {
                path: pidfile.to_path_buf(),
                content: text.chars().take(64).collect(),
            })
        }
    };
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return Err(FenceError::OwnPid {
            path: pidfile.to_path_buf(),
            pid,
        });
    }
    // Hold the process by a pidfd first (when the kernel has them), so that the checks below and
    // the kill are about one and the same process even if the pid is reused meanwhile.
    let handle = match PidFd::open(pid) {
        Ok(h) => h,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            tracing::info!("fence: the peer process {pid} does not exist: the peer is not running");
            return Ok(());
        }
        Err(_) => None,
    };
    match proc_state(pid) {
        None => {
            tracing::info!("fence: the peer process {pid} does not exist: the peer is not running");
            return Ok(());
        }
        Some('Z') | Some('X') => {
            tracing::info!("fence: the peer process {pid} has already exited");
            return Ok(());
        }
        Some(_) => {}
    }
    if !process_is_named(pid, expected_name) {
        tracing::warn!(
            "fence: process {pid} from {} is not {expected_name} (the pid was reused): the peer \
             is not running; not killing it",
            pidfile.display()
        );
        return Ok(());
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

/// The state letter of `/proc/PID/stat` (R, S, D, T, Z, …), or `None` if the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE ...": COMM may contain spaces and parentheses; the state follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
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

/// Writes this process's id to `path` atomically (a temporary file beside it, then a rename), so
/// that the peer's process agent never reads a half-written pid. Creates the directory if needed.
pub fn write_pidfile(path: &Path) -> io::Result<()> {
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
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the pid file at `path` if it still names this process (a newer instance's pid file is
/// left alone). A missing file is fine.
pub fn remove_pidfile(path: &Path) -> io::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().parse::<u32>().ok() == Some(std::process::id()) => {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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
