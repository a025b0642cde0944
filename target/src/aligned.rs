//! Memory buffers aligned for direct I/O (`O_DIRECT`): the kernel transfers straight between the
//! device and such a buffer, so a read lands in the very buffer that is sent to the initiator
//! ([`AlignedBuf::into_bytes`] hands it to the network path without a copy). Touches only memory.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use bytes::Bytes;

/// The alignment every buffer gets at least: a page, which satisfies every device's direct-I/O
/// memory alignment seen in practice (`statx` `dio_mem_align` is at most the logical block size).
pub const MIN_ALIGN: usize = 4096;

/// A zero-initialised heap buffer whose start is aligned to at least [`MIN_ALIGN`] and whose
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

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes aligned to `align` (raised to [`MIN_ALIGN`]; must be a
    /// power of two).
    pub fn zeroed(len: usize, align: usize) -> AlignedBuf {
        let align = align.max(MIN_ALIGN).next_power_of_two();
        let cap = len.div_ceil(align).max(1) * align;
        let layout = Layout::from_size_align(cap, align).expect("buffer size within isize");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, layout }
    }

    /// An aligned copy of `data`.
    pub fn copy_from(data: &[u8], align: usize) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(data.len(), align);
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
        // SAFETY: `len <= capacity` bytes, initialised (zeroed at allocation), owned by us.
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
        // SAFETY: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
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
