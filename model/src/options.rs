//! What the model checks and how far: [`ModelOptions`], its CI-sized defaults, and the node
//! configuration and lease timing derived from it. Plain data; touches nothing else.

use duet_core::alua::HaMode;
use duet_core::ha::{Config, Fencing, LunConfig, Policy, Role, Timing};

/// The LUN the model's clients use.
pub const LUN: duet_core::LunNumber = 0;

/// What to check, and how far.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelOptions {
    pub policy: Policy,
    pub mode: HaMode,
    pub fencing: Fencing,
    /// The agent fences at the disk (as `scsi-pr`): the fenced controller lives on, its queued
    /// writes are aborted, its media I/O and quorum writes are refused, and it learns of the
    /// fence from its first refused I/O. Otherwise the agent kills (process, power).
    pub disk_fence: bool,
    /// Mutation: the safety margin is set below the clock-drift bound.
    pub margin_below_drift: bool,
    /// Mutation (mode 1): a secondary writes to the backend without a grant from the primary.
    pub ungranted_write: bool,
    /// Number of clients (1 or 2).
    pub clients: usize,
    /// Operations per client: all writes (of distinct values) but the last, which is a read.
    pub ops_per_client: u8,
    /// States with a larger epoch are outside the model.
    pub max_epoch: u64,
    /// Mode 1: states in which a controller has asked for more grants (since it started) are
    /// outside the model.
    pub max_grant_requests: u64,
    /// Restarts per controller.
    pub restarts: u8,
    /// Crashes in all.
    pub crashes: u8,
    /// Clean stops in all (SIGTERM): the controller hands its LUNs over, drains, says
    /// `Leaving` and exits.
    pub stops: u8,
    /// How long the runtime lets a clean stop take before it exits anyway, in ticks.
    pub stop_bound_ticks: u64,
    /// Link cuts in all.
    pub link_cuts: u8,
    /// Messages in flight at once; a message sent beyond this is lost.
    pub max_in_flight: usize,
    pub msg_losses: u8,
    pub msg_dups: u8,
    pub quorum_failures: u8,
    /// Quorum stalls in all: a stalled controller's quorum operation stays pending while time
    /// passes (slow I/O), until the checker completes or fails it.
    pub quorum_stalls: u8,
    /// Pauses in all: a paused controller's queued backend writes stay pending while time passes
    /// and land whenever the checker says.
    pub pauses: u8,
    /// Clock-rate changes in all (each moves the offset between the clocks by one tick).
    pub drift_steps: u8,
    pub fence_failures: u8,
    pub client_timeouts: u8,
    /// The horizon: time (in ticks of controller 1's clock) stops here.
    pub max_ticks: u64,
    /// Faults happen only before this tick.
    pub fault_ticks: u64,
    /// Length of a tick in milliseconds.
    pub tick_ms: u64,
    /// Lease timing in ticks.
    pub lease_ticks: u64,
    pub renew_ticks: u64,
    pub drift_ticks: u64,
    pub margin_ticks: u64,
}

impl Default for ModelOptions {
    /// CI-sized bounds: automatic failover, mode 1, agent fencing, one client doing two writes
    /// and a read; one crash, one link cut, one quorum stall, one controller pause and one client
    /// time-out, all within the first 3 ticks; a 10-tick horizon (lease 3 ticks, renew 1, drift
    /// bound 1, margin 2: a claim waits 5 ticks). Restarts, message loss and duplication, quorum
    /// failures, fence failures and clock drift are off here and switched on by the knobs.
    fn default() -> Self {
        ModelOptions {
            policy: Policy::Automatic,
            mode: HaMode::ActiveActiveShared,
            fencing: Fencing::Agent,
            disk_fence: false,
            margin_below_drift: false,
            ungranted_write: false,
            clients: 1,
            ops_per_client: 3,
            max_epoch: 4,
            max_grant_requests: 6,
            restarts: 0,
            crashes: 1,
            stops: 0,
            stop_bound_ticks: 4,
            link_cuts: 1,
            max_in_flight: 3,
            msg_losses: 0,
            msg_dups: 0,
            quorum_failures: 0,
            quorum_stalls: 1,
            pauses: 1,
            drift_steps: 0,
            fence_failures: 0,
            client_timeouts: 1,
            max_ticks: 10,
            fault_ticks: 3,
            tick_ms: 100,
            lease_ticks: 3,
            renew_ticks: 1,
            drift_ticks: 1,
            margin_ticks: 2,
        }
    }
}

impl ModelOptions {
    /// The lease timing the nodes run with (the mutation applied).
    pub fn timing(&self) -> Timing {
        let margin = if self.margin_below_drift {
            self.drift_ticks.saturating_sub(1)
        } else {
            self.margin_ticks
        };
        Timing {
            lease_ms: self.lease_ticks * self.tick_ms,
            renew_ms: self.renew_ticks * self.tick_ms,
            drift_ms: self.drift_ticks * self.tick_ms,
            margin_ms: margin * self.tick_ms,
        }
    }

    /// The configuration of controller `ha_id` (1 or 2).
    pub fn node_config(&self, ha_id: u8) -> Config {
        Config {
            ha_id,
            mode: self.mode,
            policy: self.policy,
            fencing: self.fencing,
            role: if ha_id == 1 {
                Role::Primary
            } else {
                Role::Secondary
            },
            luns: vec![LunConfig {
                lun: LUN,
                role: None,
            }],
            timing: self.timing(),
            failback: false,
        }
    }
}
