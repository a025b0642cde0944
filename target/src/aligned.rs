//! Memory buffers aligned for direct I/O (`O_DIRECT`): the kernel transfers straight between the
//! device and such a buffer, so a read lands in the very buffer that is sent to the initiator
//! ([`AlignedBuf::into_bytes`] hands it to the network path without a copy).
//!
//! Each thread keeps the allocations of buffers it dropped in a small pool (bounded in count and
//! bytes) and hands them out again: a direct read or write per command then costs no allocation,
//! and a buffer the kernel or a copy is about to fill entirely ([`AlignedBuf::for_overwrite`]) is
//! not zeroed first. Every allocation was zeroed once when made, so a pooled buffer holds only
//! bytes written before, never uninitialised memory. Touches only memory.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::ptr::NonNull;

use bytes::Bytes;

/// The alignment every buffer gets at least: a page, which satisfies every device's direct-I/O
/// memory alignment seen in practice (`statx` `dio_mem_align` is at most the logical block size).
pub const MIN_ALIGN: usize = 4096;

/// A heap buffer (zeroed when first allocated, see [`AlignedBuf::for_overwrite`]) whose start is aligned to at least [`MIN_ALIGN`] and whose
/// allocation is a whole number of alignment units (so a direct read may round its length up).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer owns its allocation exclusively, like a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for AlignedBuf {}

/// Allocations kept by one thread's pool: at most this many...
const POOL_BUFFERS: usize = 64;
/// ...of at most this many bytes in all...
const POOL_BYTES: usize = 16 << 20;
/// ...each at most this large (larger buffers go back to the allocator).
const POOL_MAX_BUFFER: usize = 1 << 20;

/// One thread's dropped allocations, ready for reuse; each was zeroed when first made.
#[derive(Default)]
struct Pool {
    free: Vec<(NonNull<u8>, Layout)>,
    bytes: usize,
}

impl Pool {
    fn take(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let i = self.free.iter().rposition(|(_, l)| *l == layout)?;
        let (ptr, _) = self.free.swap_remove(i);
        self.bytes -= layout.size();
        Some(ptr)
    }

    /// Keeps `ptr` if there is room; else gives it back.
    fn put(&mut self, ptr: NonNull<u8>, layout: Layout) -> Result<(), NonNull<u8>> {
        if layout.size() > POOL_MAX_BUFFER
            || self.free.len() >= POOL_BUFFERS
            || self.bytes + layout.size() > POOL_BYTES
        {
            return Err(ptr);
        }
        self.bytes += layout.size();
        self.free.push((ptr, layout));
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (ptr, layout) in self.free.drain(..) {
            // SAFETY: allocated by `AlignedBuf::allocate` with this very layout, owned by the pool.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout) }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align` (raised to [`MIN_ALIGN`]; must be a
    /// power of two).
    pub fn zeroed(len: usize, align: usize) -> AlignedBuf {
        let (mut b, fresh) = AlignedBuf::allocate(len, align);
        if !fresh {
            b.as_mut_capacity().fill(0);
        }
        b
    }

    /// A buffer of `len` bytes aligned to `align` whose contents are unspecified (bytes of an
    /// earlier use on this thread, or zeros): for a transfer that overwrites all of it. Whoever
    /// fills less must zero the rest before the buffer leaves (a short read at the end of a
    /// file does).
    pub fn for_overwrite(len: usize, align: usize) -> AlignedBuf {
        AlignedBuf::allocate(len, align).0
    }

    /// A buffer from this thread's pool, else a new zeroed allocation (then `true`).
    fn allocate(len: usize, align: usize) -> (AlignedBuf, bool) {
        let align = align.max(MIN_ALIGN).next_power_of_two();
        let cap = len.div_ceil(align).max(1) * align;
        let layout = Layout::from_size_align(cap, align).expect("buffer size within isize");
        // (`try_with`: a thread that is ending has no pool any more.)
        let pooled = POOL
            .try_with(|p| p.borrow_mut().take(layout))
            .ok()
            .flatten();
        if let Some(ptr) = pooled {
            return (AlignedBuf { ptr, len, layout }, false);
        }
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        (AlignedBuf { ptr, len, layout }, true)
    }

    /// An aligned copy of `data`.
    pub fn copy_from(data: &[u8], align: usize) -> AlignedBuf {
        let mut b = AlignedBuf::for_overwrite(data.len(), align);
        b.as_mut_slice().copy_from_slice(data);
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The allocation's size: `len` rounded up to the alignment.
    pub fn capacity(&self) -> usize {
        self.layout.size()
    }

    /// The alignment of the start.
    pub fn align(&self) -> usize {
        self.layout.align()
    }

    /// Shortens the visible length (the allocation stays).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len <= capacity` bytes, initialised (zeroed when first allocated), owned by us.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The whole allocation (`capacity` bytes), for a direct transfer rounded up to the block.
    pub fn as_mut_capacity(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `capacity` bytes, zeroed at allocation, owned by us.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The start of the buffer, for a kernel transfer of up to `capacity` bytes.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Hands the buffer to the network path as [`Bytes`] without copying it.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let (ptr, layout) = (self.ptr, self.layout);
        let kept = POOL
            .try_with(|p| p.borrow_mut().put(ptr, layout).is_ok())
            .unwrap_or(false);
        if !kept {
            // SAFETY: allocated in `allocate` with this very layout; no longer in use.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout) }
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.layout.align())
            .finish()
    }
}

/// Whether `data` starts at an address aligned to `align`.
pub fn is_aligned(data: &[u8], align: usize) -> bool {
    (data.as_ptr() as usize).is_multiple_of(align.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_rounded_up() {
        for (len, align) in [
            (0, 512),
            (1, 512),
            (4096, 4096),
            (5000, 512),
            (1 << 20, 8192),
        ] {
            let mut b = AlignedBuf::zeroed(len, align);
            assert_eq!(b.len(), len);
            assert!(b.align() >= align.max(MIN_ALIGN));
            assert!(is_aligned(b.as_slice(), b.align()) || len == 0);
            assert_eq!(b.capacity() % b.align(), 0);
            assert!(b.capacity() >= len.max(1));
            assert!(b.as_mut_capacity().iter().all(|&x| x == 0));
        }
    }

    /// A dropped buffer's allocation is reused on the same thread: `zeroed` still gives zeros,
    /// `for_overwrite` may give old bytes but never another layout.
    #[test]
    fn dropped_buffers_are_reused_and_zeroed_when_asked() {
        let mut a = AlignedBuf::zeroed(8192, 4096);
        a.as_mut_slice().fill(0xAB);
        let at = a.as_slice().as_ptr();
        drop(a);
        let b = AlignedBuf::for_overwrite(8000, 4096);
        assert_eq!(b.as_slice().as_ptr(), at, "the allocation is reused");
        assert_eq!(b.capacity(), 8192);
        drop(b);
        let c = AlignedBuf::zeroed(8192, 4096);
        assert_eq!(c.as_slice().as_ptr(), at);
        assert!(c.as_slice().iter().all(|&x| x == 0));
        // Another size or alignment is another allocation.
        let d = AlignedBuf::for_overwrite(4096, 8192);
        assert_eq!(d.align(), 8192);
        assert_ne!(d.as_slice().as_ptr(), at);
        // Large buffers are not kept.
        let big = AlignedBuf::zeroed(POOL_MAX_BUFFER * 2, 4096);
        drop(big);
        POOL.with(|p| assert!(p.borrow().bytes <= POOL_BYTES));
    }

    #[test]
    fn a_copy_reaches_the_network_path_without_another_copy() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let b = AlignedBuf::copy_from(&data, 512);
        let start = b.as_slice().as_ptr();
        let bytes = b.into_bytes();
        assert_eq!(&bytes[..], &data[..]);
        assert_eq!(bytes.as_ptr(), start);
        let mut t = AlignedBuf::copy_from(&data, 512);
        t.truncate(3);
        assert_eq!(t.as_slice(), &data[..3]);
    }
}
