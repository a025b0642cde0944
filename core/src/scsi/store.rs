//! The block store behind a logical unit, and an in-memory implementation.
//!
//! Offsets and lengths are in bytes. The runtime implements [`BlockStore`] over a file or block
//! device (pread/pwrite/fallocate/fdatasync); [`MemStore`] serves tests and the model.

use std::sync::Mutex;

/// Why a block store operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The range lies (partly) beyond the end of the store.
    #[error("range beyond the end of the store")]
    OutOfRange,
    /// The operation is not supported by this store.
    #[error("operation not supported by the store")]
    Unsupported,
    /// The backend reported an I/O error.
    #[error("I/O error: {0}")]
    Io(String),
    /// The backing device refused the I/O because another initiator holds a reservation that
    /// excludes this controller: the peer fenced it at the disk (`fencing = "scsi-pr"`).
    #[error("the backing device refused the I/O: reservation conflict (fenced at the disk)")]
    ReservationConflict,
}

/// A byte-addressed store of fixed length. All methods take `&self`: implementations must be safe
/// to call from several threads at once (reads and writes of different commands run concurrently).
pub trait BlockStore: Send + Sync {
    /// Length of the store in bytes.
    fn len(&self) -> u64;

    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError>;

    /// Write `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError>;

    /// Make every completed write durable (fdatasync).
    fn flush(&self) -> Result<(), StoreError>;

    /// Deallocate a range; it must read back as zeros afterwards.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError>;

    /// Write zeros over a range (allocated). The default writes a zero buffer in pieces.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min(len - done);
            self.write_at(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }

    /// Allocation status from `offset`: the length of the leading run (at most `len`, at least
    /// one byte when `len > 0`) whose state is the same, and whether it is mapped. The default
    /// reports everything mapped.
    fn allocation(&self, offset: u64, len: u64) -> Result<(u64, bool), StoreError> {
        let _ = offset;
        Ok((len, true))
    }

    /// Compare `expect` with the bytes at `offset`; if equal, write `data` (same length) there.
    /// Returns `Ok(None)` when written, `Ok(Some(i))` with the offset of the first differing
    /// byte when not (nothing written).
    ///
    /// The default is read, compare, write: it is atomic only if the caller excludes other writes
    /// to the range meanwhile (see [`crate::scsi::IoPlan::needs_exclusive`]).
    fn compare_and_write(
        &self,
        offset: u64,
        expect: &[u8],
        data: &[u8],
    ) -> Result<Option<usize>, StoreError> {
        let mut cur = vec![0u8; expect.len()];
        self.read_at(offset, &mut cur)?;
        if let Some(i) = first_difference(&cur, expect) {
            return Ok(Some(i));
        }
        self.write_at(offset, data)?;
        Ok(None)
    }
}

/// Offset of the first byte where `a` and `b` differ (over the shorter length).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b.iter()).position(|(x, y)| x != y)
}

/// Granularity of [`MemStore`]'s allocation tracking, in bytes.
pub const MEM_CHUNK: u64 = 4096;

struct MemInner {
    data: Vec<u8>,
    /// One flag per [`MEM_CHUNK`]: whether the chunk is mapped.
    mapped: Vec<bool>,
}

/// An in-memory block store: a byte vector behind a mutex, with allocation tracked per
/// [`MEM_CHUNK`] so that thin provisioning (UNMAP, GET LBA STATUS) behaves like a sparse file.
/// Every operation, COMPARE AND WRITE included, is atomic.
pub struct MemStore {
    len: u64,
    inner: Mutex<MemInner>,
}

impl MemStore {
    /// A zero-filled, fully unmapped store of `len` bytes.
    pub fn new(len: u64) -> MemStore {
        let chunks = len.div_ceil(MEM_CHUNK) as usize;
        MemStore {
            len,
            inner: Mutex::new(MemInner {
                data: vec![0; len as usize],
                mapped: vec![false; chunks],
            }),
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(usize, usize), StoreError> {
        let end = offset.checked_add(len).ok_or(StoreError::OutOfRange)?;
        if end > self.len {
            return Err(StoreError::OutOfRange);
        }
        Ok((offset as usize, end as usize))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemInner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Io("memory store lock poisoned".into()))
    }

    /// A copy of the whole content (for tests).
    pub fn snapshot(&self) -> Vec<u8> {
        match self.inner.lock() {
            Ok(g) => g.data.clone(),
            Err(p) => p.into_inner().data.clone(),
        }
    }
}

fn mark(inner: &mut MemInner, start: usize, end: usize, mapped: bool) {
    if start >= end {
        return;
    }
    let c = MEM_CHUNK as usize;
    if mapped {
        for f in &mut inner.mapped[start / c..end.div_ceil(c)] {
            *f = true;
        }
    } else {
        // Only chunks entirely inside the range become unmapped.
        let first = start.div_ceil(c);
        let last = if end == inner.data.len() {
            end.div_ceil(c)
        } else {
            end / c
        };
        for i in first..last {
            if let Some(f) = inner.mapped.get_mut(i) {
                *f = false;
            }
        }
    }
}

impl BlockStore for MemStore {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        let (s, e) = self.check(offset, buf.len() as u64)?;
        let g = self.lock()?;
        buf.copy_from_slice(&g.data[s..e]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let (s, e) = self.check(offset, data.len() as u64)?;
        let mut g = self.lock()?;
        g.data[s..e].copy_from_slice(data);
        mark(&mut g, s, e, true);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        let (s, e) = self.check(offset, len)?;
        let mut g = self.lock()?;
        g.data[s..e].fill(0);
        mark(&mut g, s, e, false);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        let (s, e) = self.check(offset, len)?;
        let mut g = self.lock()?;
        g.data[s..e].fill(0);
        mark(&mut g, s, e, true);
        Ok(())
    }

    fn allocation(&self, offset: u64, len: u64) -> Result<(u64, bool), StoreError> {
        let (s, e) = self.check(offset, len)?;
        if s == e {
            return Ok((0, true));
        }
        let g = self.lock()?;
        let c = MEM_CHUNK as usize;
        let first = s / c;
        let state = g.mapped.get(first).copied().unwrap_or(true);
        let mut i = first + 1;
        while i * c < e && g.mapped.get(i).copied().unwrap_or(true) == state {
            i += 1;
        }
        let run_end = (i * c).min(e);
        Ok(((run_end - s) as u64, state))
    }

    fn compare_and_write(
        &self,
        offset: u64,
        expect: &[u8],
        data: &[u8],
    ) -> Result<Option<usize>, StoreError> {
        let (s, e) = self.check(offset, expect.len() as u64)?;
        if data.len() != expect.len() {
            return Err(StoreError::Io("compare and write lengths differ".into()));
        }
        let mut g = self.lock()?;
        if let Some(i) = first_difference(&g.data[s..e], expect) {
            return Ok(Some(i));
        }
        g.data[s..e].copy_from_slice(data);
        mark(&mut g, s, e, true);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memstore_reads_back_writes_and_holes_read_zero() {
        let m = MemStore::new(3 * MEM_CHUNK);
        m.write_at(10, b"hello").unwrap();
        let mut b = [0u8; 5];
        m.read_at(10, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(m.allocation(0, 3 * MEM_CHUNK).unwrap(), (MEM_CHUNK, true));
        m.punch_hole(0, MEM_CHUNK).unwrap();
        m.read_at(10, &mut b).unwrap();
        assert_eq!(b, [0; 5]);
        assert_eq!(
            m.allocation(0, 3 * MEM_CHUNK).unwrap(),
            (3 * MEM_CHUNK, false)
        );
        assert_eq!(
            m.read_at(3 * MEM_CHUNK - 2, &mut b),
            Err(StoreError::OutOfRange)
        );
        assert_eq!(m.write_at(u64::MAX, &b), Err(StoreError::OutOfRange));
    }

    #[test]
    fn memstore_compare_and_write_reports_first_difference() {
        let m = MemStore::new(16);
        m.write_at(0, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            m.compare_and_write(0, &[1, 2, 9, 4], &[7; 4]).unwrap(),
            Some(2)
        );
        assert_eq!(m.snapshot()[..4], [1, 2, 3, 4]);
        assert_eq!(
            m.compare_and_write(0, &[1, 2, 3, 4], &[7; 4]).unwrap(),
            None
        );
        assert_eq!(m.snapshot()[..4], [7; 4]);
    }
}
