//! A backing device that refuses this controller's I/O with a reservation conflict: the host gets
//! ALUA transitioning and the LU tells its listener (the HA runtime, which makes the node step
//! down). The refusal is the kernel's own: a seccomp filter on one thread makes every read, write
//! and flush of the LUN's descriptor fail with `EBADE`, the errno a SCSI disk's RESERVATION
//! CONFLICT becomes, so the path runs through the real backend, `run_io`, the effects and the LU;
//! with an HA runtime listening, through the node: it steps down, rejoins through the quorum
//! area, gets its access back and claims again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use duet_core::scsi::{IoOp, IoPlan};
use duet_core::sense::{status, SenseCode};
use std::time::{Duration, Instant};

use duet_core::alua::AluaState;
use duet_target::config::Config;
use duet_target::daemon;
use duet_target::exec::medium::run_plan_now;
use duet_target::lu::Lu;
use duet_target::server;

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("duet-disk-fence-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The descriptor this process holds on `path`.
fn fd_of(path: &Path) -> i32 {
    let want = std::fs::canonicalize(path).unwrap();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() == Some(want.as_path()) {
            if let Ok(fd) = e.file_name().to_string_lossy().parse() {
                return fd;
            }
        }
    }
    panic!("no descriptor on {}", want.display());
}

/// Makes every read, write, flush and allocation call on `fd` fail with `EBADE`, on the calling
/// thread only (and threads it starts later): what a SCSI disk that preempted this initiator's
/// reservation key does.
fn refuse_io_on(fd: i32) -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const NR: u32 = 0;
    const ARG0: u32 = 16;
    let calls = [
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_fdatasync,
        libc::SYS_fsync,
        libc::SYS_fallocate,
    ];
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let n = calls.len();
    let mut prog = vec![op(LD_W_ABS, 0, 0, NR)];
    for (i, c) in calls.iter().enumerate() {
        // To the descriptor check after the last comparison and the "allow".
        prog.push(op(JEQ_K, (n - i) as u8, 0, *c as u32));
    }
    prog.push(op(RET_K, 0, 0, RET_ALLOW));
    prog.push(op(LD_W_ABS, 0, 0, ARG0));
    prog.push(op(JEQ_K, 0, 1, fd as u32));
    prog.push(op(RET_K, 0, 0, RET_ERRNO | libc::EBADE as u32));
    prog.push(op(RET_K, 0, 0, RET_ALLOW));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with plain integer arguments, then with a pointer to a filter program that
    // lives across the call (the kernel copies it).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn plans() -> Vec<IoPlan> {
    let plan = |op| IoPlan {
        op,
        wanted_len: 4096,
        descriptor_sense: false,
    };
    vec![
        plan(IoOp::Write {
            offset: 0,
            len: 4096,
            data_at: 0,
            fua: false,
        }),
        plan(IoOp::Read {
            offset: 0,
            len: 4096,
        }),
        plan(IoOp::Flush),
    ]
}

/// A configuration with one LUN in `d` (and `extra` appended: an `[ha]` section).
fn config(d: &TempDir, extra: &str) -> (Config, PathBuf) {
    let image = d.0.join("lun0.img");
    let cfg_path = d.0.join("duet.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "io_threads = 1\n\n[portal_group.pg0]\nlisten = [\"127.0.0.1:3260\"]\n\
             discovery_auth_group = \"none\"\n\n[[target]]\nname = \"iqn.2026-11.dev.duet:fence\"\n\
             portal_group = \"pg0\"\nauth_group = \"none\"\n\n[[target.lun]]\nnumber = 0\n\
             path = \"{}\"\nsize = \"1MiB\"\ncreate = true\n{extra}",
            image.display()
        ),
    )
    .unwrap();
    (Config::load(&cfg_path).expect("configuration"), image)
}

/// Runs `plan` on a thread whose I/O on `fd` the device refuses; `None` when this system does not
/// let a thread install a seccomp filter.
fn run_refused(
    lu: &Arc<Lu>,
    fd: i32,
    plans: Vec<IoPlan>,
) -> Option<Vec<(IoPlan, duet_core::iscsi::Completion)>> {
    let lu = lu.clone();
    let data = vec![0x5a_u8; 4096];
    let r = std::thread::spawn(move || {
        refuse_io_on(fd).map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
        Ok::<_, String>(
            plans
                .into_iter()
                .map(|plan| (plan.clone(), run_plan_now(&lu, &plan, &data)))
                .collect::<Vec<_>>(),
        )
    })
    .join()
    .expect("the refusing thread");
    match r {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn assert_transitioning(refused: &[(IoPlan, duet_core::iscsi::Completion)]) {
    for (plan, c) in refused {
        assert_eq!(c.status, status::CHECK_CONDITION, "{plan:?}");
        let sense = c.sense.as_ref().expect("sense data");
        assert_eq!(
            SenseCode::from_sense_data(sense),
            Some(SenseCode::ALUA_TRANSITIONING),
            "{plan:?}"
        );
    }
}

/// Waits (at most 30 s) until `f` holds.
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_reservation_conflict_answers_transitioning_and_tells_the_lus_listener() {
    let d = TempDir::new("conflict");
    let (cfg, image) = config(&d, "");
    let limits = server::limits_for(&cfg);
    let shared = server::build(cfg, limits).expect("targets built");
    let target = shared.targets.values().next().expect("a target").clone();
    let lu = target.luns.values().next().expect("a LUN").clone();
    let reports = Arc::new(AtomicUsize::new(0));
    let r = reports.clone();
    assert!(lu.on_backend_fenced(Box::new(move |lun| {
        assert_eq!(lun, 0);
        r.fetch_add(1, Ordering::SeqCst);
    })));
    let data = vec![0x5a_u8; 4096];

    // Served while the device accepts the I/O.
    for plan in plans() {
        let c = run_plan_now(&lu, &plan, &data);
        assert_eq!(c.status, status::GOOD, "{plan:?}");
    }
    assert_eq!(reports.load(Ordering::SeqCst), 0);

    // Refused by the device: transitioning for the host (it retries on the other path), and a
    // report per refused command.
    let Some(refused) = run_refused(&lu, fd_of(&image), plans()) else {
        return;
    };
    assert_transitioning(&refused);
    assert_eq!(reports.load(Ordering::SeqCst), refused.len());

    // The filter was that thread's only: this one still reaches the device.
    let c = run_plan_now(&lu, &plans()[1], &[]);
    assert_eq!(c.status, status::GOOD);
    assert_eq!(&c.data_in[..], &[0x5a_u8; 4096][..]);
}

#[test]
fn a_primary_fenced_at_the_disk_steps_down_then_rejoins_and_claims_again() {
    let d = TempDir::new("ha");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ha = format!(
        "\n[ha]\nid = 1\nmode = 1\npeer = \"listen 127.0.0.1:{port}\"\nquorum = \"{q}\"\n\
         quorum_create = true\nfencing = \"none\"\nsecret = \"disk-fence-test-secret\"\n\
         admin_socket = \"{s}\"\nlease_ms = 4000\nrenew_ms = 1000\ndrift_ms = 100\n\
         margin_ms = 500\n",
        q = d.0.join("quorum.img").display(),
        s = d.0.join("admin.sock").display(),
    );
    let (cfg, image) = config(&d, &ha);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let limits = server::limits_for(&cfg);
    let shared = Arc::new(server::build(cfg, limits).expect("targets built"));
    let target = shared.targets.values().next().expect("a target").clone();
    let lu = target.luns.values().next().expect("a LUN").clone();
    let ha = rt
        .block_on(async { daemon::start_ha(&shared, stop_rx) })
        .expect("HA started")
        .expect("an [ha] section");
    let epoch = || {
        ha.status()
            .0
            .and_then(|s| s.luns.first().map(|l| l.epoch))
            .unwrap_or(0)
    };
    let local = || lu.alua().state_of(target.rtpi);

    // Alone, with a fresh quorum area: primary after its claim.
    wait_for("primary", || ha.serving(0));
    let first = epoch();
    assert_eq!(local(), AluaState::ActiveOptimized);

    // The device refuses a write: the host gets transitioning, the controller steps down at once
    // (its own group Transitioning, never active while fenced).
    let Some(refused) = run_refused(&lu, fd_of(&image), plans()[..1].to_vec()) else {
        let _ = stop.send(true);
        return;
    };
    assert_transitioning(&refused);
    wait_for("stepped down", || !ha.serving(0));
    assert_eq!(local(), AluaState::Transitioning);

    // It rejoins through the quorum area, gets its access back and, alone, claims again at a
    // newer epoch.
    wait_for("primary again", || ha.serving(0) && epoch() > first);
    assert_eq!(local(), AluaState::ActiveOptimized);
    let c = run_plan_now(&lu, &plans()[0], &[0x5a_u8; 4096]);
    assert_eq!(c.status, status::GOOD);
    let events = ha.events();
    let at = |needle: &str| {
        events
            .iter()
            .position(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no event `{needle}` in {events:#?}"))
    };
    let fenced = at("fenced at the disk");
    let lost = at("no longer primary");
    let rejoined = at("rejoined as secondary after the fence");
    let healthy = at("backend healthy");
    assert!(
        fenced < rejoined && lost < rejoined && rejoined < healthy,
        "{events:#?}"
    );
    let _ = stop.send(true);
    drop(rt);
}
