//! SCSI CDB decoding and the logical unit's executor on arbitrary CDBs and Data-Out.
//!
//! Input: `[config]` then records `[who][cdb_len][data_len: u16 BE][cdb][data]`.
//! Config bits: 0 block size 4096 (else 512), 1 read-only, 2 thick (no UNMAP), 3-5 the ALUA
//! state of the receiving port's group, 6 small transfer limits, 7 descriptor sense (via the
//! control mode page is left to the fuzzer: MODE SELECT works).
//! `who`: bits 0-1 pick one of four nexuses (two on the local group, two on the peer group),
//! bit 7 with bit 6 turns the record into a LU reset / nexus loss instead of a command.
//!
//! Properties: `Cdb::parse` and `LogicalUnit::execute` never panic; an out-of-range request is
//! answered with sense before it reaches the store (the store here panics on any access beyond
//! its end); CHECK CONDITION always carries parseable sense; Data-In never exceeds what the CDB
//! asked for.
#![no_main]

use duet_core::alua::AluaState;
use duet_core::scsi::{
    cdb_length, AluaPicture, BlockStore, Cdb, CommandContext, LogicalUnit, LuConfig, MemStore,
    Nexus, PortGroup, ResetKind, StoreError,
};
use duet_core::sense::status;
use libfuzzer_sys::fuzz_target;

/// A memory store that refuses to be addressed past its end: the LU must check ranges first.
struct Strict(MemStore);

impl Strict {
    fn check(&self, what: &str, offset: u64, len: u64) {
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|e| e <= self.0.len()),
            "{what} of {len} bytes at offset {offset} reached a store of {} bytes",
            self.0.len()
        );
    }
}

impl BlockStore for Strict {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.check("read", offset, buf.len() as u64);
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.check("write", offset, data.len() as u64);
        self.0.write_at(offset, data)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.check("punch_hole", offset, len);
        self.0.punch_hole(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.check("write_zeroes", offset, len);
        self.0.write_zeroes(offset, len)
    }
    fn allocation(&self, offset: u64, len: u64) -> Result<(u64, bool), StoreError> {
        self.check("allocation", offset, len);
        self.0.allocation(offset, len)
    }
    fn compare_and_write(
        &self,
        offset: u64,
        expect: &[u8],
        data: &[u8],
    ) -> Result<Option<usize>, StoreError> {
        self.check("compare_and_write", offset, expect.len() as u64);
        self.0.compare_and_write(offset, expect, data)
    }
}

const BLOCKS: u64 = 128;

fn alua_state(bits: u8) -> AluaState {
    match bits % 6 {
        0 => AluaState::ActiveOptimized,
        1 => AluaState::ActiveNonOptimized,
        2 => AluaState::Standby,
        3 => AluaState::Unavailable,
        4 => AluaState::Offline,
        _ => AluaState::Transitioning,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, mut rest)) = data.split_first() else {
        return;
    };
    let bs = if cfg & 1 != 0 { 4096 } else { 512 };
    let mut lu_cfg = LuConfig::new(0, bs, BLOCKS, "DUETFUZZ0001");
    lu_cfg.read_only = cfg & 2 != 0;
    lu_cfg.thin = cfg & 4 == 0;
    if cfg & 0x40 != 0 {
        lu_cfg.max_transfer_blocks = 16;
        lu_cfg.max_write_same_blocks = 8;
        lu_cfg.max_unmap_blocks = 32;
        lu_cfg.max_unmap_descriptors = 2;
        lu_cfg.max_compare_write_blocks = 1;
    }
    let Ok(mut lu) = LogicalUnit::new(lu_cfg) else {
        return;
    };
    let store = Strict(MemStore::new(BLOCKS * u64::from(bs)));
    let alua = AluaPicture {
        groups: vec![
            PortGroup {
                id: 1,
                state: alua_state(cfg >> 3),
                preferred: true,
                ports: vec![1, 2],
                status: 0,
            },
            PortGroup {
                id: 2,
                state: AluaState::Standby,
                preferred: false,
                ports: vec![129, 130],
                status: 2,
            },
        ],
        explicit: true,
        secondary: Some(AluaState::Standby),
        transition_time: 10,
    };
    let nexuses = [
        Nexus::new("iqn.2026-11.test:init1", [0x23, 0x0d, 0, 0, 0, 1], 1),
        Nexus::new("iqn.2026-11.test:init2", [0x23, 0x0d, 0, 0, 0, 2], 2),
        Nexus::new("iqn.2026-11.test:init1", [0x23, 0x0d, 0, 0, 0, 1], 129),
        Nexus::new("iqn.2026-11.test:init3", [0x80, 0, 0, 0, 0, 3], 130),
    ];
    let luns = [0u64, 1, 7];
    let mut steps = 0;
    while rest.len() >= 4 && steps < 32 {
        steps += 1;
        let who = rest[0];
        let cdb_len = rest[1] as usize;
        let data_len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        let cdb = &rest[..cdb_len.min(rest.len())];
        rest = &rest[cdb.len()..];
        let data_out = &rest[..data_len.min(rest.len())];
        rest = &rest[data_out.len()..];
        let nexus = &nexuses[(who & 3) as usize];
        if who & 0xc0 == 0xc0 {
            match (who >> 2) & 3 {
                0 => lu.reset(ResetKind::LunReset),
                1 => lu.reset(ResetKind::TargetCold),
                2 => lu.nexus_lost(nexus),
                _ => {
                    let st = lu.shared_state();
                    lu.restore_shared(st);
                }
            }
            continue;
        }
        // The decoder on its own.
        let _ = cdb.first().map(|&op| cdb_length(op));
        if let Ok(cmd) = Cdb::parse(cdb) {
            let _ = cmd.writes_medium();
            let _ = format!("{cmd:?}");
        }
        let ctx = CommandContext {
            nexus,
            alua: &alua,
            target_name: "iqn.2026-11.test:duet",
            tpgt: 1,
            luns: &luns,
        };
        let o = lu.execute(&ctx, cdb, data_out, &store);
        if o.status == status::CHECK_CONDITION {
            assert!(
                o.sense_code().is_some(),
                "CHECK CONDITION without parseable sense for cdb {cdb:02x?}: {o:?}"
            );
        }
        assert!(
            o.data_in.len() <= o.wanted_len as usize,
            "cdb {cdb:02x?}: {} bytes of Data-In but the CDB asked for {}",
            o.data_in.len(),
            o.wanted_len
        );
    }
});
