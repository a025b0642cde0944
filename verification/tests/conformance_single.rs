//! End-to-end conformance of a single `duetd` controller against a real initiator: libiscsi's
//! tools (`iscsi-ls`, `iscsi-inq`, `iscsi-readcapacity16`) and its conformance suite
//! `iscsi-test-cu`.
//!
//! Each test starts its own `duetd` on free loopback ports with a fresh directory, and a guard
//! stops it (by PID) and removes the directory whatever happens. Every external program runs with
//! a time bound. The `duetd` binary is taken from `DUETD` if set, else from the build directory
//! that holds this test (where `cargo test --workspace` puts it), else it is built with cargo into
//! a separate directory.

mod support;

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;
use support::{
    fresh_dir, parse_cunit, require_programs, run_bounded, workspace_root, Chap, CuSummary, Daemon,
    Run, Site, TargetConfig,
};

const TARGET: &str = "iqn.2026-11.dev.duet:target0";
const INIT1: &str = "iqn.2026-11.test:init1";
const INIT2: &str = "iqn.2026-11.test:init2";

// ------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------

/// Skips the calling test (with a loud message) when libiscsi's tools are missing, unless CI
/// demands them.
macro_rules! require_tools {
    () => {
        if !require_programs(
            &[
                "iscsi-ls",
                "iscsi-inq",
                "iscsi-readcapacity16",
                "iscsi-test-cu",
            ],
            "libiscsi-bin",
        ) {
            return;
        }
    };
}

/// Starts duetd with `nports` portals on 127.0.0.1 and the configuration `config` writes.
fn start(tag: &str, nports: usize, config: impl Fn(&Site) -> String) -> Daemon {
    Daemon::start(tag, &vec![Ipv4Addr::LOCALHOST; nports], config)
}

/// The URL of LUN `lun` of [`TARGET`] through portal `index`.
fn url(d: &Daemon, index: usize, lun: u32) -> String {
    d.url(index, TARGET, lun)
}

/// 64 MiB LUN 1 with 512-byte blocks, no authentication, 5 s ping timeout.
fn plain() -> TargetConfig<'static> {
    TargetConfig {
        alias: Some("conformance"),
        size: "64MiB",
        block_size: Some(512),
        serial: Some("DUETCONF0001"),
        ..TargetConfig::new(TARGET)
    }
}

fn plain_config(s: &Site) -> String {
    plain().render(s)
}

/// [`plain`] with a ping timeout of 1 s.
fn fast_ping_config(s: &Site) -> String {
    TargetConfig {
        ping_timeout: 1,
        ..plain()
    }
    .render(s)
}

const CHAP_USER: &str = "duetuser";
const CHAP_SECRET: &str = "duetsecret12";
const MUTUAL_USER: &str = "duetmutual";
const MUTUAL_SECRET: &str = "duetsecret34";
const TARGET_USER: &str = "duettarget";
const TARGET_SECRET: &str = "targetsecret56";

/// A CHAP-protected target (16 MiB LUN 1) for [`INIT1`] and [`INIT2`]: one-way CHAP for
/// `user`/`secret`, mutual when `target` is given.
fn chap_config_for(s: &Site, user: &str, secret: &str, target: Option<(&str, &str)>) -> String {
    TargetConfig {
        chap: Some(Chap {
            user,
            secret,
            mutual: target,
            initiator_names: &[INIT1, INIT2],
        }),
        ..TargetConfig::new(TARGET)
    }
    .render(s)
}

fn chap_config(s: &Site) -> String {
    chap_config_for(s, CHAP_USER, CHAP_SECRET, None)
}

fn mutual_chap_config(s: &Site) -> String {
    chap_config_for(
        s,
        MUTUAL_USER,
        MUTUAL_SECRET,
        Some((TARGET_USER, TARGET_SECRET)),
    )
}

/// Runs iscsi-test-cu and asserts that nothing failed, printing the failed and skipped tests.
/// Its output is kept in `build/iscsi-test-cu-<tag>.log`.
fn run_test_cu(d: &Daemon, extra: &[&str], urls: &[String], limit: Duration) -> CuSummary {
    let mut args: Vec<&str> = vec!["--dataloss", "-i", INIT1, "-I", INIT2];
    args.extend_from_slice(extra);
    for u in urls {
        args.push(u);
    }
    let r = run_bounded(&d.dir, "iscsi-test-cu", &args, &[], limit);
    let out = r.all();
    let _ = fs::write(
        workspace_root()
            .join("build")
            .join(format!("iscsi-test-cu-{}.log", d.tag)),
        &out,
    );
    let sum = parse_cunit(&out);
    eprintln!(
        "iscsi-test-cu {}: ran {:?} passed {:?} failed {:?}",
        extra.join(" "),
        sum.ran,
        sum.passed,
        sum.failed
    );
    sum.print_tests();
    sum.assert_clean(&r, limit, &extra.join(" "));
    sum
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn cunit_summary_parser_reads_results() {
    let out = "\
Suite: SCSI.Read10
  Test: Simple ...passed
  Test: BeyondEol ...
[SKIPPED] READ10 is not implemented.
passed
  Test: Flags ...FAILED
    1. test_read10_flags.c:50  - status == 0
  Test: DataSn ...    [FAILED] WRITE10 command failed with status 2 / sense key COMMAND ABORTED(0x0b)
    [FAILED] WRITE10 command failed with status 2 / sense key COMMAND ABORTED(0x0b)
passed
Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      1      1    n/a      0        0
               tests      4      4      3      1        0
             asserts     10     10      9      1      n/a
";
    let s = parse_cunit(out);
    assert_eq!((s.ran, s.passed, s.failed), (Some(4), Some(3), Some(1)));
    assert_eq!(s.failed_tests, vec!["SCSI.Read10.Flags".to_string()]);
    assert_eq!(s.skipped_tests, vec!["SCSI.Read10.BeyondEol".to_string()]);
}

#[test]
fn iscsi_ls_discovers_the_target_and_its_lun() {
    require_tools!();
    let d = start("ls", 1, plain_config);
    let portal = format!("iscsi://{}", d.portal());
    let r = run_bounded(
        &d.dir,
        "iscsi-ls",
        &["-s", "-i", INIT1, &portal],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "iscsi-ls failed:\n{}", r.all());
    let out = r.all();
    assert!(
        out.contains(&format!("Target:{TARGET} Portal:{},1", d.portal())),
        "{out}"
    );
    assert!(out.contains("Lun:1"), "LUN 1 not listed:\n{out}");
    assert!(
        out.contains("DIRECT_ACCESS"),
        "device type not shown:\n{out}"
    );
}

#[test]
fn iscsi_inq_reads_standard_inquiry_and_every_vpd_page() {
    require_tools!();
    let d = start("inq", 1, plain_config);
    let url = url(&d, 0, 1);
    let inq = |extra: &[&str]| {
        let mut args = vec!["-i", INIT1];
        args.extend_from_slice(extra);
        args.push(&url);
        let r = run_bounded(&d.dir, "iscsi-inq", &args, &[], Duration::from_secs(30));
        assert!(r.ok(), "iscsi-inq {extra:?} failed:\n{}", r.all());
        r.stdout
    };
    let std_inq = inq(&[]);
    assert!(
        std_inq.contains("Peripheral Device Type:DIRECT_ACCESS"),
        "{std_inq}"
    );
    assert!(std_inq.contains("Vendor:DUET"), "{std_inq}");
    assert!(
        std_inq.contains("TPGS:1"),
        "implicit ALUA not advertised:\n{std_inq}"
    );
    // iscsi-inq takes the page code as a decimal number.
    let pages = inq(&["-e", "1", "-c", "0"]);
    for p in ["0x00", "0x80", "0x83", "0xb0", "0xb1", "0xb2"] {
        assert!(
            pages.contains(&format!("Page:{p}")),
            "page {p} not listed as supported:\n{pages}"
        );
    }
    let serial = inq(&["-e", "1", "-c", "128"]);
    assert!(
        serial.contains("Unit Serial Number:[DUETCONF0001]"),
        "{serial}"
    );
    let ids = inq(&["-e", "1", "-c", "131"]);
    for d in [
        "NAA",
        "TARGET_PORT_GROUP",
        "RELATIVE_TARGET_PORT",
        "T10_VENDORT_ID",
    ] {
        assert!(ids.contains(d), "no {d} designator:\n{ids}");
    }
    assert!(ids.contains(&format!("[{TARGET},t,0x0001]")), "{ids}");
    let limits = inq(&["-e", "1", "-c", "176"]);
    assert!(
        limits.contains("maximum compare and write length:"),
        "{limits}"
    );
    let chars = inq(&["-e", "1", "-c", "177"]);
    assert!(chars.contains("Medium Rotation Rate:"), "{chars}");
    let prov = inq(&["-e", "1", "-c", "178"]);
    assert!(
        prov.contains("lbpu:1") && prov.contains("lbprz:1"),
        "{prov}"
    );
}

#[test]
fn iscsi_readcapacity16_reports_the_configured_size() {
    require_tools!();
    let d = start("rc16", 1, plain_config);
    let r = run_bounded(
        &d.dir,
        "iscsi-readcapacity16",
        &["-i", INIT1, &url(&d, 0, 1)],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "iscsi-readcapacity16 failed:\n{}", r.all());
    let out = r.all();
    let last_lba = (64u64 << 20) / 512 - 1;
    assert!(
        out.contains(&format!("RETURNED LOGICAL BLOCK ADDRESS:{last_lba}")),
        "{out}"
    );
    assert!(out.contains("LOGICAL BLOCK LENGTH IN BYTES:512"), "{out}");
    assert!(out.contains("Total size:67108864"), "{out}");
}

#[test]
fn sigterm_stops_duetd_cleanly_with_a_session_open() {
    let mut d = start("term", 1, plain_config);
    let mut s = raw_login(d.portal(), INIT1);
    let st = d
        .terminate(Duration::from_secs(20))
        .expect("duetd did not exit within 20 s of SIGTERM");
    assert!(st.success(), "duetd exited with {st}:\n{}", d.log_tail(80));
    // The session saw a logout request (Async Message, event 1) or just the end of the stream.
    while let Some((p, _)) = read_pdu(&mut s) {
        if p[0] & 0x3F == 0x32 {
            assert_eq!(p[36], 1, "an Async Message other than a logout request");
        }
    }
    assert!(
        d.log_tail(80).contains("backends flushed"),
        "no flush at shutdown:\n{}",
        d.log_tail(80)
    );
}

/// A LUN image on tmpfs, removed on drop. duetd runs the medium phase of reads and writes on a
/// memory-backed LUN on the connection's own task instead of the blocking pool; a full
/// conformance run on one covers that path. Where /dev/shm is missing the image stays in the
/// daemon's directory.
struct MemoryImage(Option<std::path::PathBuf>);

impl MemoryImage {
    fn new(tag: &str) -> MemoryImage {
        let shm = std::path::Path::new("/dev/shm");
        MemoryImage(
            shm.is_dir()
                .then(|| shm.join(format!("duet-e2e-{}-{tag}.img", std::process::id()))),
        )
    }

    /// The `image` for [`TargetConfig`]: an absolute path, or a name in the daemon's directory.
    fn image(&self) -> String {
        match &self.0 {
            Some(p) => p.display().to_string(),
            None => "lun1.img".into(),
        }
    }
}

impl Drop for MemoryImage {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

#[test]
fn iscsi_test_cu_all_passes_with_multipath() {
    require_tools!();
    let mem = MemoryImage::new("cu");
    let image = mem.image();
    let d = start("cu", 2, |s| {
        TargetConfig {
            image: &image,
            ..plain()
        }
        .render(s)
    });
    let urls = [url(&d, 0, 1), url(&d, 1, 1)];
    let s = run_test_cu(&d, &["-t", "ALL"], &urls, Duration::from_secs(1500));
    assert!(s.passed.unwrap_or(0) > 0);
}

fn inq_bounded(d: &Daemon, initiator: &str, url: &str, envs: &[(&str, &str)]) -> Run {
    run_bounded(
        &d.dir,
        "iscsi-inq",
        &["-i", initiator, url],
        envs,
        Duration::from_secs(30),
    )
}

fn chap_url(d: &Daemon, user: &str, secret: &str, extra: &str) -> String {
    format!("iscsi://{user}%{secret}@{}/{TARGET}/1{extra}", d.portal())
}

#[test]
fn one_way_chap_refuses_a_wrong_secret_and_accepts_the_right_one() {
    require_tools!();
    let d = start("chap", 1, chap_config);

    // No credentials at all.
    let r = inq_bounded(&d, INIT1, &url(&d, 0, 1), &[]);
    assert!(!r.ok(), "login without CHAP was accepted:\n{}", r.all());
    // A wrong secret: login status 2/1 (authentication failure).
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, CHAP_USER, "wrongsecret99", ""),
        &[],
    );
    assert!(!r.ok(), "a wrong CHAP secret was accepted:\n{}", r.all());
    // libiscsi prints the login status as class * 256 + detail: 2/1 is 513.
    assert!(
        r.all().contains("Authentication failure(513)"),
        "not refused with login status 2/1:\n{}",
        r.all()
    );
    // An unknown user.
    let r = inq_bounded(&d, INIT1, &chap_url(&d, "nobody", CHAP_SECRET, ""), &[]);
    assert!(!r.ok(), "an unknown CHAP user was accepted:\n{}", r.all());
    // The right secret, but an initiator name outside the group's list.
    let r = inq_bounded(
        &d,
        "iqn.2026-11.test:stranger",
        &chap_url(&d, CHAP_USER, CHAP_SECRET, ""),
        &[],
    );
    assert!(!r.ok(), "an initiator outside the ACL got in:\n{}", r.all());
    // 2/2: initiator not allowed (libiscsi prints class * 256 + detail = 514).
    assert!(
        r.all().contains("(514)"),
        "not refused with 2/2:\n{}",
        r.all()
    );
    // The right one-way secret.
    let r = inq_bounded(&d, INIT1, &chap_url(&d, CHAP_USER, CHAP_SECRET, ""), &[]);
    assert!(r.ok(), "the right CHAP secret was refused:\n{}", r.all());
    assert!(r.stdout.contains("Vendor:DUET"), "{}", r.stdout);
}

#[test]
fn mutual_chap_proves_the_target_to_the_initiator() {
    require_tools!();
    let d = start("mutual", 1, mutual_chap_config);
    let ok_args = format!("?target_user={TARGET_USER}&target_password={TARGET_SECRET}");
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, MUTUAL_USER, MUTUAL_SECRET, &ok_args),
        &[],
    );
    assert!(r.ok(), "mutual CHAP was refused:\n{}", r.all());
    assert!(r.stdout.contains("Vendor:DUET"), "{}", r.stdout);
    // The initiator expects another target secret: it must notice and give up.
    let bad_args = format!("?target_user={TARGET_USER}&target_password=notthetarget1");
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, MUTUAL_USER, MUTUAL_SECRET, &bad_args),
        &[],
    );
    assert!(
        !r.ok(),
        "a wrong target secret went unnoticed:\n{}",
        r.all()
    );
    // A wrong initiator secret is refused as with one-way CHAP.
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, MUTUAL_USER, "wrongsecret99", &ok_args),
        &[],
    );
    assert!(!r.ok(), "a wrong CHAP secret was accepted:\n{}", r.all());
    // The same credentials through libiscsi's environment variables.
    let r = inq_bounded(
        &d,
        INIT2,
        &url(&d, 0, 1),
        &[
            ("LIBISCSI_CHAP_USERNAME", MUTUAL_USER),
            ("LIBISCSI_CHAP_PASSWORD", MUTUAL_SECRET),
            ("LIBISCSI_CHAP_TARGET_USERNAME", TARGET_USER),
            ("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET_SECRET),
        ],
    );
    assert!(
        r.ok(),
        "mutual CHAP via environment was refused:\n{}",
        r.all()
    );
}

#[test]
fn iscsi_test_cu_chap_family_passes() {
    require_tools!();
    let scratch = fresh_dir("list");
    let list = run_bounded(
        &scratch,
        "iscsi-test-cu",
        &["--list"],
        &[],
        Duration::from_secs(30),
    );
    let _ = fs::remove_dir_all(&scratch);
    if !list.stdout.contains("iSCSICHAP") {
        eprintln!("SKIPPED: this iscsi-test-cu has no iSCSICHAP family");
        return;
    }
    let d = start("cuchap", 1, chap_config);
    let url = format!(
        "iscsi://{CHAP_USER}%{CHAP_SECRET}@{}/{TARGET}/1",
        d.portal()
    );
    run_test_cu(
        &d,
        &["-t", "iSCSI.iSCSICHAP"],
        &[url],
        Duration::from_secs(300),
    );
}

/// A login by hand over a plain TCP socket (operational stage straight to full feature), so
/// that the test controls exactly what the initiator says afterwards: nothing.
fn raw_login(portal: SocketAddr, initiator: &str) -> TcpStream {
    use std::io::Write;
    let mut s = TcpStream::connect(portal).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut data = Vec::new();
    for kv in [
        format!("InitiatorName={initiator}"),
        format!("TargetName={TARGET}"),
        "SessionType=Normal".to_string(),
        "HeaderDigest=None".to_string(),
        "DataDigest=None".to_string(),
    ] {
        data.extend_from_slice(kv.as_bytes());
        data.push(0);
    }
    let mut bhs = [0u8; 48];
    bhs[0] = 0x43; // immediate Login Request
    bhs[1] = 0x80 | (1 << 2) | 3; // T=1, CSG=1 (operational), NSG=3 (full feature)
    let len = data.len() as u32;
    bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0x12, 0x34, 0x56]); // ISID
    bhs[16..20].copy_from_slice(&1u32.to_be_bytes()); // ITT
    while data.len() % 4 != 0 {
        data.push(0);
    }
    s.write_all(&bhs).unwrap();
    s.write_all(&data).unwrap();
    let (rsp, _) = read_pdu(&mut s).expect("a Login Response");
    assert_eq!(rsp[0] & 0x3F, 0x23, "not a Login Response");
    assert_eq!((rsp[36], rsp[37]), (0, 0), "login refused");
    assert_eq!(
        rsp[1] & 0x83,
        0x83,
        "the target did not go to full feature phase"
    );
    s
}

/// Reads one PDU (no digests): its BHS and data segment; `None` when the connection closed.
fn read_pdu(s: &mut TcpStream) -> Option<([u8; 48], Vec<u8>)> {
    let mut bhs = [0u8; 48];
    s.read_exact(&mut bhs).ok()?;
    let ahs = bhs[4] as usize * 4;
    let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    let mut rest = vec![0u8; ahs + dlen.div_ceil(4) * 4];
    s.read_exact(&mut rest).ok()?;
    Some((bhs, rest[ahs..ahs + dlen].to_vec()))
}

#[test]
fn a_silent_initiator_is_pinged_then_dropped() {
    let d = start("ping", 1, fast_ping_config);
    let mut s = raw_login(d.portal(), INIT1);
    // The initiator says nothing: the target pings it with a NOP-In that asks for an answer
    // (ITT ffffffff, a valid TTT)...
    let (nop, _) = read_pdu(&mut s).expect("a NOP-In ping before the connection is dropped");
    assert_eq!(nop[0] & 0x3F, 0x20, "expected a NOP-In");
    assert_eq!(
        &nop[16..20],
        &[0xFF; 4],
        "a target ping carries ITT ffffffff"
    );
    assert_ne!(&nop[20..24], &[0xFF; 4], "a target ping asks for an answer");
    // ...and, without one, closes the connection (bounded by the 20 s read timeout).
    loop {
        match read_pdu(&mut s) {
            None => break,
            Some((p, _)) => assert_eq!(p[0] & 0x3F, 0x20, "unexpected PDU while silent"),
        }
    }
}

#[test]
fn an_answering_initiator_keeps_its_session() {
    use std::io::Write;
    let d = start("pong", 1, fast_ping_config);
    let mut s = raw_login(d.portal(), INIT1);
    // Answer three pings; the session must still be there.
    for _ in 0..3 {
        let (nop, _) = read_pdu(&mut s).expect("a NOP-In ping");
        assert_eq!(nop[0] & 0x3F, 0x20);
        let mut out = [0u8; 48];
        out[0] = 0x40; // immediate NOP-Out
        out[1] = 0x80;
        out[8..16].copy_from_slice(&nop[8..16]); // LUN
        out[16..20].copy_from_slice(&[0xFF; 4]); // ITT
        out[20..24].copy_from_slice(&nop[20..24]); // TTT echoed
        out[24..28].copy_from_slice(&nop[28..32]); // CmdSN = ExpCmdSN
        let exp_stat = u32::from_be_bytes([nop[24], nop[25], nop[26], nop[27]]);
        out[28..32].copy_from_slice(&exp_stat.to_be_bytes());
        s.write_all(&out).unwrap();
    }
    // A NOP-Out ping of our own is answered: the connection is alive.
    let mut ping = [0u8; 48];
    ping[0] = 0x40;
    ping[1] = 0x80;
    ping[16..20].copy_from_slice(&7u32.to_be_bytes());
    ping[20..24].copy_from_slice(&[0xFF; 4]);
    s.write_all(&ping).unwrap();
    loop {
        let (p, _) = read_pdu(&mut s).expect("the session was dropped although it answered");
        if p[0] & 0x3F == 0x20 && p[16..20] == 7u32.to_be_bytes() {
            break;
        }
    }
}

#[test]
fn a_ctl_conf_configuration_serves_the_same_way() {
    require_tools!();
    let d = start("ctlconf", 1, |s| {
        format!(
            "# FreeBSD ctl.conf syntax\n\
             auth-group ag0 {{\n\
             \tchap {CHAP_USER} {CHAP_SECRET}\n\
             \tinitiator-name {INIT1}\n\
             }}\n\
             portal-group pg0 {{\n\
             \tdiscovery-auth-group no-authentication\n\
             \tlisten {p}\n\
             }}\n\
             target {TARGET} {{\n\
             \tauth-group ag0\n\
             \tportal-group pg0\n\
             \tlun 1 {{\n\
             \t\tpath {img}\n\
             \t\tsize 8M\n\
             \t\tblocksize 4096\n\
             \t\tserial DUETCTL1\n\
             \t\toption create on\n\
             \t}}\n\
             }}\n",
            p = s.portal(),
            img = s.dir.join("ctl.img").display()
        )
    });
    let portal = format!("iscsi://{}", d.portal());
    let r = run_bounded(
        &d.dir,
        "iscsi-ls",
        &["-i", INIT1, &portal],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "discovery failed:\n{}", r.all());
    assert!(r.stdout.contains(TARGET), "{}", r.stdout);
    let url = chap_url(&d, CHAP_USER, CHAP_SECRET, "");
    let r = run_bounded(
        &d.dir,
        "iscsi-readcapacity16",
        &["-i", INIT1, &url],
        &[],
        Duration::from_secs(30),
    );
    assert!(r.ok(), "CHAP login failed:\n{}", r.all());
    assert!(
        r.stdout.contains("LOGICAL BLOCK LENGTH IN BYTES:4096"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Total size:8388608"), "{}", r.stdout);
    let r = inq_bounded(
        &d,
        INIT1,
        &chap_url(&d, CHAP_USER, "wrongsecret99", ""),
        &[],
    );
    assert!(
        r.all().contains("Authentication failure(513)"),
        "{}",
        r.all()
    );
}

#[test]
fn iscsi_test_cu_read_only_family_passes_on_a_read_only_lun() {
    require_tools!();
    let d = start("ro", 1, |s| {
        plain_config(s).replace("create = true", "create = true\nread_only = true")
    });
    let s = run_test_cu(
        &d,
        &["-t", "SCSI.ReadOnly"],
        &[url(&d, 0, 1)],
        Duration::from_secs(300),
    );
    assert_eq!(s.passed, Some(1), "the ReadOnly test did not run");
    assert!(s.skipped_tests.is_empty(), "skipped: {:?}", s.skipped_tests);
}
