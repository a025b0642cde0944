//! The state of the modelled cluster: controllers (with their `Node`, pending quorum I/O and
//! queued backend writes), clients, the link's messages, the backend register, the clients'
//! history and the fault budgets left. Plain data; the steps that change it are in
//! [`crate::actions`].

use duet_core::ha::{HaMsg, Node, QuorumOp, QuorumRecord};
use stateright::semantics::register::Register;
use stateright::semantics::LinearizabilityTester;

/// One pending backend write: `value` for client `client`'s operation `op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PendingWrite {
    pub client: u8,
    pub op: u8,
    /// The client's attempt (it starts a new one after each time-out): only the attempt the
    /// client still waits for is acknowledged when it lands.
    pub attempt: u8,
    pub value: u8,
    /// Mode 1: issued by a secondary under the grant of controller `.0` at epoch `.1`.
    pub grant: Option<(u8, u64)>,
}

/// A controller as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Controller {
    /// `None` while crashed or fenced.
    pub node: Option<Node>,
    pub boots: u8,
    pub quorum: Option<QuorumOp>,
    /// The pending quorum operation is stalled (may stay pending while time passes).
    pub stalled: bool,
    pub fence: bool,
    pub writes: Vec<PendingWrite>,
    /// The controller is paused: its queued writes may stay pending while time passes.
    pub paused: bool,
}

/// A client and its current operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The controller (0 or 1) the next attempt goes to.
    pub path: u8,
    /// Index of the current operation.
    pub op: u8,
    /// The current operation has been invoked.
    pub invoked: bool,
    /// A write of the current operation is pending somewhere and the client waits for it.
    pub waiting: bool,
    /// Attempts abandoned so far (time-outs).
    pub attempt: u8,
}

/// Fault budgets left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub crashes: u8,
    pub link_cuts: u8,
    pub losses: u8,
    pub dups: u8,
    pub quorum_failures: u8,
    pub stalls: u8,
    pub pauses: u8,
    pub drift: u8,
    pub fence_failures: u8,
    pub timeouts: u8,
}

/// The state of the cluster.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct ClusterState {
    /// Each controller's clock, in milliseconds.
    pub clock: [u64; 2],
    pub ctl: [Controller; 2],
    pub slots: [Option<QuorumRecord>; 2],
    pub link_up: bool,
    /// Messages in flight: (receiver index, message), sorted.
    pub net: Vec<(u8, HaMsg)>,
    pub backend: u8,
    /// The value of the last acknowledged write (0: none yet).
    pub acked: u8,
    pub clients: Vec<Client>,
    pub history: LinearizabilityTester<u8, Register<u8>>,
    pub budget: Budget,
    /// A controller was lost (crash or fence) while it was primary.
    pub primary_lost: bool,
}

// Every field compares by plain equality (the register holds a `u8`), so equality is total.
impl Eq for ClusterState {}
