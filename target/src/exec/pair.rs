//! The seam between command execution and an HA pair.
//!
//! Execution asks the other controller of a pair for exactly five things: whether a command
//! received here must go to the primary (and if so, to run it there), to take over the state
//! both controllers keep identical after a command changed it, to reset its LUs too when a
//! reset arrives here, to forget a nexus that ended here, and to move a LUN when a host asks
//! for it (SET TARGET PORT GROUPS). [`Pair`] says so; the HA runtime
//! implements it (forwarding, mode-1 grants, gate checks), and a controller running alone
//! plugs in [`Standalone`], which forwards nothing. Execution never branches on HA otherwise.
//!
//! Touches nothing itself: it only names what a pair does.

use duet_core::LunNumber;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use duet_core::iscsi::Completion;
use duet_core::scsi::Nexus;
use duet_core::sense::SenseCode;

use super::completion::check;
use crate::lu::Lu;

/// Where a command's completion goes when it finishes on another task; called exactly once.
pub type Reply = Box<dyn FnOnce(Completion) + Send>;

/// What the other controller of a pair adds to command execution (see the [module](self)).
pub trait Pair: Send + Sync {
    /// `Some(plan_only)` when a command for `lun` received here must go to the primary: this
    /// controller does not serve it, the link is up and the peer is its primary. `plan_only`
    /// (HA mode 1): the primary answers with a plan that runs here under its grant.
    fn forward_mode(&self, lun: LunNumber) -> Option<bool>;

    /// Runs a command received here for a LUN the peer serves, through the peer, and gives its
    /// completion to `done` (called exactly once, on whichever task the answer arrives). Only
    /// called when [`Pair::forward_mode`] said `Some(plan_only)`.
    fn forward(
        self: Arc<Self>,
        lu: &Arc<Lu>,
        nexus: Nexus,
        cdb: Bytes,
        data_out: Bytes,
        plan_only: bool,
        done: Reply,
    );

    /// Sends the replicated state of `lu` (reservations, mode pages) to the peer, when this
    /// controller serves it.
    fn sync_lu(&self, lu: &Lu);

    /// The LUNs of `luns` whose resets must also reach the primary (this controller forwards
    /// their commands).
    fn resets_to_forward(&self, luns: &[LunNumber]) -> Vec<LunNumber>;

    /// Performs a reset received here on the primary's LUs too, finishing once it did (bounded),
    /// so that the task management response means the reset happened on the LU that serves.
    fn peer_reset(
        self: Arc<Self>,
        luns: Vec<LunNumber>,
        cold: bool,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Tells the primary that a nexus of this controller ended on `lun`.
    fn nexus_lost(self: Arc<Self>, lun: LunNumber, nexus: Nexus);

    /// SET TARGET PORT GROUPS, accepted by this controller's copy of `lu`, asks for port group
    /// `group` to become Active/Optimized: moves the LUN to the controller owning the group and
    /// gives `done` (exactly once) `good` when it serves there, or CHECK CONDITION when that
    /// cannot be done (bounded).
    fn set_port_groups(self: Arc<Self>, lu: &Arc<Lu>, group: u16, good: Completion, done: Reply);
}

/// A controller running alone: it serves every LUN itself, so nothing goes anywhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct Standalone;

impl Pair for Standalone {
    fn forward_mode(&self, _lun: LunNumber) -> Option<bool> {
        None
    }

    fn forward(
        self: Arc<Self>,
        _lu: &Arc<Lu>,
        _nexus: Nexus,
        _cdb: Bytes,
        _data_out: Bytes,
        _plan_only: bool,
        done: Reply,
    ) {
        // Never asked: `forward_mode` is always `None`. Retry rather than guess.
        done(check(SenseCode::ALUA_TRANSITIONING));
    }

    fn sync_lu(&self, _lu: &Lu) {}

    fn resets_to_forward(&self, _luns: &[LunNumber]) -> Vec<LunNumber> {
        Vec::new()
    }

    fn peer_reset(
        self: Arc<Self>,
        _luns: Vec<LunNumber>,
        _cold: bool,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }

    fn nexus_lost(self: Arc<Self>, _lun: LunNumber, _nexus: Nexus) {}

    fn set_port_groups(self: Arc<Self>, lu: &Arc<Lu>, _group: u16, _good: Completion, done: Reply) {
        // Never asked: a lone controller does not advertise explicit ALUA, and its one group
        // is always Active/Optimized.
        lu.lock().stpg_ended();
        done(check(SenseCode::STPG_FAILED));
    }
}
