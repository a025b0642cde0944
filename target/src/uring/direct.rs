//! A command's medium phase on a store opened with `O_DIRECT`, through a [`Ring`]: which plans
//! go through the ring ([`DirectOp::of`]: plain reads, writes and flushes the device can take as
//! they are) and how they run ([`run_direct`]: short transfers continue, FUA adds a data sync,
//! errors map through the backend's `store_error` and core's `read_err`/`write_err`). A read
//! lands in an [`AlignedBuf`] that goes out as Data-In without a copy; Data-Out is written in
//! place when aligned, else copied once. Everything else stays on the blocking pool, where the
//! store's own rules (bounds, read-only, bounce buffers for odd offsets) apply. Touches the
//! store's descriptor through the ring, and memory.

use std::sync::Arc;

use bytes::Bytes;

use duet_core::scsi::{IoOp, MediumFailure, StoreError};

use super::ring::{Buf, Keep, Ring};
use crate::aligned::{is_aligned, AlignedBuf};
use crate::backend::{store_error, DirectIo};

/// The largest transfer run through the ring (core's own bound on a medium buffer).
const MAX_TRANSFER: u64 = 1 << 30;

/// A failed operation is retried this often when the kernel says "try again".
const RETRIES: u32 = 8;

/// A medium operation of a direct-I/O store that the ring runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectOp {
    Read {
        offset: u64,
        len: u32,
    },
    /// Data-Out's bytes (a slice of the command's buffer, not a copy).
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
}

impl DirectOp {
    /// The ring form of `op` on a store addressed as `d`, `store_len` bytes long, or `None` when
    /// the blocking pool must run it: every other operation, and transfers that are empty, out of
    /// the store's range, not multiples of the device's offset alignment, writes and flushes of a
    /// read-only store, or Data-Out shorter than the plan says (the store or core decide those).
    pub fn of(
        op: &IoOp,
        d: DirectIo,
        store_len: u64,
        read_only: bool,
        data_out: &Bytes,
    ) -> Option<DirectOp> {
        let fits = |offset: u64, len: u64| {
            let align = u64::from(d.offset_align.max(1));
            len > 0
                && len <= MAX_TRANSFER
                && offset.is_multiple_of(align)
                && len.is_multiple_of(align)
                && offset.checked_add(len).is_some_and(|end| end <= store_len)
        };
        match *op {
            IoOp::Read { offset, len } if fits(offset, len) => Some(DirectOp::Read {
                offset,
                len: len as u32,
            }),
            IoOp::Write {
                offset,
                len,
                data_at,
                fua,
            } if !read_only && fits(offset, len) => {
                let end = data_at.checked_add(len as usize)?;
                if end > data_out.len() {
                    return None;
                }
                Some(DirectOp::Write {
                    offset,
                    data: data_out.slice(data_at..end),
                    fua,
                })
            }
            IoOp::Flush if !read_only => Some(DirectOp::Flush),
            _ => None,
        }
    }
}

/// Runs `op` on `ring` against the store addressed as `d`. Returns Data-In (empty for writes and
/// flushes) or the sense of the failure. `keep` (the store, the command's locks) stays alive
/// until the kernel has finished every operation, even if this future is dropped.
pub async fn run_direct(
    ring: &Arc<Ring>,
    d: DirectIo,
    op: DirectOp,
    keep: Keep,
) -> Result<Bytes, MediumFailure> {
    match op {
        DirectOp::Read { offset, len } => read(ring, d, offset, len, &keep)
            .await
            .map_err(MediumFailure::read),
        DirectOp::Write { offset, data, fua } => {
            write(ring, d, offset, data, &keep)
                .await
                .map_err(MediumFailure::write)?;
            if fua {
                flush(ring, d, &keep).await.map_err(MediumFailure::write)?;
            }
            Ok(Bytes::new())
        }
        DirectOp::Flush => {
            flush(ring, d, &keep).await.map_err(MediumFailure::write)?;
            Ok(Bytes::new())
        }
    }
}

/// Whether a failed operation may simply be issued again.
fn transient(e: &std::io::Error, tries: &mut u32) -> bool {
    let again = matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN));
    *tries += 1;
    again && *tries <= RETRIES
}

async fn read(
    ring: &Arc<Ring>,
    d: DirectIo,
    offset: u64,
    len: u32,
    keep: &Keep,
) -> Result<Bytes, StoreError> {
    let len = len as usize;
    // Filled by the kernel (a short read at the end zeroes the rest below).
    let mut buf = AlignedBuf::for_overwrite(len, d.mem_align);
    let mut done = 0usize;
    let mut tries = 0;
    while done < len {
        let c = ring
            .read(
                d.fd,
                offset + done as u64,
                buf,
                done,
                (len - done) as u32,
                Some(keep.clone()),
            )
            .await;
        let n = c.bytes();
        buf = c.buf.into_aligned().ok_or_else(lost_buffer)?;
        match n {
            // Past the end of a file that shrank under us: zeros, as the store reads it.
            Ok(0) => {
                buf.as_mut_slice()[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if transient(&e, &mut tries) => {}
            Err(e) => return Err(store_error(e)),
        }
    }
    Ok(buf.into_bytes())
}

async fn write(
    ring: &Arc<Ring>,
    d: DirectIo,
    offset: u64,
    data: Bytes,
    keep: &Keep,
) -> Result<(), StoreError> {
    let len = data.len();
    let mut buf = if is_aligned(&data, d.mem_align) {
        Buf::Shared(data)
    } else {
        Buf::Aligned(AlignedBuf::copy_from(&data, d.mem_align))
    };
    let mut done = 0usize;
    let mut tries = 0;
    while done < len {
        let c = ring
            .write(
                d.fd,
                offset + done as u64,
                buf,
                done,
                (len - done) as u32,
                Some(keep.clone()),
            )
            .await;
        let n = c.bytes();
        buf = c.buf;
        match n {
            Ok(0) => return Err(StoreError::Io("the device accepted no data".into())),
            Ok(n) => done += n,
            Err(e) if transient(&e, &mut tries) => {}
            Err(e) => return Err(store_error(e)),
        }
    }
    Ok(())
}

async fn flush(ring: &Arc<Ring>, d: DirectIo, keep: &Keep) -> Result<(), StoreError> {
    let mut tries = 0;
    loop {
        match ring.fsync(d.fd, true, Some(keep.clone())).await.bytes() {
            Ok(_) => return Ok(()),
            Err(e) if transient(&e, &mut tries) => {}
            Err(e) => return Err(store_error(e)),
        }
    }
}

fn lost_buffer() -> StoreError {
    StoreError::Io("io_uring returned no buffer".into())
}
