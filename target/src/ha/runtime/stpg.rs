//! Explicit ALUA on a pair: a SET TARGET PORT GROUPS that the LU accepted
//! ([`duet_core::alua::stpg_decide`] said "activate group G") becomes a planned switchover of
//! the LUN to the controller owning G, and the command is answered once that controller serves
//! it, or with CHECK CONDITION when it cannot be done within [`STPG_BOUND`].
//!
//! Where the decision is taken: a controller that does not serve a LUN forwards every command
//! for it to the primary while the link is up (modes 0 and 2, mode 1 under a read lease), so an
//! STPG asking for the secondary's own group reaches the primary as "activate the peer's
//! group", which is core's switchover (`AdminCmd::Switchover`, primary only). An STPG that the
//! secondary runs itself is one it could not forward: the link is down, the pair is not formed
//! or no primary is known, and nobody can hand the LUN over; it fails.
//!
//! Senses: 04/67/0A SET TARGET PORT GROUPS COMMAND FAILED (SPC-4) when the pair cannot move
//! the LUN now (HA link down, peer not joined, this controller not primary any more, the
//! switchover not finished in time); the host re-reads the states (RTPG) and may retry. With
//! `failover = "manual"` explicit ALUA is not advertised and the LU refuses STPG itself
//! (05/20/00). Touches the LU only to end its record of the STPG under way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_core::alua;
use duet_core::ha::AdminCmd;
use duet_core::iscsi::Completion;
use duet_core::sense::SenseCode;

use super::HaRuntime;
use crate::exec::check;
use crate::lu::Lu;

/// How long an STPG waits for the switchover. Below the secondary's forwarding bound (10 s),
/// so that a forwarded STPG gets this controller's answer, not a forwarding timeout.
pub(super) const STPG_BOUND: Duration = Duration::from_secs(8);

/// How often the wait looks at the published roles.
const POLL: Duration = Duration::from_millis(20);

impl HaRuntime {
    /// The answer to an accepted STPG asking for `group` to become Active/Optimized on
    /// `lu`: `good` once the owner of `group` serves the LUN, else CHECK CONDITION.
    pub(super) async fn stpg_outcome(
        &self,
        lu: &Arc<Lu>,
        group: u16,
        good: Completion,
    ) -> Completion {
        let r = self.activate_group(lu.number, group).await;
        lu.lock().stpg_ended();
        match r {
            Ok(()) => {
                tracing::info!(lun = lu.number, group, "SET TARGET PORT GROUPS done");
                good
            }
            Err((code, why)) => {
                tracing::warn!(
                    lun = lu.number,
                    group,
                    "SET TARGET PORT GROUPS failed: {why}"
                );
                check(code)
            }
        }
    }

    /// Makes port group `group` Active/Optimized for `lun` (see the module documentation).
    async fn activate_group(&self, lun: u16, group: u16) -> Result<(), (SenseCode, String)> {
        let failed = |why: &str| Err((SenseCode::STPG_FAILED, why.to_string()));
        if self.cfg.failover_manual() {
            // (Not advertised, so not accepted by the LU; kept for a picture built otherwise.)
            return Err((
                SenseCode::INVALID_OPCODE,
                "failover is manual: the operator names the primary".into(),
            ));
        }
        let peer_serves = || {
            self.published.link_up()
                && self
                    .published
                    .lun(lun)
                    .is_some_and(|f| !f.primary_here && f.primary == Some(self.peer_id))
        };
        if group == alua::port_group_id(self.cfg.id) {
            if self.serving(lun) {
                return Ok(());
            }
            return failed(if !self.published.link_up() {
                "the HA link is down (or the peer has not joined): no primary to hand over"
            } else {
                "the request could not be passed to the primary now (no primary known, or \
                 no read lease in mode 1)"
            });
        }
        if group != alua::port_group_id(self.peer_id) {
            return failed("no such port group");
        }
        if peer_serves() {
            return Ok(());
        }
        if !self.serving(lun) {
            return failed("this controller is not the primary of the LUN");
        }
        if !self.published.link_up() {
            return failed("the HA link is down (or the peer has not joined)");
        }
        self.admin(AdminCmd::Switchover { lun });
        let start = Instant::now();
        while start.elapsed() < STPG_BOUND {
            tokio::time::sleep(POLL).await;
            if peer_serves() {
                return Ok(());
            }
        }
        failed("the switchover did not complete in time")
    }
}
