//! End-to-end failover tests of the two-controller lab (`duetd lab`) under a checked load.
//!
//! Each test starts a lab in its own network namespace (see `lab_common`), runs `duet-mpio` over
//! both portals (2048 blocks, queue depth 8, 50 % writes; every read checked against the highest
//! acknowledged version, every block checked at the end), injects one fault about 4 s into the
//! load and then asserts what a host would notice:
//!
//! - the load's report is clean: no command failed within its 30 s deadline, no stale, corrupt or
//!   torn read, no lost write, and commands did run;
//! - the controllers end in the roles the scenario calls for (who is primary, with which epoch,
//!   whether the HA link is up again).
//!
//! Scenarios, each in HA modes 0, 1 and 2: kill -9 of the secondary; kill -9 of the primary;
//! SIGSTOP of the primary for longer than its lease; an HA link cut with both controllers alive;
//! kill -9 and restart of the secondary (rejoin); planned switchover; SIGTERM of the primary and
//! of the secondary; a rolling restart (stop ctrl-b cleanly, start it, wait until joined, then
//! ctrl-a; in mode 1 also with `duetctl shutdown` instead of SIGTERM). Plus libiscsi's
//! `iscsi-test-cu` over both controllers (MultipathIO) in modes 1 and 2.
//!
//! Each scenario prints one line to standard error for `verification/failover-report.sh`:
//! `FAILOVER mode=M scenario=S ops=N longest_stall_ms=X stalls=[start+len,...] clean=yes|no`.
//! Stall lengths are reported, never asserted (the machine is shared and noisy).
//!
//! Needs root (network namespaces, iptables); without it every test is skipped with a message.
//! Run with `cargo test --release -p duet-verification --test ha_failover -- --test-threads 1`
//! after `cargo build --release -p duet-target`.

mod lab_common;
mod support;

use lab_common::{Lab, LabOpts, Load, LunView, Node};
use std::fs;
use std::time::Duration;
use support::{parse_cunit, require_programs, tail, wait_until, workspace_root};

/// When the fault is injected, counted from the start of the load.
const FAULT_AT: Duration = Duration::from_secs(4);
/// How long the load runs in most scenarios.
const LOAD_FOR: Duration = Duration::from_secs(16);
/// Bound on any single role change we wait for.
const ROLE_CHANGE: Duration = Duration::from_secs(15);

/// Whether `v` says LUN 1 is primary on `node` with an epoch above `above`.
fn primary_on(v: &Option<LunView>, node: Node, above: u64) -> bool {
    v.as_ref()
        .is_some_and(|v| v.role == "primary" && v.primary == Some(node.ha_id()) && v.epoch > above)
}

/// Whether `v` says LUN 1 is secondary here with `primary` as the primary and the link up.
fn linked_secondary_of(v: &Option<LunView>, primary: Node) -> bool {
    v.as_ref().is_some_and(|v| {
        v.link_state == 2 && v.role == "secondary" && v.primary == Some(primary.ha_id())
    })
}

/// The epoch `node` reports for LUN 1 (0 when it does not answer).
fn epoch(lab: &Lab, node: Node) -> u64 {
    lab.view(node).map(|v| v.epoch).unwrap_or(0)
}

/// Runs one scenario: a lab in `mode`, a load of `load_for`, `fault` at [`FAULT_AT`]. `fault`
/// pushes what it found wrong about the controllers' roles into its last argument; the load's
/// report and those problems are asserted after the load ends.
fn scenario(
    mode: u8,
    name: &str,
    load_for: Duration,
    fault: impl FnOnce(&mut Lab, &Load, &mut Vec<String>),
) {
    let Some(mut lab) = Lab::start(mode, LabOpts::default()) else {
        return;
    };
    let load = lab.start_load(load_for);
    load.sleep_until(FAULT_AT);
    let mut problems = Vec::new();
    fault(&mut lab, &load, &mut problems);
    let report = load.finish();
    eprintln!(
        "FAILOVER mode={mode} scenario={name} ops={} longest_stall_ms={} stalls={} clean={}",
        report.ops,
        report.longest_stall_ms,
        report.stalls_text(),
        if report.clean() && problems.is_empty() {
            "yes"
        } else {
            "no"
        }
    );
    if !report.clean() || !problems.is_empty() {
        eprintln!(
            "duet-mpio stderr (tail):\n{}\nctrl-a: {:?}\nctrl-b: {:?}",
            tail(&report.stderr, 30),
            lab.view(Node::A),
            lab.view(Node::B)
        );
    }
    assert!(
        problems.is_empty(),
        "mode {mode} {name}: {}\nload: {}",
        problems.join("; "),
        report.summary()
    );
    assert!(
        report.clean(),
        "mode {mode} {name}: the load saw errors or bad data: {}",
        report.summary()
    );
}

/// After ctrl-b is gone, ctrl-a must stay primary with the link down.
fn ctrl_a_stays_primary_alone(lab: &Lab, problems: &mut Vec<String>, how: &str) {
    let ok = wait_until(
        || {
            lab.view(Node::A)
                .is_some_and(|v| v.link_state != 2 && v.role == "primary" && v.primary == Some(1))
        },
        ROLE_CHANGE,
    );
    if !ok {
        problems.push(format!(
            "ctrl-a did not stay primary with the link down after ctrl-b {how}: {:?}",
            lab.view(Node::A)
        ));
    }
}

/// kill -9 of the secondary: the primary keeps the LUN and notices the link is gone.
fn kill_secondary(mode: u8) {
    scenario(mode, "kill_secondary", LOAD_FOR, |lab, _load, problems| {
        lab.kill9(Node::B);
        ctrl_a_stays_primary_alone(lab, problems, "died");
    });
}

/// kill -9 of the primary: ctrl-b takes over by itself with a larger epoch.
fn kill_primary(mode: u8) {
    scenario(mode, "kill_primary", LOAD_FOR, |lab, _load, problems| {
        let before = epoch(lab, Node::B);
        lab.kill9(Node::A);
        if !wait_until(
            || primary_on(&lab.view(Node::B), Node::B, before),
            ROLE_CHANGE,
        ) {
            problems.push(format!(
                "ctrl-b did not become primary with an epoch above {before} within {ROLE_CHANGE:?} \
                 of kill -9 of ctrl-a: {:?}",
                lab.view(Node::B)
            ));
        }
    });
}

/// SIGSTOP of the primary for 4 s (more than its 1.2 s lease), then SIGCONT: ctrl-b takes over,
/// and ctrl-a is either gone (fenced) or no longer primary.
fn sigstop_primary(mode: u8) {
    scenario(mode, "sigstop_primary", LOAD_FOR, |lab, _load, problems| {
        let before = epoch(lab, Node::B);
        let pid = lab.sigstop(Node::A);
        std::thread::sleep(Duration::from_secs(4));
        lab.sigcont(pid);
        if !wait_until(
            || primary_on(&lab.view(Node::B), Node::B, before),
            ROLE_CHANGE,
        ) {
            problems.push(format!(
                "ctrl-b did not become primary with an epoch above {before} after ctrl-a was \
                 stopped for 4 s: {:?}",
                lab.view(Node::B)
            ));
        }
        // Give a woken ctrl-a a moment to notice that it lost its lease.
        std::thread::sleep(Duration::from_secs(2));
        if lab.alive(Node::A) {
            eprintln!("sigstop_primary: ctrl-a (pid {pid}) survived its stop");
            let a = lab.view(Node::A);
            if a.as_ref().is_some_and(|v| v.role == "primary") {
                problems.push(format!(
                    "ctrl-a still calls itself primary after being stopped past its lease: {a:?}"
                ));
            }
        } else {
            eprintln!("sigstop_primary: ctrl-a (pid {pid}) was fenced");
        }
    });
}

/// The HA link is cut for 5 s with both controllers alive, then healed: one controller keeps
/// serving, never two primaries at the end.
fn link_cut(mode: u8) {
    scenario(mode, "link_cut", LOAD_FOR, |lab, _load, problems| {
        lab.cut_link();
        std::thread::sleep(Duration::from_secs(5));
        lab.heal_link();
        let primaries = |lab: &Lab| -> Vec<Node> {
            [Node::A, Node::B]
                .into_iter()
                .filter(|&n| lab.alive(n) && lab.view(n).is_some_and(|v| v.role == "primary"))
                .collect()
        };
        if !wait_until(|| primaries(lab).len() == 1, ROLE_CHANGE) {
            problems.push(format!(
                "not exactly one primary after the link cut: primaries {:?}, ctrl-a {} {:?}, \
                 ctrl-b {} {:?}",
                primaries(lab),
                if lab.alive(Node::A) { "alive" } else { "dead" },
                lab.view(Node::A),
                if lab.alive(Node::B) { "alive" } else { "dead" },
                lab.view(Node::B)
            ));
        }
        // Where both survived, the healed link must form the pair again: the other controller
        // a linked secondary of the one that kept serving.
        if let [p] = primaries(lab)[..] {
            if lab.alive(p.peer())
                && !wait_until(|| linked_secondary_of(&lab.view(p.peer()), p), ROLE_CHANGE)
            {
                problems.push(format!(
                    "{} did not rejoin {p} as a linked secondary after the link healed: {:?}",
                    p.peer(),
                    lab.view(p.peer())
                ));
            }
        }
        eprintln!(
            "link_cut: ctrl-a {} {:?}; ctrl-b {} {:?}",
            if lab.alive(Node::A) { "alive" } else { "dead" },
            lab.view(Node::A),
            if lab.alive(Node::B) { "alive" } else { "dead" },
            lab.view(Node::B)
        );
    });
}

/// kill -9 of the secondary, then a restart from its configuration file: it rejoins as
/// secondary (link state 2, ctrl-a still primary) while the load goes on.
fn restart_rejoin(mode: u8) {
    scenario(
        mode,
        "restart_rejoin",
        Duration::from_secs(20),
        |lab, _load, problems| {
            lab.kill9(Node::B);
            if !wait_until(
                || lab.view(Node::A).is_some_and(|v| v.link_state != 2),
                ROLE_CHANGE,
            ) {
                problems.push(format!(
                    "ctrl-a did not notice that ctrl-b died: {:?}",
                    lab.view(Node::A)
                ));
                return;
            }
            lab.restart(Node::B);
            let rejoined = wait_until(
                || {
                    linked_secondary_of(&lab.view(Node::B), Node::A)
                        && lab.view(Node::A).is_some_and(|v| {
                            v.link_state == 2 && v.role == "primary" && v.primary == Some(1)
                        })
                },
                Duration::from_secs(20),
            );
            if !rejoined {
                problems.push(format!(
                    "ctrl-b did not rejoin as secondary of ctrl-a: ctrl-a {:?}, ctrl-b {:?}",
                    lab.view(Node::A),
                    lab.view(Node::B)
                ));
            }
        },
    );
}

/// `duetctl switchover` on ctrl-a: ctrl-b becomes primary, ctrl-a secondary, both stay up.
fn switchover(mode: u8) {
    scenario(mode, "switchover", LOAD_FOR, |lab, load, problems| {
        let before = epoch(lab, Node::B);
        let r = lab.switchover(Node::A);
        if !r.ok() {
            problems.push(format!("duetctl switchover failed: {}", r.all().trim()));
            return;
        }
        let done = wait_until(
            || {
                primary_on(&lab.view(Node::B), Node::B, before)
                    && linked_secondary_of(&lab.view(Node::A), Node::B)
            },
            ROLE_CHANGE,
        );
        if !done {
            problems.push(format!(
                "after switchover ctrl-b is not primary with ctrl-a its linked secondary: ctrl-a {} \
                 {:?}, ctrl-b {:?}",
                if lab.alive(Node::A) { "alive" } else { "dead" },
                lab.view(Node::A),
                lab.view(Node::B)
            ));
        }
        // Both controllers must still be up when the load ends (a hand-over fences no one).
        load.sleep_until(LOAD_FOR.saturating_sub(Duration::from_secs(1)));
        if !lab.alive(Node::A) || !linked_secondary_of(&lab.view(Node::A), Node::B) {
            problems.push(format!(
                "ctrl-a did not stay a linked secondary after the switchover: {} {:?}",
                if lab.alive(Node::A) { "alive" } else { "dead" },
                lab.view(Node::A)
            ));
        }
    });
}

/// Log lines of `node` that say it fenced its peer.
fn fence_lines(lab: &Lab, node: Node) -> Vec<String> {
    std::fs::read_to_string(lab.log_path(node))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("fencing the peer controller") || l.contains("peer controller fenced")
        })
        .map(str::to_string)
        .collect()
}

/// SIGTERM of the primary: a planned switchover. ctrl-b takes over without fencing ctrl-a,
/// ctrl-a exits on its own, and when it starts again it rejoins as secondary.
fn sigterm_primary(mode: u8) {
    scenario(mode, "sigterm_primary", LOAD_FOR, |lab, _load, problems| {
        let before = epoch(lab, Node::B);
        if !lab.sigterm(Node::A, Duration::from_secs(10)) {
            problems.push("ctrl-a did not exit within 10 s of SIGTERM".into());
            return;
        }
        if !wait_until(
            || primary_on(&lab.view(Node::B), Node::B, before),
            ROLE_CHANGE,
        ) {
            problems.push(format!(
                "ctrl-b did not become primary after ctrl-a stopped: {:?}",
                lab.view(Node::B)
            ));
        }
        let log_a = std::fs::read_to_string(lab.log_path(Node::A)).unwrap_or_default();
        if !log_a.contains("stopped cleanly") {
            problems.push(format!(
                "ctrl-a did not report a clean stop:\n{}",
                lab.log_tail(Node::A, 20)
            ));
        }
        let fenced = fence_lines(lab, Node::B);
        if !fenced.is_empty() {
            problems.push(format!(
                "ctrl-b fenced the cleanly stopped ctrl-a: {fenced:?}"
            ));
        }
        lab.restart(Node::A);
        if !wait_until(
            || linked_secondary_of(&lab.view(Node::A), Node::B),
            ROLE_CHANGE,
        ) {
            problems.push(format!(
                "the restarted ctrl-a did not rejoin as ctrl-b's secondary: {:?}",
                lab.view(Node::A)
            ));
        }
    });
}

/// SIGTERM of the secondary: the primary keeps serving, suspends nothing and fences no one.
fn sigterm_secondary(mode: u8) {
    scenario(
        mode,
        "sigterm_secondary",
        LOAD_FOR,
        |lab, _load, problems| {
            if !lab.sigterm(Node::B, Duration::from_secs(10)) {
                problems.push("ctrl-b did not exit within 10 s of SIGTERM".into());
                return;
            }
            ctrl_a_stays_primary_alone(lab, problems, "stopped");
            let fenced = fence_lines(lab, Node::A);
            if !fenced.is_empty() {
                problems.push(format!(
                    "ctrl-a fenced the cleanly stopped ctrl-b: {fenced:?}"
                ));
            }
        },
    );
}

/// How a rolling restart stops a controller: SIGTERM, or `duetctl shutdown` (the same path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopBy {
    Sigterm,
    Duetctl,
}

/// Stops `node` cleanly by `by` and checks that it reported a clean stop and exited.
fn clean_stop(lab: &Lab, node: Node, by: StopBy, problems: &mut Vec<String>) -> bool {
    match by {
        StopBy::Sigterm => {
            if !lab.sigterm(node, Duration::from_secs(10)) {
                problems.push(format!("{node} did not exit within 10 s of SIGTERM"));
                return false;
            }
        }
        StopBy::Duetctl => {
            let r = lab.duetctl(node, &["shutdown", "--json"]);
            let doc: serde_json::Value =
                serde_json::from_str(&r.stdout).unwrap_or(serde_json::Value::Null);
            let field = |k: &str| doc.get(k).cloned().unwrap_or(serde_json::Value::Null);
            if !r.ok()
                || field("ok") != serde_json::Value::Bool(true)
                || field("outcome") != "clean"
                || field("exited") != serde_json::Value::Bool(true)
            {
                problems.push(format!(
                    "duetctl shutdown of {node} did not report a clean stop and an exit: {}",
                    r.all().trim()
                ));
                return false;
            }
            if lab.alive(node) {
                problems.push(format!(
                    "{node} still runs after duetctl shutdown said it exited"
                ));
                return false;
            }
        }
    }
    true
}

/// A rolling restart under load: stop ctrl-b cleanly, start it again, wait until the pair is
/// joined; then the same for ctrl-a. No I/O error, no fence in either log; at the end ctrl-b is
/// primary (it took over when ctrl-a stopped) and ctrl-a its linked secondary.
fn rolling_restart(mode: u8, by: StopBy) {
    let name = match by {
        StopBy::Sigterm => "rolling_restart",
        StopBy::Duetctl => "rolling_restart_duetctl",
    };
    scenario(
        mode,
        name,
        Duration::from_secs(30),
        |lab, _load, problems| {
            let first_epoch = epoch(lab, Node::A);
            for node in [Node::B, Node::A] {
                let peer = node.peer();
                if !clean_stop(lab, node, by, problems) {
                    return;
                }
                // The peer serves alone.
                let alone = wait_until(
                    || {
                        lab.view(peer).is_some_and(|v| {
                            v.link_state != 2
                                && v.role == "primary"
                                && v.primary == Some(peer.ha_id())
                        })
                    },
                    ROLE_CHANGE,
                );
                if !alone {
                    problems.push(format!(
                        "{peer} does not serve alone after {node} stopped: {:?}",
                        lab.view(peer)
                    ));
                    return;
                }
                lab.restart(node);
                let joined = wait_until(
                    || {
                        linked_secondary_of(&lab.view(node), peer)
                            && lab.view(peer).is_some_and(|v| {
                                v.link_state == 2
                                    && v.role == "primary"
                                    && v.primary == Some(peer.ha_id())
                            })
                    },
                    Duration::from_secs(20),
                );
                if !joined {
                    problems.push(format!(
                    "{node} did not rejoin as {peer}'s secondary after its restart: {node} {:?}, \
                     {peer} {:?}",
                    lab.view(node),
                    lab.view(peer)
                ));
                    return;
                }
            }
            if !primary_on(&lab.view(Node::B), Node::B, first_epoch)
                || !linked_secondary_of(&lab.view(Node::A), Node::B)
            {
                problems.push(format!(
                "after the rolling restart ctrl-b should be primary (epoch above {first_epoch}) \
                 and ctrl-a its linked secondary: ctrl-a {:?}, ctrl-b {:?}",
                lab.view(Node::A),
                lab.view(Node::B)
            ));
            }
            for node in [Node::A, Node::B] {
                let log = std::fs::read_to_string(lab.log_path(node)).unwrap_or_default();
                if !log.contains("stopped cleanly") {
                    problems.push(format!(
                        "{node} did not report a clean stop:\n{}",
                        lab.log_tail(node, 20)
                    ));
                }
                let fenced = fence_lines(lab, node);
                if !fenced.is_empty() {
                    problems.push(format!(
                        "{node} fenced its peer during a rolling restart: {fenced:?}"
                    ));
                }
            }
        },
    );
}

fn rolling_restart_sigterm(mode: u8) {
    rolling_restart(mode, StopBy::Sigterm);
}

fn rolling_restart_duetctl(mode: u8) {
    rolling_restart(mode, StopBy::Duetctl);
}

macro_rules! scenario_tests {
    ($($(#[$attr:meta])* $name:ident => $f:ident($mode:expr);)*) => {
        $(
            #[test]
            $(#[$attr])*
            fn $name() {
                $f($mode);
            }
        )*
    };
}

scenario_tests! {
    mode0_kill_secondary => kill_secondary(0);
    mode1_kill_secondary => kill_secondary(1);
    mode2_kill_secondary => kill_secondary(2);
    mode0_kill_primary => kill_primary(0);
    mode1_kill_primary => kill_primary(1);
    mode2_kill_primary => kill_primary(2);
    mode0_sigstop_primary => sigstop_primary(0);
    mode1_sigstop_primary => sigstop_primary(1);
    mode2_sigstop_primary => sigstop_primary(2);
    mode0_link_cut => link_cut(0);
    mode1_link_cut => link_cut(1);
    mode2_link_cut => link_cut(2);
    mode0_restart_rejoin => restart_rejoin(0);
    mode1_restart_rejoin => restart_rejoin(1);
    mode2_restart_rejoin => restart_rejoin(2);
    mode0_switchover => switchover(0);
    mode1_switchover => switchover(1);
    mode2_switchover => switchover(2);
    mode0_sigterm_primary => sigterm_primary(0);
    mode1_sigterm_primary => sigterm_primary(1);
    mode2_sigterm_primary => sigterm_primary(2);
    mode0_sigterm_secondary => sigterm_secondary(0);
    mode1_sigterm_secondary => sigterm_secondary(1);
    mode2_sigterm_secondary => sigterm_secondary(2);
    mode0_rolling_restart => rolling_restart_sigterm(0);
    mode1_rolling_restart => rolling_restart_sigterm(1);
    mode2_rolling_restart => rolling_restart_sigterm(2);
    mode1_rolling_restart_duetctl => rolling_restart_duetctl(1);
}

// ------------------------------------------------------------------------------------------
// libiscsi's conformance suite over both controllers
// ------------------------------------------------------------------------------------------

const INIT1: &str = "iqn.2026-11.test:init1";
const INIT2: &str = "iqn.2026-11.test:init2";

/// Runs `iscsi-test-cu --dataloss -t ALL` with one URL per controller (MultipathIO) against a
/// lab with a 64 MiB LUN and asserts that nothing failed.
/// Runs libiscsi's suite against the lab with both portals (MultipathIO). With
/// `via_secondary` the secondary's portal comes first, so nearly every command goes through the
/// secondary: forwarded to the primary (mode 2) or prepared there and run on the shared disk
/// (mode 1).
fn lab_conformance(mode: u8, via_secondary: bool) {
    if !require_programs(&["iscsi-test-cu"], "libiscsi-bin") {
        return;
    }
    let Some(lab) = Lab::start(
        mode,
        LabOpts {
            size: Some("64MiB".into()),
            ..LabOpts::default()
        },
    ) else {
        return;
    };
    let order = if via_secondary {
        [Node::B, Node::A]
    } else {
        [Node::A, Node::B]
    };
    let urls: Vec<String> = order
        .iter()
        .map(|n| format!("iscsi://{}/{}/1", n.portal(), lab_common::LAB_TARGET))
        .collect();
    let limit = Duration::from_secs(600);
    let r = lab.ns_run(
        "iscsi-test-cu",
        &[
            "--dataloss",
            "-i",
            INIT1,
            "-I",
            INIT2,
            "-t",
            "ALL",
            &urls[0],
            &urls[1],
        ],
        limit,
    );
    let out = r.all();
    let _ = fs::write(lab.dir.join("cu.log"), &out);
    let _ = fs::write(
        workspace_root().join("build").join(format!(
            "iscsi-test-cu-lab-mode{mode}{}.log",
            if via_secondary { "-via-secondary" } else { "" }
        )),
        &out,
    );
    let sum = parse_cunit(&out);
    eprintln!(
        "CONFORMANCE mode={mode} via_secondary={via_secondary} ran={} passed={} failed={} skipped={}",
        sum.ran.map_or("?".into(), |n| n.to_string()),
        sum.passed.map_or("?".into(), |n| n.to_string()),
        sum.failed.map_or("?".into(), |n| n.to_string()),
        sum.skipped_tests.len()
    );
    sum.print_tests();
    sum.assert_clean(
        &r,
        limit,
        &format!("mode {mode}, via_secondary {via_secondary}"),
    );
    assert!(sum.passed.unwrap_or(0) > 0, "no test passed");
}

#[test]
fn lab_conformance_mode1() {
    lab_conformance(1, false);
}

#[test]
fn lab_conformance_mode2() {
    lab_conformance(2, false);
}

#[test]
fn lab_conformance_mode1_via_secondary() {
    lab_conformance(1, true);
}

#[test]
fn lab_conformance_mode2_via_secondary() {
    lab_conformance(2, true);
}
