//! Shared helpers for the model-based (state-machine) property tests: a logical unit over a
//! memory store driven through `prepare` + `run_io`, a few nexuses, CDB builders and sense
//! decoding.
#![allow(dead_code)]

use duet_core::alua::{AluaState, LunView};
use duet_core::scsi::host;
use duet_core::scsi::{
    run_io, AluaPicture, CommandContext, LogicalUnit, LuConfig, MemStore, Nexus, Outcome,
    PortGroup, Prepared,
};
use duet_core::sense::SenseCode;

/// Logical block size of the small test LUs.
pub const BS: u32 = 512;
/// Capacity of the small test LUs, in blocks.
pub const BLOCKS: u64 = 64;

/// The nexuses the tests use. They differ in initiator name, in ISID only, and in relative
/// target port only, so every part of the nexus identity matters.
pub fn nexuses() -> Vec<Nexus> {
    vec![
        Nexus::new("iqn.2026-11.test:alpha", [0x40, 0, 0, 0, 0, 1], 1),
        Nexus::new("iqn.2026-11.test:alpha", [0x40, 0, 0, 0, 0, 2], 1),
        Nexus::new("iqn.2026-11.test:alpha", [0x40, 0, 0, 0, 0, 1], 2),
        Nexus::new("iqn.2026-11.test:bravo", [0x40, 0, 0, 0, 0, 1], 129),
    ]
}

/// A logical unit, its backing store and the ALUA picture commands see.
pub struct Rig {
    pub lu: LogicalUnit,
    pub store: MemStore,
    pub alua: AluaPicture,
    pub luns: Vec<u64>,
}

impl Rig {
    /// A 64-block, 512-byte LU with two port groups (ports 1, 2 and 129, 130), both
    /// Active/Optimized.
    pub fn small() -> Rig {
        let mut cfg = LuConfig::new(0, BS, BLOCKS, "MODEL0001");
        cfg.max_compare_write_blocks = 8;
        Rig::with(cfg)
    }

    pub fn with(cfg: LuConfig) -> Rig {
        let len = cfg.num_blocks * cfg.block_size as u64;
        let mut r = Rig {
            lu: LogicalUnit::new(cfg).expect("valid LU config"),
            store: MemStore::new(len),
            alua: AluaPicture::from_view(LunView::standalone(), 1, &[1, 2], &[]),
            luns: vec![0],
        };
        r.set_groups(AluaState::ActiveOptimized, AluaState::ActiveOptimized);
        r
    }

    /// Two groups: 1 (ports 1, 2) in `a`, 2 (ports 129, 130) in `b`.
    pub fn set_groups(&mut self, a: AluaState, b: AluaState) {
        let g = |id: u16, state: AluaState, ports: Vec<u16>| PortGroup {
            id,
            state,
            preferred: false,
            ports,
            status: 0,
        };
        self.alua = AluaPicture {
            groups: vec![g(1, a, vec![1, 2]), g(2, b, vec![129, 130])],
            explicit: true,
            secondary: Some(AluaState::Standby),
            transition_time: 10,
        };
    }

    /// Run one command: `prepare`, then `run_io` for a medium command. Also returns whether the
    /// command needed the medium.
    pub fn run_phases(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> (Outcome, bool) {
        let ctx = CommandContext {
            nexus: n,
            alua: &self.alua,
            target_name: "iqn.2026-11.test:model",
            tpgt: 1,
            luns: &self.luns,
        };
        match self.lu.prepare(&ctx, cdb, data) {
            Prepared::Done(o) => (o, false),
            Prepared::Io(plan) => (run_io(&plan, &self.store, data), true),
        }
    }

    /// Run one command and return its outcome.
    pub fn run(&mut self, n: &Nexus, cdb: &[u8], data: &[u8]) -> Outcome {
        self.run_phases(n, cdb, data).0
    }

    /// REQUEST SENSE (fixed format): the sense code it reports (NO SENSE = 0/00/00).
    pub fn request_sense(&mut self, n: &Nexus) -> SenseCode {
        let o = self.run(n, &request_sense(), &[]);
        assert_eq!(o.status, 0, "REQUEST SENSE must end GOOD");
        fixed_sense_code(&o.data_in).expect("REQUEST SENSE returns fixed sense data")
    }

    /// Every unit attention pending for `n`, collected with REQUEST SENSE, in delivery order.
    pub fn drain_uas(&mut self, n: &Nexus) -> Vec<SenseCode> {
        let mut v = Vec::new();
        for _ in 0..64 {
            let s = self.request_sense(n);
            if s == NO_SENSE {
                return v;
            }
            v.push(s);
        }
        panic!("unit attentions never drained: {v:?}");
    }
}

/// REQUEST SENSE's answer when nothing is pending.
pub const NO_SENSE: SenseCode = SenseCode::new(0, 0, 0);

/// Key/ASC/ASCQ of fixed-format sense bytes.
pub fn fixed_sense_code(s: &[u8]) -> Option<SenseCode> {
    if s.len() < 14 || s[0] & 0x7F != 0x70 {
        return None;
    }
    SenseCode::from_sense_data(s)
}

/// The INFORMATION field of sense bytes (either format), if valid.
pub fn sense_information(s: &[u8]) -> Option<u64> {
    match s.first().map(|b| b & 0x7F) {
        Some(0x70) if s[0] & 0x80 != 0 && s.len() >= 7 => {
            Some(u32::from_be_bytes([s[3], s[4], s[5], s[6]]) as u64)
        }
        Some(0x72) => {
            let mut at = 8;
            while at + 2 <= s.len() {
                let (ty, len) = (s[at], s[at + 1] as usize);
                if ty == 0 && len == 0x0A && at + 12 <= s.len() && s[at + 2] & 0x80 != 0 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&s[at + 4..at + 12]);
                    return Some(u64::from_be_bytes(b));
                }
                at += 2 + len;
            }
            None
        }
        _ => None,
    }
}

// ----- CDBs -----

pub fn tur() -> Vec<u8> {
    vec![0; 6]
}

pub fn request_sense() -> Vec<u8> {
    vec![0x03, 0, 0, 0, 252, 0]
}

pub fn inquiry() -> Vec<u8> {
    vec![0x12, 0, 0, 0, 96, 0]
}

pub fn report_luns() -> Vec<u8> {
    vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
}

pub fn read_capacity10() -> Vec<u8> {
    vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

fn cdb10(opcode: u8, b1: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    vec![opcode, b1, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn cdb16(opcode: u8, b1: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![opcode, b1];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    host::read10_cdb(lba, blocks).to_vec()
}

pub fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    host::write10_cdb(lba, blocks).to_vec()
}

pub fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    host::read16_cdb(lba, blocks).to_vec()
}

pub fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    host::write16_cdb(lba, blocks).to_vec()
}

pub fn write_same10(lba: u32, blocks: u16, unmap: bool) -> Vec<u8> {
    cdb10(0x41, if unmap { 0x08 } else { 0 }, lba, blocks)
}

pub fn write_same16(lba: u64, blocks: u32, unmap: bool) -> Vec<u8> {
    cdb16(0x93, if unmap { 0x08 } else { 0 }, lba, blocks)
}

pub fn sync_cache10(lba: u32, blocks: u16) -> Vec<u8> {
    cdb10(0x35, 0, lba, blocks)
}

pub fn sync_cache16(lba: u64, blocks: u32) -> Vec<u8> {
    cdb16(0x91, 0, lba, blocks)
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
    let bd = (ranges.len() * 16) as u16;
    let mut v = Vec::new();
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

/// PERSISTENT RESERVE IN with service action `sa`.
pub fn prin(sa: u8) -> Vec<u8> {
    vec![0x5E, sa, 0, 0, 0, 0, 0, 0x04, 0x00, 0]
}

/// PERSISTENT RESERVE OUT with service action `sa` and TYPE `ptype` (scope 0), 24 bytes of
/// parameters.
pub fn prout(sa: u8, ptype: u8) -> Vec<u8> {
    vec![0x5F, sa, ptype & 0x0F, 0, 0, 0, 0, 0, 24, 0]
}

/// The basic PERSISTENT RESERVE OUT parameter list.
pub fn prout_params(key: u64, sa_key: u64) -> Vec<u8> {
    let mut v = key.to_be_bytes().to_vec();
    v.extend_from_slice(&sa_key.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v
}

/// The basic PERSISTENT RESERVE OUT parameter list with the APTPL bit.
pub fn prout_params_aptpl(key: u64, sa_key: u64, aptpl: bool) -> Vec<u8> {
    let mut v = prout_params(key, sa_key);
    v[20] = u8::from(aptpl);
    v
}
