//! The `scsi-pr` agent in a running daemon: joining the pair at the disks before serving, and
//! the last picture of every device's keys and reservation that `duetctl ha` shows (refreshed in
//! the background, so that the admin socket never waits on a disk).
//!
//! Uses `super` (the agent); used by the daemon's start-up and admin code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{DeviceStatus, PrAgent, PrError, ScsiPrConfig};

/// How often the picture of the devices is read again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The daemon's agent and the last picture of its devices.
#[derive(Debug)]
pub struct PrMonitor {
    agent: PrAgent,
    status: Mutex<Vec<DeviceStatus>>,
}

impl PrMonitor {
    /// Opens every device of `cfg` (block devices only), registers our key on each and makes
    /// sure the pair holds its reservation, all within `timeout`; any failure is the error that
    /// stops the start.
    pub async fn join(cfg: &ScsiPrConfig, timeout: Duration) -> Result<Arc<PrMonitor>, PrError> {
        let c = cfg.clone();
        let agent = match tokio::task::spawn_blocking(move || PrAgent::open_sg(&c)).await {
            Ok(r) => r?,
            Err(e) => {
                return Err(PrError {
                    device: cfg.quorum.display().to_string(),
                    step: "open",
                    reason: super::PrFailure::Transport(super::TransportError::Failed(
                        e.to_string(),
                    )),
                })
            }
        };
        agent.join(timeout).await?;
        let status = agent.status(timeout).await;
        for s in &status {
            tracing::info!("scsi-pr: {s}");
        }
        Ok(Arc::new(PrMonitor {
            agent,
            status: Mutex::new(status),
        }))
    }

    /// The last picture of the devices.
    pub fn snapshot(&self) -> Vec<DeviceStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads every device's keys and reservation again.
    pub async fn refresh(&self, timeout: Duration) {
        let status = self.agent.status(timeout).await;
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Refreshes the picture every [`REFRESH`] until `shutdown` turns true.
    pub fn spawn_refresh(self: &Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH) => me.refresh(REFRESH).await,
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
