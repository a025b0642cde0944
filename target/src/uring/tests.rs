//! Tests of the ring and of direct plans on it, against real files opened with `O_DIRECT`, and
//! the helpers other modules' tests use to get such a file and a thread with a ring.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use duet_core::scsi::{read_err, write_err, IoOp, StoreError};

use super::*;
use crate::aligned::AlignedBuf;
use crate::backend::DirectIo;

/// A file opened with `O_DIRECT` in a directory of its own, removed when dropped.
pub(crate) struct DirectFile {
    dir: PathBuf,
    pub file: File,
    pub len: u64,
}

impl DirectFile {
    /// A zero-filled file of `len` bytes (on the temporary directory's file system, which must
    /// support `O_DIRECT`).
    pub(crate) fn new(name: &str, len: u64) -> DirectFile {
        let dir = std::env::temp_dir().join(format!("duet-uring-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lun.img");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("the temporary directory's file system takes O_DIRECT");
        file.set_len(len).unwrap();
        DirectFile { dir, file, len }
    }

    pub(crate) fn direct(&self) -> DirectIo {
        DirectIo {
            fd: self.file.as_raw_fd(),
            mem_align: 4096,
            offset_align: 4096,
        }
    }

    /// Writes `data` at `offset` through a plain descriptor.
    pub(crate) fn fill(&self, offset: u64, data: &[u8]) {
        let f = OpenOptions::new()
            .write(true)
            .open(self.dir.join("lun.img"))
            .unwrap();
        f.write_all_at(data, offset).unwrap();
        f.sync_all().unwrap();
    }

    /// The file's bytes, read through a plain descriptor.
    pub(crate) fn contents(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("lun.img")).unwrap()
    }
}

impl Drop for DirectFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a fresh single-threaded runtime whose thread has a ring of `entries` and its
/// driver, as a connection thread does; bounded to a minute so a lost completion fails the test
/// instead of hanging it.
pub(crate) fn on_ring_thread<F, T>(
    entries: u32,
    f: impl FnOnce(Arc<Ring>) -> F + Send + 'static,
) -> T
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ring = install(entries).expect("io_uring is available on the test machine");
            tokio::time::timeout(Duration::from_secs(60), f(ring))
                .await
                .expect("ring operations complete")
        })
    })
    .join()
    .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Counts how many of its keep-alives are gone.
struct Flag(Arc<AtomicUsize>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_ring_reads_writes_and_syncs_a_direct_file() {
    let f = DirectFile::new("basic", 1 << 20);
    let fd = f.file.as_raw_fd();
    let data = pattern(16384, 7);
    let back = on_ring_thread(64, move |ring| async move {
        let w = ring
            .write(
                fd,
                8192,
                Buf::Aligned(AlignedBuf::copy_from(&data, 4096)),
                0,
                16384,
                None,
            )
            .await;
        assert_eq!(w.bytes().unwrap(), 16384);
        assert_eq!(ring.fsync(fd, true, None).await.bytes().unwrap(), 0);
        assert_eq!(ring.fsync(fd, false, None).await.bytes().unwrap(), 0);
        let r = ring
            .read(fd, 8192, AlignedBuf::zeroed(16384, 4096), 0, 16384, None)
            .await;
        assert_eq!(r.bytes().unwrap(), 16384);
        (r.buf.into_aligned().unwrap().as_slice().to_vec(), data)
    });
    assert_eq!(back.0, back.1);
    assert_eq!(&f.contents()[8192..8192 + 16384], &back.1[..]);
    assert!(f.contents()[..8192].iter().all(|&b| b == 0));
}

#[test]
fn many_operations_in_flight_all_complete_even_past_the_queues() {
    // A ring of 2 entries (completion queue 4) with 200 operations at once: the submission queue
    // is full most of the time and most operations wait in the backlog; none is lost.
    let f = DirectFile::new("many", 200 * 4096);
    let fd = f.file.as_raw_fd();
    let ok = on_ring_thread(2, move |ring| async move {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let ring = ring.clone();
            tasks.push(tokio::spawn(async move {
                let data = pattern(4096, i as u8);
                let buf = Buf::Aligned(AlignedBuf::copy_from(&data, 4096));
                ring.write(fd, i * 4096, buf, 0, 4096, None).await.bytes()
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap().unwrap() == 4096 {
                ok += 1;
            }
        }
        assert_eq!(ring.in_flight(), 0);
        // And as many reads, through the same small ring.
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let ring = ring.clone();
            tasks.push(tokio::spawn(async move {
                let c = ring
                    .read(fd, i * 4096, AlignedBuf::zeroed(4096, 4096), 0, 4096, None)
                    .await;
                c.buf.into_aligned().unwrap().as_slice() == &pattern(4096, i as u8)[..]
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        ok
    });
    assert_eq!(ok, 200);
    let all = f.contents();
    for i in 0..200usize {
        assert_eq!(&all[i * 4096..(i + 1) * 4096], &pattern(4096, i as u8)[..]);
    }
}

#[test]
fn a_dropped_operation_keeps_its_buffer_and_keep_alive_until_the_kernel_is_done() {
    let f = DirectFile::new("dropped", 1 << 20);
    f.fill(0, &pattern(1 << 20, 3));
    let fd = f.file.as_raw_fd();
    let ring = Ring::new(8).unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    // A 1 MiB read whose waiter goes away at once (an aborted command).
    let keep: Keep = Arc::new(Flag(released.clone()));
    let op = ring.read(
        fd,
        0,
        AlignedBuf::zeroed(1 << 20, 4096),
        0,
        1 << 20,
        Some(keep),
    );
    drop(op);
    // Not reaped yet: the table still owns the buffer and what it keeps alive.
    assert_eq!(released.load(Ordering::SeqCst), 0);
    assert_eq!(ring.in_flight(), 1);
    for _ in 0..1000 {
        if ring.in_flight() == 0 {
            break;
        }
        ring.wait_and_reap();
    }
    assert_eq!(ring.in_flight(), 0);
    assert_eq!(released.load(Ordering::SeqCst), 1);
    // A completed but never polled operation is released when its waiter goes.
    let keep: Keep = Arc::new(Flag(released.clone()));
    let op = ring.fsync(fd, true, Some(keep));
    while ring.in_flight() > 0 {
        ring.wait_and_reap();
    }
    assert_eq!(released.load(Ordering::SeqCst), 1);
    drop(op);
    assert_eq!(released.load(Ordering::SeqCst), 2);
}

#[test]
fn an_aborted_command_on_a_ring_thread_releases_its_locks_only_after_completion() {
    let f = DirectFile::new("abort", 4 << 20);
    let d = f.direct();
    let released = Arc::new(AtomicUsize::new(0));
    let r2 = released.clone();
    let after = on_ring_thread(16, move |ring| async move {
        let keep: Keep = Arc::new(Flag(r2.clone()));
        let op = DirectOp::Read {
            offset: 0,
            len: 4 << 20,
        };
        let ring2 = ring.clone();
        let task = tokio::spawn(async move { run_direct(&ring2, d, op, keep).await });
        tokio::task::yield_now().await;
        task.abort();
        let _ = task.await;
        // Every operation the aborted command started still ends in the table.
        while ring.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        r2.load(Ordering::SeqCst)
    });
    assert_eq!(after, 1);
    assert_eq!(released.load(Ordering::SeqCst), 1);
}

#[test]
fn direct_plans_read_back_what_they_wrote_with_aligned_and_unaligned_data_out() {
    let f = DirectFile::new("plans", 1 << 20);
    let d = f.direct();
    let len = f.len;
    let out = on_ring_thread(32, move |ring| async move {
        let keep: Keep = Arc::new(());
        // Data-Out at an odd address (a slice one byte into its buffer): copied once.
        let mut raw = vec![0u8; 8192 + 1];
        raw[1..].copy_from_slice(&pattern(8192, 9));
        let unaligned = Bytes::from(raw);
        let op = IoOp::Write {
            offset: 4096,
            len: 8192,
            data_at: 1,
            fua: true,
        };
        let w = DirectOp::of(&op, d, len, false, &unaligned).unwrap();
        assert_eq!(
            w,
            DirectOp::Write {
                offset: 4096,
                data: unaligned.slice(1..),
                fua: true
            }
        );
        run_direct(&ring, d, w, keep.clone()).await.unwrap();
        // Aligned Data-Out: written in place.
        let aligned = AlignedBuf::copy_from(&pattern(4096, 4), 4096).into_bytes();
        let op = IoOp::Write {
            offset: 65536,
            len: 4096,
            data_at: 0,
            fua: false,
        };
        let w = DirectOp::of(&op, d, len, false, &aligned).unwrap();
        run_direct(&ring, d, w, keep.clone()).await.unwrap();
        let flush = DirectOp::of(&IoOp::Flush, d, len, false, &Bytes::new()).unwrap();
        assert!(run_direct(&ring, d, flush, keep.clone())
            .await
            .unwrap()
            .is_empty());
        let r = DirectOp::of(
            &IoOp::Read {
                offset: 0,
                len: 69632,
            },
            d,
            len,
            false,
            &Bytes::new(),
        )
        .unwrap();
        run_direct(&ring, d, r, keep).await.unwrap()
    });
    // Data-In is the aligned buffer the kernel read into.
    assert_eq!(out.as_ptr() as usize % 4096, 0);
    assert_eq!(out.len(), 69632);
    assert!(out[..4096].iter().all(|&b| b == 0));
    assert_eq!(&out[4096..12288], &pattern(8192, 9)[..]);
    assert_eq!(&out[65536..69632], &pattern(4096, 4)[..]);
    assert_eq!(&f.contents()[..69632], &out[..]);
}

#[test]
fn only_plans_the_device_takes_as_they_are_go_to_the_ring() {
    let d = DirectIo {
        fd: -1,
        mem_align: 4096,
        offset_align: 4096,
    };
    let data = Bytes::from(vec![0u8; 16384]);
    let read = |offset, len| IoOp::Read { offset, len };
    let write = |offset, len, data_at| IoOp::Write {
        offset,
        len,
        data_at,
        fua: false,
    };
    let of = |op: &IoOp, ro| DirectOp::of(op, d, 1 << 20, ro, &data);
    assert!(of(&read(0, 4096), false).is_some());
    assert!(of(&read(0, 4096), true).is_some());
    assert!(of(&write(4096, 8192, 100), false).is_some());
    assert!(of(&IoOp::Flush, false).is_some());
    // Offsets or lengths the device cannot take directly, empty transfers, out of range.
    assert_eq!(of(&read(512, 4096), false), None);
    assert_eq!(of(&read(0, 512), false), None);
    assert_eq!(of(&read(0, 0), false), None);
    assert_eq!(of(&read((1 << 20) - 4096, 8192), false), None);
    assert_eq!(of(&read(u64::MAX - 4095, 4096), false), None);
    // Writes and flushes of a read-only store: the store's own answer, on the blocking pool.
    assert_eq!(of(&write(0, 4096, 0), true), None);
    assert_eq!(of(&IoOp::Flush, true), None);
    // Data-Out shorter than the plan: core's answer.
    assert_eq!(of(&write(0, 16384, 1), false), None);
    // Everything else.
    assert_eq!(
        of(
            &IoOp::Unmap {
                ranges: vec![(0, 4096)]
            },
            false
        ),
        None
    );
    assert_eq!(
        of(
            &IoOp::CompareAndWrite {
                offset: 0,
                len: 4096,
                fua: false
            },
            false
        ),
        None
    );
}

#[test]
fn failures_map_to_the_sense_core_gives_a_failed_store() {
    // A descriptor open only for writing cannot be read, one open only for reading cannot be
    // written: EBADF, an I/O error of the store.
    let f = DirectFile::new("errors", 1 << 20);
    let path = f.dir.join("lun.img");
    let wo = OpenOptions::new().write(true).open(&path).unwrap();
    let ro = OpenOptions::new().read(true).open(&path).unwrap();
    let (wfd, rfd) = (wo.as_raw_fd(), ro.as_raw_fd());
    let (r, w) = on_ring_thread(8, move |ring| async move {
        let keep: Keep = Arc::new(());
        let d = |fd| DirectIo {
            fd,
            mem_align: 4096,
            offset_align: 4096,
        };
        let r = run_direct(
            &ring,
            d(wfd),
            DirectOp::Read {
                offset: 0,
                len: 4096,
            },
            keep.clone(),
        )
        .await;
        let w = run_direct(
            &ring,
            d(rfd),
            DirectOp::Write {
                offset: 0,
                data: Bytes::from(vec![1u8; 4096]),
                fua: false,
            },
            keep,
        )
        .await;
        (r, w)
    });
    assert_eq!(
        r.unwrap_err().sense,
        read_err(StoreError::Io(String::new()))
    );
    assert_eq!(
        w.unwrap_err().sense,
        write_err(StoreError::Io(String::new()))
    );
    drop((wo, ro));
}

#[test]
fn an_unavailable_ring_is_explained() {
    let e = std::io::Error::from_raw_os_error(libc::EPERM);
    assert!(unavailable_reason(&e).contains("io_uring_disabled"));
    let e = std::io::Error::from_raw_os_error(libc::ENOSYS);
    assert!(unavailable_reason(&e).contains("no io_uring"));
    // The probe's answer and the path it reports agree with what the kernel offers.
    let here = Ring::new(RING_ENTRIES).is_ok();
    assert_eq!(probe(), here);
    let path = media_path().unwrap();
    assert_eq!(path == "io_uring", here, "{path}");
    assert_eq!(
        path.starts_with("blocking pool (io_uring unavailable: "),
        !here
    );
}
