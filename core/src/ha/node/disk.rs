//! The backend's health as [`Node`] sees it, and a controller fenced at the disk.
//!
//! When the backing device refuses this controller's I/O with a reservation conflict
//! ([`BackendHealth::Fenced`]), the peer has fenced it there (its claim preempted this
//! controller's reservation key). The node steps down from every LUN it is primary for at once,
//! abandons its claims, stops serving as a mode-1 secondary and reports its own port group
//! Transitioning. It comes back only through the join path: it reads both quorum slots again
//! (under manual failover, where there is no quorum area, it hears the peer's state over the
//! link), which teaches it the epochs of the peer's claim; then it asks the runtime to restore
//! its access to the backing devices ([`Output::RestoreDiskAccess`]) and waits for
//! `Backend(Ok)`. Only then may it serve as a secondary or claim again, by the ordinary rules.
//!
//! Touches only the node's own fields and its output queue.

use super::*;

impl Node {
    pub(super) fn on_backend(&mut self, now: Time, h: BackendHealth) {
        match h {
            BackendHealth::Fenced => self.on_fenced_at_disk(now),
            BackendHealth::Ok => {
                match self.disk_fence {
                    DiskFence::No => {}
                    // Only the join path ends a fence at the disk.
                    DiskFence::Rejoining => return,
                    DiskFence::Rejoined => self.disk_fence = DiskFence::No,
                }
                self.backend_ok = true;
                self.log(Event::Backend { ok: true });
                self.consider_claims(now, false);
            }
            BackendHealth::Failed => {
                self.backend_ok = false;
                self.log(Event::Backend { ok: false });
            }
        }
    }

    fn on_fenced_at_disk(&mut self, now: Time) {
        if self.disk_fence == DiskFence::Rejoining {
            return;
        }
        self.disk_fence = DiskFence::Rejoining;
        self.backend_ok = false;
        self.log(Event::FencedAtDisk);
        if self.owns_any() {
            // Clear the ownership the slot shows (the write fails if the quorum area is fenced
            // too; the peer's claim does not need it).
            self.release_due = true;
        }
        for i in 0..self.luns.len() {
            match self.luns[i].role {
                LunRole::Primary => self.step_down(now, i, "fenced at the disk"),
                LunRole::Claiming(_) => self.abort_claim(now, i, "fenced at the disk"),
                LunRole::Secondary => {}
            }
        }
        // Nothing is primary here any more: no suspension waits for the peer's fence.
        self.suspended = false;
        if self.automatic() {
            self.join = Join::ReadOwn;
        } else if self.link == 2 {
            // Manual failover: the peer's answer (its state) is the rejoin.
            self.out
                .push_back(Output::SendPeer(HaMsg::Probe { at: now }));
        }
    }

    /// The join path has completed since the fence at the disk: ask for access back.
    pub(super) fn finish_disk_rejoin(&mut self) {
        if self.disk_fence == DiskFence::Rejoining {
            self.disk_fence = DiskFence::Rejoined;
            self.log(Event::RejoinedAfterFence);
            self.out.push_back(Output::RestoreDiskAccess);
        }
    }
}
