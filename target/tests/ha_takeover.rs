//! A takeover as an administrator sees it: two real `duetd` controllers of a lab pair on
//! loopback (the configuration `duetd lab` writes), kill -9 of the primary, then `duetctl ha
//! --json` on the survivor reports its last takeover: what it waited for (the link the dead
//! peer's kernel closed), how long the fence and the claim took, and the counters.
//!
//! Only values and their presence are asserted, never how long anything took.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duet_target::lab::{prepare, LabNode, LabOptions};
use serde_json::Value;

/// Bound on the lab coming up and on the takeover (the design values are a few seconds).
const WITHIN: Duration = Duration::from_secs(60);

/// A controller, killed and reaped when dropped.
struct Ctrl(Child);

impl Drop for Ctrl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory under the build's temporary directory (on a disk: the pair opens its LUN with
/// O_DIRECT), removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on both 127.0.0.1 and 127.0.0.2.
fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
}

fn start(node: &LabNode) -> Ctrl {
    let log = File::create(&node.log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_duetd"))
        .arg("--config")
        .arg(&node.config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start duetd");
    Ctrl(child)
}

/// `duetctl --json ha` of a controller (`Null` when it does not answer).
fn ha(socket: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_duetctl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "ha"])
        .stdin(Stdio::null())
        .output()
        .expect("run duetctl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Polls `ha` of `socket` until `ok` holds for it; the last answer.
fn wait_for(socket: &Path, what: &str, logs: &[&Path], ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let v = ha(socket);
        if ok(&v) {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect();
            panic!("{what}: last answer {v}\nlogs:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn role(v: &Value) -> &str {
    v["luns"][0]["role"].as_str().unwrap_or("")
}

#[test]
fn the_survivor_of_a_killed_primary_reports_its_takeover() {
    let dir = Dir(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ha-takeover-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let mut opts = LabOptions::new(dir.0.clone());
    opts.mode = 1;
    opts.size = 4 << 20;
    opts.iscsi_port = free_port();
    opts.link_port = free_port();
    let [a, b] = prepare(&opts).expect("prepare the lab");
    let logs = [a.log.as_path(), b.log.as_path()];
    let mut ctrl_a = start(&a);
    let _ctrl_b = start(&b);

    wait_for(&a.socket, "ctrl-a primary", &logs, |v| {
        role(v) == "primary" && v["link_state"] == 2
    });
    let before = wait_for(&b.socket, "ctrl-b secondary", &logs, |v| {
        role(v) == "secondary" && v["link_state"] == 2
    });
    // ctrl-b has not taken anything over yet.
    assert!(before["last_takeover"].is_null(), "{before}");
    assert_eq!(before["counters"]["takeovers"], 0, "{before}");

    // kill -9 of the primary, reaped at once (the fencing agent must not find a zombie).
    ctrl_a.0.kill().unwrap();
    ctrl_a.0.wait().unwrap();

    let after = wait_for(&b.socket, "ctrl-b takes over", &logs, |v| {
        role(v) == "primary" && !v["last_takeover"].is_null()
    });
    let t = &after["last_takeover"];
    eprintln!("ctrl-b's last takeover: {t}");
    assert_eq!(t["cause"], "link_closed", "{after}");
    assert_eq!(t["luns"], serde_json::json!([1]), "{after}");
    for key in [
        "fence_ms",
        "claim_ms",
        "total_ms",
        "ago_ms",
        "started_unix_ms",
    ] {
        assert!(t[key].is_u64(), "{key} missing: {after}");
    }
    let c = &after["counters"];
    assert_eq!(c["takeovers"], 1, "{after}");
    assert_eq!(c["link_downs_closed"], 1, "{after}");
    assert_eq!(c["link_downs_silent"], 0, "{after}");

    // The text form says the same.
    let text = Command::new(env!("CARGO_BIN_EXE_duetctl"))
        .arg("--socket")
        .arg(&b.socket)
        .arg("ha")
        .output()
        .expect("run duetctl");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Last takeover (LUN 1)"), "{text}");
    assert!(
        text.contains("waited for: HA link closed by the peer"),
        "{text}"
    );
    assert!(text.contains("fence took"), "{text}");
}
