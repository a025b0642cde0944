//! `duetctl` against the admin socket served by `admin::serve` with a fake daemon, and the I/O
//! statistics behind `duetctl stat`.

use duet_core::LunNumber;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use duet_target::admin::{
    self, AdminApi, AdminError, HaCounters, HaInfo, HaLunInfo, LunInfo, PortInfo, Request, RoleArg,
    StatInfo, TakeoverCause, TakeoverInfo,
};
use duet_target::ha::pr_fence::{DeviceRole, DeviceStatus, KeyInfo, KeyOwner, ReservationInfo};
use duet_target::stats::{OpKind, Stats};
use serde_json::Value;
use tokio::sync::watch;

/// Upper bound for anything a test waits for; only a deadline, never a measurement.
const DEADLINE: Duration = Duration::from_secs(30);

const TARGET: &str = "iqn.2026-11.dev.duet:target0";

/// A daemon stand-in with fixed answers that remembers the role and switchover requests.
struct Fake {
    calls: Mutex<Vec<(String, Option<LunNumber>)>>,
    stats: Stats,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            calls: Mutex::new(Vec::new()),
            stats: Stats::new(),
        }
    }

    fn calls(&self) -> Vec<(String, Option<LunNumber>)> {
        self.calls.lock().unwrap().clone()
    }
}

impl AdminApi for Fake {
    fn portlist(&self) -> Vec<PortInfo> {
        vec![
            PortInfo {
                port: 1,
                ha_id: 1,
                frontend: "iscsi".into(),
                name: format!("{TARGET},t,0x0001"),
                online: true,
                portal: vec!["127.0.0.1:3260".into(), "[::1]:3260".into()],
                target: TARGET.into(),
                local: true,
            },
            PortInfo {
                port: 2,
                ha_id: 2,
                frontend: "ha".into(),
                name: format!("2:{TARGET},t,0x0002"),
                online: false,
                portal: vec!["127.0.0.2:3260".into()],
                target: TARGET.into(),
                local: false,
            },
        ]
    }

    fn lunlist(&self) -> Vec<LunInfo> {
        vec![LunInfo {
            lun: 1,
            target: TARGET.into(),
            path: "/tmp/duet/lun1.img".into(),
            size_bytes: 256 << 20,
            block_size: 512,
            serial: "DUET0001".into(),
            naa: "naa.6001405abcdef0123456789abcdef012".into(),
            local_alua: "AO".into(),
            peer_alua: "ANO".into(),
            role: "primary".into(),
        }]
    }

    fn ha(&self) -> HaInfo {
        HaInfo {
            ha_id: 1,
            peer_id: 2,
            mode: 1,
            link_state: 2,
            policy: "automatic".into(),
            fencing: "exec".into(),
            luns: vec![HaLunInfo {
                lun: 1,
                role: "primary".into(),
                epoch: 3,
                primary: Some(1),
                local_alua: "AO".into(),
                peer_alua: "ANO".into(),
            }],
            lease_holder: Some(1),
            lease_age_ms: Some(120),
            peer_fenced: false,
            events: vec!["HA link status changed from 1 to 2".into()],
            reservations: vec![DeviceStatus {
                device: "/dev/mapper/shared0".into(),
                role: DeviceRole::Data,
                generation: Some(4),
                keys: vec![
                    KeyInfo {
                        key: "0x5d1e0a2b3c4d0001".into(),
                        owner: KeyOwner::Ours,
                    },
                    KeyInfo {
                        key: "0x5d1e0a2b3c4d0002".into(),
                        owner: KeyOwner::Peer,
                    },
                ],
                reservation: Some(ReservationInfo {
                    key: "0x5d1e0a2b3c4d0001".into(),
                    holder: KeyOwner::Ours,
                    ptype: "exclusive-access-registrants-only".into(),
                }),
                error: None,
            }],
            last_takeover: Some(TakeoverInfo {
                luns: vec![1],
                cause: TakeoverCause::LinkClosed,
                started_unix_ms: 1_764_692_401_123,
                ago_ms: 2_000,
                claim_ms: 1_530,
                fence_ms: Some(12),
                total_ms: 1_531,
            }),
            counters: HaCounters {
                link_downs_closed: 1,
                link_downs_silent: 0,
                takeovers: 1,
            },
        }
    }

    fn set_role(&self, role: RoleArg, lun: Option<LunNumber>) -> Result<String, String> {
        self.calls
            .lock()
            .unwrap()
            .push((format!("role {role}"), lun));
        match role {
            RoleArg::Primary => Ok(match lun {
                Some(n) => format!("ha_role of LUN {n} set to primary"),
                None => "ha_role set to primary".to_string(),
            }),
            RoleArg::Secondary => Err("refused: the peer is unreachable, so no controller \
                                       would be primary"
                .to_string()),
        }
    }

    fn switchover(&self, lun: Option<LunNumber>) -> Result<String, String> {
        self.calls
            .lock()
            .unwrap()
            .push(("switchover".to_string(), lun));
        match lun {
            Some(99) => Err("no LUN 99".to_string()),
            _ => Ok("switchover to controller 2 started".to_string()),
        }
    }

    fn stat(&self) -> StatInfo {
        // Each request sees one more read, so every interval of `stat --interval` has one.
        self.stats
            .record(1, 1, OpKind::Read, 4096, Duration::from_micros(150));
        self.stats.snapshot()
    }
}

/// A fresh, empty directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("duetctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `admin::serve` on a tokio runtime in a background thread; stopped and cleaned up on drop.
struct Daemon {
    dir: PathBuf,
    sock: PathBuf,
    api: Arc<Fake>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Daemon {
    fn start(name: &str) -> Daemon {
        let dir = tmp(name);
        let sock = dir.join("duetd.sock");
        let api = Arc::new(Fake::new());
        let (stop, rx) = watch::channel(false);
        let (path, dyn_api) = (sock.clone(), api.clone() as Arc<dyn AdminApi>);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(admin::serve(path, dyn_api, rx))
        });
        let started = Instant::now();
        while std::fs::symlink_metadata(&sock).is_err() {
            assert!(!thread.is_finished(), "serve stopped: {:?}", thread.join());
            assert!(started.elapsed() < DEADLINE, "the socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon {
            dir,
            sock,
            api,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server and returns what `serve` returned.
    fn shut_down(&mut self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let started = Instant::now();
        while !thread.is_finished() {
            assert!(started.elapsed() < DEADLINE, "serve did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().expect("serve panicked")
    }

    fn ctl(&self, args: &[&str]) -> Run {
        let mut all = vec!["--socket", self.sock.to_str().unwrap()];
        all.extend_from_slice(args);
        duetctl(&all, &[])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.shut_down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a `duetctl` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    fn assert_ok(&self) -> &Run {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// Runs the built `duetctl` with `args` and extra environment, killed after [`DEADLINE`].
fn duetctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duetctl"));
    cmd.args(args)
        .env_remove("DUET_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot run duetctl");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("duetctl {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Sends raw lines on one connection and reads one answer per line.
fn raw_exchange(stream: &UnixStream, line: &str) -> Value {
    (&*stream).write_all(line.as_bytes()).unwrap();
    (&*stream).write_all(b"\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"))
}

#[test]
fn portlist_shows_own_and_peer_ports() {
    let d = Daemon::start("portlist");
    let r = d.ctl(&["portlist"]);
    r.assert_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines[0].starts_with("Port Online Frontend Name"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" pp vp "), "{}", lines[0]);
    let own: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        own,
        [
            "1",
            "YES",
            "iscsi",
            "iqn.2026-11.dev.duet:target0,t,0x0001",
            "1",
            "0",
            "127.0.0.1:3260,[::1]:3260"
        ]
    );
    let peer: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        &peer[..5],
        [
            "2",
            "NO",
            "ha",
            "2:iqn.2026-11.dev.duet:target0,t,0x0002",
            "2"
        ]
    );
    // Columns are aligned: the Name column starts at the same offset on every line.
    let at = lines[0].find("Name").unwrap();
    assert_eq!(lines[1].find("iqn."), Some(at));
    assert_eq!(lines[2].find("2:iqn."), Some(at));

    let j = d.ctl(&["portlist", "--json"]);
    j.assert_ok();
    let v = j.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["frontend"], "iscsi");
    assert_eq!(v[0]["portal"][1], "[::1]:3260");
    assert_eq!(v[1]["name"], "2:iqn.2026-11.dev.duet:target0,t,0x0002");
    assert_eq!(v[1]["local"], false);
    // --json is accepted before the command too.
    let before = duetctl(
        &["--json", "--socket", d.sock.to_str().unwrap(), "portlist"],
        &[],
    );
    assert_eq!(before.assert_ok().json(), v);
}

#[test]
fn lunlist_shows_size_role_and_alua() {
    let d = Daemon::start("lunlist");
    let r = d.ctl(&["lunlist"]);
    r.assert_ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert!(lines[0].starts_with("LUN Size"), "{}", lines[0]);
    for want in [
        "256 MiB",
        "512",
        "primary",
        "AO",
        "ANO",
        "DUET0001",
        TARGET,
        "/tmp/duet/lun1.img",
    ] {
        assert!(lines[1].contains(want), "{want} missing: {}", lines[1]);
    }
    let v = d.ctl(&["lunlist", "--json"]).assert_ok().json();
    assert_eq!(v[0]["lun"], 1);
    assert_eq!(v[0]["size_bytes"], 256u64 << 20);
    assert_eq!(v[0]["naa"], "naa.6001405abcdef0123456789abcdef012");
}

#[test]
fn ha_shows_link_lease_luns_and_events() {
    let d = Daemon::start("ha");
    let r = d.ctl(&["ha"]);
    r.assert_ok();
    for want in [
        "ha_link",
        "2 (established)",
        "1 (Active/Active, shared backend)",
        "automatic",
        "held by 1, renewed 120 ms ago",
        "HA link status changed from 1 to 2",
        "Reservations (scsi-pr):",
        "/dev/mapper/shared0 (data): keys 0x5d1e0a2b3c4d0001 (ours), 0x5d1e0a2b3c4d0002 (peer); \
         reserved exclusive-access-registrants-only by 0x5d1e0a2b3c4d0001 (ours)",
        "Last takeover (LUN 1): started 2025-12-02 16:20:01.123 UTC",
        "waited for: HA link closed by the peer",
        "fence took 12 ms, claim took 1530 ms, total 1531 ms",
        "HA link down 1 time(s) closed by the peer, 0 time(s) silent; 1 takeover(s)",
    ] {
        assert!(r.stdout.contains(want), "{want} missing:\n{}", r.stdout);
    }
    let lun_row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("1 "))
        .expect("no row for LUN 1");
    assert_eq!(
        lun_row.split_whitespace().collect::<Vec<_>>(),
        ["1", "primary", "3", "1", "AO", "ANO"]
    );
    let v = d.ctl(&["ha", "--json"]).assert_ok().json();
    assert_eq!(v["link_state"], 2);
    assert_eq!(v["luns"][0]["epoch"], 3);
    assert_eq!(v["lease_holder"], 1);
    assert_eq!(v["peer_fenced"], false);
    assert_eq!(v["last_takeover"]["cause"], "link_closed");
    assert_eq!(v["last_takeover"]["fence_ms"], 12);
    assert_eq!(v["counters"]["takeovers"], 1);
    let dev = &v["reservations"][0];
    assert_eq!(dev["device"], "/dev/mapper/shared0");
    assert_eq!(dev["keys"][1]["owner"], "peer");
    assert_eq!(dev["reservation"]["holder"], "ours");
    assert_eq!(
        dev["reservation"]["type"],
        "exclusive-access-registrants-only"
    );
}

#[test]
fn role_change_is_passed_on_and_a_refusal_exits_1() {
    let d = Daemon::start("role");
    let ok = d.ctl(&["role", "primary", "--lun", "4"]);
    ok.assert_ok();
    assert_eq!(ok.stdout.trim(), "ha_role of LUN 4 set to primary");
    let v = d.ctl(&["role", "primary", "--json"]).assert_ok().json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["message"], "ha_role set to primary");

    let refused = d.ctl(&["role", "secondary"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    assert!(
        refused.stderr.contains("refused: the peer is unreachable"),
        "{refused:?}"
    );
    let refused_json = d.ctl(&["role", "secondary", "--lun", "1", "--json"]);
    assert_eq!(refused_json.code, 1, "{refused_json:?}");
    let v = refused_json.json();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().starts_with("refused"));

    assert_eq!(
        d.api.calls(),
        [
            ("role primary".to_string(), Some(4)),
            ("role primary".to_string(), None),
            ("role secondary".to_string(), None),
            ("role secondary".to_string(), Some(1)),
        ]
    );
}

#[test]
fn switchover_for_all_or_one_lun() {
    let d = Daemon::start("switchover");
    let r = d.ctl(&["switchover"]);
    assert_eq!(
        r.assert_ok().stdout.trim(),
        "switchover to controller 2 started"
    );
    let v = d
        .ctl(&["switchover", "--lun", "1", "--json"])
        .assert_ok()
        .json();
    assert_eq!(v["message"], "switchover to controller 2 started");
    let bad = d.ctl(&["switchover", "--lun", "99"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("no LUN 99"), "{bad:?}");
    assert_eq!(
        d.api.calls(),
        [
            ("switchover".to_string(), None),
            ("switchover".to_string(), Some(1)),
            ("switchover".to_string(), Some(99)),
        ]
    );
}

#[test]
fn stat_prints_counters_and_interval_rates() {
    let d = Daemon::start("stat");
    let r = d.ctl(&["stat"]);
    r.assert_ok();
    assert!(r.stdout.contains("Scope"), "{}", r.stdout);
    for scope in ["total", "lun 1", "port 1"] {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(scope))
            .unwrap_or_else(|| panic!("no {scope} row:\n{}", r.stdout));
        let cells: Vec<&str> = row[scope.len()..].split_whitespace().collect();
        assert_eq!(&cells[..3], ["1", "0", "0"], "{row}"); // reads, writes, other
        assert_eq!(&cells[3..5], ["4", "KiB"], "{row}"); // bytes read
    }

    let v = d.ctl(&["stat", "--json"]).assert_ok().json();
    assert_eq!(v["total"]["reads"], 2);
    assert_eq!(v["luns"][0]["lun"], 1);
    assert_eq!(v["luns"][0]["bytes_read"], 8192);
    assert_eq!(v["ports"][0]["port"], 1);

    let series = d
        .ctl(&["stat", "--interval", "0.05", "--count", "2", "--json"])
        .assert_ok()
        .json();
    let samples = series["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    for s in samples {
        // One stat request per sample, each recording one 4 KiB read.
        assert_eq!(s["total"]["delta"]["reads"], 1, "{s}");
        assert_eq!(s["luns"][0]["delta"]["bytes_read"], 4096, "{s}");
        assert!(s["seconds"].as_f64().unwrap() > 0.0, "{s}");
        assert!(
            s["total"]["rates"]["reads_per_s"].as_f64().unwrap() > 0.0,
            "{s}"
        );
    }

    let human = d.ctl(&["stat", "--interval", "0.05", "--count", "3"]);
    human.assert_ok();
    assert_eq!(
        human.stdout.matches("Reads/s").count(),
        3,
        "{}",
        human.stdout
    );
}

#[test]
fn the_socket_is_private_and_removed_on_shutdown() {
    let mut d = Daemon::start("mode");
    let meta = std::fs::metadata(&d.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // An idle client does not hold up shutdown.
    let idle = UnixStream::connect(&d.sock).unwrap();
    d.shut_down().unwrap();
    assert!(!d.sock.exists(), "the socket file was left behind");
    drop(idle);
}

#[test]
fn a_missing_socket_exits_2_naming_the_path() {
    let dir = tmp("missing");
    let sock = dir.join("nobody.sock");
    let r = duetctl(&["--socket", sock.to_str().unwrap(), "portlist"], &[]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(
        r.stderr.trim(),
        format!(
            "duetctl: cannot connect to {}: No such file or directory (is duetd running?)",
            sock.display()
        )
    );
    // $DUET_SOCKET is the default socket.
    let r = duetctl(
        &["ha", "--json"],
        &[("DUET_SOCKET", sock.to_str().unwrap())],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(sock.to_str().unwrap()), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duet_socket_selects_the_daemon() {
    let d = Daemon::start("env");
    let r = duetctl(
        &["lunlist", "--json"],
        &[("DUET_SOCKET", d.sock.to_str().unwrap())],
    );
    assert_eq!(r.assert_ok().json()[0]["lun"], 1);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["role", "boss"][..],
        &["stat", "--count", "2"],
        &["stat", "--interval", "0"],
        &["stat", "--interval", "1", "--json"], // unbounded series cannot be one document
        &["frobnicate"],
        &[],
    ] {
        let r = duetctl(
            &[&["--socket", "/nonexistent/duetd.sock"][..], args].concat(),
            &[],
        );
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.is_empty(), "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    let help = duetctl(&["--help"], &[]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("switchover"));
}

#[test]
fn malformed_requests_get_an_error_and_the_server_keeps_serving() {
    let d = Daemon::start("malformed");
    let s = UnixStream::connect(&d.sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    for bad in [
        "this is not json",
        r#"{"cmd":"reboot"}"#,
        r#"{"cmd":"role"}"#,
        r#"{"cmd":"role","role":"boss"}"#,
        r#"{"cmd":"switchover","lun":-1}"#,
        r#"[1,2,3]"#,
    ] {
        let v = raw_exchange(&s, bad);
        assert_eq!(v["ok"], false, "{bad}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}: {v}"
        );
        assert_eq!(v["data"], Value::Null);
    }
    // The same connection still works, blank lines are skipped...
    (&s).write_all(b"\n\n").unwrap();
    let v = raw_exchange(&s, r#"{"cmd":"portlist"}"#);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["data"][0]["port"], 1);
    // ...and so do new clients.
    let r = d.ctl(&["ha", "--json"]);
    assert_eq!(r.assert_ok().json()["ha_id"], 1);
    // A role request naming an unknown role never reached the daemon.
    assert!(d.api.calls().is_empty());
}

#[test]
fn many_clients_at_once() {
    let d = Daemon::start("many");
    let workers: Vec<_> = (0..16)
        .map(|i| {
            let sock = d.sock.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let req = if i % 2 == 0 {
                        Request::Lunlist
                    } else {
                        Request::Stat
                    };
                    let r = admin::request(&sock, &req, DEADLINE).unwrap();
                    assert!(r.ok, "{r:?}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let s: StatInfo = admin::request(&d.sock, &Request::Stat, DEADLINE)
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(s.total.reads, 8 * 20 + 1);
}

#[test]
fn the_client_library_reports_refusals_and_connect_errors() {
    let d = Daemon::start("client");
    let r = admin::request(
        &d.sock,
        &Request::Role {
            role: "secondary".into(),
            lun: None,
        },
        DEADLINE,
    )
    .unwrap();
    assert!(!r.ok);
    match r.into_data::<String>() {
        Err(AdminError::Refused(m)) => assert!(m.starts_with("refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    let missing = d.dir.join("missing.sock");
    match admin::request(&missing, &Request::Ha, DEADLINE) {
        Err(e @ AdminError::Connect { .. }) => {
            assert!(e.to_string().contains("No such file or directory"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

fn serve_once(path: &Path) -> std::io::Result<()> {
    let (stop, rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api: Arc<dyn AdminApi> = Arc::new(Fake::new());
    let _ = stop.send(true); // stop at once if it starts
    rt.block_on(async {
        tokio::time::timeout(DEADLINE, admin::serve(path.to_path_buf(), api, rx))
            .await
            .expect("serve did not stop")
    })
}

#[test]
fn a_stale_socket_is_replaced_but_other_files_are_not_touched() {
    let dir = tmp("stale");
    let sock = dir.join("duetd.sock");
    // A socket file nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    // Other tests in this process spawn children; one forked between the bind and the drop
    // holds a copy of the listener until it execs, and until then the socket still answers.
    let until = Instant::now() + DEADLINE;
    while UnixStream::connect(&sock).is_ok() {
        assert!(Instant::now() < until, "the dropped listener still answers");
        std::thread::sleep(Duration::from_millis(5));
    }
    serve_once(&sock).unwrap();
    assert!(!sock.exists());

    // A regular file is not ours to remove.
    std::fs::write(&sock, b"precious").unwrap();
    let e = serve_once(&sock).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
    std::fs::remove_file(&sock).unwrap();

    // Nor is a socket a live daemon serves.
    let d = Daemon::start("stale-live");
    let e = serve_once(&d.sock).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    assert!(d.ctl(&["portlist"]).code == 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_count_ops_bytes_and_latency_per_lun_and_port() {
    let s = Stats::new();
    for i in 0..98u64 {
        s.record(1, 1, OpKind::Read, 4096, Duration::from_micros(100 + i));
    }
    s.record(1, 2, OpKind::Write, 8192, Duration::from_millis(50));
    s.record(2, 2, OpKind::Other, 0, Duration::from_millis(200));
    let snap = s.snapshot();

    assert_eq!(snap.total.reads, 98);
    assert_eq!(snap.total.writes, 1);
    assert_eq!(snap.total.other, 1);
    assert_eq!(snap.total.ops(), 100);
    assert_eq!(snap.total.bytes_read, 98 * 4096);
    assert_eq!(snap.total.bytes_written, 8192);
    assert_eq!(snap.total.max_latency_us, 200_000);
    assert_eq!(snap.total.latency_histogram.iter().sum::<u64>(), 100);
    let t = &snap.total;
    assert!(t.p50_latency_us >= 100 && t.p50_latency_us < 400, "{t:?}");
    assert!(t.p99_latency_us >= 50_000, "{t:?}");
    assert!(t.p50_latency_us <= t.p99_latency_us && t.p99_latency_us <= t.max_latency_us);
    let sum_us: u64 = (0..98u64).map(|i| 100 + i).sum::<u64>() + 250_000;
    assert_eq!(t.latency_sum_us, sum_us);
    assert_eq!(t.mean_latency_us, sum_us / 100);

    assert_eq!(snap.luns.iter().map(|l| l.lun).collect::<Vec<_>>(), [1, 2]);
    let lun1 = &snap.luns[0].io;
    assert_eq!((lun1.reads, lun1.writes, lun1.other), (98, 1, 0));
    assert_eq!(lun1.bytes_written, 8192);
    assert_eq!(lun1.max_latency_us, 50_000);
    let lun2 = &snap.luns[1].io;
    assert_eq!((lun2.ops(), lun2.bytes_read, lun2.bytes_written), (1, 0, 0));

    assert_eq!(
        snap.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(snap.ports[0].io.reads, 98);
    assert_eq!(snap.ports[0].io.max_latency_us, 197);
    assert_eq!(snap.ports[1].io.ops(), 2);
    assert_eq!(snap.ports[1].io.p99_latency_us, 200_000);
}

#[test]
fn stats_between_snapshots() {
    let s = Stats::new();
    s.record(1, 1, OpKind::Write, 512, Duration::from_millis(10));
    let before = s.snapshot();
    s.record(1, 1, OpKind::Read, 1024, Duration::from_micros(20));
    s.record(3, 1, OpKind::Read, 1024, Duration::from_micros(30));
    let after = s.snapshot();
    let d = after.since(&before);
    assert_eq!((d.total.reads, d.total.writes), (2, 0));
    assert_eq!(d.total.bytes_read, 2048);
    assert_eq!(d.total.latency_sum_us, 50);
    // The 10 ms write happened before the interval: the interval's max is far below it.
    assert!(d.total.max_latency_us < 64, "{:?}", d.total);
    assert!(d.total.p99_latency_us <= d.total.max_latency_us);
    assert_eq!(
        d.luns
            .iter()
            .map(|l| (l.lun, l.io.reads))
            .collect::<Vec<_>>(),
        [(1, 1), (3, 1)]
    );
    let r = d.total.rates(2.0);
    assert_eq!(r.reads_per_s, 1.0);
    assert_eq!(r.read_bytes_per_s, 1024.0);
    assert_eq!(d.total.rates(0.0).ops_per_s, 0.0);
    // A snapshot survives a JSON round trip (what duetctl receives).
    let back: StatInfo = serde_json::from_value(serde_json::to_value(&after).unwrap()).unwrap();
    assert_eq!(back, after);
}

#[test]
fn stats_from_many_threads_add_up() {
    let s = Arc::new(Stats::new());
    let threads: Vec<_> = (0..8u16)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..1000u32 {
                    s.record(
                        (i % 4) as LunNumber,
                        t,
                        OpKind::Write,
                        512,
                        Duration::from_micros(u64::from(i)),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snap = s.snapshot();
    assert_eq!(snap.total.writes, 8000);
    assert_eq!(snap.total.bytes_written, 8000 * 512);
    assert_eq!(snap.luns.len(), 4);
    assert!(snap.luns.iter().all(|l| l.io.writes == 2000));
    assert_eq!(snap.ports.len(), 8);
    assert!(snap.ports.iter().all(|p| p.io.writes == 1000));
    assert_eq!(snap.total.max_latency_us, 999);
}

#[test]
fn an_oversized_request_is_refused_and_only_its_connection_closed() {
    let d = Daemon::start("oversized");
    let s = UnixStream::connect(&d.sock).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    (&s).write_all(&vec![b'a'; admin::MAX_LINE + 1]).unwrap();
    let mut reader = BufReader::new(&s);
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    answer.clear();
    assert_eq!(reader.read_line(&mut answer).unwrap(), 0, "not closed");
    assert_eq!(d.ctl(&["ha", "--json"]).assert_ok().json()["peer_id"], 2);
}

#[test]
fn shutdown_of_a_daemon_that_does_not_offer_it_is_refused() {
    let d = Daemon::start("shutdown-refused");
    let r = d.ctl(&["shutdown", "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("cannot be stopped"),
        "{v}"
    );
    // The server keeps serving.
    assert_eq!(d.ctl(&["ha", "--json"]).assert_ok().json()["ha_id"], 1);
}

/// `duetctl shutdown` against the real duetd (a single controller with an admin socket): the
/// answer says there was nothing to hand over, and duetctl returns once duetd has exited, with
/// status 0.
#[test]
fn shutdown_stops_a_real_daemon_and_returns_after_its_exit() {
    let dir = tmp("shutdown-real");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("duetd.toml");
    let sock = dir.join("duetd.sock");
    std::fs::write(
        &cfg,
        format!(
            "[portal_group.p]\nlisten = [\"127.0.0.1:{port}\"]\n\
             [[target]]\nname = \"{TARGET}\"\nauth_group = \"none\"\n\
             [[target.lun]]\nnumber = 1\npath = \"{}\"\nsize = \"1MiB\"\ncreate = true\n",
            dir.join("lun1.img").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_duetd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--admin-socket")
        .arg(&sock)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start duetd");
    let started = Instant::now();
    while UnixStream::connect(&sock).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("duetd exited at start: {st}");
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("duetd's admin socket never appeared");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = duetctl(
        &["--socket", sock.to_str().unwrap(), "shutdown", "--json"],
        &[],
    );
    // duetctl returned: the daemon has closed everything at its exit (it may take the kernel a
    // moment more to report the exit status).
    let until = Instant::now() + Duration::from_secs(2);
    let status = loop {
        match child.try_wait().unwrap() {
            Some(st) => break Some(st),
            None if Instant::now() > until => break None,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let v = r.assert_ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["outcome"], "standalone", "{v}");
    assert_eq!(v["exited"], true, "{v}");
    assert_eq!(v["pid"], child.id(), "{v}");
    let status = status.expect("duetd still runs after duetctl shutdown returned");
    assert_eq!(status.code(), Some(0), "duetd's exit status");
    let _ = std::fs::remove_dir_all(&dir);
}
