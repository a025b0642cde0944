//! The process agent: the lab's fencing agent for two controllers on one host and one kernel.
//!
//! Each controller writes a pid file at start ([`write_pidfile`]): its pid on the first line,
//! then what identifies the process beyond its pid ([`PidRecord`]: start time, kernel boot, pid
//! namespace). [`fence_process`] kills the process the peer's pid file names (SIGKILL through a
//! pidfd) and waits until it is gone, or proves it gone already: only a process with the recorded
//! pid *and* start time, under this boot and pid namespace, is the peer. A missing, unreadable or
//! incomplete pid file, or one written elsewhere, is a failed fence. The pid file stays when the
//! daemon exits, so that a cleanly stopped peer is still recognised as gone.
//!
//! Touches `/proc`, the pid files and the peer's process; nothing else.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::FenceError;

/// The name a process must carry (in its `argv[0]` or executable) for the process agent to kill
/// it: a pid file pointing at anything else is stale (the pid was reused), never a target.
pub const PEER_PROCESS_NAME: &str = "duetd";

/// How often the process agent checks whether the killed peer is gone.
const POLL: Duration = Duration::from_millis(10);

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
    // A process whose name can no longer be read is exiting (its memory is gone): its start
    // time already proved it is the peer that wrote the pid file, so it is fenced like the peer.
    if process_is_named(pid, expected_name) == Some(false) {
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

/// Whether the process's `argv[0]` or executable file name contains `name`; `None` when neither
/// can be read any more (the process is exiting).
fn process_is_named(pid: i32, name: &str) -> Option<bool> {
    let base_contains = |p: &[u8]| {
        let base = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
        String::from_utf8_lossy(base).contains(name)
    };
    let mut readable = false;
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or(&[]);
        readable |= !argv0.is_empty();
        if base_contains(argv0) {
            return Some(true);
        }
    }
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        readable = true;
        if base_contains(exe.as_os_str().as_encoded_bytes()) {
            return Some(true);
        }
    }
    readable.then_some(false)
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
}
