//! The model's demonstrations, at small bounds: each expected verdict, by property name.
//! Run with `cargo test --release -p duet-model`.

use duet_core::alua::HaMode;
use duet_model::{ClusterModel, Fencing, ModelOptions, Policy, PROPERTY_NAMES};
use stateright::{Checker, HasDiscoveries, Model};
use std::collections::BTreeSet;

/// Options with every fault switched off, on a short horizon.
fn quiet(policy: Policy, mode: HaMode, fencing: Fencing) -> ModelOptions {
    ModelOptions {
        policy,
        mode,
        fencing,
        crashes: 0,
        restarts: 0,
        link_cuts: 0,
        msg_losses: 0,
        msg_dups: 0,
        quorum_failures: 0,
        quorum_stalls: 0,
        pauses: 0,
        drift_steps: 0,
        fence_failures: 0,
        client_timeouts: 0,
        fault_ticks: 3,
        max_ticks: 10,
        ..ModelOptions::default()
    }
}

const SAFETY: [&str; 4] = [
    "single-primary",
    "linearizable",
    "acked-writes-durable",
    "alua-truthful",
];

/// A full check: the set of properties with a counterexample.
fn full(opts: ModelOptions) -> BTreeSet<&'static str> {
    let checker = ClusterModel::new(opts)
        .checker()
        .threads(1)
        .spawn_bfs()
        .join();
    PROPERTY_NAMES
        .into_iter()
        .filter(|p| checker.discovery(p).is_some())
        .collect()
}

/// A check that stops at the first counterexample to one of `wanted`; returns what was found.
fn first_of(opts: ModelOptions, wanted: &[&'static str]) -> BTreeSet<&'static str> {
    let checker = ClusterModel::new(opts)
        .checker()
        .threads(1)
        .finish_when(HasDiscoveries::AnyOf(wanted.iter().copied().collect()))
        .spawn_bfs()
        .join();
    PROPERTY_NAMES
        .into_iter()
        .filter(|p| checker.discovery(p).is_some())
        .collect()
}

#[test]
fn manual_policy_leaves_the_survivor_transitioning_but_stays_safe() {
    for mode in [HaMode::ActiveStandby, HaMode::ActiveActiveShared] {
        let mut o = quiet(Policy::Manual, mode, Fencing::Agent);
        o.crashes = 1;
        o.link_cuts = 1;
        let found = full(o);
        assert!(found.contains("primary-eventually"), "{mode:?}: {found:?}");
        for p in SAFETY {
            assert!(!found.contains(p), "{mode:?}: {p} failed under manual");
        }
    }
}

#[test]
fn naive_policy_splits_the_brain_after_a_link_cut() {
    let mut o = quiet(Policy::Naive, HaMode::ActiveActiveShared, Fencing::None);
    o.link_cuts = 1;
    let found = full(o);
    assert!(found.contains("single-primary"), "{found:?}");
}

fn automatic_holds(mode: HaMode) {
    let mut o = quiet(Policy::Automatic, mode, Fencing::Agent);
    o.crashes = 1;
    o.link_cuts = 1;
    o.quorum_stalls = 1;
    let found = full(o);
    assert!(found.is_empty(), "{mode:?}: {found:?}");
}

#[test]
fn automatic_policy_holds_everything_in_mode_0() {
    automatic_holds(HaMode::ActiveStandby);
}

#[test]
fn automatic_policy_holds_everything_in_mode_1() {
    automatic_holds(HaMode::ActiveActiveShared);
}

#[test]
fn automatic_policy_holds_everything_in_mode_2() {
    automatic_holds(HaMode::ActiveActiveForward);
}

#[test]
fn automatic_policy_survives_a_restart_and_lost_messages() {
    let mut o = quiet(
        Policy::Automatic,
        HaMode::ActiveActiveForward,
        Fencing::Agent,
    );
    o.crashes = 1;
    o.restarts = 1;
    o.msg_losses = 1;
    o.msg_dups = 1;
    o.quorum_failures = 1;
    let found = full(o);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn without_fencing_a_paused_controller_writes_stale_data() {
    for mode in [HaMode::ActiveStandby, HaMode::ActiveActiveShared] {
        let mut o = quiet(Policy::Automatic, mode, Fencing::None);
        o.quorum_stalls = 1;
        o.pauses = 1;
        o.client_timeouts = 1;
        let found = first_of(o, &["acked-writes-durable", "linearizable"]);
        assert!(
            found.contains("acked-writes-durable") || found.contains("linearizable"),
            "{mode:?}: {found:?}"
        );
    }
}

#[test]
fn a_secondary_writing_without_a_grant_loses_an_acknowledged_write() {
    // Mode 1, the `ungranted_write` mutation: the primary's queued write no longer orders the
    // secondary's, so a write the client gave up on lands after a newer acknowledged one.
    let mut o = quiet(
        Policy::Automatic,
        HaMode::ActiveActiveShared,
        Fencing::Agent,
    );
    o.client_timeouts = 1;
    o.ungranted_write = true;
    let found = first_of(o.clone(), &["acked-writes-durable", "linearizable"]);
    assert!(
        found.contains("acked-writes-durable") || found.contains("linearizable"),
        "{found:?}"
    );
    // The control: with grants, the same bounds hold everything.
    o.ungranted_write = false;
    let found = full(o);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn with_fencing_the_paused_controller_is_stopped_in_time() {
    let mut o = quiet(Policy::Automatic, HaMode::ActiveStandby, Fencing::Agent);
    o.quorum_stalls = 1;
    o.pauses = 1;
    o.client_timeouts = 1;
    let found = full(o);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn without_fencing_a_correct_margin_still_keeps_one_primary() {
    let mut o = quiet(Policy::Automatic, HaMode::ActiveActiveShared, Fencing::None);
    o.quorum_stalls = 1;
    o.drift_steps = 2;
    let found = full(o);
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn a_margin_below_the_drift_bound_gives_two_primaries_without_fencing() {
    let mut o = quiet(Policy::Automatic, HaMode::ActiveActiveShared, Fencing::None);
    o.quorum_stalls = 1;
    o.drift_steps = 2;
    o.margin_below_drift = true;
    let found = first_of(o, &["single-primary"]);
    assert!(found.contains("single-primary"), "{found:?}");
}

#[test]
fn a_margin_below_the_drift_bound_breaks_the_alua_picture_even_with_fencing() {
    let mut o = quiet(
        Policy::Automatic,
        HaMode::ActiveActiveShared,
        Fencing::Agent,
    );
    o.quorum_stalls = 1;
    o.drift_steps = 2;
    o.margin_below_drift = true;
    let found = first_of(o, &["alua-truthful", "single-primary"]);
    assert!(found.contains("alua-truthful"), "{found:?}");
}

#[test]
fn counterexamples_read_as_timelines() {
    let mut o = quiet(Policy::Naive, HaMode::ActiveActiveShared, Fencing::None);
    o.link_cuts = 1;
    let model = ClusterModel::new(o);
    let checker = model.clone().checker().threads(1).spawn_bfs().join();
    let path = checker.discovery("single-primary").expect("split brain");
    let states = path.clone().into_states();
    let actions = path.into_actions();
    assert!(!actions.is_empty());
    let lines: Vec<String> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| model.describe_step(&states[i], a))
        .collect();
    assert!(
        lines.iter().any(|l| l == "the HA link is cut"),
        "{lines:#?}"
    );
    let last = model.describe_state(states.last().expect("a final state"));
    assert_eq!(last.matches("primary e").count(), 2, "{last}");
    for a in &actions {
        assert!(!model.describe_action(a).is_empty());
    }
}

/// A clean stop (SIGTERM) of either controller, at any moment, with the HA link cut at any
/// moment around it (`link_cut`): every property holds, and the controller that stopped and
/// said so is never fenced. (Deeper: `duet-verify check --bound stops=1 --bound link_cuts=1
/// --bound quorum_stalls=1 --bound pauses=1`, minutes per mode.)
fn a_clean_stop_holds(mode: HaMode, link_cut: bool) {
    let mut o = quiet(Policy::Automatic, mode, Fencing::Agent);
    o.stops = 1;
    o.link_cuts = u8::from(link_cut);
    let found = full(o);
    assert!(found.is_empty(), "{mode:?}: {found:?}");
}

#[test]
fn a_clean_stop_hands_over_safely_in_mode_0() {
    a_clean_stop_holds(HaMode::ActiveStandby, true);
}

#[test]
fn a_clean_stop_hands_over_safely_in_mode_1() {
    a_clean_stop_holds(HaMode::ActiveActiveShared, true);
}

#[test]
fn a_clean_stop_hands_over_safely_in_mode_2() {
    a_clean_stop_holds(HaMode::ActiveActiveForward, false);
}

#[test]
fn a_clean_stop_under_manual_failover_is_safe_and_unfenced() {
    let mut o = quiet(Policy::Manual, HaMode::ActiveActiveShared, Fencing::Agent);
    o.stops = 1;
    o.link_cuts = 1;
    let found = full(o);
    for p in SAFETY {
        assert!(!found.contains(p), "{p} failed: {found:?}");
    }
    assert!(!found.contains("clean-stop-unfenced"), "{found:?}");
}
