//! Rendering a checker [`Outcome`] for people (a numbered timeline per counterexample) and for
//! programs (one JSON object).

use crate::check::{Kind, Outcome, PropertyOutcome, Step, Verdict};
use serde_json::{json, Map, Value};

/// The numbered timeline of a trace: "N. what happened", then the state after it, indented.
/// The initial state is step 0.
pub fn timeline(path: &[Step]) -> Vec<String> {
    let mut lines = Vec::new();
    for (i, step) in path.iter().enumerate() {
        let what = step.action.as_deref().unwrap_or("initial state");
        lines.push(format!("{i}. {what}"));
        for state_line in step.state.lines() {
            lines.push(format!("     {state_line}"));
        }
    }
    lines
}

/// The closing remark under a trace, saying how the trace violates the property.
fn trace_remark(p: &PropertyOutcome) -> &'static str {
    match (p.kind, &p.verdict) {
        (Kind::Always, Verdict::Counterexample) => "the last state violates the property",
        (Kind::Eventually, Verdict::Counterexample) => {
            "no step after this leads to a new state, and the property never became true on the way"
        }
        (Kind::Sometimes, Verdict::Holds) => "an example: the last state satisfies the property",
        _ => "",
    }
}

/// The verdict of one property in words.
pub fn verdict_text(p: &PropertyOutcome, outcome: &Outcome) -> String {
    match p.verdict {
        Verdict::Holds if outcome.bound_reached => match outcome.depth_bound {
            Some(d) => format!("holds (within bounds: depth {d})"),
            None => "holds (within bounds)".to_string(),
        },
        Verdict::Holds => "holds".to_string(),
        Verdict::Counterexample if p.path.is_empty() => {
            "fails: no example exists in the explored states".to_string()
        }
        Verdict::Counterexample => format!(
            "COUNTEREXAMPLE ({} step{})",
            p.path.len().saturating_sub(1),
            if p.path.len() == 2 { "" } else { "s" }
        ),
        Verdict::Undecided => "undecided (the run stopped at the first counterexample)".to_string(),
    }
}

/// The text report: a header, the run's numbers, then each property with its verdict and, for a
/// counterexample, the timeline.
pub fn render_text(header: &[(&str, String)], outcome: &Outcome) -> String {
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("Duet cluster model: {}\n", head.join(", ")));
    out.push_str(&format!(
        "explored {} states ({} unique), max depth {}{}, {:.1} s\n\n",
        outcome.states,
        outcome.unique_states,
        outcome.max_depth,
        match outcome.depth_bound {
            Some(d) => format!(" (bound {d})"),
            None => String::new(),
        },
        outcome.seconds
    ));
    for p in &outcome.properties {
        out.push_str(&format!(
            "{} ({}): {}\n",
            p.name,
            p.kind.name(),
            verdict_text(p, outcome)
        ));
        let show_path = p.verdict == Verdict::Counterexample
            || (p.kind == Kind::Sometimes && p.verdict == Verdict::Holds);
        if show_path && !p.path.is_empty() {
            for line in timeline(&p.path) {
                out.push_str(&format!("   {line}\n"));
            }
            out.push_str(&format!("   -- {}\n", trace_remark(p)));
        }
        if show_path {
            out.push('\n');
        }
    }
    let failed: Vec<&str> = outcome
        .properties
        .iter()
        .filter(|p| p.verdict == Verdict::Counterexample)
        .map(|p| p.name.as_str())
        .collect();
    if failed.is_empty() {
        out.push_str(&format!(
            "\nresult: every property holds{}\n",
            if outcome.bound_reached {
                " within the depth bound"
            } else {
                ""
            }
        ));
    } else {
        out.push_str(&format!(
            "\nresult: {} counterexample{} ({})\n",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        ));
    }
    out
}

/// The JSON report: the `header` fields first, then the run's numbers and one entry per
/// property: `name`, `expectation`, `holds`, `verdict` and `trace` (the timeline lines of the
/// counterexample; empty when the property holds). A `sometimes` property that holds carries its
/// example in `example`.
pub fn render_json(header: Map<String, Value>, outcome: &Outcome) -> Value {
    let mut obj = header;
    obj.insert("states".into(), json!(outcome.states));
    obj.insert("unique_states".into(), json!(outcome.unique_states));
    obj.insert("max_depth".into(), json!(outcome.max_depth));
    obj.insert("depth_bound".into(), json!(outcome.depth_bound));
    obj.insert("bound_reached".into(), json!(outcome.bound_reached));
    obj.insert(
        "seconds".into(),
        json!((outcome.seconds * 1000.0).round() / 1000.0),
    );
    let props: Vec<Value> = outcome
        .properties
        .iter()
        .map(|p| {
            let mut entry = json!({
                "name": p.name,
                "expectation": p.kind.name(),
                "holds": p.holds(),
                "verdict": match p.verdict {
                    Verdict::Holds => "holds",
                    Verdict::Counterexample => "counterexample",
                    Verdict::Undecided => "undecided",
                },
                "trace": if p.verdict == Verdict::Counterexample {
                    timeline(&p.path)
                } else {
                    Vec::new()
                },
            });
            if p.kind == Kind::Sometimes && p.holds() {
                entry["example"] = json!(timeline(&p.path));
            }
            entry
        })
        .collect();
    obj.insert("properties".into(), Value::Array(props));
    obj.insert("all_hold".into(), json!(outcome.all_hold()));
    Value::Object(obj)
}

/// The process exit status for an outcome: 0 every property holds, 1 a counterexample was found
/// (or a property is undecided).
pub fn exit_code(outcome: &Outcome) -> i32 {
    if outcome.all_hold() {
        0
    } else {
        1
    }
}
