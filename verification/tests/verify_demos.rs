//! The demonstrations of `duet-verify`, run through the real binary: each policy and each
//! deliberate bug gives the verdict the project claims, with the documented exit codes and JSON.

use serde_json::Value;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_duet-verify");
const SAFETY: [&str; 4] = [
    "single-primary",
    "linearizable",
    "acked-writes-durable",
    "alua-truthful",
];

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("duet-verify runs")
}

/// Runs `duet-verify check ARGS --json` and returns the exit code and the parsed report, after
/// checking the report's shape.
fn check_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().expect("an exit code");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        stderr.contains("states"),
        "progress goes to stderr:\n{stderr}"
    );
    for key in [
        "policy",
        "mode",
        "states",
        "unique_states",
        "max_depth",
        "seconds",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    assert!(report["states"].as_u64() >= report["unique_states"].as_u64());
    assert!(report["unique_states"].as_u64().is_some_and(|n| n > 0));
    let props = report["properties"].as_array().expect("properties");
    let names: Vec<&str> = props.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, duet_verification::cluster::PROPERTY_NAMES.to_vec());
    for p in props {
        let expectation = p["expectation"].as_str().expect("expectation");
        assert!(["always", "eventually", "sometimes"].contains(&expectation));
        let holds = p["holds"].as_bool().expect("holds is a boolean");
        let trace = p["trace"].as_array().expect("trace is an array");
        if holds {
            assert!(trace.is_empty(), "{p}");
        } else {
            assert!(!trace.is_empty(), "a counterexample has a trace: {p}");
            assert_eq!(trace[0], "0. initial state");
            assert!(trace.iter().all(|l| l.is_string()));
            assert!(
                trace
                    .iter()
                    .any(|l| l.as_str().is_some_and(|s| s.starts_with("1. "))),
                "the trace has at least one step: {p}"
            );
        }
    }
    let expected_code = if props.iter().all(|p| p["holds"] == true) {
        0
    } else {
        1
    };
    assert_eq!(code, expected_code, "exit code\n{report}\n{stderr}");
    (code, report)
}

fn holds(report: &Value, name: &str) -> bool {
    report["properties"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["holds"].as_bool())
        .unwrap_or_else(|| panic!("no property {name} in {report}"))
}

fn failing(report: &Value) -> Vec<String> {
    report["properties"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["holds"] == false)
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn manual_failover_never_elects_a_new_primary_but_stays_safe() {
    let (code, report) = check_json(&["--policy", "manual"]);
    assert_eq!(code, 1);
    assert_eq!(report["policy"], "manual");
    assert!(!holds(&report, "primary-eventually"), "{report}");
    for name in SAFETY {
        assert!(
            holds(&report, name),
            "{name} must hold under manual: {report}"
        );
    }
}

#[test]
fn naive_failover_breaks_safety() {
    let (code, report) = check_json(&["--policy", "naive"]);
    assert_eq!(code, 1);
    let broken = failing(&report);
    assert!(
        ["single-primary", "linearizable", "acked-writes-durable"]
            .iter()
            .any(|n| broken.iter().any(|b| b == n)),
        "naive must break a safety property, broke {broken:?}: {report}"
    );
}

/// Every mode with one write and a read per client and no client time-out, to keep the test
/// suite short (about 1.5 to 6.5 M unique states each); `duet-verify check --mode 0` (or 1, 2)
/// runs them at the default bounds (tens of minutes each, and several GB: see
/// docs/verification.md).
#[test]
fn automatic_failover_holds_in_every_ha_mode() {
    for mode in ["0", "1", "2"] {
        let (code, report) = check_json(&[
            "--policy",
            "automatic",
            "--mode",
            mode,
            "--bound",
            "ops_per_client=2",
            "--bound",
            "client_timeouts=0",
        ]);
        assert_eq!(code, 0, "mode {mode}: {:?}", failing(&report));
        assert_eq!(report["mode"].as_u64(), mode.parse().ok());
        assert_eq!(report["bounds"]["ops_per_client"], 2);
    }
}

// The mutations' counterexamples need no cut of the HA link; without link cuts the checks
// take seconds instead of minutes.

#[test]
fn a_lease_margin_below_the_drift_bound_is_caught() {
    let (code, report) = check_json(&[
        "--policy",
        "automatic",
        "--margin-below-drift",
        "--bound",
        "link_cuts=0",
    ]);
    assert_eq!(code, 1);
    assert_eq!(report["margin_below_drift"], true);
    assert!(!failing(&report).is_empty(), "{report}");
}

#[test]
fn failover_without_fencing_is_caught() {
    let (code, report) = check_json(&[
        "--policy",
        "automatic",
        "--fencing",
        "none",
        "--bound",
        "link_cuts=0",
    ]);
    assert_eq!(code, 1);
    assert_eq!(report["fencing"], "none");
    let broken = failing(&report);
    assert!(
        broken
            .iter()
            .any(|b| b == "acked-writes-durable" || b == "linearizable"),
        "the paused controller's stale write must show: {report}"
    );
}

#[test]
fn an_ungranted_write_of_the_secondary_is_caught() {
    // Mode 1: the secondary queues a write without a grant; the client times out, the primary
    // takes the retry and a newer write, and the secondary's write lands last.
    let (code, report) = check_json(&[
        "--policy",
        "automatic",
        "--mode",
        "1",
        "--mutation",
        "ungranted-write",
        "--bound",
        "link_cuts=0",
    ]);
    assert_eq!(code, 1);
    assert_eq!(report["mutations"], serde_json::json!(["ungranted-write"]));
    let broken = failing(&report);
    assert!(
        broken
            .iter()
            .any(|b| b == "acked-writes-durable" || b == "linearizable"),
        "the secondary's ungranted write must show: {report}"
    );
}

#[test]
fn a_takeover_that_serves_before_its_fence_completes_is_caught() {
    // The survivor asks for the fence and serves at once: the old primary's queued write lands
    // after the new primary's acknowledged ones.
    let (code, report) = check_json(&[
        "--policy",
        "automatic",
        "--mode",
        "1",
        "--mutation",
        "takeover-before-fence",
        "--bound",
        "link_cuts=0",
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        report["mutations"],
        serde_json::json!(["takeover-before-fence"])
    );
    let broken = failing(&report);
    assert!(
        broken
            .iter()
            .any(|b| b == "acked-writes-durable" || b == "linearizable"),
        "the unfenced old primary's write must show: {report}"
    );
}

#[test]
fn a_fence_at_the_disk_keeps_every_property() {
    // The agent preempts the old primary at the disk instead of killing it: it lives on,
    // believes it serves until its first refused I/O, and may try to fence back.
    let (code, report) = check_json(&[
        "--policy",
        "automatic",
        "--mode",
        "1",
        "--fencing",
        "disk",
        "--bound",
        "link_cuts=0",
    ]);
    assert_eq!(report["fencing"], "disk");
    assert_eq!(code, 0, "{:?}", failing(&report));
}

#[test]
fn the_same_checks_with_fencing_and_the_right_margin_hold() {
    // The controls for the mutations above: same bounds, no mutation, no counterexample.
    let (code, report) = check_json(&["--policy", "automatic", "--bound", "link_cuts=0"]);
    assert_eq!(code, 0, "{:?}", failing(&report));
}

#[test]
fn a_depth_bound_qualifies_holds() {
    let out = run(&["check", "--policy", "automatic", "--depth", "6", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("single-primary (always): holds (within bounds: depth 6)"),
        "{text}"
    );
}

#[test]
fn the_text_report_reads_as_a_timeline() {
    let out = run(&["check", "--policy", "manual", "--quiet"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("primary-eventually (eventually): COUNTEREXAMPLE"),
        "{text}"
    );
    assert!(text.contains("single-primary (always): holds"), "{text}");
    assert!(text.contains("   0. initial state\n"), "{text}");
    assert!(text.contains("   1. "), "{text}");
    assert!(
        text.contains("result: 1 counterexample (primary-eventually)"),
        "{text}"
    );
    assert!(out.stderr.is_empty(), "--quiet prints no progress");
}

#[test]
fn bad_usage_exits_2_with_a_message() {
    for args in [
        vec!["check", "--policy", "optimistic"],
        vec!["check", "--mode", "7"],
        vec!["check", "--fencing", "maybe"],
        vec!["check", "--mutation", "typo"],
        vec!["check", "--depth", "many"],
        vec!["frobnicate"],
        vec![],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Usage") || stderr.contains("error"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
