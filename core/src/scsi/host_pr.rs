//! Persistent reservations as a host speaks them (SPC-4 6.15, 6.16): the PERSISTENT RESERVE IN
//! and OUT CDBs and parameter lists a controller sends to fence its peer at the disk, parsers of
//! READ KEYS and READ RESERVATION that check every length, the classification of a command's
//! status and sense, and the rules of the `scsi-pr` fencing agent that need no I/O (the pair's
//! keys, whether an existing reservation is ours, whether a fence is confirmed).
//!
//! The mirror of the logical unit's side in `pr.rs`, whose type and service action codes it
//! reuses. Pure: no I/O; the runtime's agent (`target/src/ha/pr_fence.rs`) moves the bytes.

use crate::sense::{key, status, SenseCode};
use sha2::{Digest, Sha256};

pub use super::pr::{pr_out, pr_type};

/// PERSISTENT RESERVE IN service actions.
pub mod pr_in {
    pub const READ_KEYS: u8 = 0;
    pub const READ_RESERVATION: u8 = 1;
}

/// The PERSISTENT RESERVE IN opcode.
pub const PR_IN: u8 = 0x5e;
/// The PERSISTENT RESERVE OUT opcode.
pub const PR_OUT: u8 = 0x5f;
/// The length of a PERSISTENT RESERVE OUT basic parameter list.
pub const PR_OUT_PARAM_LEN: usize = 24;
/// The allocation length asked for by READ KEYS and READ RESERVATION: room for 1,022 keys.
pub const PR_IN_ALLOC: u16 = 8192;

/// A PERSISTENT RESERVE IN CDB: `action` ([`pr_in`]) with `alloc` bytes of room for the answer.
pub fn pr_in_cdb(action: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [PR_IN, action & 0x1f, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

/// A PERSISTENT RESERVE OUT command: its CDB and its basic parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrOut {
    pub cdb: [u8; 10],
    pub params: [u8; PR_OUT_PARAM_LEN],
}

impl PrOut {
    /// `action` ([`pr_out`]) with reservation type `ptype` (scope LU_SCOPE), RESERVATION KEY
    /// `key` and SERVICE ACTION RESERVATION KEY `sa_key`; APTPL off, no SPEC_I_PT, no ALL_TG_PT.
    pub fn new(action: u8, ptype: u8, key: u64, sa_key: u64) -> PrOut {
        let len = (PR_OUT_PARAM_LEN as u32).to_be_bytes();
        let cdb = [
            PR_OUT,
            action & 0x1f,
            ptype & 0x0f,
            0,
            0,
            len[0],
            len[1],
            len[2],
            len[3],
            0,
        ];
        let mut params = [0u8; PR_OUT_PARAM_LEN];
        params[0..8].copy_from_slice(&key.to_be_bytes());
        params[8..16].copy_from_slice(&sa_key.to_be_bytes());
        PrOut { cdb, params }
    }

    /// REGISTER AND IGNORE EXISTING KEY: registers `key` for this I_T nexus whatever key it had
    /// (`key` 0 unregisters it).
    pub fn register_ignore(key: u64) -> PrOut {
        PrOut::new(pr_out::REGISTER_AND_IGNORE, 0, 0, key)
    }

    /// RESERVE with `key` (which this nexus holds) and type `ptype`.
    pub fn reserve(key: u64, ptype: u8) -> PrOut {
        PrOut::new(pr_out::RESERVE, ptype, key, 0)
    }

    /// RELEASE of a reservation of type `ptype` held with `key`.
    pub fn release(key: u64, ptype: u8) -> PrOut {
        PrOut::new(pr_out::RELEASE, ptype, key, 0)
    }

    /// PREEMPT: removes every registration with `victim` and takes the reservation (type
    /// `ptype`) if `victim` held it; the victim's commands already in the task set still run.
    pub fn preempt(key: u64, victim: u64, ptype: u8) -> PrOut {
        PrOut::new(pr_out::PREEMPT, ptype, key, victim)
    }

    /// PREEMPT AND ABORT: removes every registration with `victim`, aborts its tasks, and takes
    /// the reservation (type `ptype`) if `victim` held it. Sent with our registered `key`.
    pub fn preempt_and_abort(key: u64, victim: u64, ptype: u8) -> PrOut {
        PrOut::new(pr_out::PREEMPT_AND_ABORT, ptype, key, victim)
    }
}

/// Why a PERSISTENT RESERVE IN answer cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrParseError {
    /// Fewer than the 8 bytes of the header.
    #[error("answer of {got} bytes is shorter than the 8-byte header")]
    NoHeader { got: usize },
    /// The ADDITIONAL LENGTH says more follows than the answer holds (the allocation length was
    /// too small or the answer was cut).
    #[error("ADDITIONAL LENGTH {additional} needs {needed} bytes, the answer has {got}")]
    Truncated {
        additional: u32,
        needed: usize,
        got: usize,
    },
    /// The ADDITIONAL LENGTH of READ KEYS is not a multiple of 8.
    #[error("ADDITIONAL LENGTH {0} of READ KEYS is not a multiple of 8")]
    KeyListLength(u32),
    /// The ADDITIONAL LENGTH of READ RESERVATION is neither 0 nor 16.
    #[error("ADDITIONAL LENGTH {0} of READ RESERVATION is neither 0 nor 16")]
    ReservationLength(u32),
}

/// The header both READ KEYS and READ RESERVATION start with; the body it announces, checked.
fn header(d: &[u8]) -> Result<(u32, u32, &[u8]), PrParseError> {
    let Some((h, rest)) = d.split_first_chunk::<8>() else {
        return Err(PrParseError::NoHeader { got: d.len() });
    };
    let generation = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let additional = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let body = usize::try_from(additional)
        .ok()
        .and_then(|n| rest.get(..n))
        .ok_or(PrParseError::Truncated {
            additional,
            needed: 8usize.saturating_add(additional as usize),
            got: d.len(),
        })?;
    Ok((generation, additional, body))
}

/// READ KEYS: the PRgeneration and the registered keys (one per registered I_T nexus, so a key
/// may appear more than once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadKeys {
    pub generation: u32,
    pub keys: Vec<u64>,
}

/// Parses READ KEYS parameter data.
pub fn parse_read_keys(d: &[u8]) -> Result<ReadKeys, PrParseError> {
    let (generation, additional, body) = header(d)?;
    if !additional.is_multiple_of(8) {
        return Err(PrParseError::KeyListLength(additional));
    }
    let keys = body
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok(ReadKeys { generation, keys })
}

/// The persistent reservation READ RESERVATION reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldReservation {
    /// The holder's key (for all-registrants types: 0).
    pub key: u64,
    /// SCOPE (0: LU_SCOPE).
    pub scope: u8,
    /// TYPE ([`pr_type`]).
    pub ptype: u8,
}

/// READ RESERVATION: the PRgeneration and the reservation, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadReservation {
    pub generation: u32,
    pub reservation: Option<HeldReservation>,
}

/// Parses READ RESERVATION parameter data.
pub fn parse_read_reservation(d: &[u8]) -> Result<ReadReservation, PrParseError> {
    let (generation, additional, body) = header(d)?;
    let reservation = match (additional, body) {
        (0, _) => None,
        (16, b) => Some(HeldReservation {
            key: u64::from_be_bytes(b[0..8].try_into().unwrap_or([0; 8])),
            scope: b[13] >> 4,
            ptype: b[13] & 0x0f,
        }),
        (n, _) => return Err(PrParseError::ReservationLength(n)),
    };
    Ok(ReadReservation {
        generation,
        reservation,
    })
}

/// The name of a reservation type, for log lines and `duetctl ha`.
pub fn type_name(ptype: u8) -> &'static str {
    match ptype {
        pr_type::WRITE_EXCLUSIVE => "write-exclusive",
        pr_type::EXCLUSIVE_ACCESS => "exclusive-access",
        pr_type::WRITE_EXCLUSIVE_RO => "write-exclusive-registrants-only",
        pr_type::EXCLUSIVE_ACCESS_RO => "exclusive-access-registrants-only",
        pr_type::WRITE_EXCLUSIVE_AR => "write-exclusive-all-registrants",
        pr_type::EXCLUSIVE_ACCESS_AR => "exclusive-access-all-registrants",
        _ => "unknown",
    }
}

/// What a command's status and sense mean to the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// GOOD.
    Good,
    /// A UNIT ATTENTION (reservations preempted, power on, …): the command was not executed;
    /// send it again (a bounded number of times).
    Retry(SenseCode),
    /// RESERVATION CONFLICT: this I_T nexus is not registered (or not allowed) on the device.
    Conflict,
    /// CHECK CONDITION with this sense (or without usable sense).
    Check(Option<SenseCode>),
    /// BUSY or TASK SET FULL: the device could not take the command now.
    Busy(u8),
    /// Any other status.
    Other(u8),
}

/// Classifies a command's `status` byte and (decoded) `sense`.
pub fn verdict(st: u8, sense: Option<SenseCode>) -> Verdict {
    match st {
        status::GOOD | status::CONDITION_MET => Verdict::Good,
        status::RESERVATION_CONFLICT => Verdict::Conflict,
        status::CHECK_CONDITION => match sense {
            Some(s) if s.key == key::UNIT_ATTENTION => Verdict::Retry(s),
            s => Verdict::Check(s),
        },
        status::BUSY | status::TASK_SET_FULL => Verdict::Busy(st),
        other => Verdict::Other(other),
    }
}

/// Whether a CHECK CONDITION with `sense` says the device does not implement the service action
/// it was sent (ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE or INVALID FIELD IN CDB), as
/// some targets answer PREEMPT AND ABORT.
pub fn unsupported_action(sense: Option<SenseCode>) -> bool {
    matches!(
        sense,
        Some(s) if s == SenseCode::INVALID_OPCODE || s == SenseCode::INVALID_FIELD_IN_CDB
    )
}

/// The pair's two reservation keys, derived from `cluster_id` (which both controllers are
/// configured with) and the `ha_id`s: the first six bytes are SHA-256 of the cluster id (so the
/// two keys share them, and a key on a disk can be recognised as the pair's), the last two the
/// ha_id. Never 0 (ha_id is 1 or 2), stable across restarts.
pub fn derive_key(cluster_id: &str, ha_id: u8) -> u64 {
    let h = Sha256::digest(format!("duet-pr-key:{cluster_id}").as_bytes());
    let mut k = [0u8; 8];
    k[..6].copy_from_slice(&h[..6]);
    k[6..].copy_from_slice(&u16::from(ha_id).to_be_bytes());
    u64::from_be_bytes(k)
}

/// What to do about a device's reservation at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationPlan {
    /// No reservation: take one of the wanted type.
    Reserve,
    /// The pair holds the wanted type already (with our key or the peer's).
    Held,
}

/// Why a device's existing reservation forbids starting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForeignReservation {
    /// A reservation held with a key that is neither ours nor the peer's.
    #[error("reserved by a foreign key {key:#018x} ({})", type_name(*ptype))]
    ForeignKey { key: u64, ptype: u8 },
    /// The pair's reservation, of another type than the one wanted.
    #[error("reserved as {} (key {key:#018x}), expected {}", type_name(*ptype), type_name(*want))]
    WrongType { key: u64, ptype: u8, want: u8 },
    /// A reservation of another scope than the whole logical unit.
    #[error("reservation of scope {scope}, expected LU_SCOPE (0)")]
    Scope { scope: u8 },
}

/// Decides, from READ RESERVATION, what a controller with `ours` and `peer` keys does to make
/// sure the pair holds a reservation of type `want`.
pub fn plan_reservation(
    held: Option<HeldReservation>,
    ours: u64,
    peer: u64,
    want: u8,
) -> Result<ReservationPlan, ForeignReservation> {
    let Some(r) = held else {
        return Ok(ReservationPlan::Reserve);
    };
    if r.scope != 0 {
        return Err(ForeignReservation::Scope { scope: r.scope });
    }
    if r.key != ours && r.key != peer {
        return Err(ForeignReservation::ForeignKey {
            key: r.key,
            ptype: r.ptype,
        });
    }
    if r.ptype != want {
        return Err(ForeignReservation::WrongType {
            key: r.key,
            ptype: r.ptype,
            want,
        });
    }
    Ok(ReservationPlan::Held)
}

/// Whether READ KEYS after a preemption (`after`, with `before` read just ahead of it) confirms
/// the fence: the victim's key is gone, ours is there (we must stay registered to keep access),
/// and the PRgeneration moved (every successful PREEMPT advances it; a device that did not is not
/// to be believed).
pub fn fence_confirmed(
    before: &ReadKeys,
    after: &ReadKeys,
    ours: u64,
    victim: u64,
) -> Result<(), FenceCheck> {
    let keys = after;
    if keys.keys.contains(&victim) {
        return Err(FenceCheck::VictimRegistered);
    }
    if !keys.keys.contains(&ours) {
        return Err(FenceCheck::NotRegistered);
    }
    if after.generation == before.generation {
        return Err(FenceCheck::GenerationUnchanged(after.generation));
    }
    Ok(())
}

/// Why READ KEYS does not confirm a fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceCheck {
    #[error("the peer's key is still registered")]
    VictimRegistered,
    #[error("our own key is not registered (were we preempted?)")]
    NotRegistered,
    #[error("the PRgeneration is still {0}: the preemption did not register")]
    GenerationUnchanged(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cdbs_and_parameter_lists() {
        assert_eq!(
            pr_in_cdb(pr_in::READ_KEYS, 8192),
            [0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0, 0]
        );
        assert_eq!(pr_in_cdb(pr_in::READ_RESERVATION, 24)[1], 1);
        let p = PrOut::preempt_and_abort(0x1111, 0x2222, pr_type::EXCLUSIVE_ACCESS_RO);
        assert_eq!(p.cdb, [0x5f, 5, 6, 0, 0, 0, 0, 0, 24, 0]);
        assert_eq!(&p.params[0..8], &0x1111u64.to_be_bytes());
        assert_eq!(&p.params[8..16], &0x2222u64.to_be_bytes());
        assert_eq!(&p.params[16..], &[0u8; 8]);
        let r = PrOut::register_ignore(0xabcd);
        assert_eq!(r.cdb[1], 6);
        assert_eq!(r.cdb[2], 0);
        assert_eq!(&r.params[0..8], &[0u8; 8]);
        assert_eq!(&r.params[8..16], &0xabcdu64.to_be_bytes());
        let v = PrOut::reserve(7, pr_type::WRITE_EXCLUSIVE_RO);
        assert_eq!((v.cdb[1], v.cdb[2]), (1, 5));
        assert_eq!(&v.params[0..8], &7u64.to_be_bytes());
    }

    #[test]
    fn read_keys_is_checked() {
        let mut d = vec![0, 0, 0, 9, 0, 0, 0, 16];
        d.extend_from_slice(&1u64.to_be_bytes());
        d.extend_from_slice(&2u64.to_be_bytes());
        assert_eq!(
            parse_read_keys(&d),
            Ok(ReadKeys {
                generation: 9,
                keys: vec![1, 2]
            })
        );
        // Cut short, as with a too-small allocation length.
        assert_eq!(
            parse_read_keys(&d[..20]),
            Err(PrParseError::Truncated {
                additional: 16,
                needed: 24,
                got: 20
            })
        );
        assert_eq!(
            parse_read_keys(&d[..5]),
            Err(PrParseError::NoHeader { got: 5 })
        );
        d[7] = 12;
        assert_eq!(parse_read_keys(&d), Err(PrParseError::KeyListLength(12)));
        // Padding after the announced list is ignored.
        let d = [0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff];
        assert_eq!(parse_read_keys(&d).map(|k| k.keys), Ok(vec![]));
    }

    #[test]
    fn read_reservation_is_checked() {
        assert_eq!(
            parse_read_reservation(&[0, 0, 0, 3, 0, 0, 0, 0]),
            Ok(ReadReservation {
                generation: 3,
                reservation: None
            })
        );
        let mut d = vec![0, 0, 0, 4, 0, 0, 0, 16];
        d.extend_from_slice(&0x55u64.to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 0, 0, 0x06, 0, 0]);
        let r = parse_read_reservation(&d).expect("parses");
        assert_eq!(
            r.reservation,
            Some(HeldReservation {
                key: 0x55,
                scope: 0,
                ptype: 6
            })
        );
        assert!(matches!(
            parse_read_reservation(&d[..23]),
            Err(PrParseError::Truncated { .. })
        ));
        d[7] = 8;
        assert_eq!(
            parse_read_reservation(&d),
            Err(PrParseError::ReservationLength(8))
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(0, None), Verdict::Good);
        assert_eq!(verdict(0x18, None), Verdict::Conflict);
        assert_eq!(
            verdict(2, Some(SenseCode::UA_REGISTRATIONS_PREEMPTED)),
            Verdict::Retry(SenseCode::UA_REGISTRATIONS_PREEMPTED)
        );
        assert_eq!(
            verdict(2, Some(SenseCode::INVALID_OPCODE)),
            Verdict::Check(Some(SenseCode::INVALID_OPCODE))
        );
        assert_eq!(verdict(2, None), Verdict::Check(None));
        assert_eq!(verdict(8, None), Verdict::Busy(8));
        assert_eq!(verdict(0x40, None), Verdict::Other(0x40));
        assert!(unsupported_action(Some(SenseCode::INVALID_FIELD_IN_CDB)));
        assert!(!unsupported_action(Some(
            SenseCode::INVALID_FIELD_IN_PARAM_LIST
        )));
        assert!(!unsupported_action(None));
        assert_eq!(PrOut::preempt(1, 2, 6).cdb[1], 4);
    }

    #[test]
    fn keys_are_the_pairs_and_differ() {
        let a = derive_key("vault", 1);
        let b = derive_key("vault", 2);
        assert_ne!(a, b);
        assert_ne!(a, 0);
        assert_eq!(a >> 16, b >> 16);
        assert_eq!(a & 0xffff, 1);
        assert_eq!(derive_key("vault", 1), a);
        assert_ne!(derive_key("other", 1) >> 16, a >> 16);
    }

    #[test]
    fn reservation_plans() {
        let ro = pr_type::EXCLUSIVE_ACCESS_RO;
        let held = |key, ptype| {
            Some(HeldReservation {
                key,
                scope: 0,
                ptype,
            })
        };
        assert_eq!(
            plan_reservation(None, 1, 2, ro),
            Ok(ReservationPlan::Reserve)
        );
        assert_eq!(
            plan_reservation(held(2, ro), 1, 2, ro),
            Ok(ReservationPlan::Held)
        );
        assert_eq!(
            plan_reservation(held(1, ro), 1, 2, ro),
            Ok(ReservationPlan::Held)
        );
        assert!(matches!(
            plan_reservation(held(9, ro), 1, 2, ro),
            Err(ForeignReservation::ForeignKey { key: 9, .. })
        ));
        assert!(matches!(
            plan_reservation(held(1, 5), 1, 2, ro),
            Err(ForeignReservation::WrongType { .. })
        ));
        let e = plan_reservation(held(9, 3), 1, 2, ro).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reserved by a foreign key 0x0000000000000009 (exclusive-access)"
        );
    }

    #[test]
    fn fence_confirmation() {
        let k = |generation, keys: &[u64]| ReadKeys {
            generation,
            keys: keys.to_vec(),
        };
        let before = k(4, &[1, 2]);
        assert_eq!(fence_confirmed(&before, &k(5, &[1, 1]), 1, 2), Ok(()));
        assert_eq!(
            fence_confirmed(&before, &k(5, &[1, 2]), 1, 2),
            Err(FenceCheck::VictimRegistered)
        );
        assert_eq!(
            fence_confirmed(&before, &k(5, &[]), 1, 2),
            Err(FenceCheck::NotRegistered)
        );
        assert_eq!(
            fence_confirmed(&before, &k(4, &[1]), 1, 2),
            Err(FenceCheck::GenerationUnchanged(4))
        );
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(d in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = parse_read_keys(&d);
            let _ = parse_read_reservation(&d);
        }

        #[test]
        fn read_keys_round_trips(gen in any::<u32>(), keys in proptest::collection::vec(any::<u64>(), 0..20)) {
            let mut d = gen.to_be_bytes().to_vec();
            d.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
            for k in &keys {
                d.extend_from_slice(&k.to_be_bytes());
            }
            prop_assert_eq!(parse_read_keys(&d), Ok(ReadKeys { generation: gen, keys }));
        }
    }
}
