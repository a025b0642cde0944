//! One command's work on this controller's LU: phase 1 ([`prepare_local`], under the LU's
//! mutex, fast, no I/O), then the medium phase ([`run_io`]) with no LU lock held: in place when
//! it cannot wait for a device (reads and writes on tmpfs, [`run_inline`]); through the thread's
//! io_uring ring for reads, writes and flushes of a direct-I/O store ([`crate::uring`], on the
//! connection threads); else on tokio's blocking pool. COMPARE AND WRITE takes the LU's I/O lock exclusively, every other medium
//! operation shares it, so C&W is atomic against concurrent writes; every medium operation
//! passes the LU's fencing gate. Afterwards, [`apply_effects`] and [`after_command`] carry out
//! what the command asked of the runtime.
//!
//! Both the connection path and the HA runtime (a primary serving its peer's forwarded
//! commands, a secondary running a mode-1 plan) run commands through here. Touches the LU, its
//! store and its reservation file; an HA pair only through [`Pair`].

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use duet_core::alua::AluaState;
use duet_core::iscsi::Completion;
use duet_core::scsi::opclass::changes_shared_state;
use duet_core::scsi::{
    run_io, BlockStore, CommandContext, Effect, IoOp, IoPlan, MediumFailure, Nexus, Outcome,
    Prepared,
};
use duet_core::sense::SenseCode;

use super::completion::{check, completion_of};
use super::pair::Pair;
use crate::lu::{Lu, Target};
use crate::uring::{self, DirectOp, Keep};

/// Phase 1 of a command on this controller's copy of the LU, for `nexus`.
pub fn prepare_local(
    target: &Target,
    lu: &Lu,
    nexus: &Nexus,
    cdb: &[u8],
    data_out: &[u8],
) -> Prepared {
    let pic = lu.alua();
    let ctx = CommandContext {
        nexus,
        alua: &pic,
        target_name: &target.name,
        tpgt: target.tpgt,
        luns: &target.lun_list,
    };
    lu.lock().prepare(&ctx, cdb, data_out)
}

/// The I/O lock held for one medium phase.
pub enum IoGuard {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// Takes the LU's I/O lock for `plan`: exclusive for COMPARE AND WRITE and friends.
pub async fn io_guard(lu: &Lu, plan: &IoPlan) -> IoGuard {
    if plan.needs_exclusive() {
        IoGuard::Exclusive(lu.io_lock.clone().write_owned().await)
    } else {
        IoGuard::Shared(lu.io_lock.clone().read_owned().await)
    }
}

/// [`io_guard`] if the lock is free now.
pub fn try_io_guard(lu: &Lu, plan: &IoPlan) -> Option<IoGuard> {
    if plan.needs_exclusive() {
        lu.io_lock
            .clone()
            .try_write_owned()
            .ok()
            .map(IoGuard::Exclusive)
    } else {
        lu.io_lock
            .clone()
            .try_read_owned()
            .ok()
            .map(IoGuard::Shared)
    }
}

/// The medium phase of a command on this controller's backend, through the fencing gate.
pub async fn run_medium(lu: Arc<Lu>, plan: IoPlan, data_out: Bytes) -> Completion {
    let guard = io_guard(&lu, &plan).await;
    run_medium_locked(lu, plan, data_out, guard).await
}

/// A medium phase as [`start_medium`] left it.
pub enum Started {
    /// It finished at once (a fenced LU, a failure found before any I/O).
    Done(Completion),
    /// It waits for its I/O, which is already with the kernel when it goes through the ring.
    Waiting(std::pin::Pin<Box<dyn Future<Output = Completion> + Send>>),
}

/// [`run_medium`], run here until it first waits: a read or write of a direct-I/O store on this
/// thread's ring enters the kernel now, while the connection decodes the commands that arrived
/// with this one, instead of once the task that awaits it first runs. The returned future must
/// be polled to completion (it was polled once with a waker that does nothing, so it must be
/// polled again before it can be woken).
pub fn start_medium(lu: Arc<Lu>, plan: IoPlan, data_out: Bytes) -> Started {
    let mut fut = Box::pin(run_medium(lu, plan, data_out));
    match fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(c) => Started::Done(c),
        std::task::Poll::Pending => Started::Waiting(fut),
    }
}

/// [`run_medium`] with the I/O lock already held (by this controller or, in mode 1, by the
/// primary on this controller's behalf).
pub async fn run_medium_locked(
    lu: Arc<Lu>,
    plan: IoPlan,
    data_out: Bytes,
    guard: impl Send + 'static,
) -> Completion {
    let Some(pass) = lu.gate.enter() else {
        // Fenced: this controller may not touch the disk now; the initiator retries (on the
        // other path once the ALUA states say so).
        return check(SenseCode::ALUA_TRANSITIONING);
    };
    run_plan(lu, plan, data_out, (guard, pass)).await
}

/// Runs `plan` on the calling thread; for plans that [never wait](never_waits), with whatever
/// locks and gate pass they need already held.
pub fn run_plan_now(lu: &Lu, plan: &IoPlan, data_out: &[u8]) -> Completion {
    let o = run_io(plan, &*lu.store, data_out);
    apply_effects(lu, &o.effects);
    completion_of(o)
}

/// Runs `plan` in place when it [never waits](never_waits), through this thread's io_uring ring
/// when the store is direct and the plan is one the ring runs ([`DirectOp::of`]), else on the
/// blocking pool; keeps `hold` (locks, gate pass) until the I/O is over.
pub async fn run_plan(
    lu: Arc<Lu>,
    plan: IoPlan,
    data_out: Bytes,
    hold: impl Send + 'static,
) -> Completion {
    if never_waits(&lu, &plan) {
        let c = run_plan_now(&lu, &plan, &data_out);
        drop(hold);
        return c;
    }
    let on_ring = uring::current().and_then(|ring| {
        let d = lu.store.direct()?;
        let op = DirectOp::of(
            &plan.op,
            d,
            lu.store.len(),
            lu.store.is_read_only(),
            &data_out,
        )?;
        Some((ring, d, op))
    });
    if let Some((ring, d, op)) = on_ring {
        // The ring keeps the store (its descriptor) and the locks until the kernel is done,
        // even if this command is dropped meanwhile.
        let keep: Keep = Arc::new((lu.store.clone(), std::sync::Mutex::new(hold)));
        return match uring::run_direct(&ring, d, op, keep).await {
            Ok(data) => ring_completion(&plan, Ok(data)),
            Err(f) => {
                // (A store fenced at the disk tells the HA node, as on the blocking path.)
                let o = f.outcome(&plan);
                apply_effects(&lu, &o.effects);
                completion_of(o)
            }
        };
    }
    let lu2 = lu.clone();
    let r = tokio::task::spawn_blocking(move || {
        let _hold = hold;
        // (WCE=0 is honoured by the plan itself: the LU sets FUA on every write.)
        run_io(&plan, &*lu2.store, &data_out)
    })
    .await;
    match r {
        Ok(o) => {
            apply_effects(&lu, &o.effects);
            completion_of(o)
        }
        Err(e) => {
            tracing::error!(lun = lu.number, "I/O task failed: {e}");
            check(SenseCode::INTERNAL_TARGET_FAILURE)
        }
    }
}

/// The completion of a plan the ring ran: what [`completion_of`] gives for the same outcome,
/// with Data-In the ring's own buffer (no copy).
pub fn ring_completion(plan: &IoPlan, r: Result<Bytes, MediumFailure>) -> Completion {
    match r {
        Ok(data) => {
            let mut c = completion_of(Outcome::good(Vec::new(), plan.wanted_len));
            c.data_in = data;
            c
        }
        Err(f) => completion_of(f.outcome(plan)),
    }
}

/// Whether `plan` is a read or write of at most [`INLINE_MAX_BYTES`] on a store that never
/// waits for a device: cheaper to run on the calling task than to hand to another thread.
pub fn never_waits(lu: &Lu, plan: &IoPlan) -> bool {
    lu.store.never_blocks()
        && match plan.op {
            IoOp::Read { len, .. } | IoOp::Write { len, .. } => len <= INLINE_MAX_BYTES,
            _ => false,
        }
}

/// The largest medium phase that [`run_inline`] runs in place.
const INLINE_MAX_BYTES: u64 = 1 << 20;

/// Runs a read or write of at most [`INLINE_MAX_BYTES`] on the calling task when the store never
/// waits for a device (tmpfs), the I/O lock is free to share and the fencing gate is open: a
/// copy to or from memory costs less than handing the work to another thread and back. Returns
/// `None` (the caller takes the blocking pool) otherwise.
pub fn run_inline(lu: &Lu, plan: &IoPlan, data_out: &Bytes) -> Option<Completion> {
    // (Reads and writes never need the I/O lock exclusively.)
    if !never_waits(lu, plan) {
        return None;
    }
    let _shared = lu.io_lock.try_read().ok()?;
    let _pass = lu.gate.enter()?;
    Some(run_plan_now(lu, plan, data_out))
}

/// Bookkeeping after a command finished on this controller's LU: persisted reservations, and
/// in an HA pair (through [`Pair::sync_lu`]) the replication of reservations and mode pages to
/// the peer.
pub fn after_command(pair: &dyn Pair, lu: &Lu, cdb: &[u8], effects: &[Effect]) {
    apply_effects(lu, effects);
    if changes_shared_state(cdb.first().copied().unwrap_or(0)) {
        pair.sync_lu(lu);
    }
}

/// Carries out what a command asked of the runtime.
pub fn apply_effects(lu: &Lu, effects: &[Effect]) {
    for e in effects {
        match e {
            Effect::PrChanged { aptpl } => lu.persist_pr(*aptpl),
            Effect::BackendFenced => lu.report_backend_fenced(),
            Effect::SetTargetPortGroups(changes) => {
                let desc: Vec<String> = changes
                    .iter()
                    .map(|(g, s): &(u16, AluaState)| format!("group {g} -> {}", s.name()))
                    .collect();
                // The pair carries it out (`Pair::set_port_groups`); the command is answered
                // once it is done.
                tracing::info!(
                    lun = lu.number,
                    "SET TARGET PORT GROUPS accepted: {}",
                    desc.join(", ")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::tests::{on_ring_thread, DirectFile};
    use crate::uring::{run_direct, DirectOp};
    use duet_core::scsi::MemStore;

    /// A plan's completion through the ring equals what the blocking path gives for the same
    /// plan on a store with the same contents: status, sense, Data-In and residual length.
    #[test]
    fn the_ring_completes_a_plan_as_the_blocking_path_does() {
        let f = DirectFile::new("medium", 1 << 20);
        let d = f.direct();
        let len = f.len;
        let data_out = Bytes::from((0..12289u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
        let plan = |op, wanted_len| IoPlan {
            op,
            wanted_len,
            descriptor_sense: false,
        };
        let plans = vec![
            plan(
                IoOp::Write {
                    offset: 8192,
                    len: 12288,
                    data_at: 1,
                    fua: true,
                },
                12288,
            ),
            plan(
                IoOp::Write {
                    offset: 0,
                    len: 4096,
                    data_at: 0,
                    fua: false,
                },
                8192,
            ),
            plan(IoOp::Flush, 0),
            plan(
                IoOp::Read {
                    offset: 0,
                    len: 24576,
                },
                24576,
            ),
            plan(
                IoOp::Read {
                    offset: 4096,
                    len: 4096,
                },
                65536,
            ),
        ];
        let mem = MemStore::new(len);
        let want: Vec<Completion> = plans
            .iter()
            .map(|p| completion_of(run_io(p, &mem, &data_out)))
            .collect();
        let got = on_ring_thread(16, move |ring| async move {
            let mut got = Vec::new();
            for p in &plans {
                let op = DirectOp::of(&p.op, d, len, false, &data_out).expect("a ring plan");
                let r = run_direct(&ring, d, op, Arc::new(())).await;
                got.push(ring_completion(p, r));
            }
            got
        });
        assert_eq!(got, want);
    }

    /// A LUN opened with `direct = true`, served on a connection thread: reads and writes go
    /// through the thread's ring exactly when the store is direct, and read back what was
    /// written; the same LU served from a thread without a ring takes the blocking pool.
    #[test]
    fn a_direct_lun_on_a_connection_thread_reads_back_what_was_written() {
        use crate::backend::{FileStore, OpenSpec};
        use duet_core::alua::LunView;
        use duet_core::scsi::{AluaPicture, LogicalUnit, LuConfig};

        let dir = std::env::temp_dir().join(format!("duet-medium-{}-lu", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lun.img");
        let store = FileStore::open(&OpenSpec {
            path: &path,
            size: Some(1 << 20),
            block_size: 512,
            read_only: false,
            create: true,
            direct: true,
        })
        .unwrap();
        let direct = store.direct().is_some();
        let lu = LogicalUnit::new(LuConfig::new(0, 512, (1 << 20) / 512, "uring0")).unwrap();
        let picture = AluaPicture::from_view(LunView::standalone(), 1, &[1], &[]);
        let lu = Arc::new(Lu::new(0, lu, store, dir.join("lun.pr"), picture, true));
        let data = Bytes::from((0..65536u32).map(|i| (i * 13) as u8).collect::<Vec<u8>>());
        let write = IoPlan {
            op: IoOp::Write {
                offset: 131072,
                len: 65536,
                data_at: 0,
                fua: true,
            },
            wanted_len: 65536,
            descriptor_sense: false,
        };
        let read = |offset| IoPlan {
            op: IoOp::Read { offset, len: 65536 },
            wanted_len: 65536,
            descriptor_sense: false,
        };
        let (lu2, data2) = (lu.clone(), data.clone());
        let (w, r, used) = on_ring_thread(32, move |ring| async move {
            let w = run_medium(lu2.clone(), write, data2).await;
            let r = tokio::spawn(run_medium(lu2, read(131072), Bytes::new()))
                .await
                .unwrap();
            (w, r, ring.started())
        });
        assert_eq!(w.status, duet_core::sense::status::GOOD, "{w:?}");
        assert_eq!(r.status, duet_core::sense::status::GOOD, "{r:?}");
        assert_eq!(r.data_in, data);
        // Write, its FUA sync, and the read: on the ring exactly when the store is direct.
        assert_eq!(
            used >= 3,
            direct,
            "{used} ring operations, direct store: {direct}"
        );
        // A thread without a ring (the HA runtime's) reads the same through the blocking pool.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let again = rt.block_on(run_medium(lu.clone(), read(131072), Bytes::new()));
        assert_eq!(again.data_in, data);
        drop(rt);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `start_medium` hands a direct read to the ring before its future is awaited (the command
    /// reaches the device while the connection decodes the next ones), and the future then
    /// completes it as `run_medium` would.
    #[test]
    fn a_started_medium_phase_is_with_the_kernel_before_it_is_awaited() {
        use crate::backend::{FileStore, OpenSpec};
        use duet_core::alua::LunView;
        use duet_core::scsi::{AluaPicture, LogicalUnit, LuConfig};

        let dir = std::env::temp_dir().join(format!("duet-medium-{}-start", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lun.img");
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 29) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let store = FileStore::open(&OpenSpec {
            path: &path,
            size: None,
            block_size: 512,
            read_only: false,
            create: false,
            direct: true,
        })
        .unwrap();
        let direct = store.direct().is_some();
        let lu = LogicalUnit::new(LuConfig::new(0, 512, 65536 / 512, "start0")).unwrap();
        let picture = AluaPicture::from_view(LunView::standalone(), 1, &[1], &[]);
        let lu = Arc::new(Lu::new(0, lu, store, dir.join("lun.pr"), picture, true));
        let read = IoPlan {
            op: IoOp::Read {
                offset: 8192,
                len: 16384,
            },
            wanted_len: 16384,
            descriptor_sense: false,
        };
        let (started, c) = on_ring_thread(16, move |ring| async move {
            let before = ring.started();
            let s = start_medium(lu, read, Bytes::new());
            let started = ring.started() - before;
            let c = match s {
                Started::Done(c) => c,
                Started::Waiting(fut) => tokio::spawn(fut).await.unwrap(),
            };
            (started, c)
        });
        assert_eq!(c.status, duet_core::sense::status::GOOD, "{c:?}");
        assert_eq!(&c.data_in[..], &data[8192..8192 + 16384]);
        assert_eq!(started, u64::from(direct), "direct store: {direct}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_ring_plan_carries_core_sense_in_the_format_asked() {
        let p = IoPlan {
            op: IoOp::Read {
                offset: 0,
                len: 512,
            },
            wanted_len: 512,
            descriptor_sense: true,
        };
        let e = duet_core::scsi::StoreError::ReservationConflict;
        let want = completion_of(Outcome::check(
            duet_core::scsi::read_err(e.clone()),
            true,
            512,
        ));
        let f = MediumFailure::read(e);
        assert!(f.fenced);
        assert_eq!(f.clone().outcome(&p).effects, vec![Effect::BackendFenced]);
        assert_eq!(ring_completion(&p, Err(f)), want);
    }
}
