//! Frames on a TCP socket: [`FrameReader`] reads them into a growing buffer without copying
//! payloads, [`write_frames`] writes a batch of them with as few system calls as the socket
//! allows.
//!
//! The codec itself (headers, kinds, limits) is [`super::frame`]; this file only moves its bytes
//! through tokio's socket halves. It decides nothing: a header the codec refuses ends the
//! connection, reported as a [`ConnError`].

use std::io::{self, IoSlice};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{Frame, FrameError, FrameHeader, Outgoing, HEADER_LEN, MAX_LOGIN_PAYLOAD};

/// Why a connection broke.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("connection closed by peer in the middle of a frame")]
    ClosedMidFrame,
    #[error("{0}")]
    Frame(#[from] FrameError),
}

impl ConnError {
    /// Whether the peer's end closed the connection: end of stream (FIN) or a reset (RST; a
    /// write then fails with a broken pipe), as opposed to a frame the codec refused or an
    /// error of this side.
    pub(super) fn closed_by_peer(&self) -> bool {
        match self {
            ConnError::Closed | ConnError::ClosedMidFrame => true,
            ConnError::Io(e) => io_closed_by_peer(e),
            ConnError::Frame(_) => false,
        }
    }
}

/// Whether a socket error means that the peer's end closed the connection.
pub(super) fn io_closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

/// What a frame reader asks the socket for when it waits for a header.
const READ_CHUNK: usize = 64 * 1024;

/// Reads frames from one socket into a growing buffer, without copying payloads.
pub(super) struct FrameReader {
    pub(super) rd: OwnedReadHalf,
    pub(super) buf: BytesMut,
    /// The largest payload accepted: [`MAX_LOGIN_PAYLOAD`] until the login completes.
    pub(super) max: usize,
}

impl FrameReader {
    /// A reader for a fresh connection, with the login's limit.
    pub(super) fn new(rd: OwnedReadHalf) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(8 * 1024),
            max: MAX_LOGIN_PAYLOAD,
        }
    }

    /// The next frame. Cancel-safe: bytes read so far stay in the buffer.
    pub(super) async fn next(&mut self) -> Result<Frame, ConnError> {
        loop {
            if self.buf.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&self.buf[..HEADER_LEN]);
                let header = FrameHeader::decode(&h, self.max)?;
                let total = HEADER_LEN + header.len as usize;
                if self.buf.len() >= total {
                    let mut frame = self.buf.split_to(total);
                    frame.advance(HEADER_LEN);
                    return Ok(Frame {
                        kind: header.kind,
                        payload: frame.freeze(),
                    });
                }
                // `total` is bounded by `max` (checked above) before anything is reserved.
                self.buf.reserve(total - self.buf.len());
            } else {
                // Room for many small frames per read.
                self.buf.reserve(READ_CHUNK);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    ConnError::Closed
                } else {
                    ConnError::ClosedMidFrame
                });
            }
        }
    }
}

/// Writes `frames` (headers and payloads, not copied) with as few system calls as the socket
/// allows.
pub(super) async fn write_frames(w: &mut OwnedWriteHalf, frames: &[Outgoing]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() * 3);
    for f in frames {
        slices.push(IoSlice::new(&f.header));
        for part in [&f.payload, &f.more] {
            if !part.is_empty() {
                slices.push(IoSlice::new(part));
            }
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}
