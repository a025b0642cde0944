//! The outbox: a connection's encoded PDUs waiting for the socket, written by the connection
//! task itself with vectored writes (as many PDUs per system call as the socket takes).
//! Touches only its queue and the socket it is handed.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

/// Encoded PDUs waiting for the socket, in order. The connection task writes them itself with
/// vectored writes, as many PDUs per system call as the socket takes.
#[derive(Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    /// Bytes waiting.
    pub bytes: usize,
}

/// Buffers handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// While this many bytes wait for the socket, the connection reads no new PDUs (the initiator
/// is not reading its responses; CmdSN windows bound the rest).
pub const OUTBOX_HIGH_WATER: usize = 8 << 20;
/// How long a closing connection waits for the initiator to take its last PDUs.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Outbox {
    pub fn push_pdu(&mut self, parts: [Bytes; 3]) {
        for p in parts {
            if !p.is_empty() {
                self.bytes += p.len();
                self.queue.push_back(p);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Writes as much as the socket takes without waiting. `Ok(true)`: everything is written.
    pub fn write_some(&mut self, sock: &TcpStream) -> std::io::Result<bool> {
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = self.queue.len().min(MAX_IOVECS);
            for (slot, b) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(b);
            }
            match sock.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(mut written) => {
                    self.bytes -= written;
                    while written > 0 {
                        let Some(front) = self.queue.front_mut() else {
                            break;
                        };
                        if written >= front.len() {
                            written -= front.len();
                            self.queue.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes everything, waiting for the socket (at most [`CLOSE_FLUSH_TIMEOUT`]).
    pub async fn flush(&mut self, sock: &TcpStream) {
        let deadline = tokio::time::Instant::now() + CLOSE_FLUSH_TIMEOUT;
        loop {
            match self.write_some(sock) {
                Ok(true) | Err(_) => return,
                Ok(false) => {}
            }
            match tokio::time::timeout_at(deadline, sock.writable()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}
