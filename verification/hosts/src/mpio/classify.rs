//! How the multipath layer treats each outcome (like dm-multipath with `prio alua`): which
//! statuses and sense codes are retried, after how long, whether they call for a fresh look at
//! the paths or for avoiding the path; and which ALUA states a path may carry I/O in. Pure.

use crate::scsi::{status, SenseCode};
use crate::session::ScsiResult;
use duet_core::alua::AluaState;
use duet_core::sense::key;
use std::time::Duration;

pub(super) fn alua_label(code: Option<u8>) -> &'static str {
    match code.and_then(AluaState::from_code) {
        Some(AluaState::ActiveOptimized) => "A/O",
        Some(AluaState::ActiveNonOptimized) => "A/N",
        Some(AluaState::Standby) => "standby",
        Some(AluaState::Unavailable) => "unavailable",
        Some(AluaState::Offline) => "offline",
        Some(AluaState::Transitioning) => "transitioning",
        None if code.is_some() => "unknown-state",
        None => "unknown",
    }
}

/// Path preference: 0 = A/O, 1 = A/N, 2 = unknown or transitioning, None = never.
pub(super) fn tier(code: Option<u8>) -> Option<u8> {
    match code.and_then(AluaState::from_code) {
        Some(AluaState::ActiveOptimized) => Some(0),
        Some(AluaState::ActiveNonOptimized) => Some(1),
        Some(AluaState::Transitioning) | None => Some(2),
        Some(AluaState::Standby | AluaState::Unavailable | AluaState::Offline) => None,
    }
}

/// Why one attempt did not finish the command.
pub(super) enum Attempt {
    Done(ScsiResult),
    Retry {
        reason: &'static str,
        delay: Duration,
        refresh: bool,
        avoid: bool,
    },
    Fail(String),
}

pub(super) fn classify(r: ScsiResult) -> Attempt {
    let retry = |reason, delay_ms: u64, refresh, avoid| Attempt::Retry {
        reason,
        delay: Duration::from_millis(delay_ms),
        refresh,
        avoid,
    };
    match r.status {
        status::GOOD => Attempt::Done(r),
        status::BUSY => retry("busy", 50, false, false),
        status::TASK_SET_FULL => retry("task_set_full", 50, false, false),
        status::CHECK_CONDITION => match r.sense {
            Some(s) if s.key == key::UNIT_ATTENTION => {
                let alua = (s.asc == 0x2a && (s.ascq == 0x06 || s.ascq == 0x03)) || s.asc == 0x29;
                retry("unit_attention", 0, alua, false)
            }
            Some(SenseCode::ALUA_TRANSITIONING) => retry("transitioning", 100, true, false),
            Some(SenseCode::ALUA_STANDBY) => retry("standby", 0, true, true),
            Some(SenseCode::ALUA_UNAVAILABLE) => retry("unavailable", 0, true, true),
            Some(s) if s.key == key::ABORTED_COMMAND => retry("aborted_command", 0, false, false),
            Some(s) => Attempt::Fail(format!("CHECK CONDITION, sense {s}")),
            None => Attempt::Fail("CHECK CONDITION without sense".into()),
        },
        s => Attempt::Fail(format!("SCSI status {s:#04x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn sense_classification_follows_multipath_rules() {
        let cc = |key, asc, ascq| ScsiResult {
            status: status::CHECK_CONDITION,
            sense: Some(SenseCode::new(key, asc, ascq)),
            data: Bytes::new(),
        };
        assert!(matches!(
            classify(cc(6, 0x2a, 6)),
            Attempt::Retry {
                reason: "unit_attention",
                refresh: true,
                ..
            }
        ));
        assert!(matches!(
            classify(cc(2, 4, 0x0a)),
            Attempt::Retry {
                reason: "transitioning",
                ..
            }
        ));
        assert!(matches!(
            classify(cc(2, 4, 0x0b)),
            Attempt::Retry { avoid: true, .. }
        ));
        assert!(matches!(classify(cc(5, 0x24, 0)), Attempt::Fail(_)));
        assert!(matches!(classify(cc(3, 0x11, 0)), Attempt::Fail(_)));
        let rc = ScsiResult {
            status: 0x18,
            sense: None,
            data: Bytes::new(),
        };
        assert!(matches!(classify(rc), Attempt::Fail(_)));
        let busy = ScsiResult {
            status: status::BUSY,
            sense: None,
            data: Bytes::new(),
        };
        assert!(matches!(
            classify(busy),
            Attempt::Retry { reason: "busy", .. }
        ));
    }

    #[test]
    fn path_tiers_prefer_optimized_and_skip_standby() {
        assert_eq!(tier(Some(0)), Some(0));
        assert_eq!(tier(Some(1)), Some(1));
        assert_eq!(tier(Some(0xf)), Some(2));
        assert_eq!(tier(None), Some(2));
        assert_eq!(tier(Some(2)), None);
        assert_eq!(tier(Some(3)), None);
        assert_eq!(tier(Some(0xe)), None);
    }
}
