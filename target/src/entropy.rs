//! The runtime's one source of randomness: the operating system's (`getrandom(2)`).
//!
//! CHAP challenges, the HA link's login nonces and the lab's link secret all come from here.
//! There is no fallback: if the kernel cannot give random bytes, the caller gets the error and
//! refuses what it was doing (a login, a link connection, starting the lab) rather than going on
//! with predictable values.

use std::io;

/// Fills `buf` with random bytes from the kernel, or fails.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("no random bytes from the kernel (getrandom): {e}"),
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// `N` random bytes from the kernel, or the error.
pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    fill(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_draws_differ_and_fill_every_byte() {
        let a: [u8; 32] = bytes().unwrap();
        let b: [u8; 32] = bytes().unwrap();
        assert_ne!(a, b);
        let mut big = vec![0u8; 1 << 16];
        fill(&mut big).unwrap();
        assert!(big.chunks(32).all(|c| c.iter().any(|&x| x != 0)));
    }
}
