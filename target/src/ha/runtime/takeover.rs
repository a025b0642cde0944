//! The last takeover, as `duetctl ha` shows it: when this controller last became primary by a
//! claim (not by a switchover), what the claim waited for (the link closed by the peer, the link
//! silent, the peer's lease, start-up), how long the fencing agent took and how long the claim
//! took.
//!
//! Derived from what the driver already sees: the link events it feeds the node and the node's
//! log events (`ClaimStarted`, `ClaimAborted`, `FencingPeer`, `PeerFenced`, `FenceFailed`,
//! `BecamePrimary`), timed with the driver's clock. A hand-over makes the receiver primary
//! without a `ClaimStarted`, so a switchover is never counted.
//!
//! Pure: times come in as arguments (milliseconds of the driver's monotonic clock).

use std::collections::BTreeMap;

use duet_core::ha::Event;
use duet_core::LunNumber;

use crate::admin::{TakeoverCause, TakeoverInfo};

/// A claim in progress.
#[derive(Clone, Copy, Debug)]
struct Claim {
    /// When the claim started.
    at: u64,
    cause: TakeoverCause,
    /// When what it waited for happened (the link event; else the claim's start).
    since: u64,
}

/// A completed takeover.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Done {
    luns: Vec<LunNumber>,
    cause: TakeoverCause,
    since: u64,
    claim_at: u64,
    fence_ms: Option<u64>,
    became: u64,
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub(super) struct Takeovers {
    /// The link has come up since start.
    link_was_up: bool,
    /// The link is down since then, for this cause (cleared when it comes up).
    down: Option<(u64, TakeoverCause)>,
    claims: BTreeMap<LunNumber, Claim>,
    /// A fence in progress since then.
    fencing: Option<u64>,
    /// The last fence that succeeded: its start and end.
    fenced: Option<(u64, u64)>,
    last: Option<Done>,
    count: u64,
}

impl Takeovers {
    /// The link came up.
    pub(super) fn link_up(&mut self) {
        self.link_was_up = true;
        self.down = None;
    }

    /// The link went down at `now`: closed by the peer, or silent.
    pub(super) fn link_down(&mut self, now: u64, closed: bool) {
        if self.down.is_none() {
            let cause = if closed {
                TakeoverCause::LinkClosed
            } else {
                TakeoverCause::LinkSilent
            };
            self.down = Some((now, cause));
        }
    }

    /// The node logged `ev` at `now`.
    pub(super) fn event(&mut self, now: u64, ev: &Event) {
        match ev {
            Event::ClaimStarted { lun } => {
                let (since, cause) = match self.down {
                    Some(d) => d,
                    None if !self.link_was_up => (now, TakeoverCause::StartUp),
                    None => (now, TakeoverCause::PeerLease),
                };
                self.claims.insert(
                    *lun,
                    Claim {
                        at: now,
                        cause,
                        since,
                    },
                );
            }
            Event::ClaimAborted { lun, .. } => {
                self.claims.remove(lun);
            }
            Event::FencingPeer => self.fencing = Some(now),
            Event::PeerFenced => {
                if let Some(start) = self.fencing.take() {
                    self.fenced = Some((start, now));
                }
            }
            Event::FenceFailed => self.fencing = None,
            Event::BecamePrimary { lun, .. } => {
                let Some(c) = self.claims.remove(lun) else {
                    return;
                };
                let fence_ms = self
                    .fenced
                    .filter(|&(start, _)| start >= c.at)
                    .map(|(start, end)| end - start);
                if let Some(last) = &mut self.last {
                    // Several LUNs taken over in one step are one takeover.
                    if last.became == now && last.cause == c.cause {
                        last.luns.push(*lun);
                        return;
                    }
                }
                self.count += 1;
                self.last = Some(Done {
                    luns: vec![*lun],
                    cause: c.cause,
                    since: c.since,
                    claim_at: c.at,
                    fence_ms,
                    became: now,
                });
            }
            _ => {}
        }
    }

    /// Takeovers since start.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// The last takeover, seen at `now` (the driver's clock) and `unix_now_ms` (wall clock).
    pub(super) fn last(&self, now: u64, unix_now_ms: u64) -> Option<TakeoverInfo> {
        let d = self.last.as_ref()?;
        Some(TakeoverInfo {
            luns: d.luns.clone(),
            cause: d.cause,
            started_unix_ms: unix_now_ms.saturating_sub(now.saturating_sub(d.since)),
            ago_ms: now.saturating_sub(d.became),
            claim_ms: d.became.saturating_sub(d.claim_at),
            fence_ms: d.fence_ms,
            total_ms: d.became.saturating_sub(d.since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(t: &mut Takeovers, now: u64, lun: LunNumber) {
        t.event(now, &Event::ClaimStarted { lun });
    }

    fn primary(t: &mut Takeovers, now: u64, lun: LunNumber) {
        t.event(now, &Event::BecamePrimary { lun, epoch: 2 });
    }

    #[test]
    fn a_closed_link_then_a_fenced_claim() {
        let mut t = Takeovers::default();
        t.link_up();
        t.link_down(1_000, true);
        claim(&mut t, 1_001, 1);
        claim(&mut t, 1_001, 2);
        t.event(2_500, &Event::FencingPeer);
        t.event(2_540, &Event::PeerFenced);
        primary(&mut t, 2_541, 1);
        primary(&mut t, 2_541, 2);
        let i = t.last(3_541, 1_000_000).unwrap();
        assert_eq!(i.cause, TakeoverCause::LinkClosed);
        assert_eq!(i.luns, vec![1, 2]);
        assert_eq!(i.fence_ms, Some(40));
        assert_eq!(i.claim_ms, 1_540);
        assert_eq!(i.total_ms, 1_541);
        assert_eq!(i.ago_ms, 1_000);
        assert_eq!(i.started_unix_ms, 1_000_000 - 2_541);
        assert_eq!(t.count(), 1);
    }

    #[test]
    fn a_silent_link_an_aborted_claim_and_a_retry() {
        let mut t = Takeovers::default();
        t.link_up();
        t.link_down(100, false);
        // A second down (no up between) does not move the start.
        t.link_down(150, true);
        claim(&mut t, 100, 1);
        t.event(
            900,
            &Event::ClaimAborted {
                lun: 1,
                reason: "concurrent claim".into(),
            },
        );
        claim(&mut t, 1_200, 1);
        primary(&mut t, 2_000, 1);
        let i = t.last(2_000, 10_000).unwrap();
        assert_eq!(i.cause, TakeoverCause::LinkSilent);
        assert_eq!(i.fence_ms, None);
        assert_eq!(i.claim_ms, 800);
        assert_eq!(i.total_ms, 1_900);
    }

    #[test]
    fn start_up_peer_lease_and_switchovers() {
        let mut t = Takeovers::default();
        claim(&mut t, 10, 1);
        primary(&mut t, 20, 1);
        assert_eq!(t.last(20, 0).unwrap().cause, TakeoverCause::StartUp);
        // A hand-over (no claim started) is not a takeover.
        t.link_up();
        primary(&mut t, 500, 2);
        assert_eq!(t.last(500, 0).unwrap().luns, vec![1]);
        // A claim with the link up and no link event: the peer's lease.
        claim(&mut t, 600, 1);
        // An older fence does not count for this claim.
        t.event(700, &Event::FencingPeer);
        t.event(710, &Event::FenceFailed);
        primary(&mut t, 900, 1);
        let i = t.last(900, 0).unwrap();
        assert_eq!(i.cause, TakeoverCause::PeerLease);
        assert_eq!(i.fence_ms, None);
        assert_eq!(t.count(), 2);
    }
}
