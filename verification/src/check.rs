//! Running the stateright checker over any model that can narrate itself, and collecting what it
//! found into plain values ([`Outcome`]) that the report module renders.

use stateright::{Checker, Expectation, HasDiscoveries, Model, Path};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A model that can explain its actions and states in words, so that a counterexample reads as a
/// timeline rather than as a dump of Rust values.
pub trait Narrated: Model {
    /// One line saying what happened, e.g. "controller 1 crashes".
    fn narrate_action(&self, action: &Self::Action) -> String;
    /// The state after a step: roles, epochs, ALUA states. May span several lines.
    fn narrate_state(&self, state: &Self::State) -> String;
    /// What a step did, knowing the state it started from (which message, which value).
    fn narrate_step(&self, before: &Self::State, action: &Self::Action) -> String {
        let _ = before;
        self.narrate_action(action)
    }
}

/// The order in which the checker visits states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// Breadth-first: short traces; keeps the whole frontier in memory.
    Bfs,
    /// Depth-first: far less memory on large models; traces may be long (they are shortened
    /// afterwards unless `shorten` is off).
    Dfs,
}

/// How to run the checker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Breadth-first (the default) or depth-first.
    pub search: Search,
    /// Explore paths up to this many steps only (`None`: the model's own bounds).
    pub depth: Option<usize>,
    /// Checker threads (at least 1).
    pub threads: usize,
    /// Stop as soon as any property has a counterexample (shorter runs and traces; the other
    /// properties are then reported as undecided).
    pub stop_at_first: bool,
    /// How often the progress callback is called.
    pub progress_every: Duration,
    /// After the check, search again for a short counterexample to each violated property
    /// (breadth-first, stopping at the first violation), so traces are easy to read.
    pub shorten: bool,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            search: Search::Bfs,
            depth: None,
            threads: default_threads(),
            stop_at_first: false,
            progress_every: Duration::from_secs(1),
            shorten: true,
        }
    }
}

/// The number of cores available to this process (at least 1).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A progress sample, delivered while the checker runs and once at the end of each run.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// What is running: "check", or "shortest trace for NAME".
    pub stage: String,
    /// States generated, repeats included.
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// Deepest path explored so far.
    pub max_depth: usize,
    /// Time since the start of the run.
    pub elapsed: Duration,
    /// Whether the run has finished.
    pub done: bool,
}

impl Progress {
    /// States generated per second so far.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.states as f64 / secs
        } else {
            0.0
        }
    }

    /// A one-line human summary, as printed on stderr during a check.
    pub fn line(&self) -> String {
        format!(
            "{}{} {} states, {} unique, depth {}, {:.1} s, {:.0} states/s",
            self.stage,
            if self.done { ", done:" } else { ":" },
            self.states,
            self.unique_states,
            self.max_depth,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

/// When a property is expected to hold (stateright's three kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// In every reachable state.
    Always,
    /// On every path, at some point.
    Eventually,
    /// In at least one reachable state.
    Sometimes,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Always => "always",
            Kind::Eventually => "eventually",
            Kind::Sometimes => "sometimes",
        }
    }

    fn from_expectation(e: &Expectation) -> Kind {
        match e {
            Expectation::Always => Kind::Always,
            Expectation::Eventually => Kind::Eventually,
            Expectation::Sometimes => Kind::Sometimes,
        }
    }
}

/// The verdict on one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No counterexample in the explored states (for `sometimes`: an example was found).
    Holds,
    /// A path that violates the property (for `sometimes`: no example exists).
    Counterexample,
    /// The run stopped before the property was decided (`stop_at_first`).
    Undecided,
}

/// One step of a trace: what happened and the state it led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// `None` for the initial state.
    pub action: Option<String>,
    pub state: String,
}

/// What the checker concluded about one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyOutcome {
    pub name: String,
    pub kind: Kind,
    pub verdict: Verdict,
    /// The counterexample (or, for a `sometimes` property, the example), initial state first.
    pub path: Vec<Step>,
}

impl PropertyOutcome {
    /// Whether the property is satisfied (as far as the explored states tell).
    pub fn holds(&self) -> bool {
        self.verdict == Verdict::Holds
    }
}

/// The result of one checker run.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub states: usize,
    pub unique_states: usize,
    pub max_depth: usize,
    pub seconds: f64,
    /// The depth bound of the run, if any.
    pub depth_bound: Option<usize>,
    /// Whether the depth bound cut some paths short (verdicts then hold "within bounds").
    pub bound_reached: bool,
    pub properties: Vec<PropertyOutcome>,
}

impl Outcome {
    /// Every property holds.
    pub fn all_hold(&self) -> bool {
        self.properties.iter().all(|p| p.holds())
    }

    /// Some property has a counterexample.
    pub fn any_counterexample(&self) -> bool {
        self.properties
            .iter()
            .any(|p| p.verdict == Verdict::Counterexample)
    }

    /// The outcome for a property by name.
    pub fn property(&self, name: &str) -> Option<&PropertyOutcome> {
        self.properties.iter().find(|p| p.name == name)
    }
}

/// A test on a state that ends a timeline early.
type StopAt<'a, S> = &'a dyn Fn(&S) -> bool;

/// The path as a timeline, cut after the first state where `stop` is true (if any).
///
/// The breadth-first checker keeps exploring past a violation and records the last violating
/// state it meets, so a recorded path often passes through an earlier violation: cutting there
/// gives a shorter counterexample that is just as real.
fn narrate_path<M: Narrated>(
    model: &M,
    path: Path<M::State, M::Action>,
    stop: Option<StopAt<'_, M::State>>,
) -> Vec<Step> {
    // `into_vec` pairs each state with the action taken *from* it; a timeline wants the action
    // that led *to* each state.
    let mut steps = Vec::new();
    let mut pending: Option<String> = None;
    for (state, action) in path.into_vec() {
        steps.push(Step {
            action: pending.take(),
            state: model.narrate_state(&state),
        });
        if stop.is_some_and(|f| f(&state)) {
            break;
        }
        pending = action.map(|a| model.narrate_step(&state, &a));
    }
    steps
}

/// A discovery: the property's name and the path to it.
type Discovery<M> = (
    &'static str,
    Path<<M as Model>::State, <M as Model>::Action>,
);

/// The counts and discoveries of one checker run.
struct Run<M: Model> {
    last: Progress,
    discoveries: Vec<Discovery<M>>,
}

/// One checker run, with progress samples.
#[allow(clippy::too_many_arguments)]
fn run_bfs<M>(
    model: M,
    settings: &RunSettings,
    search: Search,
    depth: Option<usize>,
    finish_when: HasDiscoveries,
    timeout: Option<Duration>,
    stage: &str,
    progress: &mut dyn FnMut(&Progress),
) -> Run<M>
where
    M: Narrated + Send + Sync + 'static,
    M::State: Hash + Debug + Clone + PartialEq + Send + Sync + 'static,
    M::Action: Debug + Clone + PartialEq + Send + Sync + 'static,
{
    let mut builder = model
        .checker()
        .threads(settings.threads.max(1))
        .finish_when(finish_when);
    if let Some(depth) = depth {
        builder = builder.target_max_depth(depth);
    }
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    let start = Instant::now();
    let mut checker: Box<dyn Checker<M>> = match search {
        Search::Bfs => Box::new(builder.spawn_bfs()),
        Search::Dfs => Box::new(builder.spawn_dfs()),
    };
    let handles = checker.handles();
    let sample = |done: bool| Progress {
        stage: stage.to_string(),
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        elapsed: start.elapsed(),
        done,
    };
    let tick = Duration::from_millis(50);
    let mut last = Instant::now();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(tick);
        if last.elapsed() >= settings.progress_every {
            last = Instant::now();
            progress(&sample(false));
        }
    }
    let mut worker_panicked = false;
    for h in handles {
        if h.join().is_err() {
            worker_panicked = true;
        }
    }
    if worker_panicked {
        // A panic inside the model is a bug in the model or in the code it runs; re-raising it
        // keeps it loud instead of reporting a verdict computed from part of the state space.
        panic!("the model checker stopped: the model panicked while exploring a state");
    }
    let last_sample = sample(true);
    progress(&last_sample);
    Run {
        last: last_sample,
        discoveries: checker.discoveries().into_iter().collect(),
    }
}

/// Runs a breadth-first check of `model`, calling `progress` about every
/// `settings.progress_every` and once when done, and returns the verdict on every property.
pub fn check<M>(model: M, settings: &RunSettings, progress: &mut dyn FnMut(&Progress)) -> Outcome
where
    M: Narrated + Clone + Send + Sync + 'static,
    M::State: Hash + Debug + Clone + PartialEq + Send + Sync + 'static,
    M::Action: Debug + Clone + PartialEq + Send + Sync + 'static,
{
    let finish_when = if settings.stop_at_first {
        HasDiscoveries::AnyFailures
    } else {
        HasDiscoveries::All
    };
    let main = run_bfs(
        model.clone(),
        settings,
        settings.search,
        settings.depth,
        finish_when,
        None,
        "check",
        progress,
    );
    let last_sample = main.last.clone();
    let mut discoveries: std::collections::HashMap<&'static str, Path<M::State, M::Action>> =
        main.discoveries.into_iter().collect();
    if settings.shorten {
        // A second, targeted search per violated property: it stops at the first violation
        // breadth-first, so its path is (close to) the shortest. It may take at most as long as
        // the check itself, and never replaces a trace with a longer one.
        let budget = last_sample.elapsed.max(Duration::from_secs(10));
        for p in model.properties() {
            if !p.expectation.discovery_is_failure() {
                continue;
            }
            let Some(current) = discoveries.get(p.name) else {
                continue;
            };
            let cond = p.condition;
            let always = p.expectation == Expectation::Always;
            // The length of a path as it will be shown (a safety trace ends at its first
            // violation).
            let shown_len = |path: &Path<M::State, M::Action>| {
                let states = path.clone().into_states();
                if always {
                    states
                        .iter()
                        .position(|s| !cond(&model, s))
                        .map_or(states.len(), |i| i + 1)
                } else {
                    states.len()
                }
            };
            let current_len = shown_len(current);
            if current_len <= 2 {
                continue;
            }
            let target: std::collections::BTreeSet<&'static str> = [p.name].into_iter().collect();
            // Only a path shorter than the current one is of interest: bound the depth by it.
            let bound = settings.depth.map_or(current_len, |d| d.min(current_len));
            let rerun = run_bfs(
                model.clone(),
                settings,
                Search::Bfs,
                Some(bound),
                HasDiscoveries::AnyOf(target),
                Some(budget),
                &format!("shortest trace for {}", p.name),
                progress,
            );
            if let Some((_, path)) = rerun.discoveries.into_iter().find(|(n, _)| *n == p.name) {
                if shown_len(&path) < current_len {
                    discoveries.insert(p.name, path);
                }
            }
        }
    }
    let model = &model;
    let bound_reached = settings.depth.is_some_and(|d| last_sample.max_depth >= d);
    let mut outcomes = Vec::new();
    for property in model.properties() {
        let name = property.name.to_string();
        let kind = Kind::from_expectation(&property.expectation);
        let found = discoveries.remove(property.name);
        let cond = property.condition;
        let violated = |s: &M::State| !cond(model, s);
        let satisfied = |s: &M::State| cond(model, s);
        let (verdict, path) = match (kind, found) {
            (Kind::Sometimes, Some(p)) => {
                (Verdict::Holds, narrate_path(model, p, Some(&satisfied)))
            }
            (Kind::Sometimes, None) if settings.stop_at_first => (Verdict::Undecided, Vec::new()),
            (Kind::Sometimes, None) => (Verdict::Counterexample, Vec::new()),
            (Kind::Always, Some(p)) => (
                Verdict::Counterexample,
                narrate_path(model, p, Some(&violated)),
            ),
            (Kind::Eventually, Some(p)) => (Verdict::Counterexample, narrate_path(model, p, None)),
            (_, None) if settings.stop_at_first => (Verdict::Undecided, Vec::new()),
            (_, None) => (Verdict::Holds, Vec::new()),
        };
        outcomes.push(PropertyOutcome {
            name,
            kind,
            verdict,
            path,
        });
    }
    // With `stop_at_first`, a property decided holds only if the run was exhaustive anyway.
    if settings.stop_at_first
        && !outcomes
            .iter()
            .any(|o| o.verdict == Verdict::Counterexample)
    {
        for o in &mut outcomes {
            if o.verdict == Verdict::Undecided {
                o.verdict = Verdict::Holds;
            }
        }
    }
    Outcome {
        states: last_sample.states,
        unique_states: last_sample.unique_states,
        max_depth: last_sample.max_depth,
        seconds: last_sample.elapsed.as_secs_f64(),
        depth_bound: settings.depth,
        bound_reached,
        properties: outcomes,
    }
}
