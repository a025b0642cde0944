//! The Caching page's WCE as a host sees it: the LU's initial value comes from its configuration
//! (the backing store's own cache), MODE SENSE reports it as current and default, and with WCE=0
//! (configured, or set by MODE SELECT) every command that writes data is flushed before GOOD.

mod scsi_common;

use duet_core::alua::LunView;
use duet_core::scsi::{
    AluaPicture, BlockStore, CommandContext, LogicalUnit, LuConfig, MemStore, Outcome, StoreError,
};
use duet_core::sense::status;
use scsi_common::{
    cdb16, compare_and_write, mode_select6, mode_sense6, nexus, write10, write16, write_same16, BS,
};
use std::sync::Mutex;

/// A memory store that records, in order, the writes (`W`) and flushes (`F`) it is asked for.
struct Recording {
    inner: MemStore,
    log: Mutex<String>,
}

impl Recording {
    fn note(&self, c: char) {
        self.log.lock().unwrap().push(c);
    }
    fn take(&self) -> String {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl BlockStore for Recording {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        self.note('W');
        self.inner.write_at(offset, data)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.note('F');
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.note('W');
        self.inner.punch_hole(offset, len)
    }
}

struct Lu {
    lu: LogicalUnit,
    store: Recording,
    alua: AluaPicture,
}

impl Lu {
    fn new(write_cache: bool) -> Lu {
        let mut cfg = LuConfig::new(0, BS, 2048, "DUETWCE1");
        cfg.write_cache = write_cache;
        let store = Recording {
            inner: MemStore::new(2048 * u64::from(BS)),
            log: Mutex::new(String::new()),
        };
        let mut lu = Lu {
            lu: LogicalUnit::new(cfg).unwrap(),
            store,
            alua: AluaPicture::from_view(LunView::standalone(), 1, &[1], &[]),
        };
        // The power-on unit attention.
        lu.run(&[0, 0, 0, 0, 0, 0], &[]);
        lu
    }

    fn run(&mut self, cdb: &[u8], data: &[u8]) -> Outcome {
        let n = nexus(1);
        let ctx = CommandContext {
            nexus: &n,
            alua: &self.alua,
            target_name: "iqn.2026-11.test:duet",
            tpgt: 1,
            luns: &[0],
        };
        self.lu.execute(&ctx, cdb, data, &self.store)
    }

    /// WCE of the Caching page with page control `pc` (0 current, 2 default).
    fn wce(&mut self, pc: u8) -> bool {
        let mut cdb = mode_sense6(0x08, 255);
        cdb[2] |= pc << 6;
        let o = self.run(&cdb, &[]);
        assert_eq!(o.status, status::GOOD);
        // Header (4) + block descriptor (given by byte 3) + page: WCE is bit 2 of page byte 2.
        let page = &o.data_in[4 + o.data_in[3] as usize..];
        assert_eq!(page[0] & 0x3F, 0x08);
        page[2] & 0x04 != 0
    }

    /// Every command that writes data, each with the store's log it left.
    fn every_write(&mut self) -> Vec<(&'static str, String)> {
        let blk = vec![0x11u8; BS as usize];
        let two = vec![0x22u8; 2 * BS as usize];
        let mut out = Vec::new();
        let mut go = |lu: &mut Lu, name: &'static str, cdb: Vec<u8>, data: &[u8]| {
            lu.store.take();
            let o = lu.run(&cdb, data);
            assert_eq!(o.status, status::GOOD, "{name}: {:?}", o.sense_code());
            out.push((name, lu.store.take()));
        };
        go(self, "WRITE(6)", vec![0x0A, 0, 0, 1, 1, 0], &blk);
        go(self, "WRITE(10)", write10(2, 2), &two);
        go(
            self,
            "WRITE(12)",
            vec![0xAA, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0],
            &blk,
        );
        go(self, "WRITE(16)", write16(4, 1), &blk);
        go(
            self,
            "WRITE SAME(10)",
            vec![0x41, 0, 0, 0, 0, 5, 0, 0, 4, 0],
            &blk,
        );
        go(self, "WRITE SAME(16)", write_same16(9, 4, false), &blk);
        go(self, "ORWRITE(16)", cdb16(0x8B, 0, 20, 1), &blk);
        // Compare with what WRITE(16) left at LBA 4, then write.
        let mut caw = blk.clone();
        caw.extend_from_slice(&[0x33; BS as usize]);
        go(self, "COMPARE AND WRITE", compare_and_write(4, 1), &caw);
        out
    }
}

#[test]
fn the_configured_write_cache_is_the_initial_and_default_wce() {
    let mut on = Lu::new(true);
    assert!(on.wce(0) && on.wce(2));
    let mut off = Lu::new(false);
    assert!(!off.wce(0) && !off.wce(2));
    // A host may still turn it on; a cold reset brings the configured value back.
    let mut page = vec![0u8, 0, 0, 0, 0x08, 0x12, 0x04];
    page.resize(4 + 20, 0);
    let o = off.run(&mode_select6(page.len() as u8), &page);
    assert_eq!(o.status, status::GOOD, "{:?}", o.sense_code());
    assert!(off.wce(0) && !off.wce(2));
    off.lu.reset(duet_core::scsi::ResetKind::TargetCold);
    off.run(&[0, 0, 0, 0, 0, 0], &[]);
    assert!(!off.wce(0));
}

#[test]
fn with_wce_0_every_write_is_flushed_before_good() {
    for (how, mut lu) in [
        ("configured", Lu::new(false)),
        ("MODE SELECT", {
            let mut lu = Lu::new(true);
            let mut page = vec![0u8, 0, 0, 0, 0x08, 0x12, 0x00];
            page.resize(4 + 20, 0);
            let o = lu.run(&mode_select6(page.len() as u8), &page);
            assert_eq!(o.status, status::GOOD, "{:?}", o.sense_code());
            lu
        }),
    ] {
        assert!(!lu.wce(0), "{how}");
        for (name, log) in lu.every_write() {
            assert!(
                log.contains('W') && log.ends_with('F'),
                "{how}: {name}: {log}"
            );
        }
    }
}

#[test]
fn with_wce_1_writes_wait_for_a_flush_only_with_fua() {
    let mut lu = Lu::new(true);
    for (name, log) in lu.every_write() {
        assert!(!log.contains('F'), "{name}: {log}");
    }
    let blk = vec![0u8; BS as usize];
    let mut fua = write10(1, 1);
    fua[1] |= 0x08;
    lu.store.take();
    assert_eq!(lu.run(&fua, &blk).status, status::GOOD);
    assert_eq!(lu.store.take(), "WF");
    // SYNCHRONIZE CACHE (10) flushes.
    assert_eq!(
        lu.run(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(lu.store.take(), "F");
}
