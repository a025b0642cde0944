//! The Duet cluster model (`duet-model`) behind `duet-verify`: which configuration to check, the
//! check itself and the Explorer.

use crate::check::{self, Narrated, Outcome, Progress, RunSettings};
use crate::report;
use duet_core::alua::HaMode;
use duet_core::ha::{Fencing, Policy};
use duet_model::{ClusterModel, ModelOptions};

/// The names of the cluster model's properties, in report order.
pub use duet_model::PROPERTY_NAMES;
use serde_json::{json, Map, Value};
use stateright::Model;
use std::net::TcpListener;

/// The failover policy, as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyName {
    /// Duet: the survivor claims the primary role through the arbiter, after fencing.
    Automatic,
    /// CTL's behaviour: no new primary until an administrator names one.
    Manual,
    /// The survivor promotes itself as soon as the HA link drops.
    Naive,
}

impl PolicyName {
    pub fn name(self) -> &'static str {
        match self {
            PolicyName::Automatic => "automatic",
            PolicyName::Manual => "manual",
            PolicyName::Naive => "naive",
        }
    }

    pub fn policy(self) -> Policy {
        match self {
            PolicyName::Automatic => Policy::Automatic,
            PolicyName::Manual => Policy::Manual,
            PolicyName::Naive => Policy::Naive,
        }
    }
}

/// How the survivor fences the other controller, as spelled on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FencingName {
    /// A fencing agent stops the other controller before the survivor serves writes.
    Agent,
    /// No fencing: failover rests on lease timing alone.
    None,
    /// A fencing agent at the disk (as `scsi-pr`): the fenced controller lives on and keeps
    /// answering, but the backend refuses its I/O and aborts its queued writes.
    Disk,
}

impl FencingName {
    pub fn name(self) -> &'static str {
        match self {
            FencingName::Agent => "agent",
            FencingName::None => "none",
            FencingName::Disk => "disk",
        }
    }

    pub fn fencing(self) -> Fencing {
        match self {
            FencingName::Agent => Fencing::Agent,
            FencingName::None => Fencing::None,
            FencingName::Disk => Fencing::Agent,
        }
    }
}

/// A deliberate bug the model can be checked with (`--mutation`), as spelled on the command
/// line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MutationName {
    /// Mode 1: the secondary writes to the shared backend without a grant from the primary.
    UngrantedWrite,
    /// A fence-confirmed takeover serves as soon as it has asked for the fence, without
    /// waiting for the agent's result.
    TakeoverBeforeFence,
}

impl MutationName {
    pub fn name(self) -> &'static str {
        match self {
            MutationName::UngrantedWrite => "ungranted-write",
            MutationName::TakeoverBeforeFence => "takeover-before-fence",
        }
    }

    fn apply(self, o: &mut ModelOptions) {
        match self {
            MutationName::UngrantedWrite => o.ungranted_write = true,
            MutationName::TakeoverBeforeFence => o.fencing = Fencing::Unawaited,
        }
    }
}

/// Which cluster to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub policy: PolicyName,
    /// CTL's `ha_mode`: 0, 1 or 2.
    pub mode: u8,
    pub fencing: FencingName,
    /// Set the lease safety margin below the clock-drift bound (a deliberate bug).
    pub margin_below_drift: bool,
    /// Further deliberate bugs.
    pub mutations: Vec<MutationName>,
    /// Number of clients (`None`: the model's default).
    pub clients: Option<usize>,
    /// Overrides of the model's bounds, by name (see [`BOUND_NAMES`]).
    pub bounds: Vec<(String, u64)>,
}

/// The model bounds that `--bound NAME=VALUE` can change.
pub const BOUND_NAMES: [&str; 18] = [
    "ops_per_client",
    "max_epoch",
    "max_grant_requests",
    "restarts",
    "crashes",
    "stops",
    "link_cuts",
    "max_in_flight",
    "msg_losses",
    "msg_dups",
    "quorum_failures",
    "quorum_stalls",
    "pauses",
    "drift_steps",
    "fence_failures",
    "client_timeouts",
    "max_ticks",
    "fault_ticks",
];

fn small(name: &str, v: u64) -> Result<u8, String> {
    u8::try_from(v).map_err(|_| format!("bound {name} must be at most 255, not {v}"))
}

/// Sets one named bound of `o`.
fn set_bound(o: &mut ModelOptions, name: &str, v: u64) -> Result<(), String> {
    match name {
        "ops_per_client" => o.ops_per_client = small(name, v)?,
        "max_epoch" => o.max_epoch = v,
        "max_grant_requests" => o.max_grant_requests = v,
        "restarts" => o.restarts = small(name, v)?,
        "crashes" => o.crashes = small(name, v)?,
        "stops" => o.stops = small(name, v)?,
        "link_cuts" => o.link_cuts = small(name, v)?,
        "max_in_flight" => o.max_in_flight = v as usize,
        "msg_losses" => o.msg_losses = small(name, v)?,
        "msg_dups" => o.msg_dups = small(name, v)?,
        "quorum_failures" => o.quorum_failures = small(name, v)?,
        "quorum_stalls" => o.quorum_stalls = small(name, v)?,
        "pauses" => o.pauses = small(name, v)?,
        "drift_steps" => o.drift_steps = small(name, v)?,
        "fence_failures" => o.fence_failures = small(name, v)?,
        "client_timeouts" => o.client_timeouts = small(name, v)?,
        "max_ticks" => o.max_ticks = v,
        "fault_ticks" => o.fault_ticks = v,
        _ => {
            return Err(format!(
                "unknown bound {name:?} (known: {})",
                BOUND_NAMES.join(", ")
            ))
        }
    }
    Ok(())
}

/// Parses `NAME=VALUE` as given to `--bound`.
pub fn parse_bound(s: &str) -> Result<(String, u64), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    let name = name.trim();
    if !BOUND_NAMES.contains(&name) {
        return Err(format!(
            "unknown bound {name:?} (known: {})",
            BOUND_NAMES.join(", ")
        ));
    }
    let value: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("bound {name} needs a whole number, got {value:?}"))?;
    Ok((name.to_string(), value))
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            policy: PolicyName::Automatic,
            mode: 1,
            fencing: FencingName::Agent,
            margin_below_drift: false,
            mutations: Vec::new(),
            clients: None,
            bounds: Vec::new(),
        }
    }
}

impl ClusterConfig {
    /// The model options for this configuration, or why they are invalid.
    pub fn options(&self) -> Result<ModelOptions, String> {
        let mode = HaMode::from_number(self.mode)
            .ok_or_else(|| format!("ha_mode must be 0, 1 or 2, not {}", self.mode))?;
        let defaults = ModelOptions::default();
        let clients = match self.clients {
            Some(0) => return Err("the model needs at least one client".to_string()),
            Some(n) => n,
            None => defaults.clients,
        };
        let mut o = ModelOptions {
            policy: self.policy.policy(),
            mode,
            fencing: self.fencing.fencing(),
            disk_fence: self.fencing == FencingName::Disk,
            margin_below_drift: self.margin_below_drift,
            clients,
            ..defaults
        };
        for m in &self.mutations {
            m.apply(&mut o);
        }
        for (name, v) in &self.bounds {
            set_bound(&mut o, name, *v)?;
        }
        Ok(o)
    }

    /// The clients the model will run with.
    pub fn effective_clients(&self) -> usize {
        self.clients
            .unwrap_or_else(|| ModelOptions::default().clients)
    }

    /// The model for this configuration.
    pub fn model(&self) -> Result<ClusterModel, String> {
        Ok(ClusterModel::new(self.options()?))
    }

    fn header_text(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("policy", self.policy.name().to_string()),
            ("ha_mode", self.mode.to_string()),
            ("fencing", self.fencing.name().to_string()),
            ("clients", self.effective_clients().to_string()),
        ];
        if self.margin_below_drift {
            h.push(("lease margin", "below the drift bound".to_string()));
        }
        for m in &self.mutations {
            h.push(("mutation", m.name().to_string()));
        }
        for (name, v) in &self.bounds {
            h.push(("bound", format!("{name}={v}")));
        }
        h
    }

    fn header_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("policy".into(), json!(self.policy.name()));
        m.insert("mode".into(), json!(self.mode));
        m.insert("fencing".into(), json!(self.fencing.name()));
        m.insert("margin_below_drift".into(), json!(self.margin_below_drift));
        let mutations: Vec<&str> = self.mutations.iter().map(|m| m.name()).collect();
        m.insert("mutations".into(), json!(mutations));
        m.insert("clients".into(), json!(self.effective_clients()));
        let bounds: Map<String, Value> = self
            .bounds
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        m.insert("bounds".into(), Value::Object(bounds));
        m
    }
}

impl Narrated for ClusterModel {
    fn narrate_action(&self, action: &Self::Action) -> String {
        self.describe_action(action)
    }

    fn narrate_state(&self, state: &Self::State) -> String {
        self.describe_state(state)
    }

    fn narrate_step(&self, before: &Self::State, action: &Self::Action) -> String {
        self.describe_step(before, action)
    }
}

/// A finished check of one cluster configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterCheck {
    pub config: ClusterConfig,
    pub outcome: Outcome,
}

impl ClusterCheck {
    /// The report for people.
    pub fn text(&self) -> String {
        report::render_text(&self.config.header_text(), &self.outcome)
    }

    /// The report for programs: one JSON object.
    pub fn json(&self) -> Value {
        report::render_json(self.config.header_json(), &self.outcome)
    }

    /// 0 when every property holds, 1 when a counterexample was found.
    pub fn exit_code(&self) -> i32 {
        report::exit_code(&self.outcome)
    }
}

/// Checks one cluster configuration.
pub fn run_check(
    config: &ClusterConfig,
    settings: &RunSettings,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ClusterCheck, String> {
    let model = config.model()?;
    let outcome = check::check(model, settings, progress);
    Ok(ClusterCheck {
        config: config.clone(),
        outcome,
    })
}

/// Serves stateright's Explorer for one cluster configuration on 127.0.0.1:`port`, printing the
/// address on stdout first. Returns only on error (the Explorer serves until the process ends).
pub fn explore(config: &ClusterConfig, port: u16, threads: usize) -> Result<(), String> {
    let model = config.model()?;
    // The Explorer's server gives no error value when the port is taken; find out first.
    let probe = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let port = probe.local_addr().map_err(|e| e.to_string())?.port();
    drop(probe);
    println!("Explorer for the Duet cluster model ({}):", {
        let h: Vec<String> = config
            .header_text()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        h.join(", ")
    });
    println!("http://127.0.0.1:{port}/");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = model
        .checker()
        .threads(threads.max(1))
        .serve(("127.0.0.1", port));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_parsed_and_applied() {
        assert_eq!(
            parse_bound("max_ticks=16"),
            Ok(("max_ticks".to_string(), 16))
        );
        assert!(parse_bound("max_ticks").is_err());
        assert!(parse_bound("warp=3").is_err());
        assert!(parse_bound("crashes=-1").is_err());
        let cfg = ClusterConfig {
            bounds: vec![("crashes".into(), 2), ("max_ticks".into(), 16)],
            ..ClusterConfig::default()
        };
        let o = cfg.options().expect("valid options");
        assert_eq!(o.crashes, 2);
        assert_eq!(o.max_ticks, 16);
        let too_big = ClusterConfig {
            bounds: vec![("crashes".into(), 300)],
            ..ClusterConfig::default()
        };
        assert!(too_big.options().is_err());
    }

    #[test]
    fn a_bad_mode_or_zero_clients_is_refused() {
        let bad_mode = ClusterConfig {
            mode: 7,
            ..ClusterConfig::default()
        };
        assert!(bad_mode.options().is_err());
        let no_clients = ClusterConfig {
            clients: Some(0),
            ..ClusterConfig::default()
        };
        assert!(no_clients.options().is_err());
        let o = ClusterConfig {
            policy: PolicyName::Manual,
            mode: 0,
            fencing: FencingName::None,
            ..ClusterConfig::default()
        }
        .options()
        .expect("valid options");
        assert_eq!(o.policy, Policy::Manual);
        assert_eq!(o.mode, HaMode::ActiveStandby);
        assert_eq!(o.fencing, Fencing::None);
    }

    #[test]
    fn the_json_header_names_the_configuration() {
        let cfg = ClusterConfig {
            policy: PolicyName::Naive,
            mode: 2,
            ..ClusterConfig::default()
        };
        let h = cfg.header_json();
        assert_eq!(h["policy"], "naive");
        assert_eq!(h["mode"], 2);
        assert_eq!(h["fencing"], "agent");
        assert_eq!(h["mutations"], json!([]));
    }

    #[test]
    fn a_mutation_reaches_the_model() {
        let cfg = ClusterConfig {
            mutations: vec![MutationName::UngrantedWrite],
            ..ClusterConfig::default()
        };
        assert!(cfg.options().expect("valid options").ungranted_write);
        assert!(
            !ClusterConfig::default()
                .options()
                .expect("valid")
                .ungranted_write
        );
        assert_eq!(cfg.header_json()["mutations"], json!(["ungranted-write"]));
    }
}
