//! Shared helpers for the SCSI integration tests: a logical unit over a memory store, nexuses,
//! and CDB builders.
#![allow(dead_code)]

use duet_core::alua::{AluaState, LunView};
use duet_core::scsi::{
    AluaPicture, CommandContext, LogicalUnit, LuConfig, MemStore, Nexus, Outcome, PortGroup,
};
use duet_core::sense::{status, SenseCode};

pub const BS: u32 = 512;
pub const BLOCKS: u64 = 2048;

pub struct Rig {
    pub lu: LogicalUnit,
    pub store: MemStore,
    pub alua: AluaPicture,
    pub luns: Vec<u64>,
}

pub fn nexus(i: u8) -> Nexus {
    Nexus::new(
        &format!("iqn.2026-11.test:init{i}"),
        [0x23, 0x0d, 0, 0, 0, i],
        1,
    )
}

impl Rig {
    pub fn new() -> Rig {
        Rig::with(LuConfig::new(0, BS, BLOCKS, "DUET0001"))
    }

    pub fn with(cfg: LuConfig) -> Rig {
        let len = cfg.num_blocks * cfg.block_size as u64;
        Rig {
            lu: LogicalUnit::new(cfg).expect("valid config"),
            store: MemStore::new(len),
            alua: AluaPicture::from_view(LunView::standalone(), 1, &[1, 2], &[]),
            luns: vec![0],
        }
    }

    /// Two controllers' groups: group 1 (ports 1, 2) and group 2 (ports 129, 130).
    pub fn two_groups(&mut self, local: AluaState, peer: AluaState) {
        self.alua = AluaPicture {
            groups: vec![
                PortGroup {
                    id: 1,
                    state: local,
                    preferred: false,
                    ports: vec![1, 2],
                    status: 0,
                },
                PortGroup {
                    id: 2,
                    state: peer,
                    preferred: false,
                    ports: vec![129, 130],
                    status: 0,
                },
            ],
            explicit: true,
            secondary: Some(AluaState::Standby),
            transition_time: 10,
        };
    }

    pub fn run(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
        let ctx = CommandContext {
            nexus: n,
            alua: &self.alua,
            target_name: "iqn.2026-11.test:duet",
            tpgt: 1,
            luns: &self.luns,
        };
        self.lu.execute(&ctx, cdb, data, &self.store)
    }

    /// TEST UNIT READY until no unit attention is left.
    pub fn clear_ua(&mut self, n: &Nexus) {
        for _ in 0..20 {
            let o = self.run(n, &tur(), &[]);
            if !o.sense_code().is_some_and(|s| s.is_unit_attention()) {
                return;
            }
        }
        panic!("unit attentions never cleared");
    }

    pub fn good(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Vec<u8> {
        let o = self.run(n, cdb, data);
        assert_eq!(
            o.status,
            status::GOOD,
            "cdb {cdb:02x?}: {:?}",
            o.sense_code()
        );
        o.data_in
    }

    pub fn expect_sense(&mut self, n: &Nexus, cdb: &[u8], data: &[u8], code: SenseCode) {
        let o = self.run(n, cdb, data);
        assert_eq!(o.status, status::CHECK_CONDITION, "cdb {cdb:02x?}");
        assert_eq!(o.sense_code(), Some(code), "cdb {cdb:02x?}");
    }

    pub fn expect_conflict(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) {
        let o = self.run(n, cdb, data);
        assert_eq!(o.status, status::RESERVATION_CONFLICT, "cdb {cdb:02x?}");
    }
}

pub fn tur() -> Vec<u8> {
    vec![0; 6]
}

pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x12, u8::from(evpd), page, a[0], a[1], 0]
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    duet_core::scsi::host::read10_cdb(lba, blocks).to_vec()
}

pub fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    duet_core::scsi::host::write10_cdb(lba, blocks).to_vec()
}

pub fn cdb16(opcode: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![opcode, b1];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&len.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

pub fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    cdb16(0x88, 0, lba, blocks)
}

pub fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    cdb16(0x8A, 0, lba, blocks)
}

pub fn write_same16(lba: u64, blocks: u32, unmap: bool) -> Vec<u8> {
    cdb16(0x93, if unmap { 0x08 } else { 0 }, lba, blocks)
}

pub fn compare_and_write(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = cdb16(0x89, 0, lba, 0);
    c[13] = blocks;
    c
}

pub fn unmap_cdb(param_len: u16) -> Vec<u8> {
    let p = param_len.to_be_bytes();
    vec![0x42, 0, 0, 0, 0, 0, 0, p[0], p[1], 0]
}

/// UNMAP parameter list for these (lba, blocks) ranges.
pub fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    let bd = (ranges.len() * 16) as u16;
    v.extend_from_slice(&(bd + 6).to_be_bytes());
    v.extend_from_slice(&bd.to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for (l, n) in ranges {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

pub fn prin(sa: u8, alloc: u16) -> Vec<u8> {
    let a = alloc.to_be_bytes();
    vec![0x5E, sa, 0, 0, 0, 0, 0, a[0], a[1], 0]
}

pub fn prout(sa: u8, ptype: u8) -> Vec<u8> {
    vec![0x5F, sa, ptype, 0, 0, 0, 0, 0, 24, 0]
}

pub fn prout_params(key: u64, sa_key: u64, aptpl: bool) -> Vec<u8> {
    let mut v = key.to_be_bytes().to_vec();
    v.extend_from_slice(&sa_key.to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    v.push(u8::from(aptpl));
    v.extend_from_slice(&[0; 3]);
    v
}

pub fn mode_sense6(page: u8, alloc: u8) -> Vec<u8> {
    vec![0x1A, 0, page, 0, alloc, 0]
}

pub fn mode_select6(len: u8) -> Vec<u8> {
    vec![0x15, 0x10, 0, 0, len, 0]
}
