//! Model-based property test of persistent reservations (SPC-4 5.13, PERSISTENT RESERVE IN/OUT).
//!
//! Random sequences of PR OUT service actions, PR IN reads and medium reads/writes from four
//! nexuses (which differ in initiator name, ISID only, or target port only) run both on a real
//! [`LogicalUnit`] and on a small reference model: the registrations, the reservation, the PR
//! generation and the unit attentions each nexus is owed. Every status, every PR IN answer,
//! every `PrChanged` effect, the LU's `pr_state()` and every unit attention must agree.

mod model_common;

use duet_core::scsi::{Effect, Nexus, Outcome};
use duet_core::sense::{status, SenseCode};
use model_common::*;
use proptest::prelude::*;

const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const RELEASE: u8 = 2;
const CLEAR: u8 = 3;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
const REGISTER_AND_IGNORE: u8 = 6;

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

/// 05/26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
const INVALID_RELEASE: SenseCode = SenseCode::new(0x05, 0x26, 0x04);

fn valid_type(t: u8) -> bool {
    matches!(t, WE | EA | WE_RO | EA_RO | WE_AR | EA_AR)
}

fn all_registrants(t: u8) -> bool {
    matches!(t, WE_AR | EA_AR)
}

fn registrants_only(t: u8) -> bool {
    matches!(t, WE_RO | EA_RO)
}

/// Which reservation key a PR OUT carries.
#[derive(Clone, Copy, Debug)]
enum Key {
    /// The key the nexus is registered with (0 when it is not registered).
    Own,
    /// This value, right or wrong.
    Raw(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Register {
        n: usize,
        key: Key,
        sa_key: u64,
        aptpl: bool,
    },
    RegisterIgnore {
        n: usize,
        sa_key: u64,
        aptpl: bool,
    },
    Reserve {
        n: usize,
        key: Key,
        ptype: u8,
    },
    Release {
        n: usize,
        key: Key,
        ptype: u8,
    },
    Clear {
        n: usize,
        key: Key,
    },
    Preempt {
        n: usize,
        key: Key,
        sa_key: u64,
        ptype: u8,
        abort: bool,
    },
    ReadKeys {
        n: usize,
    },
    ReadReservation {
        n: usize,
    },
    /// REPORT CAPABILITIES (PTPL_A).
    ReadCapabilities {
        n: usize,
    },
    ReadFullStatus {
        n: usize,
    },
    Read {
        n: usize,
    },
    Write {
        n: usize,
    },
}

fn nexus_idx() -> impl Strategy<Value = usize> {
    0..4usize
}

/// Keys come from a tiny pool so that several nexuses often share one (PREEMPT by key).
fn key_value() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(0x11), Just(0x22), Just(0x33)]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![3 => Just(Key::Own), 1 => key_value().prop_map(Key::Raw)]
}

fn ptype() -> impl Strategy<Value = u8> {
    prop_oneof![
        10 => prop::sample::select(vec![WE, EA, WE_RO, EA_RO, WE_AR, EA_AR]),
        1 => prop::sample::select(vec![0u8, 2, 4, 9, 15]),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (nexus_idx(), key(), key_value(), prop::bool::weighted(0.3))
            .prop_map(|(n, key, sa_key, aptpl)| Op::Register { n, key, sa_key, aptpl }),
        2 => (nexus_idx(), key_value(), prop::bool::weighted(0.3))
            .prop_map(|(n, sa_key, aptpl)| Op::RegisterIgnore { n, sa_key, aptpl }),
        4 => (nexus_idx(), key(), ptype()).prop_map(|(n, key, ptype)| Op::Reserve { n, key, ptype }),
        2 => (nexus_idx(), key(), ptype()).prop_map(|(n, key, ptype)| Op::Release { n, key, ptype }),
        1 => (nexus_idx(), key()).prop_map(|(n, key)| Op::Clear { n, key }),
        3 => (nexus_idx(), key(), key_value(), ptype(), any::<bool>()).prop_map(
            |(n, key, sa_key, ptype, abort)| Op::Preempt { n, key, sa_key, ptype, abort }
        ),
        1 => nexus_idx().prop_map(|n| Op::ReadKeys { n }),
        1 => nexus_idx().prop_map(|n| Op::ReadReservation { n }),
        1 => nexus_idx().prop_map(|n| Op::ReadCapabilities { n }),
        1 => nexus_idx().prop_map(|n| Op::ReadFullStatus { n }),
        3 => nexus_idx().prop_map(|n| Op::Read { n }),
        3 => nexus_idx().prop_map(|n| Op::Write { n }),
    ]
}

/// What a command must end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Good,
    Conflict,
    Check(SenseCode),
}

/// Generation, APTPL, sorted (nexus, key) registrations, and the reservation: holder (`None` for the
/// all-registrants types, where every registrant holds it) and type.
type Fingerprint = (u32, bool, Vec<(usize, u64)>, Option<(Option<usize>, u8)>);

/// The reference model: registrations in arrival order, the reservation (nominal holder and
/// type), the generation, and per-nexus unit attentions owed.
#[derive(Clone, Debug, Default)]
struct Model {
    regs: Vec<(usize, u64)>,
    res: Option<(usize, u8)>,
    generation: u32,
    /// Activate Persist Through Power Loss, as the last effective registration set it.
    aptpl: bool,
    /// Unit attentions per nexus, in arrival order (all 2Ah, so arrival order is delivery order).
    uas: [Vec<SenseCode>; 4],
    /// Whether the LU has seen the nexus (a new nexus is owed 29/00 first).
    seen: [bool; 4],
}

impl Model {
    fn key_of(&self, n: usize) -> Option<u64> {
        self.regs.iter().find(|r| r.0 == n).map(|r| r.1)
    }

    fn is_holder(&self, n: usize) -> bool {
        match self.res {
            None => false,
            Some((_, t)) if all_registrants(t) => self.key_of(n).is_some(),
            Some((h, _)) => h == n,
        }
    }

    fn ua(&mut self, n: usize, code: SenseCode) {
        if !self.uas[n].contains(&code) {
            self.uas[n].push(code);
        }
    }

    /// Registered nexuses other than `n`.
    fn others(&self, n: usize) -> Vec<usize> {
        self.regs.iter().map(|r| r.0).filter(|m| *m != n).collect()
    }

    /// Whether a medium access from `n` is blocked (SPC-4 table 50, "persistent reservations
    /// access"): `write` for WRITE, otherwise READ.
    fn access_conflicts(&self, n: usize, write: bool) -> bool {
        let Some((_, t)) = self.res else {
            return false;
        };
        if self.is_holder(n) {
            return false;
        }
        let registered = self.key_of(n).is_some();
        match t {
            WE => write,
            EA => true,
            WE_RO | WE_AR => !registered && write,
            EA_RO | EA_AR => !registered,
            _ => unreachable!("model never holds an invalid type"),
        }
    }

    /// SPC-4 5.13.11.3: removing a registration releases a reservation it held (not an
    /// all-registrants one while registrants remain); registrants-only: 2A/04 to the others.
    fn unregister(&mut self, n: usize) {
        let was_holder = self.is_holder(n);
        self.regs.retain(|r| r.0 != n);
        if let Some((_, t)) = self.res {
            if all_registrants(t) {
                if self.regs.is_empty() {
                    self.res = None;
                }
            } else if was_holder {
                self.res = None;
                if registrants_only(t) {
                    for m in self.others(n) {
                        self.ua(m, SenseCode::UA_RESERVATIONS_RELEASED);
                    }
                }
            }
        }
    }

    fn register(&mut self, n: usize, key: u64, sa_key: u64, ignore: bool, aptpl: bool) -> Expect {
        match self.key_of(n) {
            None => {
                if !ignore && key != 0 {
                    return Expect::Conflict;
                }
                // SPC-4 5.13.7: "If the I_T nexus is not registered and the SERVICE ACTION
                // RESERVATION KEY is zero, the device server shall return GOOD status and take
                // no further action".
                if sa_key == 0 {
                    return Expect::Good;
                }
                self.regs.push((n, sa_key));
            }
            Some(k) => {
                if !ignore && key != k {
                    return Expect::Conflict;
                }
                if sa_key == 0 {
                    self.unregister(n);
                } else if let Some(r) = self.regs.iter_mut().find(|r| r.0 == n) {
                    r.1 = sa_key;
                }
            }
        }
        self.aptpl = aptpl;
        self.generation = self.generation.wrapping_add(1);
        Expect::Good
    }

    fn key_ok(&self, n: usize, key: u64) -> bool {
        self.key_of(n) == Some(key)
    }

    fn reserve(&mut self, n: usize, key: u64, t: u8) -> Expect {
        if !self.key_ok(n, key) {
            return Expect::Conflict;
        }
        if !valid_type(t) {
            return Expect::Check(SenseCode::INVALID_FIELD_IN_CDB);
        }
        match self.res {
            None => {
                self.res = Some((n, t));
                Expect::Good
            }
            Some((_, cur)) if self.is_holder(n) && cur == t => Expect::Good,
            Some(_) => Expect::Conflict,
        }
    }

    fn release(&mut self, n: usize, key: u64, t: u8) -> Expect {
        if !self.key_ok(n, key) {
            return Expect::Conflict;
        }
        let Some((_, cur)) = self.res else {
            return Expect::Good;
        };
        if !self.is_holder(n) {
            return Expect::Good;
        }
        if cur != t {
            return Expect::Check(INVALID_RELEASE);
        }
        self.res = None;
        if registrants_only(cur) || all_registrants(cur) {
            for m in self.others(n) {
                self.ua(m, SenseCode::UA_RESERVATIONS_RELEASED);
            }
        }
        Expect::Good
    }

    fn clear(&mut self, n: usize, key: u64) -> Expect {
        if !self.key_ok(n, key) {
            return Expect::Conflict;
        }
        for m in self.others(n) {
            self.ua(m, SenseCode::UA_RESERVATIONS_PREEMPTED);
        }
        self.regs.clear();
        self.res = None;
        self.generation = self.generation.wrapping_add(1);
        Expect::Good
    }

    /// Removes every other nexus registered with `key`, owing each 2A/05; how many.
    fn remove_key(&mut self, n: usize, key: u64) -> usize {
        let victims: Vec<usize> = self
            .regs
            .iter()
            .filter(|r| r.1 == key && r.0 != n)
            .map(|r| r.0)
            .collect();
        self.regs.retain(|r| !victims.contains(&r.0));
        for v in &victims {
            self.ua(*v, SenseCode::UA_REGISTRATIONS_PREEMPTED);
        }
        victims.len()
    }

    fn preempt(&mut self, n: usize, key: u64, sa_key: u64, t: u8) -> Expect {
        if !self.key_ok(n, key) {
            return Expect::Conflict;
        }
        match self.res {
            None => {
                if sa_key == 0 {
                    return Expect::Check(SenseCode::INVALID_FIELD_IN_PARAM_LIST);
                }
                if self.remove_key(n, sa_key) == 0 {
                    return Expect::Conflict;
                }
            }
            Some((_, cur)) if all_registrants(cur) => {
                if sa_key == 0 {
                    if !valid_type(t) {
                        return Expect::Check(SenseCode::INVALID_FIELD_IN_CDB);
                    }
                    for m in self.others(n) {
                        self.ua(m, SenseCode::UA_REGISTRATIONS_PREEMPTED);
                    }
                    self.regs.retain(|r| r.0 == n);
                    self.res = Some((n, t));
                } else if self.remove_key(n, sa_key) == 0 {
                    return Expect::Conflict;
                }
            }
            Some((holder, cur)) if self.key_of(holder) == Some(sa_key) => {
                if !valid_type(t) {
                    return Expect::Check(SenseCode::INVALID_FIELD_IN_CDB);
                }
                self.remove_key(n, sa_key);
                self.res = Some((n, t));
                // SPC-4 5.13.11.4.3: 2A/04 only when the type or scope changed.
                let _ = holder;
                if cur != t {
                    for m in self.others(n) {
                        self.ua(m, SenseCode::UA_RESERVATIONS_RELEASED);
                    }
                }
            }
            Some(_) => {
                if sa_key == 0 {
                    return Expect::Check(SenseCode::INVALID_FIELD_IN_PARAM_LIST);
                }
                if self.remove_key(n, sa_key) == 0 {
                    return Expect::Conflict;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Expect::Good
    }

    /// The observable PR state: generation, registrations and reservation.
    fn fingerprint(&self) -> Fingerprint {
        let mut regs = self.regs.clone();
        regs.sort();
        let res = self
            .res
            .map(|(h, t)| (if all_registrants(t) { None } else { Some(h) }, t));
        (self.generation, self.aptpl, regs, res)
    }
}

fn check(o: &Outcome, want: Expect, what: &str) -> Result<(), TestCaseError> {
    match want {
        Expect::Good => prop_assert_eq!(
            o.status,
            status::GOOD,
            "{}: expected GOOD, got {:?}",
            what,
            o.sense_code()
        ),
        Expect::Conflict => {
            prop_assert_eq!(
                o.status,
                status::RESERVATION_CONFLICT,
                "{}: expected RESERVATION CONFLICT, got {:?}",
                what,
                o.sense_code()
            );
            prop_assert!(o.sense.is_none(), "{}: conflict carries no sense", what);
        }
        Expect::Check(code) => {
            prop_assert_eq!(o.status, status::CHECK_CONDITION, "{}", what);
            prop_assert_eq!(o.sense_code(), Some(code), "{}", what);
        }
    }
    Ok(())
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

fn be64(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The LU's `pr_state()` in the model's terms.
fn lu_fingerprint(r: &Rig, nx: &[Nexus]) -> Fingerprint {
    let st = r.lu.pr_state();
    let idx = |n: &Nexus| nx.iter().position(|m| m == n).expect("known nexus");
    let mut regs: Vec<(usize, u64)> = st
        .registrations
        .iter()
        .map(|g| (idx(&g.nexus), g.key))
        .collect();
    regs.sort();
    let res = st.reservation.as_ref().map(|v| {
        (
            if all_registrants(v.ptype) {
                None
            } else {
                Some(idx(&v.holder))
            },
            v.ptype,
        )
    });
    (st.generation, st.aptpl, regs, res)
}

fn replay(ops: &[Op]) -> Result<(), TestCaseError> {
    let nx = nexuses();
    let mut r = Rig::small();
    let mut m = Model::default();
    let block = vec![0xA5u8; BS as usize];
    for (step, op) in ops.iter().enumerate() {
        let n = match op {
            Op::Register { n, .. }
            | Op::RegisterIgnore { n, .. }
            | Op::Reserve { n, .. }
            | Op::Release { n, .. }
            | Op::Clear { n, .. }
            | Op::Preempt { n, .. }
            | Op::ReadKeys { n }
            | Op::ReadReservation { n }
            | Op::ReadCapabilities { n }
            | Op::ReadFullStatus { n }
            | Op::Read { n }
            | Op::Write { n } => *n,
        };
        // The unit attentions this nexus is owed, in order: 29/00 for a new nexus, then the
        // ones earlier PR OUT commands established.
        let mut owed = Vec::new();
        if !m.seen[n] {
            m.seen[n] = true;
            owed.push(SenseCode::UA_POWER_ON_RESET);
        }
        owed.append(&mut m.uas[n]);
        let got = r.drain_uas(&nx[n]);
        prop_assert_eq!(&got, &owed, "step {}: unit attentions of nexus {}", step, n);

        let key_of = |k: Key, m: &Model| match k {
            Key::Own => m.key_of(n).unwrap_or(0),
            Key::Raw(v) => v,
        };
        let what = format!("step {step}: {op:?}");
        let before = m.fingerprint();
        let (o, want) = match op {
            Op::Register {
                key, sa_key, aptpl, ..
            } => {
                let k = key_of(*key, &m);
                let p = prout_params_aptpl(k, *sa_key, *aptpl);
                let o = r.run(&nx[n], &prout(REGISTER, 0), &p);
                (o, m.register(n, k, *sa_key, false, *aptpl))
            }
            Op::RegisterIgnore { sa_key, aptpl, .. } => {
                let p = prout_params_aptpl(0x7777, *sa_key, *aptpl);
                let o = r.run(&nx[n], &prout(REGISTER_AND_IGNORE, 0), &p);
                (o, m.register(n, 0x7777, *sa_key, true, *aptpl))
            }
            Op::ReadCapabilities { .. } => {
                let o = r.run(&nx[n], &prin(2), &[]);
                check(&o, Expect::Good, &what)?;
                let d = &o.data_in;
                prop_assert_eq!(d.len(), 8, "{}: REPORT CAPABILITIES length", what);
                prop_assert_eq!(d[3] & 1 != 0, m.aptpl, "{}: PTPL_A", what);
                (o, Expect::Good)
            }
            Op::ReadFullStatus { .. } => {
                let o = r.run(&nx[n], &prin(3), &[]);
                check(&o, Expect::Good, &what)?;
                let d = &o.data_in;
                prop_assert_eq!(be32(d, 0), m.generation, "{}: generation", what);
                prop_assert_eq!(d.len(), 8 + be32(d, 4) as usize, "{}: length", what);
                let mut got = Vec::new();
                let mut at = 8;
                while at < d.len() {
                    prop_assert!(at + 24 <= d.len(), "{}: truncated descriptor", what);
                    let key = be64(d, at);
                    let holder = d[at + 12] & 1 != 0;
                    let ptype = d[at + 13] & 0x0F;
                    let rtpi = u16::from_be_bytes([d[at + 18], d[at + 19]]);
                    let tid_len = be32(d, at + 20) as usize;
                    let tid = &d[at + 24..at + 24 + tid_len];
                    prop_assert_eq!(tid[0], 0x45, "{}: iSCSI TransportID format 01b", what);
                    let name_len = u16::from_be_bytes([tid[2], tid[3]]) as usize;
                    let name: Vec<u8> = tid[4..4 + name_len]
                        .iter()
                        .copied()
                        .take_while(|b| *b != 0)
                        .collect();
                    let name = String::from_utf8(name).expect("UTF-8 port name");
                    let idx = nx
                        .iter()
                        .position(|x| x.initiator_port_name() == name && x.rtpi == rtpi);
                    prop_assert!(idx.is_some(), "{}: unknown port {} / {}", what, name, rtpi);
                    got.push((idx.unwrap_or(0), key, holder, ptype));
                    at += 24 + tid_len;
                }
                got.sort_unstable();
                let mut want: Vec<(usize, u64, bool, u8)> = m
                    .regs
                    .iter()
                    .map(|&(i, k)| {
                        let h = m.is_holder(i);
                        (i, k, h, if h { m.res.map_or(0, |r| r.1) } else { 0 })
                    })
                    .collect();
                want.sort_unstable();
                prop_assert_eq!(got, want, "{}: READ FULL STATUS", what);
                (o, Expect::Good)
            }
            Op::Reserve { key, ptype, .. } => {
                let k = key_of(*key, &m);
                let o = r.run(&nx[n], &prout(RESERVE, *ptype), &prout_params(k, 0));
                (o, m.reserve(n, k, *ptype))
            }
            Op::Release { key, ptype, .. } => {
                let k = key_of(*key, &m);
                let o = r.run(&nx[n], &prout(RELEASE, *ptype), &prout_params(k, 0));
                (o, m.release(n, k, *ptype))
            }
            Op::Clear { key, .. } => {
                let k = key_of(*key, &m);
                let o = r.run(&nx[n], &prout(CLEAR, 0), &prout_params(k, 0));
                (o, m.clear(n, k))
            }
            Op::Preempt {
                key,
                sa_key,
                ptype,
                abort,
                ..
            } => {
                let k = key_of(*key, &m);
                let sa = if *abort { PREEMPT_AND_ABORT } else { PREEMPT };
                let o = r.run(&nx[n], &prout(sa, *ptype), &prout_params(k, *sa_key));
                (o, m.preempt(n, k, *sa_key, *ptype))
            }
            Op::ReadKeys { .. } => {
                let o = r.run(&nx[n], &prin(0), &[]);
                check(&o, Expect::Good, &what)?;
                let d = &o.data_in;
                prop_assert!(d.len() >= 8, "{}: short READ KEYS", what);
                prop_assert_eq!(be32(d, 0), m.generation, "{}: generation", what);
                let len = be32(d, 4) as usize;
                prop_assert_eq!(d.len(), 8 + len, "{}: READ KEYS length", what);
                let mut keys: Vec<u64> = (0..len / 8).map(|i| be64(d, 8 + 8 * i)).collect();
                keys.sort_unstable();
                let mut want: Vec<u64> = m.regs.iter().map(|g| g.1).collect();
                want.sort_unstable();
                prop_assert_eq!(keys, want, "{}: keys", what);
                (o, Expect::Good)
            }
            Op::ReadReservation { .. } => {
                let o = r.run(&nx[n], &prin(1), &[]);
                check(&o, Expect::Good, &what)?;
                let d = &o.data_in;
                prop_assert!(d.len() >= 8, "{}: short READ RESERVATION", what);
                prop_assert_eq!(be32(d, 0), m.generation, "{}: generation", what);
                match m.res {
                    None => {
                        prop_assert_eq!(be32(d, 4), 0, "{}: no reservation", what);
                        prop_assert_eq!(d.len(), 8, "{}", what);
                    }
                    Some((h, t)) => {
                        prop_assert_eq!(be32(d, 4), 16, "{}: one reservation", what);
                        prop_assert_eq!(d.len(), 24, "{}", what);
                        let key = if all_registrants(t) {
                            0
                        } else {
                            m.key_of(h).expect("a holder is registered")
                        };
                        prop_assert_eq!(be64(d, 8), key, "{}: reservation key", what);
                        prop_assert_eq!(d[21], t, "{}: scope/type", what);
                    }
                }
                (o, Expect::Good)
            }
            Op::Read { .. } => {
                let o = r.run(&nx[n], &read10(3, 1), &[]);
                let want = if m.access_conflicts(n, false) {
                    Expect::Conflict
                } else {
                    Expect::Good
                };
                (o, want)
            }
            Op::Write { .. } => {
                let o = r.run(&nx[n], &write10(3, 1), &block);
                let want = if m.access_conflicts(n, true) {
                    Expect::Conflict
                } else {
                    Expect::Good
                };
                (o, want)
            }
        };
        check(&o, want, &what)?;
        let after = m.fingerprint();
        prop_assert_eq!(&lu_fingerprint(&r, &nx), &after, "{}: pr_state()", what);
        let want_effects = if before != after {
            vec![Effect::PrChanged { aptpl: m.aptpl }]
        } else {
            vec![]
        };
        prop_assert_eq!(
            &o.effects,
            &want_effects,
            "{}: PrChanged (with APTPL) iff the PR state changed",
            what
        );
    }
    // Everything still owed is delivered, to the right nexus.
    for (i, n) in nx.iter().enumerate() {
        let mut owed = Vec::new();
        if !m.seen[i] {
            owed.push(SenseCode::UA_POWER_ON_RESET);
        }
        owed.append(&mut m.uas[i]);
        prop_assert_eq!(r.drain_uas(n), owed, "final unit attentions of nexus {}", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The LU's persistent reservations behave like the SPC-4 reference model for any
    /// sequence of PR OUT / PR IN / READ / WRITE from four nexuses.
    #[test]
    fn persistent_reservations_match_the_model(ops in prop::collection::vec(any_op(), 1..60)) {
        replay(&ops)?;
    }
}

// ----- deterministic checks of single SPC-4 rules -----

fn run_ok(r: &mut Rig, n: &Nexus, cdb: &[u8], data: &[u8]) {
    let o = r.run(n, cdb, data);
    assert_eq!(o.status, status::GOOD, "{cdb:02x?}: {:?}", o.sense_code());
}

/// Three registered nexuses; nexus 0 holds a reservation of `t`. Unit attentions consumed.
fn three_registered(t: u8) -> (Rig, Vec<Nexus>) {
    let nx = nexuses();
    let mut r = Rig::small();
    for (i, n) in nx.iter().take(3).enumerate() {
        r.drain_uas(n);
        run_ok(
            &mut r,
            n,
            &prout(REGISTER, 0),
            &prout_params(0, 0x10 + i as u64),
        );
    }
    run_ok(&mut r, &nx[0], &prout(RESERVE, t), &prout_params(0x10, 0));
    (r, nx)
}

#[test]
fn preempt_and_abort_of_an_exclusive_access_holder_takes_over() {
    let (mut r, nx) = three_registered(EA);
    assert_eq!(
        r.run(&nx[1], &read10(0, 1), &[]).status,
        status::RESERVATION_CONFLICT
    );
    run_ok(
        &mut r,
        &nx[1],
        &prout(PREEMPT_AND_ABORT, EA),
        &prout_params(0x11, 0x10),
    );
    assert_eq!(
        r.drain_uas(&nx[0]),
        vec![SenseCode::UA_REGISTRATIONS_PREEMPTED]
    );
    assert_eq!(
        r.run(&nx[0], &read10(0, 1), &[]).status,
        status::RESERVATION_CONFLICT
    );
    run_ok(&mut r, &nx[1], &read10(0, 1), &[]);
}

/// SPC-4 5.13.11.4.3: "If the type or scope has changed, then for every I_T nexus whose
/// reservation key was not removed, except for the I_T nexus on which the PERSISTENT RESERVE OUT
/// command was received, the device server shall establish a unit attention condition ...
/// RESERVATIONS RELEASED." With the same type and scope, a bystander registrant is owed nothing.
#[test]
fn preempting_the_holder_with_the_same_type_does_not_release_bystanders() {
    let (mut r, nx) = three_registered(WE);
    run_ok(
        &mut r,
        &nx[1],
        &prout(PREEMPT, WE),
        &prout_params(0x11, 0x10),
    );
    assert_eq!(
        r.drain_uas(&nx[0]),
        vec![SenseCode::UA_REGISTRATIONS_PREEMPTED]
    );
    assert_eq!(
        r.drain_uas(&nx[2]),
        Vec::<SenseCode>::new(),
        "nexus 2 kept its registration and the reservation's type did not change"
    );
}

/// SPC-4 5.13.7: an unregistered I_T nexus that sends REGISTER with SERVICE ACTION RESERVATION
/// KEY zero gets GOOD "and no further action". The LU still takes the APTPL bit from it, so an
/// unrelated initiator's no-op registration with APTPL=0 makes the runtime drop the persisted
/// registrations of everyone else (`Effect::PrChanged { aptpl: false }`).
#[test]
fn a_no_op_registration_does_not_change_aptpl() {
    let nx = nexuses();
    let mut r = Rig::small();
    r.drain_uas(&nx[0]);
    r.drain_uas(&nx[1]);
    run_ok(
        &mut r,
        &nx[0],
        &prout(REGISTER, 0),
        &prout_params_aptpl(0, 0x10, true),
    );
    assert!(r.lu.pr_state().aptpl);
    let o = r.run(
        &nx[1],
        &prout(REGISTER, 0),
        &prout_params_aptpl(0, 0, false),
    );
    assert_eq!(o.status, status::GOOD);
    assert!(
        r.lu.pr_state().aptpl,
        "nexus 1 is not registered and registered nothing: APTPL stays on"
    );
    assert!(
        !o.effects.contains(&Effect::PrChanged { aptpl: false }),
        "the runtime must not delete the persisted state: {:?}",
        o.effects
    );
}
