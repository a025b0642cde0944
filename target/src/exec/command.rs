//! One SCSI command from a session, end to end: the LUN lookup (and the answers for a LUN the
//! target does not have), forwarding to the HA primary when the [`Pair`] says so, phase 1, the
//! medium phase in place or on the blocking pool, and the statistics. Touches the LU (through
//! [`super::medium`]) and the statistics.

use duet_core::LunNumber;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use duet_core::alua::AluaState;
use duet_core::iscsi::{Completion, ScsiCommand};
use duet_core::scsi::{op, CommandContext, Effect, Nexus, Prepared, Sense};
use duet_core::sense::{status, SenseCode};

use super::completion::{check, completion_of};
use super::medium::{after_command, prepare_local, run_inline, start_medium, Started};
use super::pair::Pair;
use crate::lu::{Target, PRODUCT, VENDOR};
use crate::stats::{OpKind, Stats};

/// Who sends a command: the session's target and nexus (none before a normal login), and what
/// the daemon shares with every session.
pub struct Issuer<'a> {
    pub target: Option<&'a Arc<Target>>,
    pub nexus: Option<&'a Nexus>,
    pub stats: &'a Arc<Stats>,
    pub pair: &'a Arc<dyn Pair>,
}

/// Runs one SCSI command: phase 1 here (under the LU lock), then the medium phase, in place when
/// it cannot wait ([`run_inline`]) and on the blocking pool otherwise. On a controller of an HA
/// pair that is not serving the LUN, the command goes to the primary ([`Pair::forward`]).
/// Returns the completion when the command finished here and now; otherwise `reply_later` is
/// called (once) for what completes it later, on another task.
pub fn execute<R>(
    from: &Issuer<'_>,
    cmd: ScsiCommand,
    reply_later: impl FnOnce() -> R,
) -> Option<Completion>
where
    R: FnOnce(Completion) + Send + 'static,
{
    let (Some(target), Some(nexus)) = (from.target, from.nexus) else {
        return Some(check(SenseCode::LUN_NOT_SUPPORTED));
    };
    let lu = cmd.lun.number().and_then(|n| target.luns.get(&n)).cloned();
    let Some(lu) = lu else {
        let alua_pic = target.alua();
        let ctx = CommandContext {
            nexus,
            alua: &alua_pic,
            target_name: &target.name,
            tpgt: target.tpgt,
            luns: &target.lun_list,
        };
        return Some(no_such_lun(target, &cmd, &ctx));
    };
    let lun = lu.number;
    let timer = CommandTimer {
        stats: from.stats.clone(),
        lun,
        port: target.rtpi,
        op: cmd.cdb.first().copied().unwrap_or(0xFF),
        started: Instant::now(),
    };
    if let Some(plan_only) = from.pair.forward_mode(lun) {
        let reply = reply_later();
        from.pair.clone().forward(
            &lu,
            nexus.clone(),
            cmd.cdb,
            cmd.data_out,
            plan_only,
            Box::new(move |c| reply(timer.finish(c))),
        );
        return None;
    }
    let prepared = prepare_local(target, &lu, nexus, &cmd.cdb, &cmd.data_out);
    match prepared {
        Prepared::Done(o) => {
            after_command(&**from.pair, &lu, &cmd.cdb, &o.effects);
            // SET TARGET PORT GROUPS that moves the LUN is answered once the pair has moved.
            if let Some(group) = port_group_to_activate(&o.effects) {
                let reply = reply_later();
                from.pair.clone().set_port_groups(
                    &lu,
                    group,
                    completion_of(o),
                    Box::new(move |c| reply(timer.finish(c))),
                );
                return None;
            }
            Some(timer.finish(completion_of(o)))
        }
        Prepared::Io(plan) => {
            if let Some(c) = run_inline(&lu, &plan, &cmd.data_out) {
                return Some(timer.finish(c));
            }
            match start_medium(lu, plan, cmd.data_out) {
                Started::Done(c) => Some(timer.finish(c)),
                Started::Waiting(fut) => {
                    let reply = reply_later();
                    tokio::spawn(async move {
                        reply(timer.finish(fut.await));
                    });
                    None
                }
            }
        }
    }
}

/// The port group an accepted SET TARGET PORT GROUPS asks to make Active/Optimized, if any.
pub fn port_group_to_activate(effects: &[Effect]) -> Option<u16> {
    effects.iter().find_map(|e| match e {
        Effect::SetTargetPortGroups(changes) => changes
            .iter()
            .find(|(_, s)| *s == AluaState::ActiveOptimized)
            .map(|(g, _)| *g),
        _ => None,
    })
}

/// Answers a command for a LUN the target does not have (SPC-4 §4.6.4): INQUIRY reports
/// "no logical unit" (peripheral qualifier 3), REPORT LUNS lists the real ones, REQUEST SENSE
/// reports LOGICAL UNIT NOT SUPPORTED, everything else fails with it.
fn no_such_lun(target: &Target, cmd: &ScsiCommand, ctx: &CommandContext<'_>) -> Completion {
    let code = cmd.cdb.first().copied().unwrap_or(0xFF);
    match code {
        op::REPORT_LUNS => {
            if let Some(lu) = target.luns.values().next() {
                let out = lu.lock().prepare(ctx, &cmd.cdb, &cmd.data_out);
                if let Prepared::Done(o) = out {
                    return completion_of(o);
                }
            }
            check(SenseCode::LUN_NOT_SUPPORTED)
        }
        op::INQUIRY => {
            let alloc = cmd
                .cdb
                .get(3..5)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .unwrap_or(0);
            let mut data = vec![0u8; 36];
            data[0] = 0x7F; // qualifier 011b, type 1Fh
            data[2] = 0x06;
            data[3] = 0x02;
            data[4] = 31;
            // Vendor (8 bytes), product (16) and revision (4), blank-padded.
            for b in &mut data[8..36] {
                *b = b' ';
            }
            data[8..8 + VENDOR.len()].copy_from_slice(VENDOR.as_bytes());
            data[16..16 + PRODUCT.len()].copy_from_slice(PRODUCT.as_bytes());
            let wanted = alloc as u32;
            data.truncate(alloc);
            Completion {
                status: status::GOOD,
                sense: None,
                data_in: Bytes::from(data),
                wanted_len: wanted,
            }
        }
        op::REQUEST_SENSE => {
            let alloc = cmd.cdb.get(4).copied().unwrap_or(0) as usize;
            let mut data = Sense::new(SenseCode::LUN_NOT_SUPPORTED).to_bytes(false);
            data.truncate(alloc);
            Completion {
                status: status::GOOD,
                sense: None,
                wanted_len: alloc as u32,
                data_in: Bytes::from(data),
            }
        }
        _ => check(SenseCode::LUN_NOT_SUPPORTED),
    }
}

/// Counts a command in the statistics when it finishes.
struct CommandTimer {
    stats: Arc<Stats>,
    lun: LunNumber,
    port: u16,
    op: u8,
    started: Instant,
}

impl CommandTimer {
    fn finish(self, c: Completion) -> Completion {
        let kind = OpKind::of(self.op);
        let bytes = match kind {
            OpKind::Read => c.data_in.len() as u64,
            OpKind::Write => u64::from(c.wanted_len),
            OpKind::Other => 0,
        };
        self.stats
            .record(self.lun, self.port, kind, bytes, self.started.elapsed());
        c
    }
}
