//! One io_uring instance and its table of operations in flight.
//!
//! The table, not the future that waits, owns everything the kernel may touch while an operation
//! runs: its buffer and a keep-alive (the store whose descriptor it names, the command's locks).
//! A waiting future ([`Op`]) that is dropped (an aborted task, a closed connection) only marks its
//! operation abandoned; the buffer is freed when the kernel's completion arrives, never before.
//! Operations beyond what the completion queue can hold wait in a backlog, in order, and go to the
//! kernel as completions make room: an operation is never dropped. Touches only its ring, and
//! memory it owns.
//!
//! An operation enters the kernel as it starts (one `io_uring_enter` each): holding entries back
//! to submit a batch at once was measured slower here, as the first command of a batch then waits
//! for the last to be decoded before the device sees it.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring, Probe};

use crate::aligned::AlignedBuf;

/// What an operation keeps alive until the kernel is done with it, besides its buffer: the store
/// whose descriptor it names, the command's locks and gate pass.
pub type Keep = Arc<dyn Any + Send + Sync>;

/// The memory of one operation.
#[derive(Debug, Default)]
pub enum Buf {
    #[default]
    None,
    /// A buffer the kernel reads into or writes from.
    Aligned(AlignedBuf),
    /// Data-Out used in place (already aligned), for a write.
    Shared(Bytes),
}

impl Buf {
    /// The aligned buffer, if that is what this is.
    pub fn into_aligned(self) -> Option<AlignedBuf> {
        match self {
            Buf::Aligned(b) => Some(b),
            _ => None,
        }
    }

    /// The bytes the buffer holds (its visible length).
    fn len(&self) -> usize {
        match self {
            Buf::None => 0,
            Buf::Aligned(b) => b.len(),
            Buf::Shared(b) => b.len(),
        }
    }
}

/// What the table holds for an operation until its completion.
struct Owned {
    buf: Buf,
    keep: Option<Keep>,
}

enum Slot {
    Free,
    /// Queued or in the kernel; its future waits.
    Pending {
        owned: Owned,
        waker: Option<Waker>,
    },
    /// The kernel completed it; its future has not looked yet.
    Done {
        owned: Owned,
        result: i32,
    },
    /// Its future is gone; freed at completion.
    Abandoned {
        owned: Owned,
    },
}

struct Inner {
    uring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Operations not yet in the submission queue (the kernel holds `limit` already), in order.
    backlog: VecDeque<squeue::Entry>,
    /// Operations placed in the submission queue whose completion has not been reaped.
    in_kernel: usize,
    /// At most this many in the kernel at once: the completion queue's size, so it never
    /// overflows.
    limit: usize,
    /// A failed `io_uring_enter` was reported (once, until one succeeds again).
    enter_failed: bool,
    /// Operations started since the ring was made.
    started: u64,
}

/// One io_uring instance. Operations are started from any thread; completions are reaped by
/// [`Ring::reap`] (the ring's driver task calls it when the ring's descriptor is readable).
pub struct Ring {
    fd: RawFd,
    entries: u32,
    inner: Mutex<Inner>,
}

/// The result of one operation (bytes transferred, or a negated errno) and its buffer back.
#[derive(Debug)]
pub struct Completed {
    pub result: i32,
    pub buf: Buf,
}

impl Completed {
    /// The result as a count of bytes or an I/O error.
    pub fn bytes(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

impl Ring {
    /// A ring with `entries` submission entries (a power of two), if the kernel offers io_uring
    /// with the operations used here (read, write, fsync: Linux 5.6).
    pub fn new(entries: u32) -> io::Result<Arc<Ring>> {
        // Completions need not interrupt the thread while it runs (Linux 5.19; plain before).
        let uring = match IoUring::builder().setup_coop_taskrun().build(entries) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(entries)?,
            r => r?,
        };
        let mut probe = Probe::new();
        uring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Read::CODE, "IORING_OP_READ"),
            (opcode::Write::CODE, "IORING_OP_WRITE"),
            (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks {name}"),
                ));
            }
        }
        use std::os::fd::AsRawFd;
        let fd = uring.as_raw_fd();
        let limit = uring.params().cq_entries() as usize;
        Ok(Arc::new(Ring {
            fd,
            entries: uring.params().sq_entries(),
            inner: Mutex::new(Inner {
                uring,
                slots: Vec::new(),
                free: Vec::new(),
                backlog: VecDeque::new(),
                in_kernel: 0,
                limit,
                enter_failed: false,
                started: 0,
            }),
        }))
    }

    /// The ring's descriptor: readable while completions wait to be reaped.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The submission queue's size.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Operations started and not yet reaped, in the kernel or waiting for room.
    pub fn in_flight(&self) -> usize {
        let g = self.lock();
        g.in_kernel + g.backlog.len()
    }

    /// Operations started on this ring so far.
    pub fn started(&self) -> u64 {
        self.lock().started
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Not loom's: the other side of this lock is the kernel.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads up to `len` bytes at `offset` of `fd` into `buf[at..at + len]`.
    ///
    /// # Panics
    /// If `at + len` exceeds the buffer's capacity (a bug of the caller).
    pub fn read(
        self: &Arc<Self>,
        fd: RawFd,
        offset: u64,
        mut buf: AlignedBuf,
        at: usize,
        len: u32,
        keep: Option<Keep>,
    ) -> Op {
        assert!(
            at + len as usize <= buf.capacity(),
            "read beyond its buffer"
        );
        // SAFETY: `at + len` is within the allocation (checked above).
        let ptr = unsafe { buf.as_mut_ptr().add(at) };
        let entry = opcode::Read::new(types::Fd(fd), ptr, len)
            .offset(offset)
            .build();
        // SAFETY: the entry points into `buf`, which the table owns until the completion.
        unsafe { self.start(entry, Buf::Aligned(buf), keep) }
    }

    /// Writes `buf[at..at + len]` at `offset` of `fd`.
    ///
    /// # Panics
    /// If `at + len` exceeds the buffer's length (a bug of the caller).
    pub fn write(
        self: &Arc<Self>,
        fd: RawFd,
        offset: u64,
        buf: Buf,
        at: usize,
        len: u32,
        keep: Option<Keep>,
    ) -> Op {
        assert!(at + len as usize <= buf.len(), "write beyond its buffer");
        let base = match &buf {
            Buf::None => std::ptr::null(),
            Buf::Aligned(b) => b.as_slice().as_ptr(),
            Buf::Shared(b) => b.as_ptr(),
        };
        // SAFETY: `at + len` is within the buffer (checked above); a zero-length write of no
        // buffer never dereferences the pointer.
        let ptr = if base.is_null() {
            base
        } else {
            unsafe { base.add(at) }
        };
        let entry = opcode::Write::new(types::Fd(fd), ptr, len)
            .offset(offset)
            .build();
        // SAFETY: the entry points into `buf`, which the table owns until the completion.
        unsafe { self.start(entry, buf, keep) }
    }

    /// `fdatasync(fd)` (with `datasync`), else `fsync(fd)`.
    pub fn fsync(self: &Arc<Self>, fd: RawFd, datasync: bool, keep: Option<Keep>) -> Op {
        let flags = if datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        let entry = opcode::Fsync::new(types::Fd(fd)).flags(flags).build();
        // SAFETY: no memory is involved.
        unsafe { self.start(entry, Buf::None, keep) }
    }

    /// Queues `entry` (its user data is replaced by the operation's slot) and hands what it can
    /// to the kernel.
    ///
    /// # Safety
    /// Every memory address in `entry` must point into `buf` (whose heap memory does not move
    /// when the value moves), valid for the operation's length.
    unsafe fn start(self: &Arc<Self>, entry: squeue::Entry, buf: Buf, keep: Option<Keep>) -> Op {
        let mut g = self.lock();
        let slot = Slot::Pending {
            owned: Owned { buf, keep },
            waker: None,
        };
        let id = match g.free.pop() {
            Some(id) => {
                g.slots[id] = slot;
                id
            }
            None => {
                g.slots.push(slot);
                g.slots.len() - 1
            }
        };
        g.started += 1;
        g.backlog.push_back(entry.user_data(id as u64));
        g.feed();
        Op {
            ring: self.clone(),
            id,
            finished: false,
        }
    }

    /// Reaps what the kernel posted, if anything: a look at the completion queue (no system
    /// call), for a thread that polls instead of sleeping. Returns whether there was anything.
    pub fn reap_posted(&self) -> bool {
        if self.lock().uring.completion().is_empty() {
            return false;
        }
        self.reap();
        true
    }

    /// Reaps every completion the kernel posted: wakes the futures that wait for them, frees
    /// abandoned operations, and hands waiting operations to the kernel as room appears.
    pub fn reap(&self) {
        let mut wake = Vec::new();
        let mut release = Vec::new();
        {
            let mut g = self.lock();
            let inner = &mut *g;
            for cqe in inner.uring.completion() {
                let id = cqe.user_data() as usize;
                let Some(slot) = inner.slots.get_mut(id) else {
                    continue;
                };
                inner.in_kernel = inner.in_kernel.saturating_sub(1);
                match std::mem::replace(slot, Slot::Free) {
                    Slot::Pending { owned, waker } => {
                        *slot = Slot::Done {
                            owned,
                            result: cqe.result(),
                        };
                        wake.extend(waker);
                    }
                    Slot::Abandoned { owned } => {
                        release.push(owned);
                        inner.free.push(id);
                    }
                    other => *slot = other,
                }
            }
            inner.feed();
        }
        // Outside the lock: what a buffer's keep-alive releases may start other work.
        drop(release);
        for w in wake {
            w.wake();
        }
    }
}

#[cfg(test)]
impl Ring {
    /// Waits (blocking the thread) until the kernel posted a completion, then reaps: for tests
    /// that run a ring without its driver.
    pub(crate) fn wait_and_reap(&self) {
        {
            let g = self.lock();
            let _ = g.uring.submit_and_wait(1);
        }
        self.reap();
    }
}

impl Inner {
    /// Moves operations from the backlog into the submission queue while the completion queue
    /// has room for them, then enters the kernel once for all of them.
    fn feed(&mut self) {
        while self.in_kernel < self.limit {
            let Some(entry) = self.backlog.front().cloned() else {
                break;
            };
            // SAFETY: the entry's memory is owned by its slot until its completion is reaped.
            let pushed = unsafe { self.uring.submission().push(&entry) }.is_ok();
            if !pushed {
                // The submission queue is full: hand it to the kernel and try again.
                if self.enter().is_err() {
                    break;
                }
                // SAFETY: as above.
                if unsafe { self.uring.submission().push(&entry) }.is_err() {
                    break;
                }
            }
            self.backlog.pop_front();
            self.in_kernel += 1;
        }
        if !self.uring.submission().is_empty() {
            let _ = self.enter();
        }
    }

    /// Hands the submission queue to the kernel. A failure (EAGAIN or EBUSY under memory
    /// pressure) leaves the entries queued: the next operation or completion retries them.
    fn enter(&mut self) -> io::Result<usize> {
        loop {
            match self.uring.submit() {
                Ok(n) => {
                    self.enter_failed = false;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.enter_failed {
                        tracing::warn!("io_uring submission failed ({e}); retrying");
                        self.enter_failed = true;
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No future is left (each holds the ring). Operations still in the kernel may write into
        // their buffers until the kernel finishes them, after the ring is closed: their memory
        // is leaked rather than freed under the device. Those never handed over are freed.
        let queued: Vec<usize> = self
            .backlog
            .iter()
            .map(|e| e.get_user_data() as usize)
            .collect();
        for id in queued {
            if let Some(s) = self.slots.get_mut(id) {
                *s = Slot::Free;
            }
        }
        for cqe in self.uring.completion() {
            if let Some(s) = self.slots.get_mut(cqe.user_data() as usize) {
                *s = Slot::Free;
            }
        }
        for s in self.slots.drain(..) {
            match s {
                Slot::Pending { owned, .. } | Slot::Abandoned { owned } => {
                    // Keep-alives (the store, locks) may be released; the buffer may not.
                    std::mem::forget(owned.buf);
                    drop(owned.keep);
                }
                Slot::Done { .. } | Slot::Free => {}
            }
        }
    }
}

/// A started operation; resolves to its [`Completed`]. Dropping it before then abandons the
/// operation: the ring keeps its buffer until the kernel is done.
pub struct Op {
    ring: Arc<Ring>,
    id: usize,
    finished: bool,
}

impl Future for Op {
    type Output = Completed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completed> {
        let this = self.get_mut();
        let mut g = this.ring.lock();
        let inner = &mut *g;
        let Some(slot) = inner.slots.get_mut(this.id) else {
            this.finished = true;
            return Poll::Ready(lost());
        };
        match slot {
            Slot::Pending { waker, .. } => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Slot::Done { .. } => {
                let Slot::Done { owned, result } = std::mem::replace(slot, Slot::Free) else {
                    unreachable!("matched Done above");
                };
                inner.free.push(this.id);
                this.finished = true;
                drop(g);
                drop(owned.keep);
                Poll::Ready(Completed {
                    result,
                    buf: owned.buf,
                })
            }
            Slot::Free | Slot::Abandoned { .. } => {
                this.finished = true;
                Poll::Ready(lost())
            }
        }
    }
}

/// The completion of an operation the table does not know (cannot happen: a slot is freed only
/// by its own future or after its future is gone).
fn lost() -> Completed {
    Completed {
        result: -libc::EIO,
        buf: Buf::None,
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut g = self.ring.lock();
        let inner = &mut *g;
        let Some(slot) = inner.slots.get_mut(self.id) else {
            return;
        };
        let released = match std::mem::replace(slot, Slot::Free) {
            Slot::Pending { owned, .. } => {
                *slot = Slot::Abandoned { owned };
                None
            }
            Slot::Done { owned, .. } => {
                inner.free.push(self.id);
                Some(owned)
            }
            other => {
                *slot = other;
                None
            }
        };
        drop(g);
        drop(released);
    }
}
