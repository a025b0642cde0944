//! Model-based property test of the single-node SCSI executor: `LogicalUnit::prepare` +
//! `run_io` on a `MemStore`, against a plain `Vec<u8>` reference disk.
//!
//! Random sequences of READ(10/16), WRITE(10/16) (also with fewer Data-Out bytes than the CDB
//! asks for), WRITE SAME(10/16) with and without UNMAP (and with zero blocks = to the end),
//! UNMAP, COMPARE AND WRITE (matching and not), SYNCHRONIZE CACHE(10/16) and a few persistent
//! reservation commands from two nexuses run on a small LU (64 blocks of 512 bytes). After every
//! command the whole store must equal the reference disk; every read returns exactly the
//! reference bytes; a miscompare reports the first differing byte in the INFORMATION field;
//! out-of-range requests fail with LBA OUT OF RANGE and a command refused with RESERVATION
//! CONFLICT changes nothing.

mod model_common;

use duet_core::scsi::Nexus;
use duet_core::sense::{status, SenseCode};
use model_common::*;
use proptest::prelude::*;

const N: u64 = BLOCKS;
const B: usize = BS as usize;
/// `max_compare_write_blocks` of `Rig::small`.
const MAX_CAW: u8 = 8;

const WE: u8 = 1;
const EA: u8 = 3;

#[derive(Clone, Debug)]
enum Op {
    Read {
        n: usize,
        lba: u64,
        blocks: u32,
        sixteen: bool,
    },
    /// WRITE of `blocks` blocks with `have` whole blocks (+ `tail` stray bytes) of Data-Out.
    Write {
        n: usize,
        lba: u64,
        blocks: u32,
        have: u32,
        tail: u16,
        seed: u8,
        sixteen: bool,
    },
    /// WRITE SAME of a block filled from `seed` (all zeros when `seed` is 0).
    WriteSame {
        n: usize,
        lba: u64,
        blocks: u32,
        seed: u8,
        unmap: bool,
        sixteen: bool,
    },
    Unmap {
        n: usize,
        ranges: Vec<(u64, u32)>,
    },
    /// COMPARE AND WRITE; when not `matching`, byte `flip` (mod length) of the compare data is
    /// changed.
    Caw {
        n: usize,
        lba: u64,
        blocks: u8,
        matching: bool,
        flip: usize,
        seed: u8,
    },
    Sync {
        n: usize,
        lba: u64,
        blocks: u32,
        sixteen: bool,
    },
    /// REGISTER AND IGNORE EXISTING KEY: key `n + 1` when `on`, unregister otherwise.
    PrRegister {
        n: usize,
        on: bool,
    },
    PrReserve {
        n: usize,
        ptype: u8,
    },
    PrRelease {
        n: usize,
        ptype: u8,
    },
    /// MODE SELECT(6) of the Control mode page with D_SENSE = `on` (descriptor-format sense).
    DSense {
        n: usize,
        on: bool,
    },
}

fn lba() -> impl Strategy<Value = u64> {
    prop_oneof![16 => 0..N, 2 => N - 4..N + 3, 1 => Just(u64::from(u32::MAX)), 1 => Just(u64::MAX)]
}

fn blocks() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0u32..9, 1 => 60u32..70]
}

fn who() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(0usize), 1 => Just(1usize)]
}

fn any_op() -> impl Strategy<Value = Op> {
    let sixteen = any::<bool>;
    prop_oneof![
        5 => (who(), lba(), blocks(), sixteen())
            .prop_map(|(n, lba, blocks, sixteen)| Op::Read { n, lba, blocks, sixteen }),
        5 => (who(), lba(), blocks(), prop::option::weighted(0.2, 0u32..9), 0u16..600, any::<u8>(), sixteen())
            .prop_map(|(n, lba, blocks, short, tail, seed, sixteen)| {
                let have = short.map_or(blocks, |s| s.min(blocks));
                let tail = if short.is_some() { tail % BS as u16 } else { 0 };
                Op::Write { n, lba, blocks, have, tail, seed, sixteen }
            }),
        3 => (who(), lba(), blocks(), prop_oneof![1 => Just(0u8), 3 => any::<u8>()], any::<bool>(), sixteen())
            .prop_map(|(n, lba, blocks, seed, unmap, sixteen)| Op::WriteSame { n, lba, blocks, seed, unmap, sixteen }),
        2 => (who(), prop::collection::vec((lba(), 0u32..6), 0..4))
            .prop_map(|(n, ranges)| Op::Unmap { n, ranges }),
        4 => (who(), lba(), 0u8..=MAX_CAW + 1, prop::bool::weighted(0.6), any::<usize>(), any::<u8>())
            .prop_map(|(n, lba, blocks, matching, flip, seed)| Op::Caw { n, lba, blocks, matching, flip, seed }),
        1 => (who(), lba(), blocks(), sixteen())
            .prop_map(|(n, lba, blocks, sixteen)| Op::Sync { n, lba, blocks, sixteen }),
        1 => (0..2usize, any::<bool>()).prop_map(|(n, on)| Op::PrRegister { n, on }),
        1 => (0..2usize, prop::sample::select(vec![WE, EA])).prop_map(|(n, ptype)| Op::PrReserve { n, ptype }),
        1 => (0..2usize, prop::sample::select(vec![WE, EA])).prop_map(|(n, ptype)| Op::PrRelease { n, ptype }),
        1 => (0..2usize, any::<bool>()).prop_map(|(n, on)| Op::DSense { n, on }),
    ]
}

/// Byte `i` of the pattern `seed` makes.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            seed.wrapping_mul(31)
                .wrapping_add((i as u8) ^ (i >> 8) as u8)
        })
        .collect()
}

/// Whether [lba, lba + blocks) lies on the medium and `lba` is a block of it.
fn in_range(lba: u64, blocks: u64) -> bool {
    lba < N && lba + blocks <= N
}

/// The reference: the disk and a two-nexus persistent reservation.
struct Model {
    disk: Vec<u8>,
    registered: [bool; 2],
    res: Option<(usize, u8)>,
    d_sense: bool,
    /// 2A/01 MODE PARAMETERS CHANGED owed to each nexus.
    mode_changed: [bool; 2],
}

impl Model {
    fn span(lba: u64, blocks: u64) -> std::ops::Range<usize> {
        lba as usize * B..(lba + blocks) as usize * B
    }

    /// Whether a medium access from `n` is refused (WE: writes of others, EA: everything of
    /// others).
    fn conflicts(&self, n: usize, write: bool) -> bool {
        match self.res {
            Some((h, t)) if h != n => t == EA || write,
            _ => false,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Good,
    Conflict,
    Check(SenseCode),
}

fn check(o: &duet_core::scsi::Outcome, want: &Expect, what: &str) -> Result<(), TestCaseError> {
    match want {
        Expect::Good => prop_assert_eq!(
            o.status,
            status::GOOD,
            "{}: expected GOOD, got {:?}",
            what,
            o.sense_code()
        ),
        Expect::Conflict => prop_assert_eq!(o.status, status::RESERVATION_CONFLICT, "{}", what),
        Expect::Check(c) => {
            prop_assert_eq!(o.status, status::CHECK_CONDITION, "{}", what);
            prop_assert_eq!(o.sense_code(), Some(*c), "{}", what);
        }
    }
    Ok(())
}

/// Sense bytes must be in the format the Control mode page's D_SENSE asked for.
fn check_format(
    o: &duet_core::scsi::Outcome,
    d_sense: bool,
    what: &str,
) -> Result<(), TestCaseError> {
    if let Some(s) = &o.sense {
        let want = if d_sense { 0x72 } else { 0x70 };
        prop_assert_eq!(s[0] & 0x7F, want, "{}: sense format", what);
    }
    Ok(())
}

fn replay(ops: &[Op]) -> Result<(), TestCaseError> {
    let nx: Vec<Nexus> = nexuses().into_iter().take(2).collect();
    let mut r = Rig::small();
    for n in &nx {
        r.drain_uas(n);
    }
    let mut m = Model {
        disk: vec![0u8; N as usize * B],
        registered: [false; 2],
        res: None,
        d_sense: false,
        mode_changed: [false; 2],
    };
    let oor = || Expect::Check(SenseCode::LBA_OUT_OF_RANGE);
    for (step, op) in ops.iter().enumerate() {
        let what = format!("step {step}: {op:?}");
        let n = match op {
            Op::Read { n, .. }
            | Op::Write { n, .. }
            | Op::WriteSame { n, .. }
            | Op::Unmap { n, .. }
            | Op::Caw { n, .. }
            | Op::Sync { n, .. }
            | Op::PrRegister { n, .. }
            | Op::PrReserve { n, .. }
            | Op::PrRelease { n, .. }
            | Op::DSense { n, .. } => *n,
        };
        let owed = if std::mem::take(&mut m.mode_changed[n]) {
            vec![SenseCode::UA_MODE_PARAMETERS_CHANGED]
        } else {
            vec![]
        };
        prop_assert_eq!(r.drain_uas(&nx[n]), owed, "{}: unit attentions", what);
        let d_sense = m.d_sense;
        match op {
            Op::Read {
                n,
                lba,
                blocks,
                sixteen,
            } => {
                let cdb = if *sixteen {
                    read16(*lba, *blocks)
                } else {
                    read10(*lba as u32, *blocks as u16)
                };
                let lba = if *sixteen { *lba } else { *lba as u32 as u64 };
                let o = r.run(&nx[*n], &cdb, &[]);
                let want = if m.conflicts(*n, false) {
                    Expect::Conflict
                } else if !in_range(lba, *blocks as u64) {
                    oor()
                } else {
                    Expect::Good
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
                if want == Expect::Good {
                    prop_assert_eq!(
                        &o.data_in[..],
                        &m.disk[Model::span(lba, *blocks as u64)],
                        "{}: data read",
                        what
                    );
                    prop_assert_eq!(o.wanted_len, blocks * BS, "{}", what);
                } else {
                    prop_assert!(o.data_in.is_empty(), "{}: no data on failure", what);
                }
            }
            Op::Write {
                n,
                lba,
                blocks,
                have,
                tail,
                seed,
                sixteen,
            } => {
                let cdb = if *sixteen {
                    write16(*lba, *blocks)
                } else {
                    write10(*lba as u32, *blocks as u16)
                };
                let lba = if *sixteen { *lba } else { *lba as u32 as u64 };
                let data = pattern(*seed, *have as usize * B + *tail as usize);
                let o = r.run(&nx[*n], &cdb, &data);
                let want = if m.conflicts(*n, true) {
                    Expect::Conflict
                } else if !in_range(lba, *blocks as u64) {
                    oor()
                } else {
                    Expect::Good
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
                if want == Expect::Good {
                    // Only the whole blocks received are written.
                    let span = Model::span(lba, *have as u64);
                    let len = span.len();
                    m.disk[span].copy_from_slice(&data[..len]);
                }
            }
            Op::WriteSame {
                n,
                lba,
                blocks,
                seed,
                unmap,
                sixteen,
            } => {
                let cdb = if *sixteen {
                    write_same16(*lba, *blocks, *unmap)
                } else {
                    write_same10(*lba as u32, *blocks as u16, *unmap)
                };
                let lba = if *sixteen { *lba } else { *lba as u32 as u64 };
                let block = if *seed == 0 {
                    vec![0u8; B]
                } else {
                    pattern(*seed, B)
                };
                let o = r.run(&nx[*n], &cdb, &block);
                let want = if m.conflicts(*n, true) {
                    Expect::Conflict
                } else if !in_range(lba, *blocks as u64) {
                    oor()
                } else {
                    Expect::Good
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
                if want == Expect::Good {
                    // Zero blocks: to the end of the medium (WSNZ = 0).
                    let count = if *blocks == 0 {
                        N - lba
                    } else {
                        *blocks as u64
                    };
                    for b in 0..count {
                        let s = Model::span(lba + b, 1);
                        if *unmap {
                            // Unmapped blocks read back as zeros (LBPRZ = 1).
                            m.disk[s].fill(0);
                        } else {
                            m.disk[s].copy_from_slice(&block);
                        }
                    }
                }
            }
            Op::Unmap { n, ranges } => {
                let list = unmap_list(ranges);
                let o = r.run(&nx[*n], &unmap_cdb(list.len() as u16), &list);
                let ok = ranges
                    .iter()
                    .all(|(l, c)| *l <= N && l.saturating_add(*c as u64) <= N);
                let want = if m.conflicts(*n, true) {
                    Expect::Conflict
                } else if !ok {
                    oor()
                } else {
                    Expect::Good
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
                if want == Expect::Good {
                    for (l, c) in ranges {
                        m.disk[Model::span(*l, *c as u64)].fill(0);
                    }
                }
            }
            Op::Caw {
                n,
                lba,
                blocks,
                matching,
                flip,
                seed,
            } => {
                let len = *blocks as usize * B;
                let mut data = if in_range(*lba, *blocks as u64) {
                    m.disk[Model::span(*lba, *blocks as u64)].to_vec()
                } else {
                    vec![0u8; len]
                };
                let flip_at = if len > 0 { flip % len } else { 0 };
                if !*matching && len > 0 {
                    data[flip_at] ^= 0x5A;
                }
                let new = pattern(*seed, len);
                data.extend_from_slice(&new);
                let o = r.run(&nx[*n], &compare_and_write(*lba, *blocks), &data);
                let want = if m.conflicts(*n, true) {
                    Expect::Conflict
                } else if *blocks > MAX_CAW {
                    Expect::Check(SenseCode::INVALID_FIELD_IN_CDB)
                } else if !in_range(*lba, *blocks as u64) {
                    oor()
                } else if *blocks > 0 && !*matching {
                    Expect::Check(SenseCode::MISCOMPARE)
                } else {
                    Expect::Good
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
                match want {
                    Expect::Good if *blocks > 0 => {
                        m.disk[Model::span(*lba, *blocks as u64)].copy_from_slice(&new);
                    }
                    Expect::Check(SenseCode::MISCOMPARE) => {
                        let sense = o.sense.as_deref().unwrap_or_default();
                        prop_assert_eq!(
                            sense_information(sense),
                            Some(flip_at as u64),
                            "{}: INFORMATION = offset of the first differing byte",
                            what
                        );
                    }
                    _ => {}
                }
            }
            Op::Sync {
                n,
                lba,
                blocks,
                sixteen,
            } => {
                let cdb = if *sixteen {
                    sync_cache16(*lba, *blocks)
                } else {
                    sync_cache10(*lba as u32, *blocks as u16)
                };
                let lba = if *sixteen { *lba } else { *lba as u32 as u64 };
                let o = r.run(&nx[*n], &cdb, &[]);
                let want = if m.conflicts(*n, true) {
                    Expect::Conflict
                } else if !in_range(lba, *blocks as u64) {
                    oor()
                } else {
                    Expect::Good
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
            }
            Op::PrRegister { n, on } => {
                let key = if *on { *n as u64 + 1 } else { 0 };
                let o = r.run(&nx[*n], &prout(6, 0), &prout_params(0, key));
                check(&o, &Expect::Good, &what)?;
                if !*on && m.res.is_some_and(|(h, _)| h == *n) {
                    m.res = None;
                }
                m.registered[*n] = *on;
            }
            Op::PrReserve { n, ptype } => {
                let key = if m.registered[*n] { *n as u64 + 1 } else { 0 };
                let o = r.run(&nx[*n], &prout(1, *ptype), &prout_params(key, 0));
                let want = match m.res {
                    _ if !m.registered[*n] => Expect::Conflict,
                    None => {
                        m.res = Some((*n, *ptype));
                        Expect::Good
                    }
                    Some((h, t)) if h == *n && t == *ptype => Expect::Good,
                    Some(_) => Expect::Conflict,
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
            }
            Op::DSense { n, on } => {
                // The default Control mode page with D_SENSE (byte 2 bit 2) as asked.
                let mut params = vec![
                    0u8, 0, 0, 0, 0x0A, 0x0A, 0, 0x10, 0, 0x40, 0, 0, 0xFF, 0xFF, 0, 0,
                ];
                if *on {
                    params[6] |= 0x04;
                }
                let cdb = [0x15, 0x10, 0, 0, params.len() as u8, 0];
                let o = r.run(&nx[*n], &cdb, &params);
                let want = if m.conflicts(*n, true) {
                    Expect::Conflict
                } else {
                    if m.d_sense != *on {
                        m.d_sense = *on;
                        m.mode_changed[1 - *n] = true;
                    }
                    Expect::Good
                };
                check(&o, &want, &what)?;
            }
            Op::PrRelease { n, ptype } => {
                let key = if m.registered[*n] { *n as u64 + 1 } else { 0 };
                let o = r.run(&nx[*n], &prout(2, *ptype), &prout_params(key, 0));
                let want = match m.res {
                    _ if !m.registered[*n] => Expect::Conflict,
                    Some((h, t)) if h == *n => {
                        if t == *ptype {
                            m.res = None;
                            Expect::Good
                        } else {
                            Expect::Check(SenseCode::new(0x05, 0x26, 0x04))
                        }
                    }
                    _ => Expect::Good,
                };
                check(&o, &want, &what)?;
                check_format(&o, d_sense, &what)?;
            }
        }
        // Failed and refused commands change nothing; successful ones exactly what the
        // reference says.
        prop_assert!(
            r.store.snapshot() == m.disk,
            "{}: store differs from the reference",
            what
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The executor agrees with a reference disk for random command sequences.
    #[test]
    fn executor_matches_the_reference_disk(ops in prop::collection::vec(any_op(), 1..50)) {
        replay(&ops)?;
    }
}

#[test]
fn miscompare_reports_the_offset_in_descriptor_sense_too() {
    let nx = nexuses();
    let n = &nx[0];
    let mut r = Rig::small();
    r.drain_uas(n);
    // Control mode page (0Ah): the default page with D_SENSE = 1.
    let page = [0x0A, 0x0A, 0x04, 0x10, 0, 0x40, 0, 0, 0xFF, 0xFF, 0, 0];
    let mut params = vec![0u8, 0, 0, 0];
    params.extend_from_slice(&page);
    let o = r.run(n, &[0x15, 0x10, 0, 0, params.len() as u8, 0], &params);
    assert_eq!(o.status, status::GOOD, "MODE SELECT: {:?}", o.sense_code());
    let mut data = vec![0u8; 2 * B];
    data[B - 3] = 1;
    let o = r.run(n, &compare_and_write(5, 1), &data);
    assert_eq!(o.sense_code(), Some(SenseCode::MISCOMPARE));
    let s = o.sense.expect("sense");
    assert_eq!(s[0] & 0x7F, 0x72, "descriptor format requested");
    assert_eq!(sense_information(&s), Some(B as u64 - 3));
}
