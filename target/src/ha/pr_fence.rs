//! The `scsi-pr` fencing agent: SCSI-3 persistent reservations on the shared disks, with the
//! semantics of Pacemaker's fence_scsi.
//!
//! Each controller registers its own key on every shared device (REGISTER AND IGNORE EXISTING
//! KEY) and the pair holds one reservation per device: EXCLUSIVE ACCESS – REGISTRANTS ONLY on the
//! data LUNs (an unregistered initiator can neither read nor write) and WRITE EXCLUSIVE –
//! REGISTRANTS ONLY on the quorum device (a fenced controller can still read the quorum area and
//! learn it was superseded). Fencing the peer is PREEMPT AND ABORT of its key, on the quorum
//! device first and then on every data LUN, each confirmed by READ KEYS: the disk itself then
//! refuses the peer's queued and future I/O, which also stops a frozen host's late writes.
//!
//! The commands, parsers and rules are `duet_core::scsi::host_pr`'s; this file runs them over a
//! [`ScsiTransport`] (`transport`: `SG_IO` in the daemon, an iSCSI session in the tests), with a
//! deadline, a bounded retry on UNIT ATTENTION, and an error naming the device and the reason for
//! anything else. Uses `super::sg` through `transport`; used by `super::fence`.

pub mod monitor;
pub mod transport;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use duet_core::scsi::host_pr::{
    self, fence_confirmed, plan_reservation, pr_in, pr_type, verdict, FenceCheck,
    ForeignReservation, PrOut, PrParseError, ReadKeys, ReadReservation, ReservationPlan, Verdict,
    PR_IN_ALLOC,
};
use duet_core::sense::SenseCode;
use serde::{Deserialize, Serialize, Serializer};
use tokio::time::Instant;

pub use monitor::PrMonitor;
pub use transport::{ScsiReply, ScsiRequest, ScsiTransport, SgTransport, TransportError};

/// How many times a command is sent again after a UNIT ATTENTION.
const UA_RETRIES: usize = 4;
/// How long past its own timeout a transport may take before the agent stops waiting for it.
const TRANSPORT_GRACE: Duration = Duration::from_millis(500);

/// The `scsi-pr` agent's configuration: the two keys and the devices (quorum first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScsiPrConfig {
    /// This controller's key.
    #[serde(serialize_with = "ser_key")]
    pub key: u64,
    /// The peer's key.
    #[serde(serialize_with = "ser_key")]
    pub peer_key: u64,
    /// The quorum device.
    pub quorum: PathBuf,
    /// The backing block devices of the shared LUNs.
    pub luns: Vec<PathBuf>,
}

impl fmt::Display for ScsiPrConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scsi-pr (key {}, peer key {}, {} device{})",
            hex(self.key),
            hex(self.peer_key),
            self.luns.len() + 1,
            if self.luns.is_empty() { "" } else { "s" }
        )
    }
}

fn ser_key<S: Serializer>(k: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(*k))
}

/// A key as `duetctl` and the log show it.
pub fn hex(k: u64) -> String {
    format!("{k:#018x}")
}

/// What a device is to the pair: it decides the reservation type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceRole {
    /// The quorum device: WRITE EXCLUSIVE – REGISTRANTS ONLY.
    Quorum,
    /// A data LUN's backing device: EXCLUSIVE ACCESS – REGISTRANTS ONLY.
    Data,
}

impl DeviceRole {
    /// The reservation type the pair holds on such a device.
    pub fn reservation_type(self) -> u8 {
        match self {
            DeviceRole::Quorum => pr_type::WRITE_EXCLUSIVE_RO,
            DeviceRole::Data => pr_type::EXCLUSIVE_ACCESS_RO,
        }
    }
}

/// One device the agent works on.
#[derive(Clone)]
pub struct PrDevice {
    /// Its name in log lines and errors (the path).
    pub name: String,
    pub role: DeviceRole,
    /// The device itself: every command but the extra registrations goes here.
    pub transport: Arc<dyn ScsiTransport>,
    /// The device's other I_T nexuses (the paths of a multipath map): our key is registered
    /// through each of them too, or I/O down that path would meet RESERVATION CONFLICT.
    pub paths: Vec<Arc<dyn ScsiTransport>>,
}

impl fmt::Debug for PrDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrDevice")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish()
    }
}

/// Why one step on one device failed.
#[derive(Debug, thiserror::Error)]
pub enum PrFailure {
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("no answer within the fencing timeout")]
    Deadline,
    #[error("RESERVATION CONFLICT (this controller is not registered: fenced by the peer?)")]
    Conflict,
    #[error("CHECK CONDITION, sense {0}")]
    Check(SenseCode),
    #[error("CHECK CONDITION without sense data")]
    CheckNoSense,
    #[error("still UNIT ATTENTION ({0}) after {UA_RETRIES} retries")]
    UnitAttention(SenseCode),
    #[error("device busy (status {0:#04x})")]
    Busy(u8),
    #[error("unexpected SCSI status {0:#04x}")]
    Status(u8),
    #[error("bad answer: {0}")]
    Parse(#[from] PrParseError),
    #[error("{0}")]
    Foreign(#[from] ForeignReservation),
    #[error("READ KEYS after the preemption: {0}")]
    NotConfirmed(#[from] FenceCheck),
}

/// A failed agent operation: the device, the step and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{device}: {step}: {reason}")]
pub struct PrError {
    pub device: String,
    pub step: &'static str,
    #[source]
    pub reason: PrFailure,
}

/// The agent: our key, the peer's, and the devices (quorum first).
#[derive(Clone, Debug)]
pub struct PrAgent {
    pub key: u64,
    pub peer_key: u64,
    pub devices: Vec<PrDevice>,
}

impl PrAgent {
    /// The agent for `cfg` over `SG_IO`: opens the quorum device and every LUN's backing device;
    /// a path that is not a block device is refused by name.
    pub fn open_sg(cfg: &ScsiPrConfig) -> Result<PrAgent, PrError> {
        let open_one = |path: &std::path::Path, name: &str| {
            SgTransport::open(path)
                .map(|t| Arc::new(t) as Arc<dyn ScsiTransport>)
                .map_err(|e| PrError {
                    device: name.to_string(),
                    step: "open",
                    reason: PrFailure::Transport(TransportError::Failed(e.to_string())),
                })
        };
        let open = |path: &PathBuf, role| {
            let name = path.display().to_string();
            let transport = open_one(path, &name)?;
            let paths = crate::ha::sg::paths_of(path)
                .iter()
                .map(|p| open_one(p, &format!("{name} (path {})", p.display())))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PrDevice {
                name,
                role,
                transport,
                paths,
            })
        };
        let mut devices = vec![open(&cfg.quorum, DeviceRole::Quorum)?];
        for p in &cfg.luns {
            devices.push(open(p, DeviceRole::Data)?);
        }
        Ok(PrAgent {
            key: cfg.key,
            peer_key: cfg.peer_key,
            devices,
        })
    }

    /// Runs one command on `dev` before `deadline`: GOOD is the only success; a UNIT ATTENTION
    /// is retried a bounded number of times; anything else is a [`PrError`] naming the step.
    async fn run(
        &self,
        dev: &PrDevice,
        step: &'static str,
        req: ScsiRequest,
        deadline: Instant,
    ) -> Result<ScsiReply, PrError> {
        self.run_on(dev, dev.transport.as_ref(), step, req, deadline)
            .await
    }

    /// [`Self::run`] through `transport`, one of `dev`'s paths.
    async fn run_on(
        &self,
        dev: &PrDevice,
        transport: &dyn ScsiTransport,
        step: &'static str,
        req: ScsiRequest,
        deadline: Instant,
    ) -> Result<ScsiReply, PrError> {
        let fail = |reason| PrError {
            device: dev.name.clone(),
            step,
            reason,
        };
        let mut last_ua = None;
        for _ in 0..=UA_RETRIES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(PrFailure::Deadline));
            }
            let req = ScsiRequest {
                timeout: left,
                ..req.clone()
            };
            let reply =
                match tokio::time::timeout(left + TRANSPORT_GRACE, transport.execute(req)).await {
                    Err(_) => return Err(fail(PrFailure::Deadline)),
                    Ok(Err(e)) => return Err(fail(PrFailure::Transport(e))),
                    Ok(Ok(r)) => r,
                };
            match verdict(reply.status, reply.sense) {
                Verdict::Good => return Ok(reply),
                Verdict::Retry(s) => {
                    tracing::debug!("scsi-pr: {}: {step}: unit attention {s}; again", dev.name);
                    last_ua = Some(s);
                }
                Verdict::Conflict => return Err(fail(PrFailure::Conflict)),
                Verdict::Check(Some(s)) => return Err(fail(PrFailure::Check(s))),
                Verdict::Check(None) => return Err(fail(PrFailure::CheckNoSense)),
                Verdict::Busy(s) => return Err(fail(PrFailure::Busy(s))),
                Verdict::Other(s) => return Err(fail(PrFailure::Status(s))),
            }
        }
        Err(fail(PrFailure::UnitAttention(
            last_ua.unwrap_or(SenseCode::UA_POWER_ON_RESET),
        )))
    }

    async fn pr_in(
        &self,
        dev: &PrDevice,
        step: &'static str,
        action: u8,
        deadline: Instant,
    ) -> Result<Vec<u8>, PrError> {
        let req = ScsiRequest {
            cdb: host_pr::pr_in_cdb(action, PR_IN_ALLOC).to_vec(),
            data_out: Vec::new(),
            data_in_len: u32::from(PR_IN_ALLOC),
            timeout: Duration::ZERO,
        };
        Ok(self.run(dev, step, req, deadline).await?.data)
    }

    async fn pr_out(
        &self,
        dev: &PrDevice,
        step: &'static str,
        cmd: PrOut,
        deadline: Instant,
    ) -> Result<(), PrError> {
        let req = ScsiRequest {
            cdb: cmd.cdb.to_vec(),
            data_out: cmd.params.to_vec(),
            data_in_len: 0,
            timeout: Duration::ZERO,
        };
        self.run(dev, step, req, deadline).await.map(|_| ())
    }

    /// READ KEYS on `dev`.
    pub async fn read_keys(&self, dev: &PrDevice, deadline: Instant) -> Result<ReadKeys, PrError> {
        let d = self
            .pr_in(dev, "READ KEYS", pr_in::READ_KEYS, deadline)
            .await?;
        host_pr::parse_read_keys(&d).map_err(|e| PrError {
            device: dev.name.clone(),
            step: "READ KEYS",
            reason: e.into(),
        })
    }

    /// READ RESERVATION on `dev`.
    pub async fn read_reservation(
        &self,
        dev: &PrDevice,
        deadline: Instant,
    ) -> Result<ReadReservation, PrError> {
        let d = self
            .pr_in(dev, "READ RESERVATION", pr_in::READ_RESERVATION, deadline)
            .await?;
        host_pr::parse_read_reservation(&d).map_err(|e| PrError {
            device: dev.name.clone(),
            step: "READ RESERVATION",
            reason: e.into(),
        })
    }

    /// Registers our key on `dev` (REGISTER AND IGNORE EXISTING KEY), through the device and
    /// through each of its other paths.
    pub async fn register(&self, dev: &PrDevice, deadline: Instant) -> Result<(), PrError> {
        let cmd = PrOut::register_ignore(self.key);
        let transports = std::iter::once(&dev.transport).chain(dev.paths.iter());
        for (i, t) in transports.enumerate() {
            let req = ScsiRequest {
                cdb: cmd.cdb.to_vec(),
                data_out: cmd.params.to_vec(),
                data_in_len: 0,
                timeout: Duration::ZERO,
            };
            let step = if i == 0 {
                "REGISTER AND IGNORE EXISTING KEY"
            } else {
                "REGISTER AND IGNORE EXISTING KEY (another path)"
            };
            self.run_on(dev, t.as_ref(), step, req, deadline).await?;
        }
        Ok(())
    }

    /// Makes sure the pair holds the reservation `dev`'s role asks for: takes it when there is
    /// none; refuses a reservation of another type or by a foreign key. Needs our key registered.
    pub async fn ensure_reservation(
        &self,
        dev: &PrDevice,
        deadline: Instant,
    ) -> Result<(), PrError> {
        let want = dev.role.reservation_type();
        let check = |r: ReadReservation| {
            plan_reservation(r.reservation, self.key, self.peer_key, want).map_err(|e| PrError {
                device: dev.name.clone(),
                step: "READ RESERVATION",
                reason: e.into(),
            })
        };
        let r = self.read_reservation(dev, deadline).await?;
        if check(r)? == ReservationPlan::Held {
            return Ok(());
        }
        let reserved = self
            .pr_out(dev, "RESERVE", PrOut::reserve(self.key, want), deadline)
            .await;
        // The peer may have reserved between our read and our RESERVE (our RESERVE then gets a
        // conflict): what counts is that the pair holds it now.
        let r = self.read_reservation(dev, deadline).await?;
        match check(r)? {
            ReservationPlan::Held => Ok(()),
            ReservationPlan::Reserve => Err(reserved.err().unwrap_or(PrError {
                device: dev.name.clone(),
                step: "RESERVE",
                reason: PrFailure::Status(0),
            })),
        }
    }

    /// Joins the pair at the disks before serving: registers our key on every device and makes
    /// sure the pair holds each device's reservation. Any failure stops the start.
    pub async fn join(&self, timeout: Duration) -> Result<(), PrError> {
        let deadline = Instant::now() + timeout;
        for dev in &self.devices {
            self.register(dev, deadline).await?;
            self.ensure_reservation(dev, deadline).await?;
            tracing::info!(
                "scsi-pr: {}: registered key {}, reservation {} held by the pair",
                dev.name,
                hex(self.key),
                host_pr::type_name(dev.role.reservation_type())
            );
        }
        Ok(())
    }

    /// Fences the peer: on every device (quorum first), PREEMPT AND ABORT of the peer's key with
    /// ours, then READ KEYS to confirm the peer's key is gone. `Ok` only when every device
    /// confirms; a device where the peer's key is already absent counts as fenced. A device that
    /// does not implement PREEMPT AND ABORT (it answers INVALID FIELD IN CDB) gets PREEMPT, with
    /// a warning: the peer's later commands are refused, its already queued ones are not aborted.
    pub async fn fence_peer(&self, timeout: Duration) -> Result<(), PrError> {
        let deadline = Instant::now() + timeout;
        for dev in &self.devices {
            let r = self.fence_one(dev, deadline).await;
            if let Err(e) = &r {
                tracing::error!("scsi-pr: fencing the peer failed on {e}");
            }
            r?;
        }
        Ok(())
    }

    async fn fence_one(&self, dev: &PrDevice, deadline: Instant) -> Result<(), PrError> {
        let before = self.read_keys(dev, deadline).await?;
        if !before.keys.contains(&self.peer_key) {
            tracing::warn!(
                "scsi-pr: {}: the peer's key {} is not registered: the disk refuses its I/O",
                dev.name,
                hex(self.peer_key)
            );
            return Ok(());
        }
        let ptype = dev.role.reservation_type();
        let aborted = self
            .pr_out(
                dev,
                "PREEMPT AND ABORT",
                PrOut::preempt_and_abort(self.key, self.peer_key, ptype),
                deadline,
            )
            .await;
        match aborted {
            Ok(()) => {}
            Err(PrError {
                reason: PrFailure::Check(s),
                ..
            }) if host_pr::unsupported_action(Some(s)) => {
                // The device does not implement PREEMPT AND ABORT: PREEMPT still removes the
                // peer's registration (its later commands are refused), but commands the peer
                // queued before it are not aborted.
                tracing::warn!(
                    "scsi-pr: {}: the device refuses PREEMPT AND ABORT ({s}); using PREEMPT, \
                     which does not abort the peer's commands already queued at the device",
                    dev.name
                );
                self.pr_out(
                    dev,
                    "PREEMPT",
                    PrOut::preempt(self.key, self.peer_key, ptype),
                    deadline,
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
        let after = self.read_keys(dev, deadline).await?;
        fence_confirmed(&before, &after, self.key, self.peer_key).map_err(|e| PrError {
            device: dev.name.clone(),
            step: "PREEMPT AND ABORT",
            reason: e.into(),
        })?;
        tracing::warn!(
            "scsi-pr: {}: preempted the peer's key {} (generation {})",
            dev.name,
            hex(self.peer_key),
            after.generation
        );
        Ok(())
    }

    /// What each device holds (keys and reservation), for `duetctl ha`; a device that cannot be
    /// read shows the error.
    pub async fn status(&self, timeout: Duration) -> Vec<DeviceStatus> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        for dev in &self.devices {
            let read = async {
                let keys = self.read_keys(dev, deadline).await?;
                let res = self.read_reservation(dev, deadline).await?;
                Ok::<_, PrError>((keys, res))
            };
            out.push(match read.await {
                Ok((keys, res)) => DeviceStatus::new(dev, self.key, self.peer_key, &keys, &res),
                Err(e) => DeviceStatus {
                    device: dev.name.clone(),
                    role: dev.role,
                    generation: None,
                    keys: Vec::new(),
                    reservation: None,
                    error: Some(e.reason.to_string()),
                },
            });
        }
        out
    }
}

/// Whose a key is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyOwner {
    Ours,
    Peer,
    Foreign,
}

/// One registered key on a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub key: String,
    pub owner: KeyOwner,
}

/// A device's reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationInfo {
    /// The holder's key (0 for all-registrants types).
    pub key: String,
    pub holder: KeyOwner,
    #[serde(rename = "type")]
    pub ptype: String,
}

/// What `duetctl ha` shows of one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    pub role: DeviceRole,
    pub generation: Option<u32>,
    pub keys: Vec<KeyInfo>,
    pub reservation: Option<ReservationInfo>,
    pub error: Option<String>,
}

impl DeviceStatus {
    fn new(
        dev: &PrDevice,
        ours: u64,
        peer: u64,
        keys: &ReadKeys,
        res: &ReadReservation,
    ) -> DeviceStatus {
        let owner = |k| match k {
            k if k == ours => KeyOwner::Ours,
            k if k == peer => KeyOwner::Peer,
            _ => KeyOwner::Foreign,
        };
        DeviceStatus {
            device: dev.name.clone(),
            role: dev.role,
            generation: Some(keys.generation),
            keys: keys
                .keys
                .iter()
                .map(|&k| KeyInfo {
                    key: hex(k),
                    owner: owner(k),
                })
                .collect(),
            reservation: res.reservation.map(|r| ReservationInfo {
                key: hex(r.key),
                holder: owner(r.key),
                ptype: host_pr::type_name(r.ptype).to_string(),
            }),
            error: None,
        }
    }
}

impl fmt::Display for DeviceStatus {
    /// One line: `DEVICE (ROLE): keys K (ours), K (peer); reserved TYPE by K (ours)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = |o: KeyOwner| match o {
            KeyOwner::Ours => "ours",
            KeyOwner::Peer => "peer",
            KeyOwner::Foreign => "foreign",
        };
        let role = match self.role {
            DeviceRole::Quorum => "quorum",
            DeviceRole::Data => "data",
        };
        write!(f, "{} ({role}): ", self.device)?;
        if let Some(e) = &self.error {
            return write!(f, "unreadable: {e}");
        }
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.key, owner(k.owner)))
            .collect();
        if keys.is_empty() {
            f.write_str("no keys")?;
        } else {
            write!(f, "keys {}", keys.join(", "))?;
        }
        match &self.reservation {
            None => f.write_str("; not reserved"),
            Some(r) => write!(
                f,
                "; reserved {} by {} ({})",
                r.ptype,
                r.key,
                owner(r.holder)
            ),
        }
    }
}

#[cfg(test)]
mod tests;
