//! The state of the modelled cluster: controllers (with their `Node`, their side of the mode 1
//! grant exchange, pending quorum I/O and queued backend writes), clients, the link's messages,
//! the backend register, the clients' history and the fault budgets left. Plain data; the steps that change it are in
//! [`crate::actions`].

use duet_core::ha::grant::{GrantMsg, Ticket};
use duet_core::ha::{Grantee, Grantor, HaMsg, Node, QuorumOp, QuorumRecord};
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
    /// What the write holds while it is pending (mode 1).
    pub lock: Lock,
}

/// What a pending write holds (mode 1): the LUN's lock, through the primary's [`Grantor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lock {
    /// Nothing: modes 0 and 2, or the `ungranted-write` mutation.
    None,
    /// The primary's own write, as local I/O of its grantor.
    Local(u64),
    /// A secondary's write under a grant it holds.
    Grant(Ticket),
}

/// A client command a mode 1 secondary holds while it asks the primary for a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asked {
    /// The grant request's id.
    pub req: u64,
    pub client: u8,
    pub op: u8,
    pub attempt: u8,
    /// The value to write, or `None` for a read.
    pub value: Option<u8>,
}

/// A message on the HA link: the node's own, or the grant exchange's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Ha(HaMsg),
    Grant(GrantMsg),
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
    /// Mode 1, as primary: the grants it holds for the peer and its own writes' locks.
    pub grantor: Grantor,
    /// Mode 1, as secondary: its grant requests and the grants it holds.
    pub grantee: Grantee,
    /// Mode 1, as secondary: client commands waiting for a grant.
    pub asks: Vec<Asked>,
    /// A clean stop's [`HaMsg::Leaving`](duet_core::ha::HaMsg::Leaving) waits for the
    /// controller's queued writes to land (the runtime drains I/O before it sends it).
    pub leaving_held: bool,
    /// A clean stop began: if it has not completed by this time (own clock), the runtime's
    /// bound ends the process anyway, as a crash.
    pub stop_by: Option<u64>,
    /// Fenced at the disk (the `scsi-pr` agent preempted its key): alive, but the backend
    /// refuses its media I/O and its quorum writes until its access is restored.
    pub disk_fenced: bool,
    /// The node asked for its disk access back ([`Output::RestoreDiskAccess`](duet_core::ha::Output::RestoreDiskAccess)).
    pub restore: bool,
}

impl Controller {
    /// A controller running `node`, with nothing pending.
    pub fn new(node: Option<Node>) -> Controller {
        Controller {
            node,
            boots: 0,
            quorum: None,
            stalled: false,
            fence: false,
            writes: Vec::new(),
            paused: false,
            grantor: Grantor::new(),
            grantee: Grantee::new(),
            asks: Vec::new(),
            leaving_held: false,
            stop_by: None,
            disk_fenced: false,
            restore: false,
        }
    }
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
    /// A write of the current operation is pending somewhere (or, mode 1, a command waits for
    /// its grant) and the client waits for it.
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
    pub stops: u8,
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
    pub net: Vec<(u8, Msg)>,
    pub backend: u8,
    /// The value of the last acknowledged write (0: none yet).
    pub acked: u8,
    pub clients: Vec<Client>,
    pub history: LinearizabilityTester<u8, Register<u8>>,
    pub budget: Budget,
    /// A controller was lost (crash or fence) while it was primary, or stopped cleanly as
    /// primary.
    pub primary_lost: bool,
    /// Controller `n` stopped cleanly and its peer heard it say so (`Leaving` delivered); reset
    /// when it starts again.
    pub left: [bool; 2],
    /// A controller asked to fence a peer that had stopped cleanly and said so.
    pub fenced_after_leaving: bool,
}

// Every field compares by plain equality (the register holds a `u8`), so equality is total.
impl Eq for ClusterState {}
