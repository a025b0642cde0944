//! How the `scsi-pr` agent reaches a disk: one SCSI command in, its status, sense and data out,
//! behind [`ScsiTransport`], so that the same reservation code runs over `SG_IO` on a block
//! device ([`SgTransport`], the daemon's) and over an iSCSI session (the tests', against a real
//! target's reservations).
//!
//! Uses `super::super::sg` for the block device; knows nothing of reservations.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use duet_core::sense::SenseCode;

use crate::ha::sg::{Data, SgCommand, SgDevice, SgError};

/// A boxed, sendable future (the transport trait stays object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One SCSI command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiRequest {
    pub cdb: Vec<u8>,
    /// Data-Out (empty: none).
    pub data_out: Vec<u8>,
    /// Room for Data-In (0: none).
    pub data_in_len: u32,
    /// How long the command may take; the transport gives up (and says so) after it.
    pub timeout: Duration,
}

/// A command's outcome, as the device reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiReply {
    pub status: u8,
    pub sense: Option<SenseCode>,
    /// Data-In received.
    pub data: Vec<u8>,
}

/// Why a command has no status: it did not reach the device, or its answer did not come back.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Something that runs SCSI commands on one device.
pub trait ScsiTransport: Send + Sync {
    /// Runs `req` and returns the device's answer.
    fn execute(&self, req: ScsiRequest) -> BoxFuture<'_, Result<ScsiReply, TransportError>>;
}

/// `SG_IO` on a block device, on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct SgTransport {
    dev: Arc<SgDevice>,
}

impl SgTransport {
    /// Opens the block device at `path` (a regular file is refused by name).
    pub fn open(path: &Path) -> Result<SgTransport, SgError> {
        Ok(SgTransport {
            dev: Arc::new(SgDevice::open(path)?),
        })
    }
}

impl ScsiTransport for SgTransport {
    fn execute(&self, req: ScsiRequest) -> BoxFuture<'_, Result<ScsiReply, TransportError>> {
        let dev = self.dev.clone();
        Box::pin(async move {
            let task = tokio::task::spawn_blocking(move || {
                let mut data = vec![0u8; req.data_in_len as usize];
                let phase = if !req.data_out.is_empty() {
                    Data::Out(&req.data_out)
                } else if data.is_empty() {
                    Data::None
                } else {
                    Data::In(&mut data)
                };
                let r = dev.execute(SgCommand {
                    cdb: &req.cdb,
                    data: phase,
                    timeout: req.timeout,
                });
                r.map(|r| {
                    data.truncate(r.data_len);
                    ScsiReply {
                        status: r.status,
                        sense: r.sense,
                        data,
                    }
                })
            });
            match task.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(SgError::Timeout(t))) => Err(TransportError::Timeout(t)),
                Ok(Err(e)) => Err(TransportError::Failed(e.to_string())),
                Err(e) => Err(TransportError::Failed(format!("SG_IO task: {e}"))),
            }
        })
    }
}
