//! The receiving side of forwarding: a controller that does not serve a LUN sends what it
//! receives for it to the primary and hands the answer back (mode 2: the whole command and its
//! data; mode 1: the command only, then runs the primary's plan on the shared backend under the
//! primary's lock; mode 0: everything a Standby port may answer). This is where the HA runtime
//! plugs into command execution ([`Pair`]). Touches the link and, for mode-1 plans, the LU.
//!
//! A mode-1 request is a grant request of core's [`Grantee`](duet_core::ha::Grantee): whether a
//! grant may start, and whether it must be released, is the grantee's decision; this file runs
//! the plan and sends the releases.

use duet_core::LunNumber;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use duet_core::ha::grant::{Access, Answer, Received, Start};
use duet_core::iscsi::Completion;
use duet_core::scsi::opclass::carries_bulk_data;
use duet_core::scsi::Nexus;
use duet_core::sense::SenseCode;

use super::super::link::Channel;
use super::super::proto::{self, LinkMsg, PeerReply, PeerRequest};
use super::{HaRuntime, ReplyTo};
use crate::exec::pair::Reply;
use crate::exec::{check, never_waits, run_plan, run_plan_now, Pair};
use crate::lu::Lu;
use crate::sync::lock;

/// How long a forwarded command waits for the primary's answer before the initiator is told to
/// retry (NOT READY, ALUA transitioning).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

impl HaRuntime {
    /// Sends `req` to the peer; `reply_to` gets the answer, or `None` when the request could not
    /// be sent, the link went down or no answer came within [`FORWARD_TIMEOUT`].
    fn send_request(&self, req: PeerRequest, reply_to: ReplyTo) {
        let Ok(id) = self.pending.register(reply_to) else {
            return;
        };
        let sent = proto::encode(LinkMsg::Request { id, req })
            .ok()
            .is_some_and(|e| self.link.send_parts(Channel::Data, e.head, e.bulk).is_ok());
        if !sent {
            drop(self.pending.take(id));
        }
    }

    async fn request(&self, req: PeerRequest) -> Option<PeerReply> {
        let (tx, rx) = oneshot::channel();
        self.send_request(
            req,
            ReplyTo::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.ok().flatten()
    }

    /// Cancels the forwarded requests that waited longer than [`FORWARD_TIMEOUT`] (their
    /// initiators are told to retry).
    pub(super) async fn expire_requests(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FORWARD_TIMEOUT / 10);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let expired = self.pending.expire(|w| w.sent.elapsed() > FORWARD_TIMEOUT);
            if !expired.is_empty() {
                tracing::warn!(
                    "{} forwarded request(s) unanswered for {} s: told to retry",
                    expired.len(),
                    FORWARD_TIMEOUT.as_secs()
                );
            }
        }
    }
}

/// The HA runtime as command execution sees it: forwarding to the primary, replication of the
/// shared state, resets and ended nexuses passed on.
impl Pair for HaRuntime {
    /// `Some(plan_only)` when a command for `lun` received here must go to the primary: this
    /// controller does not serve it, the link is up and the peer is its primary.
    fn forward_mode(&self, lun: LunNumber) -> Option<bool> {
        self.published.forward_mode(lun)
    }

    /// Runs a command received here for a LUN the peer serves, through the peer, and gives its
    /// completion to `done` (called exactly once, on whichever task the answer arrives).
    fn forward(
        self: Arc<Self>,
        lu: &Arc<Lu>,
        nexus: Nexus,
        cdb: Bytes,
        data_out: Bytes,
        plan_only: bool,
        done: Reply,
    ) {
        let lun = lu.number;
        let data_len = u32::try_from(data_out.len()).unwrap_or(u32::MAX);
        // Mode 1 keeps bulk write data off the link: the plan comes back and runs here.
        let bulk = carries_bulk_data(cdb.first().copied().unwrap_or(0));
        let send_data = if plan_only && bulk {
            Bytes::new()
        } else {
            data_out.clone()
        };
        // The grant request. The access the plan needs is decided by the primary, which prepares
        // the plan (`Access` from `IoPlan::needs_exclusive`); the grantee only records one.
        let ask = if plan_only {
            lock(&self.grantee).ask(lun, Access::Shared)
        } else {
            0
        };
        let (me, lu) = (self.clone(), lu.clone());
        let reply_to = ReplyTo::new(move |reply| match reply {
            Some(PeerReply::Plan {
                ask,
                grant,
                epoch,
                plan,
            }) => {
                // The primary holds the LU's I/O lock and its gate for us until we release.
                let facts = me.published.secondary_facts(lun);
                let started = {
                    let mut g = lock(&me.grantee);
                    match g.on_answer(ask, Answer::Granted { grant, epoch }) {
                        Received::Granted(ticket) => Ok((ticket, g.start(ticket, facts))),
                        other => Err(other),
                    }
                };
                let ticket = match started {
                    Ok((ticket, Start::Go)) => ticket,
                    Ok((_, Start::Denied { reason, release })) => {
                        tracing::debug!(lun, "grant {grant} not started: {}", reason.name());
                        if release {
                            me.send(Channel::Control, LinkMsg::Release { grant });
                        }
                        return done(check(SenseCode::ALUA_TRANSITIONING));
                    }
                    Err(Received::Unwanted(grant)) => {
                        me.send(Channel::Control, LinkMsg::Release { grant });
                        return done(check(SenseCode::ALUA_TRANSITIONING));
                    }
                    Err(_) => return done(check(SenseCode::ALUA_TRANSITIONING)),
                };
                let finish = move |me: &HaRuntime| {
                    if let Some(grant) = lock(&me.grantee).finished(ticket) {
                        me.send(Channel::Control, LinkMsg::Release { grant });
                    }
                };
                if never_waits(&lu, &plan) {
                    let c = run_plan_now(&lu, &plan, &data_out);
                    finish(&me);
                    done(c);
                } else {
                    tokio::spawn(async move {
                        let c = run_plan(lu, plan, data_out, ()).await;
                        finish(&me);
                        done(c);
                    });
                }
            }
            other => {
                if plan_only {
                    // No grant comes for this request (or none is wanted any more).
                    lock(&me.grantee).forget(ask);
                }
                match other {
                    Some(PeerReply::Done {
                        status,
                        sense,
                        data_in,
                        wanted_len,
                    }) => done(Completion {
                        status,
                        sense,
                        data_in,
                        wanted_len,
                    }),
                    Some(PeerReply::Unavailable { reason }) => {
                        tracing::debug!(lun, "forwarded command refused by the peer: {reason}");
                        done(check(SenseCode::ALUA_TRANSITIONING))
                    }
                    _ => done(check(SenseCode::ALUA_TRANSITIONING)),
                }
            }
        });
        self.send_request(
            PeerRequest::Execute {
                lun,
                nexus,
                cdb,
                data_out: send_data,
                data_len,
                plan_only,
                ask,
            },
            reply_to,
        );
    }

    /// Sends the replicated state of `lu` to the peer (primary only).
    fn sync_lu(&self, lu: &Lu) {
        let lun = lu.number;
        if !self.serving(lun) {
            return;
        }
        let state = lu.lock().shared_state();
        self.send(Channel::Control, LinkMsg::LuSync { lun, state });
    }

    /// The LUNs of `luns` whose resets must also reach the primary (this controller forwards
    /// their commands).
    fn resets_to_forward(&self, luns: &[LunNumber]) -> Vec<LunNumber> {
        luns.iter()
            .copied()
            .filter(|&l| self.forward_mode(l).is_some())
            .collect()
    }

    /// Performs a reset received here on the primary's LU too, and waits for it (bounded), so
    /// that the task management response means the reset happened on the LU that serves.
    fn peer_reset(
        self: Arc<Self>,
        luns: Vec<LunNumber>,
        cold: bool,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            for lun in luns {
                if self
                    .request(PeerRequest::Reset { lun, cold })
                    .await
                    .is_none()
                {
                    tracing::warn!(lun, "reset not confirmed by the peer");
                }
            }
        })
    }

    /// Tells the primary that a nexus of this controller ended.
    fn nexus_lost(self: Arc<Self>, lun: LunNumber, nexus: Nexus) {
        if self.forward_mode(lun).is_some() {
            let me = self;
            tokio::spawn(async move {
                let _ = me.request(PeerRequest::NexusLost { lun, nexus }).await;
            });
        }
    }

    /// An STPG accepted here: moves the LUN, then answers (see `runtime/stpg.rs`).
    fn set_port_groups(self: Arc<Self>, lu: &Arc<Lu>, group: u16, good: Completion, done: Reply) {
        let lu = lu.clone();
        tokio::spawn(async move { done(self.stpg_outcome(&lu, group, good).await) });
    }
}
