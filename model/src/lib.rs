//! Stateright models of a Duet controller pair.
//!
//! [`ClusterModel`] is a plain [`stateright::Model`] whose two controllers run
//! [`duet_core::ha::Node`] itself: every role, epoch, lease and ALUA decision in a trace is the
//! daemon's own code. Around the nodes the model keeps, explicitly:
//!
//! - **Time.** Each controller has its own clock (milliseconds, advanced in ticks of
//!   [`ModelOptions::tick_ms`]). A tick advances both clocks, or one of them alone, as long as the
//!   two stay within the drift bound of each other (controller 2's clock leads controller 1's by
//!   0 to `drift` ticks, so any interval measured by both differs by at most the bound). Time does
//!   not move while a controller has a timer due: timers fire on time.
//! - **The quorum area**: two slots; a node's quorum operation is pending until the checker
//!   completes it (any time later, possibly after ticks: slow I/O) or fails it.
//! - **The HA link**: a physical link that can be cut and healed; a connection exists while the
//!   link is up and both controllers run. In-flight messages form a bounded multiset (reordering);
//!   the checker may deliver, lose or duplicate any of them.
//! - **The backend**: one register (the LUN's one block). Each controller has a FIFO of pending
//!   backend writes that land whenever the checker says (a paused controller's writes land late),
//!   unless the controller is killed first.
//! - **Grants** (mode 1): a client command sent to the secondary waits there while the secondary
//!   asks the primary for a grant over the link (request, answer and release are messages like
//!   any other: lost, duplicated, reordered, cut). Both sides run core's
//!   [`duet_core::ha::grant`] state machines: the primary grants only while it serves at an epoch
//!   with the peer connected, and the grant holds the LUN's lock (the model's writes take it
//!   exclusively, as do the primary's own writes; reads through the secondary take it shared);
//!   the secondary starts a command only under a grant of its current link session and epoch,
//!   queues a write holding the grant (it lands whenever the checker says) and releases the grant
//!   once the write has landed (a read: at once). A refusal or a lost link fails the command and
//!   the client retries on the other path. Link loss ends the grants on both sides.
//! - **Clients**: each writes and reads the register through either controller, like a multipath
//!   host: on 04/0A, 04/0B, 04/0C or a dropped connection it retries on the other path, inside one
//!   operation (the linearizability tester allows one operation in flight per client). A client
//!   may also time out while its write is pending and retry on the other path; the pending write
//!   stays where it is (a command still waiting for its grant, mode 1, is aborted).
//! - **Mutations** (negative controls, [`ModelOptions`]): the lease margin below the drift bound;
//!   `ungranted_write`, a mode 1 secondary that writes without a grant.
//! - **Faults** (bounded by [`ModelOptions`]): crash and restart of a controller (a restart is a
//!   fresh `Node::new`), link cut and heal, message loss and duplication, quorum I/O failures,
//!   fence failures, client time-outs. Faults happen only before `fault_ticks`; after that,
//!   pending quorum I/O, fences and messages complete before time moves on (so liveness can be
//!   judged at `max_ticks`).
//!
//! Properties (always, unless marked):
//! - `single-primary`: at no time do two controllers serve the LUN as primary (`is_primary` and
//!   `serving`).
//! - `linearizable`: the clients' history of writes and reads is linearizable
//!   ([`LinearizabilityTester`] over a [`Register`]).
//! - `acked-writes-durable`: while no client has a write in flight, the backend holds the value of
//!   the last acknowledged write: no failover loses or overwrites an acknowledged write.
//! - `alua-truthful`: a controller that reports its own port group Active/Optimized or
//!   Active/Non-optimized would serve a data command sent there now, correctly: as the only
//!   serving primary, or (modes 1 and 2) as a secondary whose primary serves at the same epoch over
//!   a live connection. (What a node reports about the *peer's* group is advisory and not judged:
//!   after a crash it is stale until the node notices.)
//! - `primary-eventually` (eventually): at the horizon, if a primary was lost (crash or fence)
//!   and some controller is up, a controller serves as primary. Faults stop at `fault_ticks`,
//!   pending quorum I/O, fences and messages complete before time moves on after that, and every
//!   loop is bounded (ticks, budgets), so paths are finite.
//!
//! Not covered: planned switchover and other admin commands; several LUNs (the model has one);
//! messages delayed across a tick (messages are delivered, lost or duplicated before time moves
//! on); a dead controller's quorum write landing after its death (it is discarded); backend
//! failures; phase 1 of a granted command on the primary (CDB checks, reservations, task
//! ordering: the model's commands always pass it); a gap between receiving a grant and starting
//! the medium phase (the secondary starts at once; core's `Grantee` covers the gap and its
//! proptest exercises it); mode 1 states in which a controller has asked for more than
//! `max_grant_requests` grants.
//!
//! A controller serves a client command only if the ALUA gate for its own port group allows it
//! and it can execute it: as primary when `serving` (in mode 1 a write also waits for the LUN's
//! lock while a grant holds it), in mode 1 as a secondary that is `serving` (its read lease on
//! the primary) and connected, through a grant, in mode 2 by forwarding to a primary that serves
//! at the same epoch over a live connection. Fencing (the agent) kills the fenced controller: its
//! pending writes are discarded.

mod actions;
mod grants;
mod model;
mod options;
mod properties;
mod state;
mod trace;

pub use actions::{Action, Drift};
pub use duet_core::ha::{Fencing, HaMsg, Policy};
pub use model::ClusterModel;
pub use options::{ModelOptions, LUN};
pub use properties::PROPERTY_NAMES;
pub use state::{Asked, Budget, Client, ClusterState, Controller, Lock, Msg, PendingWrite};
pub use trace::{describe_message, describe_msg};
