//! The checker front end (check, text and JSON reports) on a tiny model whose verdicts are known
//! by hand, independent of the Duet cluster model.

use duet_verification::check::{check, Narrated, RunSettings, Verdict};
use duet_verification::report::{exit_code, render_json, render_text, timeline};
use serde_json::{Map, Value};
use stateright::{Model, Property};

/// A counter that steps up to `top`; it may crash once, after which nothing happens.
#[derive(Clone)]
struct Counter {
    top: u8,
    /// `below-limit` fails when the counter exceeds this.
    limit: u8,
    can_crash: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CounterState {
    value: u8,
    crashed: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum CounterAction {
    Step,
    Crash,
}

impl Model for Counter {
    type State = CounterState;
    type Action = CounterAction;

    fn init_states(&self) -> Vec<CounterState> {
        vec![CounterState {
            value: 0,
            crashed: false,
        }]
    }

    fn actions(&self, s: &CounterState, actions: &mut Vec<CounterAction>) {
        if s.crashed {
            return;
        }
        if s.value < self.top {
            actions.push(CounterAction::Step);
        }
        if self.can_crash {
            actions.push(CounterAction::Crash);
        }
    }

    fn next_state(&self, s: &CounterState, a: CounterAction) -> Option<CounterState> {
        let mut n = s.clone();
        match a {
            CounterAction::Step => n.value += 1,
            CounterAction::Crash => n.crashed = true,
        }
        Some(n)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("below-limit", |m: &Counter, s: &CounterState| {
                s.value <= m.limit
            }),
            Property::eventually("reaches-top", |m: &Counter, s: &CounterState| {
                s.value == m.top
            }),
            Property::sometimes("halfway", |m: &Counter, s: &CounterState| {
                s.value == m.top / 2
            }),
        ]
    }
}

impl Narrated for Counter {
    fn narrate_action(&self, a: &CounterAction) -> String {
        match a {
            CounterAction::Step => "the counter steps up".into(),
            CounterAction::Crash => "the counter crashes".into(),
        }
    }

    fn narrate_state(&self, s: &CounterState) -> String {
        format!(
            "value {}{}",
            s.value,
            if s.crashed { ", crashed" } else { "" }
        )
    }
}

fn settings(depth: Option<usize>, threads: usize) -> RunSettings {
    RunSettings {
        depth,
        threads,
        ..RunSettings::default()
    }
}

fn run(model: Counter, depth: Option<usize>) -> duet_verification::Outcome {
    let mut samples = Vec::new();
    let outcome = check(model, &settings(depth, 1), &mut |p| samples.push(p.clone()));
    let last = samples.last().expect("a final progress sample");
    assert!(last.done, "the last progress sample says the run is done");
    let check_done = samples
        .iter()
        .find(|p| p.stage == "check" && p.done)
        .expect("the check's final sample");
    assert_eq!(check_done.unique_states, outcome.unique_states);
    outcome
}

fn header() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("policy".into(), Value::from("toy"));
    m.insert("mode".into(), Value::from(1));
    m
}

#[test]
fn a_correct_model_holds_everywhere_with_empty_traces_and_exit_0() {
    let outcome = run(
        Counter {
            top: 6,
            limit: 6,
            can_crash: false,
        },
        None,
    );
    assert!(outcome.all_hold());
    assert_eq!(outcome.unique_states, 7);
    assert_eq!(exit_code(&outcome), 0);
    let text = render_text(&[("policy", "toy".into())], &outcome);
    assert!(text.contains("below-limit (always): holds\n"), "{text}");
    assert!(text.contains("reaches-top (eventually): holds\n"), "{text}");
    assert!(text.contains("result: every property holds"), "{text}");
    let json = render_json(header(), &outcome);
    assert_eq!(json["policy"], "toy");
    assert_eq!(json["mode"], 1);
    assert_eq!(json["unique_states"], 7);
    for p in json["properties"].as_array().expect("properties") {
        assert_eq!(p["holds"], true);
        assert_eq!(p["trace"].as_array().map(|t| t.len()), Some(0));
    }
}

#[test]
fn a_safety_violation_prints_a_numbered_timeline_ending_in_the_bad_state() {
    let outcome = run(
        Counter {
            top: 6,
            limit: 3,
            can_crash: false,
        },
        None,
    );
    assert_eq!(exit_code(&outcome), 1);
    let p = outcome.property("below-limit").expect("property");
    assert_eq!(p.verdict, Verdict::Counterexample);
    // Breadth-first on one thread: the shortest path, 4 steps from 0 to 4.
    assert_eq!(p.path.len(), 5);
    assert_eq!(
        timeline(&p.path),
        vec![
            "0. initial state",
            "     value 0",
            "1. the counter steps up",
            "     value 1",
            "2. the counter steps up",
            "     value 2",
            "3. the counter steps up",
            "     value 3",
            "4. the counter steps up",
            "     value 4",
        ]
    );
    let text = render_text(&[("policy", "toy".into())], &outcome);
    assert!(
        text.contains("below-limit (always): COUNTEREXAMPLE (4 steps)"),
        "{text}"
    );
    assert!(
        text.contains("result: 1 counterexample (below-limit)"),
        "{text}"
    );
    let json = render_json(header(), &outcome);
    let props = json["properties"].as_array().expect("properties");
    let bl = props
        .iter()
        .find(|p| p["name"] == "below-limit")
        .expect("below-limit");
    assert_eq!(bl["holds"], false);
    assert_eq!(bl["expectation"], "always");
    assert_eq!(bl["trace"][0], "0. initial state");
    assert_eq!(bl["trace"].as_array().map(|t| t.len()), Some(10));
}

#[test]
fn a_liveness_violation_shows_the_path_that_gets_stuck() {
    let outcome = run(
        Counter {
            top: 4,
            limit: 4,
            can_crash: true,
        },
        None,
    );
    let p = outcome.property("reaches-top").expect("property");
    assert_eq!(p.verdict, Verdict::Counterexample);
    let last = p.path.last().expect("a path");
    assert!(last.state.contains("crashed"), "{:?}", p.path);
    assert!(outcome.property("below-limit").is_some_and(|p| p.holds()));
    let text = render_text(&[], &outcome);
    assert!(text.contains("the counter crashes"), "{text}");
    assert!(text.contains("never became true"), "{text}");
    let json = render_json(Map::new(), &outcome);
    let rt = json["properties"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "reaches-top"))
        .expect("reaches-top");
    assert_eq!(rt["expectation"], "eventually");
    assert!(rt["trace"].as_array().is_some_and(|t| !t.is_empty()));
}

#[test]
fn a_depth_bound_qualifies_the_verdict() {
    let outcome = run(
        Counter {
            top: 50,
            limit: 50,
            can_crash: false,
        },
        Some(5),
    );
    assert!(outcome.bound_reached);
    // Safety and liveness hold within the bound; the halfway point (25) lies beyond it.
    assert!(outcome.property("below-limit").is_some_and(|p| p.holds()));
    assert!(outcome.property("reaches-top").is_some_and(|p| p.holds()));
    assert!(outcome.property("halfway").is_some_and(|p| !p.holds()));
    assert!(outcome.unique_states < 51);
    let text = render_text(&[], &outcome);
    assert!(
        text.contains("below-limit (always): holds (within bounds: depth 5)"),
        "{text}"
    );
    let json = render_json(Map::new(), &outcome);
    assert_eq!(json["depth_bound"], 5);
    assert_eq!(json["bound_reached"], true);
}

#[test]
fn several_threads_reach_the_same_verdicts() {
    let model = Counter {
        top: 30,
        limit: 20,
        can_crash: true,
    };
    let one = check(model.clone(), &settings(None, 1), &mut |_| {});
    let two = check(model, &settings(None, 2), &mut |_| {});
    assert_eq!(one.unique_states, two.unique_states);
    for p in &one.properties {
        let q = two.property(&p.name).expect("same properties");
        assert_eq!(p.verdict, q.verdict, "{}", p.name);
    }
}

#[test]
fn depth_first_search_reaches_the_same_verdicts_with_short_traces() {
    let model = Counter {
        top: 12,
        limit: 5,
        can_crash: true,
    };
    let dfs = RunSettings {
        search: duet_verification::check::Search::Dfs,
        ..settings(None, 1)
    };
    let a = check(model.clone(), &settings(None, 1), &mut |_| {});
    let b = check(model, &dfs, &mut |_| {});
    for p in &a.properties {
        let q = b.property(&p.name).expect("same properties");
        assert_eq!(p.verdict, q.verdict, "{}", p.name);
    }
    // The safety trace is shortened to the first violation: 0 to 6 in 6 steps.
    let bl = b.property("below-limit").expect("below-limit");
    assert_eq!(bl.path.len(), 7, "{:?}", bl.path);
}
