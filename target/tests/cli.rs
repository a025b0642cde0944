//! The `duetd` command line: configuration checking and start-up errors.
//!
//! (These tests also make `cargo test --workspace` build the `duetd` binary, which the
//! end-to-end conformance tests in duet-verification run.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn duetd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_duetd"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("duetd-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_config_accepts_every_shipped_example() {
    for name in ["single.toml", "chap.toml", "ctl.conf"] {
        let out = duetd()
            .arg("check-config")
            .arg(examples().join(name))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("OK"), "{name}: {text}");
    }
}

#[test]
fn check_config_json_describes_the_lun_without_secrets() {
    let out = duetd()
        .arg("check-config")
        .arg(examples().join("chap.toml"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["targets"][0]["name"], "iqn.2026-11.dev.duet:secure0");
    assert_eq!(v["targets"][0]["luns"][0]["block_size"], 4096);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("duetsecret12"), "a secret leaked: {text}");
}

#[test]
fn a_bad_configuration_is_refused_with_file_line_and_key() {
    let d = tmp("bad");
    let f = d.join("bad.toml");
    std::fs::write(
        &f,
        "[portal_group.p]\nlisten = [\"127.0.0.1:3999\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\n[[target.lun]]\nnumber = 1\npath = \"/tmp/x.img\"\nsize = \"big\"\n",
    )
    .unwrap();
    for args in [vec!["check-config"], vec!["--config"]] {
        let out = duetd().args(&args).arg(&f).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:9: lun 1: `size`: expected a size like 256MiB",
                f.display()
            )),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_missing_backing_file_stops_start_up() {
    let d = tmp("missing");
    let f = d.join("c.toml");
    std::fs::write(
        &f,
        format!(
            "[portal_group.p]\nlisten = [\"127.0.0.1:1\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\n[[target.lun]]\nnumber = 1\npath = \"{}\"\n",
            d.join("nothere.img").display()
        ),
    )
    .unwrap();
    let mut child = duetd()
        .arg("--config")
        .arg(&f)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("duetd kept running without its backing file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("does not exist"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A pair's configuration with `fencing` and `peer` as given.
fn ha_config(d: &Path, fencing: &str, peer: &str) -> PathBuf {
    let f = d.join("ha.toml");
    std::fs::write(
        &f,
        format!(
            "[portal_group.p]\nlisten = [\"127.0.0.1:3999\"]\n[[target]]\nname = \"iqn.2026-11.dev.duet:t\"\nauth_group = \"none\"\nportal_group = \"p\"\n[[target.lun]]\nnumber = 1\npath = \"/tmp/x.img\"\nsize = \"1MiB\"\ncreate = true\n\n[ha]\nid = 1\npeer = \"{peer}\"\nquorum = \"/tmp/q.img\"\nfencing = \"{fencing}\"\npeer_pidfile = \"/run/duet/ctrl-b.pid\"\nsecret = \"0123456789abcdef\"\n"
        ),
    )
    .unwrap();
    f
}

#[test]
fn check_config_explains_the_fencing_agent_and_refuses_process_fencing_across_hosts() {
    let d = tmp("fencing");
    let cases = [
        ("process", "lab agent", "loopback"),
        (
            "exec /usr/sbin/fence_ipmilan -o off",
            "power fencing",
            "confirmed off",
        ),
        ("none", "unsafe", "lease timing alone"),
    ];
    for (fencing, fits, detail) in cases {
        let f = ha_config(&d, fencing, "listen 127.0.0.1:7777");
        let out = duetd().arg("check-config").arg(&f).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{fencing}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("fencing agent "))
            .unwrap_or_else(|| panic!("{fencing}: no fencing paragraph in {text}"));
        assert!(
            line.contains(fits) && line.contains(detail),
            "{fencing}: {line}"
        );
        let out = duetd()
            .arg("check-config")
            .arg(&f)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let para = v["ha"]["fencing_deployment"].as_str().unwrap_or_default();
        assert!(
            line.ends_with(para) && para.contains(fits),
            "{fencing}: {para}"
        );
    }
    // The process agent cannot reach a peer on another host: refused, naming file and line.
    let f = ha_config(&d, "process", "connect 192.0.2.7:7777");
    let out = duetd().arg("check-config").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:17: [ha]: `fencing`: \"process\" is the lab agent",
            f.display()
        )) && err.contains("loopback"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
