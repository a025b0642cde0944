//! The two-controller runtime: the HA link, the quorum area, fencing agents and the driver that
//! feeds `duet_core::ha::Node` its inputs and carries out its outputs.

pub mod config;
pub mod fence;
pub mod gate;
pub mod link;
pub mod pr_fence;
pub mod proto;
pub mod quorum;
pub mod runtime;
pub mod sg;
pub mod tables;
