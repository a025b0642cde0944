//! duet-verification: the model checking front end behind `duet-verify`.
//!
//! - [`check`]: runs stateright's breadth-first checker over any [`check::Narrated`] model, with
//!   progress samples, and collects a verdict per property with a readable trace.
//! - [`report`]: renders an outcome as text (numbered timelines) or as one JSON object.
//! - [`cluster`]: binds the Duet cluster model (`duet-model`) to the above: options, the check
//!   and the Explorer.
//!
//! The `duet-verify` binary is a thin command line over [`cluster::run_check`] and
//! [`cluster::explore`].

pub mod check;
pub mod cluster;
pub mod report;

pub use check::{check, Kind, Outcome, Progress, PropertyOutcome, RunSettings, Step, Verdict};
pub use cluster::{ClusterCheck, ClusterConfig, FencingName, PolicyName};
