//! Direct I/O on shared LUNs, end to end: what a storage admin would check on a pair.
//!
//! - Both controllers of the two-controller lab hold every LUN image and the quorum area open
//!   with `O_DIRECT` (read from `/proc/PID/fdinfo`, where `flags:` is octal).
//! - A LUN on a file system that refuses `O_DIRECT` (a ramfs) stops `duetd` at start with an
//!   error naming the file and O_DIRECT, both with `direct = true` and as a controller of a pair;
//!   `direct = false` on a pair is a configuration error naming file and line.
//! - Through the project's own initiator, on a single controller with `direct = true`: writes at
//!   odd LBAs and of odd block counts read back intact; WRITE with FUA and SYNCHRONIZE CACHE are
//!   answered GOOD; the Caching page of a file LUN says WCE=1, and with WCE=0 set by the host
//!   writes still complete and read back.
//!
//! Needs root for the lab (network namespaces) and the ramfs mount; without it those tests are
//! skipped with a message. Every process is killed by PID and every mount undone, also on panic.
//! Build the binaries first: `cargo build -p duet-target -p duet-verification -p duet-hosts --bins`.

mod lab_common;
mod support;

use bytes::Bytes;
use duet_hosts::session::{LoginOptions, Session};
use lab_common::{Lab, LabOpts, Node};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{duetd, fresh_dir, run_bounded, try_run_bounded, Daemon, TargetConfig};

/// `O_DIRECT` in `/proc/PID/fdinfo`'s octal `flags:` (x86_64 and aarch64 differ; libc knows).
const O_DIRECT: u32 = libc::O_DIRECT as u32;
const TARGET: &str = "iqn.2026-11.dev.duet:direct";
const INITIATOR: &str = "iqn.2026-11.dev.duet:direct-host";
const BS: u32 = 512;

/// Every descriptor of `pid` open on `file`, with its `flags:` from fdinfo.
fn descriptors_of(pid: i32, file: &Path) -> Vec<(String, u32)> {
    let want = fs::canonicalize(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let Ok(e) = e else { continue };
        let fd = e.file_name().to_string_lossy().into_owned();
        if fs::read_link(e.path()).ok().as_deref() != Some(want.as_path()) {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or_else(|| panic!("no flags in fdinfo {fd} of {pid}:\n{info}"));
        out.push((fd, flags));
    }
    out
}

/// Asserts that `pid` holds `file` open, and only with `O_DIRECT`.
fn assert_direct(who: &str, pid: i32, file: &Path) {
    let fds = descriptors_of(pid, file);
    assert!(
        !fds.is_empty(),
        "{who} (pid {pid}) does not hold {} open",
        file.display()
    );
    for (fd, flags) in fds {
        assert_ne!(
            flags & O_DIRECT,
            0,
            "{who} (pid {pid}) holds {} open without O_DIRECT: fd {fd}, flags {flags:o}",
            file.display()
        );
    }
}

#[test]
fn both_lab_controllers_hold_every_lun_and_the_quorum_area_with_o_direct() {
    let Some(lab) = Lab::start(
        1,
        LabOpts {
            size: Some("16MiB".into()),
            ..LabOpts::default()
        },
    ) else {
        return;
    };
    for node in [Node::A, Node::B] {
        let pid = lab
            .pid(node)
            .unwrap_or_else(|| panic!("{node} is not running"));
        assert_direct(node.name(), pid, &lab.dir.join("da0.img"));
        assert_direct(node.name(), pid, &lab.dir.join("quorum.img"));
        let log = lab.log_tail(node, 400);
        assert!(log.contains("direct=true"), "{node} log:\n{log}");
    }
}

// ------------------------------------------------------------------------------------------
// A file system that refuses O_DIRECT
// ------------------------------------------------------------------------------------------

/// A ramfs mounted on a fresh directory; unmounted (lazily if busy) and removed when dropped.
struct Ramfs(PathBuf);

impl Ramfs {
    fn mount(tag: &str) -> Option<Ramfs> {
        let d = fresh_dir(tag);
        let r = try_run_bounded(
            &std::env::temp_dir(),
            "mount",
            &["-t", "ramfs", "ramfs", &d.display().to_string()],
            &[],
            Duration::from_secs(10),
        );
        match r {
            Ok(r) if r.ok() => Some(Ramfs(d)),
            other => {
                eprintln!("SKIPPED: cannot mount a ramfs (run as root): {other:?}");
                let _ = fs::remove_dir_all(&d);
                None
            }
        }
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let d = self.0.display().to_string();
        let tmp = std::env::temp_dir();
        let limit = Duration::from_secs(10);
        if !try_run_bounded(&tmp, "umount", &[&d], &[], limit).is_ok_and(|r| r.ok()) {
            let _ = try_run_bounded(&tmp, "umount", &["-l", &d], &[], limit);
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A configuration of one LUN at `image`, with `lun_extra` in the LUN's table and `tail` after.
fn config_text(image: &Path, lun_extra: &str, tail: &str) -> String {
    format!(
        "[portal_group.pg0]\nlisten = [\"127.0.0.1:1\"]\n\n[[target]]\nname = \"{TARGET}\"\n\
         portal_group = \"pg0\"\nauth_group = \"none\"\n\n[[target.lun]]\nnumber = 1\n\
         path = \"{}\"\nsize = \"4MiB\"\ncreate = true\n{lun_extra}\n{tail}",
        image.display()
    )
}

/// An `[ha]` section whose quorum area lives in `dir`.
fn ha_section(dir: &Path) -> String {
    format!(
        "[ha]\nid = 1\npeer = \"listen 127.0.0.1:1\"\nquorum = \"{}\"\nquorum_create = true\n\
         fencing = \"none\"\nsecret = \"0123456789abcdef\"\nadmin_socket = \"{}\"\n",
        dir.join("quorum.img").display(),
        dir.join("admin.sock").display()
    )
}

/// Runs `duetd --config` on `text` (bounded); returns its exit status and everything it printed.
fn run_duetd(dir: &Path, name: &str, text: &str) -> (Option<i32>, String) {
    let cfg = dir.join(name);
    fs::write(&cfg, text).expect("write the configuration");
    let cfg = cfg.display().to_string();
    let r = run_bounded(
        dir,
        duetd(),
        &["--config", &cfg],
        &[("RUST_LOG", "info")],
        Duration::from_secs(20),
    );
    (r.status.and_then(|s| s.code()), r.all())
}

#[test]
fn a_lun_on_a_file_system_without_o_direct_stops_duetd_with_the_file_and_the_reason() {
    let Some(ramfs) = Ramfs::mount("ramfs-lun") else {
        return;
    };
    let dir = fresh_dir("ramfs-cfg");
    let image = ramfs.0.join("lun1.img");
    for (name, text) in [
        ("single.toml", config_text(&image, "direct = true", "")),
        ("pair.toml", config_text(&image, "", &ha_section(&dir))),
    ] {
        let (code, out) = run_duetd(&dir, name, &text);
        assert!(
            code.is_some_and(|c| c != 0),
            "{name}: duetd should refuse to start (exit {code:?}):\n{out}"
        );
        assert!(
            out.contains(&image.display().to_string()) && out.contains("O_DIRECT"),
            "{name}: the error should name {} and O_DIRECT:\n{out}",
            image.display()
        );
    }
    // Buffered I/O on a pair is refused by the configuration check, naming file and line.
    let text = config_text(&dir.join("lun1.img"), "direct = false", &ha_section(&dir));
    let cfg = dir.join("buffered-pair.toml");
    fs::write(&cfg, &text).unwrap();
    let cfg_s = cfg.display().to_string();
    let r = run_bounded(
        &dir,
        duetd(),
        &["check-config", &cfg_s],
        &[],
        Duration::from_secs(20),
    );
    let line = text.lines().position(|l| l == "direct = false").unwrap() + 1;
    assert!(
        !r.ok(),
        "check-config accepted direct = false on a pair:\n{}",
        r.all()
    );
    assert!(
        r.all().contains(&format!("{cfg_s}:{line}:")),
        "the error should name {cfg_s}:{line}:\n{}",
        r.all()
    );
    let _ = fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------------------------------
// Through the initiator, on a direct LUN
// ------------------------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A single controller serving LUN 1 (16 MiB, 512-byte blocks) with `direct = true`.
fn direct_daemon(tag: &str) -> Daemon {
    Daemon::start(tag, &[Ipv4Addr::LOCALHOST], |s| {
        TargetConfig {
            block_size: Some(BS),
            // Appended at the end of the LUN's table.
            extra: "direct = true\n",
            ..TargetConfig::new(TARGET)
        }
        .render(s)
    })
}

async fn login(d: &Daemon) -> Session {
    let s = Session::login(d.portal(), INITIATOR, TARGET, &LoginOptions::default())
        .await
        .expect("login");
    // The first command of the nexus reports the power-on unit attention.
    let _ = s.test_unit_ready(1).await;
    s
}

/// `blocks` blocks whose every byte says which LBA and which pass wrote it.
fn pattern(lba: u64, blocks: u32, pass: u8) -> Vec<u8> {
    (0..blocks as u64 * BS as u64)
        .map(|i| ((lba + i / BS as u64) as u8).wrapping_mul(31) ^ (i as u8) ^ pass)
        .collect()
}

/// WRITE(16) with the FUA bit as asked; the status byte.
async fn write(s: &Session, lba: u64, data: Vec<u8>, fua: bool) -> u8 {
    let blocks = (data.len() / BS as usize) as u32;
    let mut cdb = duet_hosts::scsi::write16_cdb(lba, blocks);
    if fua {
        cdb[1] |= 0x08;
    }
    s.exec(1, &cdb, Bytes::from(data), 0)
        .await
        .expect("WRITE(16)")
        .status
}

/// MODE SENSE(6) of the Caching page with page control `pc`; its WCE bit.
async fn wce(s: &Session, pc: u8) -> bool {
    let cdb = [0x1A, 0x08, 0x08 | (pc << 6), 0, 255, 0];
    let r = s
        .exec(1, &cdb, Bytes::new(), 255)
        .await
        .expect("MODE SENSE");
    assert!(r.is_good(), "MODE SENSE: {r:?}");
    let page = &r.data[4 + r.data[3] as usize..];
    assert_eq!(page[0] & 0x3F, 0x08, "not the Caching page: {page:02x?}");
    page[2] & 0x04 != 0
}

#[test]
fn a_direct_lun_reads_back_odd_writes_and_answers_fua_and_synchronize_cache() {
    let d = direct_daemon("direct-lun");
    assert_direct("duetd", d.pid() as i32, &d.dir.join("lun1.img"));
    runtime().block_on(async {
        let s = login(&d).await;
        // Odd LBAs and odd block counts, some overlapping, some far apart.
        let writes: [(u64, u32); 6] = [(1, 3), (7, 1), (1001, 17), (33, 255), (34, 5), (32767, 1)];
        for (pass, &(lba, blocks)) in writes.iter().enumerate() {
            let st = write(&s, lba, pattern(lba, blocks, pass as u8), pass % 2 == 1).await;
            assert_eq!(st, 0, "WRITE(16) of {blocks} at {lba}");
        }
        // What each block must hold now: the last write that covered it.
        for (pass, &(lba, blocks)) in writes.iter().enumerate() {
            let r = s.read16(1, lba, blocks, BS).await.expect("READ(16)");
            assert!(r.is_good(), "READ(16) of {blocks} at {lba}: {r:?}");
            let want = pattern(lba, blocks, pass as u8);
            for b in 0..blocks as u64 {
                let covering = writes
                    .iter()
                    .enumerate()
                    .rev()
                    .find(|(_, &(l, n))| (l..l + n as u64).contains(&(lba + b)))
                    .map(|(p, _)| p);
                if covering != Some(pass) {
                    continue;
                }
                let at = (b * BS as u64) as usize;
                assert!(
                    r.data[at..at + BS as usize] == want[at..at + BS as usize],
                    "block {} read back wrong",
                    lba + b
                );
            }
        }
        // SYNCHRONIZE CACHE (10) and (16), whole LUN.
        for cdb in [
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let r = s.exec(1, &cdb, Bytes::new(), 0).await.expect("SYNC");
            assert!(r.is_good(), "SYNCHRONIZE CACHE {:02x}: {r:?}", cdb[0]);
        }
        let _ = s.logout().await;
    });
    // What was acknowledged is in the image file, past any cache (read it through the file).
    let img = fs::read(d.dir.join("lun1.img")).unwrap();
    let at = 1001 * BS as usize;
    assert_eq!(&img[at..at + 17 * BS as usize], &pattern(1001, 17, 2)[..]);
}

#[test]
fn the_caching_page_of_a_direct_file_lun_says_wce_1_and_a_host_may_turn_it_off() {
    let d = direct_daemon("direct-wce");
    runtime().block_on(async {
        let s = login(&d).await;
        assert!(wce(&s, 0).await, "current WCE of a direct file LUN");
        assert!(wce(&s, 2).await, "default WCE of a direct file LUN");
        // MODE SELECT(6): WCE=0. Every write is then durable before GOOD.
        let mut list = vec![0u8, 0, 0, 0, 0x08, 0x12, 0x00];
        list.resize(4 + 20, 0);
        let cdb = [0x15, 0x10, 0, 0, list.len() as u8, 0];
        let r = s
            .exec(1, &cdb, Bytes::from(list), 0)
            .await
            .expect("MODE SELECT");
        assert!(r.is_good(), "MODE SELECT: {r:?}");
        assert!(!wce(&s, 0).await);
        assert_eq!(write(&s, 5, pattern(5, 3, 9), false).await, 0);
        let r = s.read16(1, 5, 3, BS).await.expect("READ(16)");
        assert_eq!(&r.data[..], &pattern(5, 3, 9)[..]);
        let _ = s.logout().await;
    });
}
