//! Property tests: the CDB decoder and the executor never panic, and the executor agrees with a
//! plain in-memory reference disk for random sequences of data commands.

mod scsi_common;

use duet_core::scsi::{Cdb, LuConfig};
use duet_core::sense::{status, SenseCode};
use proptest::prelude::*;
use scsi_common::*;

const SMALL_BLOCKS: u64 = 64;

fn small_rig() -> Rig {
    let mut cfg = LuConfig::new(0, BS, SMALL_BLOCKS, "PROP0001");
    cfg.max_compare_write_blocks = 8;
    Rig::with(cfg)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cdb_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let _ = Cdb::parse(&bytes);
    }

    #[test]
    fn executor_never_panics(
        op in prop::sample::select(vec![
            0x00u8, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x16, 0x17, 0x1A, 0x1B, 0x1E, 0x25, 0x28, 0x2A,
            0x2E, 0x2F, 0x34, 0x35, 0x37, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5A, 0x5E, 0x5F, 0x88,
            0x89, 0x8A, 0x8B, 0x8E, 0x8F, 0x90, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xA4, 0xA8, 0xAA,
            0xAE, 0xAF, 0xB7, 0x48, 0x83,
        ]),
        rest in proptest::collection::vec(any::<u8>(), 0..20),
        data in proptest::collection::vec(any::<u8>(), 0..1100),
    ) {
        let mut r = small_rig();
        let n = nexus(1);
        r.clear_ua(&n);
        let mut cdb = vec![op];
        cdb.extend_from_slice(&rest);
        let o = r.run(&n, &cdb, &data);
        if o.status == status::CHECK_CONDITION {
            prop_assert!(o.sense_code().is_some());
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Read(u64, u32),
    Write(u64, u32, u8),
    WriteSame(u64, u32, u8, bool),
    Unmap(Vec<(u64, u32)>),
    Caw(u64, u8, bool, u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let lba = 0..SMALL_BLOCKS + 2;
    prop_oneof![
        (lba.clone(), 0u32..6).prop_map(|(l, n)| Op::Read(l, n)),
        (lba.clone(), 0u32..6, any::<u8>()).prop_map(|(l, n, b)| Op::Write(l, n, b)),
        (lba.clone(), 0u32..6, any::<u8>(), any::<bool>())
            .prop_map(|(l, n, b, u)| Op::WriteSame(l, n, b, u)),
        proptest::collection::vec((lba.clone(), 0u32..4), 0..3).prop_map(Op::Unmap),
        (lba, 0u8..4, any::<bool>(), any::<u8>()).prop_map(|(l, n, m, b)| Op::Caw(l, n, m, b)),
    ]
}

fn in_range(lba: u64, n: u64) -> bool {
    lba < SMALL_BLOCKS && lba + n <= SMALL_BLOCKS
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn executor_matches_reference_disk(ops in proptest::collection::vec(op_strategy(), 1..25)) {
        let mut r = small_rig();
        let n = nexus(1);
        r.clear_ua(&n);
        let bs = BS as usize;
        let mut model = vec![0u8; SMALL_BLOCKS as usize * bs];
        for op in ops {
            match op {
                Op::Read(lba, cnt) => {
                    let o = r.run(&n, &read16(lba, cnt), &[]);
                    if in_range(lba, cnt as u64) {
                        prop_assert_eq!(o.status, status::GOOD);
                        let s = lba as usize * bs;
                        prop_assert_eq!(&o.data_in[..], &model[s..s + cnt as usize * bs]);
                    } else {
                        prop_assert_eq!(o.sense_code(), Some(SenseCode::LBA_OUT_OF_RANGE));
                    }
                }
                Op::Write(lba, cnt, b) => {
                    let data: Vec<u8> =
                        (0..cnt as usize * bs).map(|i| b.wrapping_add(i as u8)).collect();
                    let o = r.run(&n, &write16(lba, cnt), &data);
                    if in_range(lba, cnt as u64) {
                        prop_assert_eq!(o.status, status::GOOD);
                        let s = lba as usize * bs;
                        model[s..s + data.len()].copy_from_slice(&data);
                    } else {
                        prop_assert_eq!(o.sense_code(), Some(SenseCode::LBA_OUT_OF_RANGE));
                    }
                }
                Op::WriteSame(lba, cnt, b, unmap) => {
                    let o = r.run(&n, &write_same16(lba, cnt, unmap), &vec![b; bs]);
                    if !in_range(lba, cnt as u64) {
                        prop_assert_eq!(o.sense_code(), Some(SenseCode::LBA_OUT_OF_RANGE));
                    } else {
                        // Zero blocks: to the end of the medium.
                        let cnt = if cnt == 0 { SMALL_BLOCKS - lba } else { cnt as u64 };
                        prop_assert_eq!(o.status, status::GOOD);
                        let s = lba as usize * bs;
                        let fill = if unmap { 0 } else { b };
                        model[s..s + cnt as usize * bs].fill(fill);
                    }
                }
                Op::Unmap(ranges) => {
                    let list = unmap_list(&ranges);
                    let o = r.run(&n, &unmap_cdb(list.len() as u16), &list);
                    let ok = ranges.iter().all(|(l, c)| *l <= SMALL_BLOCKS && l + *c as u64 <= SMALL_BLOCKS);
                    if ok {
                        prop_assert_eq!(o.status, status::GOOD);
                        for (l, c) in ranges {
                            let s = l as usize * bs;
                            model[s..s + c as usize * bs].fill(0);
                        }
                    } else {
                        prop_assert_eq!(o.sense_code(), Some(SenseCode::LBA_OUT_OF_RANGE));
                    }
                }
                Op::Caw(lba, cnt, matching, b) => {
                    let len = cnt as usize * bs;
                    let mut data = if in_range(lba, cnt as u64) {
                        let s = lba as usize * bs;
                        model[s..s + len].to_vec()
                    } else {
                        vec![0; len]
                    };
                    if !matching && len > 0 {
                        let i = (b as usize * 7) % len;
                        data[i] ^= 0xFF;
                    }
                    data.extend(std::iter::repeat_n(b, len));
                    let o = r.run(&n, &compare_and_write(lba, cnt), &data);
                    if !in_range(lba, cnt as u64) {
                        prop_assert_eq!(o.sense_code(), Some(SenseCode::LBA_OUT_OF_RANGE));
                    } else if cnt == 0 {
                        prop_assert_eq!(o.status, status::GOOD);
                    } else if matching {
                        prop_assert_eq!(o.status, status::GOOD);
                        let s = lba as usize * bs;
                        model[s..s + len].fill(b);
                    } else {
                        prop_assert_eq!(o.sense_code(), Some(SenseCode::MISCOMPARE));
                    }
                }
            }
        }
        prop_assert_eq!(r.store.snapshot(), model);
    }
}
