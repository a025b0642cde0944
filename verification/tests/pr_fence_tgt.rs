//! The `scsi-pr` fencing agent (`duet_target::ha::pr_fence`) against a real SCSI target's
//! persistent reservations: tgt (`tgtd`), with two file-backed LUNs, driven through the project's
//! own iSCSI initiator (duet-hosts) on loopback.
//!
//! Two "controllers" (two initiator names, two keys, two paths each) join the pair at the disks (register, take
//! the reservations: EXCLUSIVE ACCESS – REGISTRANTS ONLY on the data LUN, WRITE EXCLUSIVE –
//! REGISTRANTS ONLY on the quorum LUN); an unregistered third host is refused; controller A fences
//! B (PREEMPT AND ABORT); B's reads and writes of the data LUN and its writes of the quorum LUN are
//! then refused by the target itself while A's work and B can still read the quorum area; READ
//! KEYS shows only A's key; B joins again after it rejoined.
//!
//! tgt does not implement PREEMPT AND ABORT (it answers INVALID FIELD IN CDB), so against it the
//! agent takes its documented fallback, PREEMPT; the scripted-transport tests in
//! `target/src/ha/pr_fence/tests.rs` cover PREEMPT AND ABORT itself.
//!
//! tgt must be installed (`apt-get install tgt`; CI installs it). tgtd runs with a control port
//! of its own, and is stopped by PID with its sockets removed when the test ends.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duet_core::scsi::host::{read10_cdb, write10_cdb};
use duet_core::scsi::host_pr::{pr_type, type_name, ReadKeys};
use duet_core::sense::status;
use duet_hosts::session::{LoginOptions, Session};
use duet_target::ha::pr_fence::transport::BoxFuture;
use duet_target::ha::pr_fence::{
    DeviceRole, KeyOwner, PrAgent, PrDevice, ScsiReply, ScsiRequest, ScsiTransport, TransportError,
};

const TARGET_IQN: &str = "iqn.2026-12.dev.duet.test:pr-fence";
const DATA_LUN: u16 = 1;
const QUORUM_LUN: u16 = 2;
const BLOCK: u32 = 512;
const KEY_A: u64 = 0x00d0_e7a1_0000_0001;
const KEY_B: u64 = 0x00d0_e7a1_0000_0002;
/// Every agent operation's bound.
const OP: Duration = Duration::from_secs(10);
/// The whole test's bound.
const WHOLE: Duration = Duration::from_secs(120);

/// One tgtd with its own control port and directory; stopped by PID when dropped.
struct Tgt {
    child: Child,
    ctrl: u16,
    portal: SocketAddr,
    dir: PathBuf,
}

impl Tgt {
    fn start() -> Tgt {
        for p in ["tgtd", "tgtadm"] {
            assert!(
                support::have_program(p),
                "{p} is not installed: this test needs tgt's SCSI target (apt-get install tgt)"
            );
        }
        let dir = support::fresh_dir("pr-tgt");
        // A control port no other tgtd uses (tgtd's sockets are /var/run/tgtd/socket.N).
        let ctrl = (0..200)
            .map(|i| {
                3000 + ((std::process::id() as u16)
                    .wrapping_mul(7)
                    .wrapping_add(i * 13))
                    % 6000
            })
            .find(|c| !PathBuf::from(format!("/var/run/tgtd/socket.{c}")).exists())
            .expect("a free tgtd control port");
        let port = support::free_port(Ipv4Addr::LOCALHOST);
        let portal = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.join("tgtd.log")).expect("tgtd log");
        let child = Command::new("tgtd")
            .args(["-f", "-C", &ctrl.to_string(), "--iscsi"])
            .arg(format!("portal={portal}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tgtd");
        let t = Tgt {
            child,
            ctrl,
            portal,
            dir,
        };
        let up = support::wait_until(
            || t.adm_ok(&["--op", "show", "--mode", "sys"]),
            Duration::from_secs(10),
        );
        assert!(up, "tgtd did not come up: {}", t.log());
        for name in ["data.img", "quorum.img"] {
            let f = std::fs::File::create(t.dir.join(name)).expect("backing file");
            f.set_len(16 << 20).expect("size the backing file");
        }
        let tid = ["--tid", "1"];
        t.adm(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", TARGET_IQN,
        ]);
        for (lun, name) in [(DATA_LUN, "data.img"), (QUORUM_LUN, "quorum.img")] {
            let path = t.dir.join(name).display().to_string();
            let lun = lun.to_string();
            t.adm(&[
                "--lld",
                "iscsi",
                "--op",
                "new",
                "--mode",
                "logicalunit",
                tid[0],
                tid[1],
                "--lun",
                &lun,
                "-b",
                &path,
            ]);
        }
        t.adm(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ]);
        let child_pid = t.child.id();
        let listening = support::wait_until(
            || std::net::TcpStream::connect_timeout(&t.portal, Duration::from_millis(200)).is_ok(),
            Duration::from_secs(10),
        );
        assert!(
            listening,
            "tgtd (pid {child_pid}) does not listen on {}: {}",
            t.portal,
            t.log()
        );
        t
    }

    fn adm_ok(&self, args: &[&str]) -> bool {
        let ctrl = self.ctrl.to_string();
        let mut all = vec!["-C", ctrl.as_str()];
        all.extend_from_slice(args);
        support::try_run_bounded(&self.dir, "tgtadm", &all, &[], Duration::from_secs(10))
            .is_ok_and(|r| r.ok())
    }

    fn adm(&self, args: &[&str]) {
        let ctrl = self.ctrl.to_string();
        let mut all = vec!["-C", ctrl.as_str()];
        all.extend_from_slice(args);
        let r = support::run_bounded(&self.dir, "tgtadm", &all, &[], Duration::from_secs(10));
        assert!(
            r.ok(),
            "tgtadm {args:?} failed: {}\n{}",
            r.all(),
            self.log()
        );
    }

    fn log(&self) -> String {
        support::tail(&support::read_lossy(&self.dir.join("tgtd.log")), 30)
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM while it has targets: take them down, then the daemon; then make
        // sure by PID.
        let _ = self.adm_ok(&[
            "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
        ]);
        let _ = self.adm_ok(&["--op", "delete", "--mode", "system"]);
        if support::wait_bounded(&mut self.child, Duration::from_secs(5)).is_none() {
            eprintln!("tgtd (pid {}) had to be killed", self.child.id());
        }
        for s in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{s}", self.ctrl));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent's transport over an iSCSI session: one LUN of one session.
struct IscsiTransport {
    session: Arc<Session>,
    lun: u16,
}

impl ScsiTransport for IscsiTransport {
    fn execute(&self, req: ScsiRequest) -> BoxFuture<'_, Result<ScsiReply, TransportError>> {
        Box::pin(async move {
            let run = self.session.exec(
                self.lun,
                &req.cdb,
                Bytes::from(req.data_out),
                req.data_in_len,
            );
            match tokio::time::timeout(req.timeout, run).await {
                Err(_) => Err(TransportError::Timeout(req.timeout)),
                Ok(Err(e)) => Err(TransportError::Failed(e.to_string())),
                Ok(Ok(r)) => Ok(ScsiReply {
                    status: r.status,
                    sense: r.sense,
                    data: r.data.to_vec(),
                }),
            }
        })
    }
}

/// A host on the target: its session, and (for a controller) its agent over both LUNs.
struct Host {
    session: Arc<Session>,
    /// The host's second path.
    second: Arc<Session>,
    agent: PrAgent,
}

/// Logs `name` in with ISID tail `isid_tail` (one I_T nexus).
async fn login(portal: SocketAddr, name: &str, isid_tail: u8) -> Arc<Session> {
    let opts = LoginOptions {
        isid: [0x80, 0xd7, 0xe7, 0x00, 0x00, isid_tail],
        ..LoginOptions::default()
    };
    let iqn = format!("iqn.2026-12.dev.duet.test:{name}");
    Arc::new(
        Session::login(portal, &iqn, TARGET_IQN, &opts)
            .await
            .unwrap_or_else(|e| panic!("{name}: login to tgtd: {e}")),
    )
}

/// A host with two paths to the target (two sessions, two ISIDs: two I_T nexuses, as a host
/// with two HBAs has), whose agent registers through both.
async fn host(portal: SocketAddr, name: &str, isid_tail: u8, key: u64, peer_key: u64) -> Host {
    let session = login(portal, name, isid_tail).await;
    let second = login(portal, name, isid_tail + 0x10).await;
    let on = |s: &Arc<Session>, lun| -> Arc<dyn ScsiTransport> {
        Arc::new(IscsiTransport {
            session: s.clone(),
            lun,
        })
    };
    let device = |lun, role, what: &str| PrDevice {
        name: format!("tgt {what} LUN {lun} as {name}"),
        role,
        transport: on(&session, lun),
        paths: vec![on(&second, lun)],
    };
    let agent = PrAgent {
        key,
        peer_key,
        devices: vec![
            device(QUORUM_LUN, DeviceRole::Quorum, "quorum"),
            device(DATA_LUN, DeviceRole::Data, "data"),
        ],
    };
    Host {
        session,
        second,
        agent,
    }
}

impl Host {
    /// The status of READ (10) or WRITE (10) of one block at LBA 8 down the host's first path.
    async fn io(&self, lun: u16, write: bool) -> u8 {
        io_on(&self.session, lun, write).await
    }

    /// [`Host::io`] down the host's second path.
    async fn io2(&self, lun: u16, write: bool) -> u8 {
        io_on(&self.second, lun, write).await
    }

    async fn keys(&self, role: DeviceRole) -> ReadKeys {
        let dev = self.device(role);
        let deadline = tokio::time::Instant::now() + OP;
        self.agent
            .read_keys(dev, deadline)
            .await
            .expect("READ KEYS")
    }

    fn device(&self, role: DeviceRole) -> &PrDevice {
        self.agent
            .devices
            .iter()
            .find(|d| d.role == role)
            .expect("a device of this role")
    }
}

/// The status of READ (10) or WRITE (10) of one block at LBA 8 through `session`, after at most a
/// few unit attentions (which a real host's SCSI layer would absorb too).
async fn io_on(session: &Session, lun: u16, write: bool) -> u8 {
    for _ in 0..4 {
        let r = if write {
            let data = Bytes::from(vec![0xa5u8; BLOCK as usize]);
            session.exec(lun, &write10_cdb(8, 1), data, 0).await
        } else {
            session
                .exec(lun, &read10_cdb(8, 1), Bytes::new(), BLOCK)
                .await
        }
        .expect("the command is answered");
        if !r.sense.is_some_and(|s| s.is_unit_attention()) {
            return r.status;
        }
    }
    panic!("still unit attention after 4 tries");
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

#[test]
fn scsi_pr_agent_fences_a_peer_at_tgts_disks() {
    let tgt = Tgt::start();
    let portal = tgt.portal;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::time::timeout(WHOLE, scenario(portal))
            .await
            .expect("the scenario finishes in time")
    });
    drop(rt);
    drop(tgt);
}

async fn scenario(portal: SocketAddr) {
    let a = host(portal, "ctrl-a", 1, KEY_A, KEY_B).await;
    let b = host(portal, "ctrl-b", 2, KEY_B, KEY_A).await;
    let c = host(portal, "host-c", 3, 0x0c, 0x0d).await;

    // Both controllers join the pair at the disks; joining twice changes nothing.
    a.agent.join(OP).await.expect("A joins");
    b.agent.join(OP).await.expect("B joins");
    a.agent.join(OP).await.expect("A joins again");
    for role in [DeviceRole::Quorum, DeviceRole::Data] {
        assert_eq!(
            sorted(a.keys(role).await.keys),
            vec![KEY_A, KEY_A, KEY_B, KEY_B],
            "{role:?}"
        );
    }
    let st = a.agent.status(OP).await;
    assert_eq!(st.len(), 2);
    for (s, want) in st
        .iter()
        .zip([pr_type::WRITE_EXCLUSIVE_RO, pr_type::EXCLUSIVE_ACCESS_RO])
    {
        let r = s
            .reservation
            .as_ref()
            .unwrap_or_else(|| panic!("{s}: not reserved"));
        assert_eq!(r.ptype, type_name(want), "{s}");
        assert_eq!(r.holder, KeyOwner::Ours, "{s}");
        assert!(s.keys.iter().any(|k| k.owner == KeyOwner::Peer), "{s}");
    }
    println!("before the fence:");
    for s in &st {
        println!("  {s}");
    }

    // Registrants read and write, down either of their paths; an unregistered host can do
    // neither on the data LUN.
    for h in [&a, &b] {
        assert_eq!(h.io(DATA_LUN, false).await, status::GOOD);
        assert_eq!(h.io(DATA_LUN, true).await, status::GOOD);
        assert_eq!(h.io2(DATA_LUN, false).await, status::GOOD);
        assert_eq!(h.io2(DATA_LUN, true).await, status::GOOD);
    }
    assert_eq!(c.io(DATA_LUN, false).await, status::RESERVATION_CONFLICT);
    assert_eq!(c.io(DATA_LUN, true).await, status::RESERVATION_CONFLICT);
    // On the quorum LUN (write exclusive, registrants only) it may read but not write.
    assert_eq!(c.io(QUORUM_LUN, false).await, status::GOOD);
    assert_eq!(c.io(QUORUM_LUN, true).await, status::RESERVATION_CONFLICT);

    // A fences B.
    a.agent.fence_peer(OP).await.expect("A fences B");
    for role in [DeviceRole::Quorum, DeviceRole::Data] {
        assert_eq!(
            a.keys(role).await.keys,
            vec![KEY_A, KEY_A],
            "{role:?}: only A's key is left (one per path)"
        );
    }
    println!("after the fence:");
    for s in a.agent.status(OP).await {
        println!("  {s}");
    }
    // The disk refuses B's reads and writes of the data LUN, and B's writes of the quorum LUN;
    // B can still read the quorum area (and learn it was superseded). A works on.
    assert_eq!(b.io(DATA_LUN, false).await, status::RESERVATION_CONFLICT);
    assert_eq!(b.io(DATA_LUN, true).await, status::RESERVATION_CONFLICT);
    assert_eq!(b.io2(DATA_LUN, false).await, status::RESERVATION_CONFLICT);
    assert_eq!(b.io2(DATA_LUN, true).await, status::RESERVATION_CONFLICT);
    assert_eq!(b.io(QUORUM_LUN, true).await, status::RESERVATION_CONFLICT);
    assert_eq!(b.io(QUORUM_LUN, false).await, status::GOOD);
    assert_eq!(a.io(DATA_LUN, false).await, status::GOOD);
    assert_eq!(a.io(DATA_LUN, true).await, status::GOOD);
    assert_eq!(a.io(QUORUM_LUN, true).await, status::GOOD);

    // B cannot fence A back: it is no longer registered.
    let e = b
        .agent
        .fence_peer(OP)
        .await
        .expect_err("a fenced controller cannot fence");
    assert!(e.to_string().contains("RESERVATION CONFLICT"), "{e}");
    // Fencing an already fenced peer is confirmed by the disk at once.
    a.agent.fence_peer(OP).await.expect("B is already fenced");

    // B rejoins (after it read the quorum area, in the daemon): registered again, it works.
    b.agent.join(OP).await.expect("B rejoins");
    assert_eq!(
        sorted(a.keys(DeviceRole::Data).await.keys),
        vec![KEY_A, KEY_A, KEY_B, KEY_B]
    );
    assert_eq!(b.io(DATA_LUN, false).await, status::GOOD);
    assert_eq!(b.io2(DATA_LUN, true).await, status::GOOD);

    for h in [a, b, c] {
        let _ = h.session.logout().await;
        let _ = h.second.logout().await;
    }
}

// ------------------------------------------------------------------------------------------
// duetd with fencing = "scsi-pr"
// ------------------------------------------------------------------------------------------

/// A pair member's configuration: one LUN backed by `lun`, the quorum area at `quorum`,
/// `fencing = "scsi-pr"`.
fn scsi_pr_config(dir: &std::path::Path, lun: &str, quorum: &str) -> PathBuf {
    let port = support::free_port(Ipv4Addr::LOCALHOST);
    let link = support::free_port(Ipv4Addr::LOCALHOST);
    let text = format!(
        "[portal_group.pg0]\nlisten = [\"127.0.0.1:{port}\"]\ndiscovery_auth_group = \"none\"\n\n\
         [[target]]\nname = \"iqn.2026-12.dev.duet.test:pr\"\nportal_group = \"pg0\"\n\
         auth_group = \"none\"\n\n[[target.lun]]\nnumber = 1\npath = \"{lun}\"\n\n\
         [ha]\nid = 1\npeer = \"listen 127.0.0.1:{link}\"\nquorum = \"{quorum}\"\n\
         fencing = \"scsi-pr\"\nsecret = \"0123456789abcdef\"\nadmin_socket = \"{}\"\n",
        dir.join("admin.sock").display()
    );
    let path = dir.join("duetd.toml");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

#[test]
fn check_config_refuses_scsi_pr_on_a_file_backed_lun_naming_the_file() {
    let dir = support::fresh_dir("pr-file");
    let lun = dir.join("lun.img");
    std::fs::write(&lun, vec![0u8; 1 << 20]).expect("LUN file");
    let cfg = scsi_pr_config(&dir, &lun.display().to_string(), "/dev/duet-test-quorum");
    let cfg_s = cfg.display().to_string();
    let r = support::run_bounded(
        &dir,
        support::duetd(),
        &["check-config", &cfg_s],
        &[],
        Duration::from_secs(20),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !r.ok(),
        "check-config accepted a file-backed LUN:\n{}",
        r.all()
    );
    let msg = r.all();
    assert!(msg.contains(&lun.display().to_string()), "{msg}");
    assert!(msg.contains("cannot be fenced at the disk"), "{msg}");
}

/// A loop device over a file in the test's directory, detached when dropped.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(dir: &std::path::Path, name: &str) -> Loop {
        let img = dir.join(name);
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(8 << 20))
            .expect("loop backing file");
        let img_s = img.display().to_string();
        let r = support::run_bounded(
            dir,
            "losetup",
            &["-f", "--show", &img_s],
            &[],
            Duration::from_secs(10),
        );
        assert!(r.ok(), "losetup: {}", r.all());
        Loop {
            dev: r.stdout.trim().to_string(),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

#[test]
fn duetd_refuses_to_serve_when_it_cannot_register_at_the_disks() {
    // Loop devices are block devices without SCSI: SG_IO is refused, so the controller cannot
    // join the pair at the disks and must not serve.
    assert!(
        support::have_program("losetup"),
        "losetup is not installed (apt-get install mount)"
    );
    let dir = support::fresh_dir("pr-loop");
    let lun = Loop::new(&dir, "lun.img");
    let quorum = Loop::new(&dir, "quorum.img");
    let cfg = scsi_pr_config(&dir, &lun.dev, &quorum.dev);
    let cfg_s = cfg.display().to_string();
    let check = support::run_bounded(
        &dir,
        support::duetd(),
        &["check-config", &cfg_s],
        &[],
        Duration::from_secs(20),
    );
    let run = support::run_bounded(
        &dir,
        support::duetd(),
        &["--config", &cfg_s],
        &[],
        Duration::from_secs(30),
    );
    drop((lun, quorum));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        check.ok(),
        "block devices pass check-config:\n{}",
        check.all()
    );
    assert!(
        run.status.is_some(),
        "duetd did not exit on its own:\n{}",
        run.all()
    );
    assert!(
        !run.ok(),
        "duetd started without its reservations:\n{}",
        run.all()
    );
    let msg = run.all();
    assert!(
        msg.contains("scsi-pr: cannot join the pair at the disks")
            && msg.contains("REGISTER AND IGNORE EXISTING KEY")
            && msg.contains("SG_IO failed"),
        "{msg}"
    );
}
