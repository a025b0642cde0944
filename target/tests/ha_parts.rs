//! The HA runtime's parts that touch the outside world: the quorum area on a shared file, the
//! fencing agents (killing a real `duetd`, running commands) and the `[ha]` configuration section.

use duet_core::LunNumber;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duet_core::alua::HaMode;
use duet_core::ha::{Fencing, Policy, QuorumRecord, Role, SlotLun};
use duet_target::ha::config::{parse_ha, HaConfig, HaPeer, WARN_NO_FENCING};
use duet_target::ha::fence::{
    fence, fence_process, write_pidfile, write_pidfile_of, FenceAgent, FenceError, PidRecord,
};
use duet_target::ha::quorum::{Arbiter, FileQuorum, QuorumError, AREA_SIZE, SECTOR_SIZE};

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("duet-ha-parts-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(seq: u64, luns: &[(LunNumber, u64, bool)]) -> QuorumRecord {
    QuorumRecord {
        seq,
        luns: luns
            .iter()
            .map(|&(lun, epoch, own)| SlotLun {
                lun,
                epoch,
                own,
                served: epoch / 2,
            })
            .collect(),
    }
}

// -------------------------------------------------------------------------------------------------
// The quorum area
// -------------------------------------------------------------------------------------------------

#[test]
fn a_new_quorum_file_is_formatted_and_its_slots_are_empty() {
    let d = TempDir::new("q-new");
    let p = d.path("sub/quorum.img");
    let q = FileQuorum::open(&p, true).expect("create");
    assert_eq!(std::fs::metadata(&p).unwrap().len(), AREA_SIZE);
    assert_eq!(q.read(1).unwrap(), None);
    assert_eq!(q.read(2).unwrap(), None);
    assert!(q.describe().contains(&p.display().to_string()));
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(d.path("sub")).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn each_slot_round_trips_and_slots_are_independent() {
    let d = TempDir::new("q-rt");
    let q = FileQuorum::open(&d.path("q.img"), true).unwrap();
    let a = record(7, &[(1, 3, true), (2, 1, false)]);
    let b = record(u64::MAX, &[(16383, u64::MAX, true)]);
    q.write(1, &a).unwrap();
    assert_eq!(q.read(1).unwrap(), Some(a.clone()));
    assert_eq!(q.read(2).unwrap(), None, "writing slot 1 left slot 2 alone");
    q.write(2, &b).unwrap();
    assert_eq!(q.read(1).unwrap(), Some(a.clone()));
    assert_eq!(q.read(2).unwrap(), Some(b.clone()));
    let a2 = record(8, &[]);
    q.write(1, &a2).unwrap();
    assert_eq!(q.read(1).unwrap(), Some(a2));
    assert_eq!(q.read(2).unwrap(), Some(b));
    // Only slots 1 and 2 exist.
    assert!(matches!(q.read(0), Err(QuorumError::BadSlot(0))));
    assert!(matches!(q.write(3, &a), Err(QuorumError::BadSlot(3))));
}

#[test]
fn two_handles_on_one_file_see_each_others_writes() {
    let d = TempDir::new("q-two");
    let p = d.path("q.img");
    let ctrl_a = FileQuorum::open(&p, true).unwrap();
    let ctrl_b = FileQuorum::open(&p, true).unwrap();
    for seq in 1..=5u64 {
        ctrl_a.write(1, &record(seq, &[(1, seq, true)])).unwrap();
        assert_eq!(
            ctrl_b.read(1).unwrap(),
            Some(record(seq, &[(1, seq, true)]))
        );
        ctrl_b
            .write(2, &record(seq * 10, &[(1, seq, false)]))
            .unwrap();
        assert_eq!(
            ctrl_a.read(2).unwrap(),
            Some(record(seq * 10, &[(1, seq, false)]))
        );
    }
    // Reopening (as after a restart) keeps the records: an existing area is not reformatted.
    drop(ctrl_a);
    let again = FileQuorum::open(&p, true).unwrap();
    assert_eq!(again.read(1).unwrap(), Some(record(5, &[(1, 5, true)])));
}

#[test]
fn a_torn_or_corrupt_slot_is_reported_as_corrupt_not_as_empty() {
    use std::os::unix::fs::FileExt;
    let d = TempDir::new("q-torn");
    let p = d.path("q.img");
    let q = FileQuorum::open(&p, true).unwrap();
    q.write(1, &record(1, &[(1, 1, true)])).unwrap();
    q.write(2, &record(2, &[(1, 1, false)])).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();

    // Torn write: only the first half of slot 1's sector reached the disk.
    f.write_all_at(
        &vec![0u8; SECTOR_SIZE / 2],
        (SECTOR_SIZE + SECTOR_SIZE / 2) as u64,
    )
    .unwrap();
    match q.read(1) {
        Err(QuorumError::Corrupt { slot: 1, reason }) => {
            assert!(reason.contains("checksum"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Torn the other way: the head of the sector is gone.
    q.write(1, &record(3, &[(1, 1, true)])).unwrap();
    f.write_all_at(&[0u8; 512], SECTOR_SIZE as u64).unwrap();
    assert!(matches!(
        q.read(1),
        Err(QuorumError::Corrupt { slot: 1, .. })
    ));
    // One flipped bit in the record.
    q.write(1, &record(4, &[(1, 1, true)])).unwrap();
    f.write_all_at(&[0x40], SECTOR_SIZE as u64 + 30).unwrap();
    assert!(matches!(
        q.read(1),
        Err(QuorumError::Corrupt { slot: 1, .. })
    ));
    // The other slot is untouched, and a fresh write repairs slot 1.
    assert_eq!(q.read(2).unwrap(), Some(record(2, &[(1, 1, false)])));
    q.write(1, &record(5, &[])).unwrap();
    assert_eq!(q.read(1).unwrap(), Some(record(5, &[])));
    // Slot 2's sector copied into slot 1's place is refused too.
    let mut sector = vec![0u8; SECTOR_SIZE];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&p).unwrap(),
        &mut sector,
        2 * SECTOR_SIZE as u64,
    )
    .unwrap();
    f.write_all_at(&sector, SECTOR_SIZE as u64).unwrap();
    assert!(matches!(
        q.read(1),
        Err(QuorumError::Corrupt { slot: 1, .. })
    ));
}

#[test]
fn opening_refuses_missing_foreign_and_small_areas_naming_the_path() {
    let d = TempDir::new("q-bad");
    let missing = d.path("missing.img");
    let e = FileQuorum::open(&missing, false).unwrap_err().to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(e.contains("quorum_create"), "{e}");
    assert!(!missing.exists(), "open without create must not create");

    let foreign = d.path("lun.img");
    std::fs::write(&foreign, vec![0xa5u8; AREA_SIZE as usize * 2]).unwrap();
    for create in [false, true] {
        let e = FileQuorum::open(&foreign, create).unwrap_err().to_string();
        assert!(e.contains(&foreign.display().to_string()), "{e}");
        assert!(e.contains("not a Duet quorum area"), "{e}");
    }
    // Nothing was written to the foreign file.
    assert!(std::fs::read(&foreign).unwrap().iter().all(|&b| b == 0xa5));

    let small = d.path("small.img");
    std::fs::write(&small, vec![0u8; SECTOR_SIZE]).unwrap();
    let e = FileQuorum::open(&small, true).unwrap_err().to_string();
    assert!(e.contains("too small"), "{e}");

    let dir = d.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let e = FileQuorum::open(&dir, true).unwrap_err().to_string();
    assert!(e.contains("regular file or a block device"), "{e}");
}

#[test]
fn a_preallocated_zero_area_is_formatted_only_when_asked() {
    let d = TempDir::new("q-zero");
    let p = d.path("q.img");
    std::fs::write(&p, vec![0u8; AREA_SIZE as usize + 4096]).unwrap();
    let e = FileQuorum::open(&p, false).unwrap_err().to_string();
    assert!(e.contains("not formatted"), "{e}");
    let q = FileQuorum::open(&p, true).unwrap();
    assert_eq!(q.read(1).unwrap(), None);
    q.write(2, &record(1, &[])).unwrap();
    // Now formatted: opening without create works, and the size was not changed.
    let q2 = FileQuorum::open(&p, false).unwrap();
    assert_eq!(q2.read(2).unwrap(), Some(record(1, &[])));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), AREA_SIZE + 4096);
}

// -------------------------------------------------------------------------------------------------
// Fencing
// -------------------------------------------------------------------------------------------------

/// A child process killed (and reaped) when dropped, unless the test already reaped it.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits (bounded) for the process to end; its exit status.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the real duetd on a free loopback port with a tiny configuration in `dir`, and waits
/// (bounded) until it accepts connections.
fn start_duetd(dir: &TempDir) -> Proc {
    let port = free_port();
    let cfg = dir.path("duetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[portal_group.p]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [[target]]\nname = \"iqn.2026-11.dev.duet:fence\"\nauth_group = \"none\"\n\
             [[target.lun]]\nnumber = 1\npath = \"{}\"\nsize = \"1MiB\"\ncreate = true\n",
            dir.path("lun1.img").display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_duetd"))
        .arg("--config")
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start duetd");
    let mut p = Proc(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(p.running(), "duetd exited at start");
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return p;
        }
        assert!(Instant::now() < deadline, "duetd did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn process_agent(pidfile: &Path) -> FenceAgent {
    FenceAgent::Process {
        pidfile: pidfile.to_path_buf(),
    }
}

const FENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the pid file of the running process `pid`, as that process would at start.
fn pidfile_of(path: &Path, pid: i32) {
    write_pidfile_of(path, &PidRecord::of(pid).expect("the process's record")).unwrap();
}

#[tokio::test]
async fn the_process_agent_kills_the_peer_duetd() {
    let d = TempDir::new("f-kill");
    let mut peer = start_duetd(&d);
    let pidfile = d.path("peer.pid");
    pidfile_of(&pidfile, peer.pid());
    fence(&process_agent(&pidfile), FENCE_TIMEOUT)
        .await
        .expect("fenced");
    let st = peer.wait_exit(Duration::from_secs(10)).expect("duetd gone");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    // Fencing again (the pid file now names a process that is gone) is fine.
    fence(&process_agent(&pidfile), FENCE_TIMEOUT)
        .await
        .expect("already fenced");
}

#[tokio::test]
async fn the_process_agent_kills_a_stopped_peer() {
    let d = TempDir::new("f-stopped");
    let mut peer = start_duetd(&d);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(peer.pid(), libc::SIGSTOP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(peer.pid()) != Some('T') {
        assert!(Instant::now() < deadline, "the peer did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pidfile = d.path("peer.pid");
    pidfile_of(&pidfile, peer.pid());
    fence(&process_agent(&pidfile), FENCE_TIMEOUT)
        .await
        .expect("fenced");
    let st = peer.wait_exit(Duration::from_secs(10)).expect("duetd gone");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
}

#[tokio::test]
async fn the_process_agent_never_kills_another_program() {
    let d = TempDir::new("f-other");
    let mut other = Proc(
        Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pidfile = d.path("peer.pid");
    pidfile_of(&pidfile, other.pid());
    // The recorded process is alive and is not duetd: the fence fails, and nothing is killed.
    match fence(&process_agent(&pidfile), FENCE_TIMEOUT).await {
        Err(FenceError::NotThePeer { pid, .. }) => assert_eq!(pid, other.pid()),
        r => panic!("expected NotThePeer, got {r:?}"),
    }
    // A record of another process that had this pid (another start time): that process is
    // gone, so the fence succeeds, without touching the live one.
    let mut reused = PidRecord::of(other.pid()).unwrap();
    reused.start_time = reused.start_time.map(|t| t.saturating_sub(1));
    write_pidfile_of(&pidfile, &reused).unwrap();
    fence(&process_agent(&pidfile), FENCE_TIMEOUT)
        .await
        .expect("the recorded process is gone");
    std::thread::sleep(Duration::from_millis(50));
    assert!(other.running(), "an unrelated process was killed");
    assert_eq!(proc_state(other.pid()).map(|s| s != 'Z'), Some(true));

    // The name check is what protects it: the same agent expecting "sleep" does kill it...
    pidfile_of(&pidfile, other.pid());
    fence_process(&pidfile, "sleep", FENCE_TIMEOUT)
        .await
        .expect("fenced");
    let st = other.wait_exit(Duration::from_secs(10)).expect("gone");
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    // ...and once it is gone (reaped), its pid file proves it.
    fence_process(&pidfile, "sleep", FENCE_TIMEOUT)
        .await
        .expect("gone");
}

#[tokio::test]
async fn the_process_agent_fails_on_missing_bad_bare_foreign_and_own_pid_files() {
    let d = TempDir::new("f-pidfile");
    // Missing: the peer never ran here (or runs on another host): a failed fence.
    match fence(&process_agent(&d.path("none.pid")), FENCE_TIMEOUT).await {
        Err(e @ FenceError::NoPidFile { .. }) => {
            assert!(e.to_string().contains("none.pid"), "{e}")
        }
        r => panic!("a missing pid file must fail the fence, got {r:?}"),
    }
    // Garbage: cannot tell, so fencing fails (the node keeps waiting).
    let bad = d.path("bad.pid");
    std::fs::write(&bad, "not-a-pid\n").unwrap();
    assert!(matches!(
        fence(&process_agent(&bad), FENCE_TIMEOUT).await,
        Err(FenceError::BadPidFile { .. })
    ));
    // A bare pid (no start time): even of a process that does not exist, not proof of anything.
    let bare = d.path("bare.pid");
    std::fs::write(&bare, "999999999\n").unwrap();
    assert!(matches!(
        fence(&process_agent(&bare), FENCE_TIMEOUT).await,
        Err(FenceError::Unidentified { pid: 999999999, .. })
    ));
    // Written under another kernel boot, or in another pid namespace: cannot be checked here.
    let me = PidRecord::this_process().unwrap();
    let foreign = d.path("foreign.pid");
    let other_boot = PidRecord {
        pid: 999999999,
        boot_id: Some("00000000-0000-0000-0000-000000000000".into()),
        ..me.clone()
    };
    write_pidfile_of(&foreign, &other_boot).unwrap();
    assert!(matches!(
        fence(&process_agent(&foreign), FENCE_TIMEOUT).await,
        Err(FenceError::OtherKernel { .. })
    ));
    let other_ns = PidRecord {
        pid: 999999999,
        pid_ns: Some("pid:[1]".into()),
        ..me.clone()
    };
    write_pidfile_of(&foreign, &other_ns).unwrap();
    assert!(matches!(
        fence(&process_agent(&foreign), FENCE_TIMEOUT).await,
        Err(FenceError::OtherPidNamespace { .. })
    ));
    // A complete record of a process that no longer exists: the peer is gone.
    let gone = PidRecord {
        pid: 999999999,
        ..me.clone()
    };
    write_pidfile_of(&foreign, &gone).unwrap();
    fence(&process_agent(&foreign), FENCE_TIMEOUT)
        .await
        .expect("no process with that pid: gone");
    // Our own pid (peer_pidfile pointing at our own pid file): refused, we do not kill ourselves.
    let own = d.path("own.pid");
    write_pidfile(&own).unwrap();
    assert!(matches!(
        fence(&process_agent(&own), FENCE_TIMEOUT).await,
        Err(FenceError::OwnPid { .. })
    ));
}

#[test]
fn pid_files_are_written_whole_with_the_pid_on_the_first_line() {
    let d = TempDir::new("f-write");
    let p = d.path("run/duet/ctrl-a.pid");
    write_pidfile(&p).unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    assert_eq!(
        text.lines().next(),
        Some(std::process::id().to_string().as_str())
    );
    assert_eq!(
        PidRecord::parse(&text),
        Some(PidRecord::this_process().unwrap())
    );
    write_pidfile(&p).unwrap(); // overwriting is fine
    assert_eq!(std::fs::read_dir(d.path("run/duet")).unwrap().count(), 1);
}

fn exec(command: &str) -> FenceAgent {
    FenceAgent::Exec {
        command: command.into(),
        env: vec![("DUET_FENCE_PEER_ID".into(), "2".into())],
    }
}

#[tokio::test]
async fn the_exec_agent_succeeds_only_on_exit_status_zero() {
    fence(&exec("true"), FENCE_TIMEOUT).await.expect("true");
    fence(&exec("test \"$DUET_FENCE_PEER_ID\" = 2"), FENCE_TIMEOUT)
        .await
        .expect("the environment reaches the command");
    match fence(&exec("false"), FENCE_TIMEOUT).await {
        Err(FenceError::CommandFailed { status, .. }) => assert_eq!(status, "exit status 1"),
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    match fence(
        &exec("echo 'ipmi: no route to host' >&2; exit 3"),
        FENCE_TIMEOUT,
    )
    .await
    {
        Err(e @ FenceError::CommandFailed { .. }) => {
            let text = e.to_string();
            assert!(text.contains("exit status 3"), "{text}");
            assert!(text.contains("ipmi: no route to host"), "{text}");
        }
        other => panic!("expected CommandFailed, got {other:?}"),
    }
    assert!(matches!(
        fence(&exec("kill -9 $$"), FENCE_TIMEOUT).await,
        Err(FenceError::CommandFailed { .. })
    ));
    fence(&FenceAgent::None, FENCE_TIMEOUT)
        .await
        .expect("none always succeeds");
}

#[tokio::test]
async fn the_exec_agent_kills_a_command_that_runs_past_the_timeout() {
    let d = TempDir::new("f-timeout");
    let child_pid = d.path("child.pid");
    // The command leaves a child of its own; the timeout must kill both.
    let cmd = format!("sleep 60 & echo $! > {}; wait", child_pid.display());
    let started = Instant::now();
    let r = fence(&exec(&cmd), Duration::from_millis(300)).await;
    assert!(
        matches!(r, Err(FenceError::CommandTimeout { .. })),
        "expected a timeout, got {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout was not enforced"
    );
    let pid: i32 = std::fs::read_to_string(&child_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match proc_state(pid) {
            None | Some('Z') | Some('X') => break,
            Some(_) => {
                assert!(Instant::now() < deadline, "the command's child survived");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// The [ha] section
// -------------------------------------------------------------------------------------------------

const FULL: &str = r#"# controller A
ping_timeout = 5

[portal_group.pg0]
listen = ["127.0.0.1:3260"]

[ha]
id = 1
mode = 2
role = "secondary"
peer = "listen 127.0.0.1:7777"
failover = "automatic"
quorum = "/srv/duet/quorum.img"
quorum_create = true
fencing = "process"
peer_pidfile = "/run/duet/ctrl-b.pid"
pidfile = "/run/duet/ctrl-a.pid"
secret = "correct horse battery staple"
admin_socket = "/run/duet/ctrl-a.sock"
lease_ms = 6000
renew_ms = 1500
drift_ms = 300
margin_ms = 1200
heartbeat_ms = 100
dead_after_ms = 800
failback = true
fence_timeout_ms = 3000

[ha.lun.1]
role = "primary"

[[target]]
name = "iqn.2026-11.dev.duet:target0"
auth_group = "none"
"#;

/// A minimal valid section, with extra lines appended inside `[ha]` (line 1 is `[ha]`).
fn minimal(extra: &str) -> String {
    format!(
        "[ha]\nid = 2\npeer = \"connect 127.0.0.1:7777\"\nquorum = \"/q.img\"\nfencing = \"none\"\nsecret = \"0123456789abcdef\"\n{extra}"
    )
}

fn err(text: &str) -> String {
    parse_ha("ha.toml", text).unwrap_err().to_string()
}

#[test]
fn the_full_example_parses() {
    let c: HaConfig = parse_ha("a.toml", FULL).unwrap().expect("an [ha] section");
    assert_eq!(c.id, 1);
    assert_eq!(c.mode, HaMode::ActiveActiveForward);
    assert_eq!(c.role, Role::Secondary);
    assert_eq!(c.peer, HaPeer::Listen("127.0.0.1:7777".parse().unwrap()));
    assert_eq!(c.failover, Policy::Automatic);
    assert_eq!(c.quorum.as_deref(), Some(Path::new("/srv/duet/quorum.img")));
    assert!(c.quorum_create);
    assert_eq!(
        c.fencing,
        FenceAgent::Process {
            pidfile: "/run/duet/ctrl-b.pid".into()
        }
    );
    assert_eq!(
        c.pidfile.as_deref(),
        Some(Path::new("/run/duet/ctrl-a.pid"))
    );
    assert_eq!(c.secret, "correct horse battery staple");
    assert_eq!(c.admin_socket, Path::new("/run/duet/ctrl-a.sock"));
    assert_eq!(
        (
            c.timing.lease_ms,
            c.timing.renew_ms,
            c.timing.drift_ms,
            c.timing.margin_ms
        ),
        (6000, 1500, 300, 1200)
    );
    assert_eq!(c.heartbeat(), Duration::from_millis(100));
    assert_eq!(c.dead_after(), Duration::from_millis(800));
    assert_eq!(c.fence_timeout(), Duration::from_millis(3000));
    assert!(c.failback);
    assert!(c.warnings().is_empty());

    // The core configuration: the per-LUN override applies to LUN 1 only.
    let core = c.core_config(&[1, 2]);
    assert_eq!(core.ha_id, 1);
    assert_eq!(core.policy, Policy::Automatic);
    assert_eq!(core.fencing, Fencing::Agent);
    assert_eq!(core.role_for(1), Role::Primary);
    assert_eq!(core.role_for(2), Role::Secondary);
    assert_eq!(core.timing, c.timing);
    core.validate().unwrap();
    c.check_luns("a.toml", &[1, 2]).unwrap();
    assert_eq!(
        c.check_luns("a.toml", &[2]).unwrap_err().to_string(),
        "a.toml:29: [ha.lun.1]: no target serves LUN 1"
    );

    // JSON for check-config: readable values, the secret left out.
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["mode"], 2);
    assert_eq!(json["role"], "secondary");
    assert_eq!(json["peer"], "listen 127.0.0.1:7777");
    assert_eq!(json["failover"], "automatic");
    assert_eq!(json["luns"][0]["role"], "primary");
    assert!(!json.to_string().contains("battery"), "{json}");
}

#[test]
fn no_ha_section_means_stand_alone() {
    assert_eq!(parse_ha("x.toml", "ping_timeout = 5\n").unwrap(), None);
    assert_eq!(parse_ha("x.toml", "").unwrap(), None);
}

#[test]
fn defaults() {
    let c = parse_ha("ha.toml", &minimal("")).unwrap().unwrap();
    assert_eq!(c.mode, HaMode::ActiveActiveShared);
    assert_eq!(c.role, Role::Secondary, "id 2 prefers secondary");
    assert_eq!(c.failover, Policy::Automatic);
    assert!(!c.quorum_create);
    assert!(!c.failback);
    assert_eq!(c.admin_socket, Path::new("/run/duet/duetd.sock"));
    assert_eq!(c.timing, duet_core::ha::Timing::default());
    assert_eq!(c.heartbeat(), Duration::from_millis(150));
    assert_eq!(c.dead_after(), Duration::from_millis(600));
    assert_eq!(c.fence_timeout(), Duration::from_secs(5));
    assert_eq!(c.pidfile, None);
    assert!(c.luns.is_empty());
    let one = minimal("").replace("id = 2", "id = 1");
    assert_eq!(
        parse_ha("ha.toml", &one).unwrap().unwrap().role,
        Role::Primary
    );
    // Manual failover needs neither quorum nor fencing (it then defaults to none, with the warning).
    let manual = "[ha]\nid = 1\npeer = \"listen 127.0.0.1:7777\"\nfailover = \"manual\"\nsecret = \"0123456789abcdef\"\n";
    let m = parse_ha("m.toml", manual).unwrap().unwrap();
    assert_eq!(m.failover, Policy::Manual);
    assert_eq!(m.quorum, None);
    assert_eq!(m.fencing, FenceAgent::None);
}

#[test]
fn each_required_key_missing_is_an_error_at_the_ha_line() {
    // The section starts on line 3 here.
    let base = "ping_timeout = 5\n\n[ha]\nid = 1\npeer = \"listen 127.0.0.1:7777\"\nquorum = \"/q.img\"\nfencing = \"none\"\nsecret = \"0123456789abcdef\"\n";
    parse_ha("ha.toml", base).unwrap().unwrap();
    for key in ["id", "peer", "quorum", "fencing", "secret"] {
        let text: String = base
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = err(&text);
        assert!(
            e.starts_with(&format!("ha.toml:3: [ha]: `{key}`: missing")),
            "{key}: {e}"
        );
    }
}

#[test]
fn bad_values_name_their_line() {
    let cases: &[(&str, &str)] = &[
        ("id = 3", "`id`: expected 1 or 2, got 3"),
        ("mode = 3", "`mode`: expected 0, 1 or 2, got 3"),
        ("role = \"boss\"", "`role`: expected primary or secondary"),
        (
            "failover = \"eventually\"",
            "`failover`: expected automatic or manual",
        ),
        ("quorum_create = \"yes\"", "invalid type"),
        (
            "lease_ms = 0",
            "`lease_ms`: expected 1 to 3600000 milliseconds, got 0",
        ),
        ("heartbeat_ms = -5", "`heartbeat_ms`: expected 1 to"),
        (
            "dead_after_ms = 150",
            "`dead_after_ms` (150) must be at least 3 times `heartbeat_ms` (150), 450",
        ),
        (
            "dead_after_ms = 449",
            "`dead_after_ms` (449) must be at least 3 times `heartbeat_ms` (150), 450",
        ),
        ("admin_socket = \"\"", "`admin_socket`: expected a path"),
        ("bogus = 1", "unknown field `bogus`"),
    ];
    for (line, want) in cases {
        // Replace the key if the minimal section has it, else append it: either way on line 7.
        let key = line.split(" =").next().unwrap();
        let text = if minimal("").contains(&format!("\n{key} =")) {
            let kept: String = minimal("")
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .map(|l| format!("{l}\n"))
                .collect();
            format!("{kept}{line}\n")
        } else {
            minimal(&format!("{line}\n"))
        };
        let e = err(&text);
        let n = text.lines().position(|l| l == *line).unwrap() + 1;
        assert!(e.starts_with(&format!("ha.toml:{n}: ")), "{line}: {e}");
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn the_peer_and_secret_are_checked() {
    let e = err(&minimal("").replace("connect 127.0.0.1:7777", "dial 127.0.0.1:7777"));
    assert!(
        e.starts_with("ha.toml:3: [ha]: `peer`: expected \"listen ADDR:PORT\""),
        "{e}"
    );
    let e = err(&minimal("").replace("connect 127.0.0.1:7777", "connect 127.0.0.1"));
    assert!(e.contains("not an address with a port"), "{e}");
    let e = err(&minimal("").replace("0123456789abcdef", "short"));
    assert_eq!(
        e,
        "ha.toml:6: [ha]: `secret`: must be at least 16 bytes, got 5"
    );
}

#[test]
fn naive_failover_is_refused() {
    let e = err(&minimal("failover = \"naive\"\n"));
    assert!(
        e.starts_with("ha.toml:7: [ha]: `failover`: \"naive\" is unsafe"),
        "{e}"
    );
}

#[test]
fn a_margin_not_above_the_drift_is_refused() {
    let e = err(&minimal("drift_ms = 500\nmargin_ms = 500\n"));
    assert_eq!(
        e,
        "ha.toml:8: [ha]: safety margin (500 ms) must exceed the clock-drift bound (500 ms)"
    );
    // Only drift written (above the default margin): the line of drift_ms.
    let e = err(&minimal("drift_ms = 1500\n"));
    assert!(e.starts_with("ha.toml:7: "), "{e}");
    // The core's other timing rules come through too.
    let e = err(&minimal("renew_ms = 4000\n"));
    assert!(e.starts_with("ha.toml:7: [ha]: renew interval"), "{e}");
}

#[test]
fn fencing_choices() {
    // none: accepted, with the warning the daemon logs at start.
    let c = parse_ha("ha.toml", &minimal("")).unwrap().unwrap();
    assert_eq!(c.fencing, FenceAgent::None);
    assert_eq!(c.core_config(&[1]).fencing, Fencing::None);
    assert_eq!(c.warnings(), vec![WARN_NO_FENCING.to_string()]);
    assert_eq!(
        WARN_NO_FENCING,
        "fencing = none: a paused controller can land stale writes after failover"
    );

    // exec: the command and the environment naming the peer.
    let c = parse_ha(
        "ha.toml",
        &minimal("").replace("\"none\"", "\"exec /usr/local/sbin/fence --node b\""),
    )
    .unwrap()
    .unwrap();
    match &c.fencing {
        FenceAgent::Exec { command, env } => {
            assert_eq!(command, "/usr/local/sbin/fence --node b");
            assert!(env.contains(&("DUET_FENCE_PEER_ID".to_string(), "1".to_string())));
        }
        other => panic!("{other:?}"),
    }
    assert!(c.warnings().is_empty());

    let e = err(&minimal("").replace("\"none\"", "\"exec\""));
    assert!(
        e.starts_with("ha.toml:5: [ha]: `fencing`: \"exec\" needs a command"),
        "{e}"
    );
    let e = err(&minimal("").replace("\"none\"", "\"process\""));
    assert!(
        e.starts_with("ha.toml:5: [ha]: `fencing`: \"process\" needs `peer_pidfile`"),
        "{e}"
    );
    // process is the lab agent: only with the HA link on loopback.
    let process = |peer: &str| {
        minimal("peer_pidfile = \"/run/duet/ctrl-a.pid\"\n")
            .replace("\"none\"", "\"process\"")
            .replace("connect 127.0.0.1:7777", peer)
    };
    for peer in [
        "connect 127.0.0.1:7777",
        "connect 127.3.0.9:7777",
        "listen [::1]:7777",
    ] {
        let c = parse_ha("ha.toml", &process(peer)).unwrap().unwrap();
        assert!(matches!(c.fencing, FenceAgent::Process { .. }), "{peer}");
    }
    for peer in [
        "connect 192.0.2.7:7777",
        "listen 0.0.0.0:7777",
        "listen [::]:7777",
        "connect [2001:db8::7]:7777",
    ] {
        let e = err(&process(peer));
        assert!(
            e.starts_with("ha.toml:5: [ha]: `fencing`: \"process\" is the lab agent"),
            "{peer}: {e}"
        );
        assert!(e.contains("loopback") && e.contains(peer), "{e}");
    }
    let e = err(&minimal("").replace("\"none\"", "\"stonith\""));
    assert!(e.starts_with("ha.toml:5: [ha]: `fencing`: expected"), "{e}");
}

#[test]
fn per_lun_overrides() {
    let text = minimal("\n[ha.lun.3]\nrole = \"primary\"\n\n[ha.lun.1]\nrole = \"secondary\"\n");
    let c = parse_ha("ha.toml", &text).unwrap().unwrap();
    let luns: Vec<(LunNumber, Role)> = c.luns.iter().map(|l| (l.lun, l.role)).collect();
    assert_eq!(luns, vec![(1, Role::Secondary), (3, Role::Primary)]);
    let core = c.core_config(&[1, 2, 3]);
    assert_eq!(core.role_for(1), Role::Secondary);
    assert_eq!(core.role_for(2), Role::Secondary, "the node's role (id 2)");
    assert_eq!(core.role_for(3), Role::Primary);

    let e = err(&minimal("[ha.lun.x]\nrole = \"primary\"\n"));
    assert!(
        e.starts_with("ha.toml:7: [ha.lun.x]: expected a LUN number"),
        "{e}"
    );
    let e = err(&minimal("[ha.lun.2]\nrole = \"boss\"\n"));
    assert!(
        e.starts_with("ha.toml:8: [ha.lun.2]: `role`: expected primary or secondary"),
        "{e}"
    );
    let e = err(&minimal("[ha.lun.2]\ncolour = \"red\"\n"));
    assert!(
        e.starts_with("ha.toml:8: ") && e.contains("unknown field `colour`"),
        "{e}"
    );
}
