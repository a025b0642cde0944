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
//! - [`FenceAgent::ScsiPr`]: SCSI-3 persistent reservations on the shared disks: PREEMPT AND
//!   ABORT of the peer's key on the quorum device and every LUN (`super::pr_fence`).
//! - [`FenceAgent::None`]: no fencing, configured explicitly (the daemon warns at start).
//!
//! The process agent and its pid files are in `process` (`fence/process.rs`).
//! [`FenceAgent::deployment`] says which deployment each agent fits (`duetd check-config`
//! prints it). [`restore_access`] is the other half of an agent that fences at the disk: a
//! controller fenced there gets its access back through it once it has rejoined.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::pr_fence::{PrAgent, PrError, ScsiPrConfig};

mod process;

pub use process::{fence_process, write_pidfile, write_pidfile_of, PidRecord, PEER_PROCESS_NAME};

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
    /// Preempt the peer's reservation key on every shared device (`super::pr_fence`).
    ScsiPr(ScsiPrConfig),
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
            FenceAgent::ScsiPr(pr) => write!(f, "{pr}"),
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
            FenceAgent::ScsiPr(_) => SCSI_PR_DEPLOYMENT,
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
    /// The disks did not all confirm the peer's key is gone.
    #[error("scsi-pr: {0}")]
    ScsiPr(#[from] PrError),
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
        FenceAgent::ScsiPr(cfg) => Ok(open_pr_agent(cfg).await?.fence_peer(timeout).await?),
        FenceAgent::None => Ok(()),
    }
}

/// Restores this controller's own access to the backing devices after the peer fenced it at the
/// disk and the node has rejoined as secondary (`Output::RestoreDiskAccess`): the hook of an
/// agent that fences at the disk (the `scsi-pr` agent registers this controller's key again).
/// The process and exec agents stop the peer itself, not its access: nothing to restore.
pub async fn restore_access(agent: &FenceAgent, timeout: Duration) -> Result<(), FenceError> {
    match agent {
        FenceAgent::Process { .. } | FenceAgent::Exec { .. } | FenceAgent::None => Ok(()),
        FenceAgent::ScsiPr(cfg) => {
            let agent = open_pr_agent(cfg).await?;
            tracing::warn!("fence: registering this controller's key again on every device");
            Ok(agent.join(timeout).await?)
        }
    }
}

/// Opens the `scsi-pr` agent's devices (blocking opens, off the async workers).
async fn open_pr_agent(cfg: &ScsiPrConfig) -> Result<PrAgent, FenceError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || PrAgent::open_sg(&cfg))
        .await
        .map_err(|e| FenceError::Spawn {
            command: "scsi-pr".into(),
            source: io::Error::other(e.to_string()),
        })?
        .map_err(FenceError::from)
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

#[cfg(test)]
mod tests {
    use super::*;

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
