//! The file backend's tests: buffered and direct stores on real files.

use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("duet-backend-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(path: &Path, size: Option<u64>, create: bool, ro: bool) -> OpenSpec<'_> {
    OpenSpec {
        path,
        size,
        block_size: 512,
        read_only: ro,
        create,
        direct: false,
    }
}

#[test]
fn creates_a_missing_file_of_the_configured_size_and_reads_back_writes() {
    let d = tmpdir("create");
    let p = d.join("sub/lun.img");
    let s = FileStore::open(&spec(&p, Some(1 << 20), true, false)).unwrap();
    assert_eq!(s.len(), 1 << 20);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
    s.write_at(4096, b"duet").unwrap();
    s.flush().unwrap();
    let mut b = [0u8; 4];
    s.read_at(4096, &mut b).unwrap();
    assert_eq!(&b, b"duet");
    assert_eq!(
        s.read_at((1 << 20) - 2, &mut b),
        Err(StoreError::OutOfRange)
    );
    assert_eq!(s.write_at(u64::MAX - 1, &b), Err(StoreError::OutOfRange));
    // Reopening keeps the data; without a size the file's own size counts.
    drop(s);
    let s = FileStore::open(&spec(&p, None, false, false)).unwrap();
    assert_eq!(s.len(), 1 << 20);
    s.read_at(4096, &mut b).unwrap();
    assert_eq!(&b, b"duet");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn missing_or_short_files_are_refused_unless_creation_is_asked() {
    let d = tmpdir("refuse");
    let p = d.join("lun.img");
    let e = FileStore::open(&spec(&p, Some(1 << 20), false, false)).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let e = FileStore::open(&spec(&p, Some(1 << 20), false, false)).unwrap_err();
    assert!(
        e.to_string().contains("less than the configured size"),
        "{e}"
    );
    let s = FileStore::open(&spec(&p, Some(1 << 20), true, false)).unwrap();
    assert_eq!(s.len(), 1 << 20);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn read_only_luns_refuse_writes() {
    let d = tmpdir("ro");
    let p = d.join("lun.img");
    std::fs::write(&p, vec![7u8; 8192]).unwrap();
    let s = FileStore::open(&spec(&p, None, false, true)).unwrap();
    assert!(s.is_read_only());
    assert!(matches!(s.write_at(0, b"x"), Err(StoreError::Io(_))));
    let mut b = [0u8; 2];
    s.read_at(0, &mut b).unwrap();
    assert_eq!(b, [7, 7]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn punched_holes_read_back_as_zeros_and_show_as_unmapped() {
    let d = tmpdir("punch");
    let p = d.join("lun.img");
    let s = FileStore::open(&spec(&p, Some(1 << 20), true, false)).unwrap();
    s.write_at(0, &vec![0xAB; 1 << 20]).unwrap();
    s.punch_hole(64 << 10, 128 << 10).unwrap();
    let mut b = vec![0u8; 4096];
    s.read_at(64 << 10, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    s.read_at(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0xAB));
    let (run, mapped) = s.allocation(0, 1 << 20).unwrap();
    assert!(mapped && (4096..=64 << 10).contains(&run), "{run}");
    if s.can_punch.load(Ordering::Relaxed) {
        let (run, mapped) = s.allocation(64 << 10, (1 << 20) - (64 << 10)).unwrap();
        assert!(!mapped, "hole expected");
        assert_eq!(run, 128 << 10);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn compare_and_write_writes_only_on_match() {
    let d = tmpdir("caw");
    let p = d.join("lun.img");
    let s = FileStore::open(&spec(&p, Some(8192), true, false)).unwrap();
    s.write_at(0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(
        s.compare_and_write(0, &[1, 2, 0, 4], &[9; 4]).unwrap(),
        Some(2)
    );
    assert_eq!(
        s.compare_and_write(0, &[1, 2, 3, 4], &[9; 4]).unwrap(),
        None
    );
    let mut b = [0u8; 4];
    s.read_at(0, &mut b).unwrap();
    assert_eq!(b, [9; 4]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn atomic_write_replaces_the_file() {
    let d = tmpdir("atomic");
    let p = d.join("x.pr");
    write_file_atomically(&p, b"one").unwrap();
    write_file_atomically(&p, b"two").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(
        pr_state_path(Path::new("/a/b.img")),
        PathBuf::from("/a/b.img.pr")
    );
    let _ = std::fs::remove_dir_all(&d);
}

// ------------------------------------------------------------------------------------------
// Direct I/O
// ------------------------------------------------------------------------------------------

fn direct_spec(path: &Path, size: u64, block_size: u32) -> OpenSpec<'_> {
    OpenSpec {
        path,
        size: Some(size),
        block_size,
        read_only: false,
        create: true,
        direct: true,
    }
}

/// The `flags:` of a descriptor of this process, from `/proc/self/fdinfo` (octal).
fn fd_flags(fd: std::os::fd::RawFd) -> u32 {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .expect("a flags line");
    u32::from_str_radix(flags.trim(), 8).unwrap()
}

#[test]
fn a_direct_store_is_opened_with_o_direct_and_reports_its_alignment() {
    let d = tmpdir("direct-open");
    let p = d.join("lun.img");
    let s = FileStore::open(&direct_spec(&p, 1 << 20, 512)).unwrap();
    let dio = s.direct().expect("opened direct");
    assert_eq!(dio.fd, s.file.as_raw_fd());
    assert!(dio.offset_align.is_power_of_two() && dio.offset_align <= 512);
    assert!(dio.mem_align.is_power_of_two());
    assert_ne!(fd_flags(dio.fd) & libc::O_DIRECT as u32, 0, "no O_DIRECT");
    // A regular file: the file system's metadata and the device are volatile until fdatasync.
    assert!(s.write_cache());
    // Buffered stores stay as they were.
    drop(s);
    let b = FileStore::open(&spec(&p, None, false, false)).unwrap();
    assert!(b.direct().is_none());
    assert_eq!(fd_flags(b.file.as_raw_fd()) & libc::O_DIRECT as u32, 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn direct_reads_and_writes_take_misaligned_buffers_and_odd_offsets() {
    let d = tmpdir("direct-rw");
    let p = d.join("lun.img");
    let s = FileStore::open(&direct_spec(&p, 1 << 20, 512)).unwrap();
    let a = s.direct().unwrap().offset_align as u64;
    // Memory misaligned on purpose: one byte into a Vec.
    let pattern: Vec<u8> = (0..3 * 4096 + 1).map(|i| (i * 7 + 3) as u8).collect();
    s.write_at(8 * a, &pattern[1..]).unwrap();
    let mut back = vec![0u8; 3 * 4096 + 1];
    s.read_at(8 * a, &mut back[1..]).unwrap();
    assert_eq!(&back[1..], &pattern[1..]);
    // Odd offsets and lengths read the covering aligned range.
    let mut odd = [0u8; 5];
    s.read_at(8 * a + 3, &mut odd).unwrap();
    assert_eq!(&odd, &pattern[4..9]);
    let mut span = vec![0u8; 1000];
    s.read_at(8 * a + a - 17, &mut span).unwrap();
    let from = (a - 17) as usize + 1;
    assert_eq!(&span[..], &pattern[from..from + 1000]);
    // The last byte of the LUN.
    let mut last = [9u8; 1];
    s.read_at((1 << 20) - 1, &mut last).unwrap();
    assert_eq!(last, [0]);
    // A write that does not cover whole device blocks is refused, and changes nothing.
    if a > 1 {
        let e = s.write_at(8 * a + 1, &[0xEE; 4]).unwrap_err();
        assert!(
            matches!(&e, StoreError::Io(m) if m.contains("read-modify-write")),
            "{e:?}"
        );
        s.read_at(8 * a, &mut back[1..]).unwrap();
        assert_eq!(&back[1..], &pattern[1..]);
    }
    // What the store wrote is on the file, past any cache of this process.
    s.flush().unwrap();
    let on_disk = std::fs::read(&p).unwrap();
    assert_eq!(&on_disk[(8 * a) as usize..][..3 * 4096], &pattern[1..]);
    // COMPARE AND WRITE, UNMAP and allocation work on the direct descriptor too.
    let blk = vec![0x5Au8; a as usize];
    assert_eq!(
        s.compare_and_write(8 * a, &pattern[1..=a as usize], &blk)
            .unwrap(),
        None
    );
    s.punch_hole(0, 64 << 10).unwrap();
    let mut z = vec![1u8; 4096];
    s.read_at(0, &mut z).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_file_shorter_than_the_lun_reads_as_zeros_past_its_end_through_direct_io() {
    let d = tmpdir("direct-short");
    let p = d.join("lun.img");
    let s = FileStore::open(&direct_spec(&p, 1 << 20, 512)).unwrap();
    s.write_at(0, &vec![0xAB; 8192]).unwrap();
    // The file shrinks under the store to a size that is not a whole block.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4096 + 100)
        .unwrap();
    let mut b = vec![7u8; 8192];
    s.read_at(0, &mut b).unwrap();
    assert!(b[..4196].iter().all(|&x| x == 0xAB));
    assert!(b[4196..].iter().all(|&x| x == 0));
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `prog args`, bounded by 20 s; whether it exited 0.
fn run(prog: &str, args: &[&str]) -> bool {
    let Ok(mut child) = std::process::Command::new(prog)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A ramfs (a file system that refuses `O_DIRECT`) mounted in a temporary directory, unmounted
/// (lazily if busy) when dropped.
pub(crate) struct Ramfs(pub(crate) PathBuf);

impl Ramfs {
    /// `None` (with a message) when it cannot be mounted, e.g. without root.
    pub(crate) fn mount(name: &str) -> Option<Ramfs> {
        let d = tmpdir(name);
        if !run("mount", &["-t", "ramfs", "ramfs", &d.display().to_string()]) {
            eprintln!("SKIPPED: cannot mount a ramfs (needs root)");
            let _ = std::fs::remove_dir_all(&d);
            return None;
        }
        Some(Ramfs(d))
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let d = self.0.display().to_string();
        if !run("umount", &[&d]) {
            run("umount", &["-l", &d]);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_file_system_that_refuses_o_direct_is_an_error_naming_the_file_never_a_fallback() {
    let Some(fs) = Ramfs::mount("ramfs") else {
        return;
    };
    let p = fs.0.join("lun.img");
    let e = FileStore::open(&direct_spec(&p, 1 << 20, 512)).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("O_DIRECT"), "{msg}");
    // The same file buffered is fine: only direct I/O is refused.
    let s = FileStore::open(&spec(&p, Some(1 << 20), true, false)).unwrap();
    assert!(s.direct().is_none());
}

/// A loop device over a file, with the given logical block size; detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(image: &Path, sector: u32) -> Option<Loop> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &sector.to_string()])
            .arg(image)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && dev.starts_with("/dev/")).then_some(Loop(dev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        run("losetup", &["-d", &self.0]);
    }
}

#[test]
fn a_block_size_below_the_devices_direct_alignment_names_the_block_size_to_set() {
    let d = tmpdir("loop4k");
    let img = d.join("disk.img");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let Some(dev) = Loop::attach(&img, 4096) else {
        eprintln!("SKIPPED: cannot attach a loop device (needs root and losetup)");
        let _ = std::fs::remove_dir_all(&d);
        return;
    };
    let path = PathBuf::from(&dev.0);
    let mut sp = direct_spec(&path, 1 << 20, 512);
    sp.create = false;
    let e = FileStore::open(&sp).unwrap_err().to_string();
    assert!(e.contains("block_size = 4096") && e.contains(&dev.0), "{e}");
    sp.block_size = 4096;
    let s = FileStore::open(&sp).unwrap();
    assert!(s.is_block_device());
    assert_eq!(s.direct().unwrap().offset_align, 4096);
    // An unaligned buffer and an odd offset on a 4096-byte device.
    let data: Vec<u8> = (0..4097).map(|i| i as u8).collect();
    s.write_at(4096, &data[1..]).unwrap();
    let mut b = [0u8; 3];
    s.read_at(4096 + 10, &mut b).unwrap();
    assert_eq!(b, [11, 12, 13]);
    s.flush().unwrap();
    drop(s);
    // The LU's initial WCE follows the device queue's cache mode (sysfs).
    let name = dev.0.trim_start_matches("/dev/");
    let mode = PathBuf::from(format!("/sys/block/{name}/queue/write_cache"));
    for (word, wce) in [("write through", false), ("write back", true)] {
        if std::fs::write(&mode, word).is_err() {
            eprintln!("SKIPPED: cannot set {}", mode.display());
            break;
        }
        assert_eq!(FileStore::open(&sp).unwrap().write_cache(), wce, "{word}");
    }
    drop(dev);
    let _ = std::fs::remove_dir_all(&d);
}
