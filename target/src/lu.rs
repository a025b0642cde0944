//! The target and logical-unit model the daemon serves: [`Target`] (a name, a port, its LUNs)
//! and [`Lu`] (one LUN's SCSI state, shared by every session, its backing store, its I/O lock,
//! its fencing gate and its ALUA picture).
//!
//! The ALUA picture comes from [`AluaPicture::from_view`] with the facts a controller knows
//! (primary here and HA off for a stand-alone controller); an HA runtime only changes those
//! inputs ([`Target::set_alua`]). A backing device that refuses this controller's I/O with a
//! reservation conflict is reported to a listener the HA runtime installs
//! ([`Lu::on_backend_fenced`]). This file touches the LU's own state and its reservation file;
//! it knows nothing of connections, execution or HA.

use duet_core::LunNumber;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use duet_core::alua::LunView;
use duet_core::scsi::{AluaPicture, LogicalUnit};

use crate::backend::{write_file_atomically, FileStore};
use crate::ha::gate::IoGate;
use crate::sync::{self, Mutex, MutexGuard, RwLock};

/// This controller's HA id while HA is off (ARCHITECTURE.md §2.3: a stand-alone controller is node 1).
pub const STANDALONE_HA_ID: u8 = 1;

/// Vendor identification reported in INQUIRY.
pub const VENDOR: &str = "DUET";
/// Product identification reported in INQUIRY.
pub const PRODUCT: &str = "duet";

/// Told (with the LUN number) that the backing device refused this controller's I/O with a
/// reservation conflict: the peer fenced it at the disk.
pub type BackendFencedListener = Box<dyn Fn(LunNumber) + Send + Sync>;

/// One logical unit: the SCSI state (shared by every session) and its backing store.
pub struct Lu {
    pub number: u16,
    /// The command-set state; locked only for `prepare` and bookkeeping, never across I/O.
    pub state: Mutex<LogicalUnit>,
    /// Shared by medium operations, taken exclusively by COMPARE AND WRITE. An async lock: in HA
    /// mode 1 the primary holds it on behalf of the secondary while the secondary's medium phase
    /// runs (a grant).
    pub io_lock: Arc<tokio::sync::RwLock<()>>,
    /// The fencing gate: closed while this controller must not touch the backend.
    pub gate: Arc<IoGate>,
    /// This LUN's ALUA picture (the same from every port of both controllers).
    alua: RwLock<AluaPicture>,
    pub store: Arc<FileStore>,
    pr_path: PathBuf,
    /// Where a reservation conflict of the backing device is reported (the HA runtime).
    backend_fenced: OnceLock<BackendFencedListener>,
}

impl Lu {
    /// A logical unit over `store`, whose reservations persist in `pr_path`, with its first
    /// ALUA picture and its fencing gate open or closed.
    pub fn new(
        number: u16,
        state: LogicalUnit,
        store: FileStore,
        pr_path: PathBuf,
        picture: AluaPicture,
        gate_open: bool,
    ) -> Lu {
        Lu {
            number,
            state: Mutex::new(state),
            io_lock: Arc::new(tokio::sync::RwLock::new(())),
            gate: IoGate::new(gate_open),
            alua: RwLock::new(picture),
            store: Arc::new(store),
            pr_path,
            backend_fenced: OnceLock::new(),
        }
    }

    /// Installs the listener told when the backing device refuses this controller's I/O with a
    /// reservation conflict. Returns `false` if one was installed already (it stays).
    pub fn on_backend_fenced(&self, listener: BackendFencedListener) -> bool {
        self.backend_fenced.set(listener).is_ok()
    }

    /// Reports that the backing device refused a medium operation with a reservation conflict
    /// (`Effect::BackendFenced`) to the installed listener; without one (a controller with no
    /// peer) it is logged: another initiator holds a reservation on the device.
    pub fn report_backend_fenced(&self) {
        match self.backend_fenced.get() {
            Some(f) => f(self.number),
            None => tracing::error!(
                lun = self.number,
                path = %self.store.path().display(),
                "the backing device refused I/O: reservation conflict (another initiator holds \
                 a reservation on it)"
            ),
        }
    }

    /// The current ALUA picture of this LUN.
    pub fn alua(&self) -> AluaPicture {
        sync::read(&self.alua).clone()
    }

    /// Replaces the ALUA picture, raising 2A/06 on every nexus when it changed. Returns whether
    /// it changed.
    pub fn set_alua(&self, new: AluaPicture) -> bool {
        let new_copy = new.clone();
        let changed = {
            let mut g = sync::write(&self.alua);
            let changed = *g != new;
            *g = new;
            changed
        };
        if changed {
            // 2A/06 on every nexus (but the sender of a SET TARGET PORT GROUPS under way).
            self.lock().alua_changed(&new_copy);
        }
        changed
    }

    /// Locks the command-set state.
    pub fn lock(&self) -> MutexGuard<'_, LogicalUnit> {
        // A panic while holding the lock leaves the state as the last command left it; serving on
        // is better than refusing every later command.
        sync::lock(&self.state)
    }

    /// Writes (or removes) the persisted reservation state after a PR OUT.
    pub fn persist_pr(&self, aptpl: bool) {
        let result = if aptpl {
            let json = serde_json::to_vec_pretty(self.lock().pr_state());
            match json {
                Ok(data) => write_file_atomically(&self.pr_path, &data),
                Err(e) => Err(std::io::Error::other(e)),
            }
        } else {
            match std::fs::remove_file(&self.pr_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        if let Err(e) = result {
            tracing::error!(lun = self.number, path = %self.pr_path.display(),
                "cannot persist the persistent reservation state: {e}");
        }
    }
}

/// A target with its LUNs and ALUA picture.
pub struct Target {
    pub name: String,
    pub tpgt: u16,
    /// The relative target port id of this target's port (target name + portal group tag).
    pub rtpi: u16,
    pub luns: BTreeMap<LunNumber, Arc<Lu>>,
    pub lun_list: Vec<u64>,
    /// This controller's HA id (1 when HA is off).
    pub ha_id: u8,
    /// The relative port id of the peer controller's port for this target (HA only).
    pub peer_rtpi: Option<u16>,
    /// Explicit ALUA is advertised (a pair under automatic failover): SET TARGET PORT GROUPS
    /// moves a LUN.
    pub explicit_alua: bool,
}

impl Target {
    /// The ALUA picture of the target's first LUN (a picture for LUNs that do not exist).
    pub fn alua(&self) -> AluaPicture {
        match self.luns.values().next() {
            Some(lu) => lu.alua(),
            None => AluaPicture::from_view(LunView::standalone(), self.ha_id, &[self.rtpi], &[]),
        }
    }

    /// The ALUA picture for `view`: this target's port in this controller's group, the peer's
    /// port in the peer's group.
    pub fn picture(&self, view: LunView) -> AluaPicture {
        let peer: Vec<u16> = self.peer_rtpi.into_iter().collect();
        AluaPicture::from_view(view, self.ha_id, &[self.rtpi], &peer)
            .with_explicit(self.explicit_alua)
    }

    /// Replaces the ALUA picture of every LUN from the facts the HA layer knows, raising 2A/06
    /// on every nexus of every LU whose states change.
    pub fn set_alua(&self, view: LunView, peer_ports: &[u16]) {
        let new = AluaPicture::from_view(view, self.ha_id, &[self.rtpi], peer_ports)
            .with_explicit(self.explicit_alua);
        for lu in self.luns.values() {
            lu.set_alua(new.clone());
        }
    }
}
