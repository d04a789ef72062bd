//! Message framing on a byte stream, bounded: newline-delimited JSON (MCP's
//! stdio form, the default) and the seed's 4-byte little-endian length prefix.
//! OWNER: transport helper. Contract (keep these names and shapes):

use std::io::{self, Read, Write};

/// Largest frame accepted by default (the seed's limit).
pub const MAX_FRAME_LEN: usize = 10 * 1024 * 1024;

/// How messages are delimited on a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per line, `\n`-terminated, no embedded newlines.
    Line,
    /// 4-byte little-endian length, then that many bytes; zero rejected.
    Length,
}

/// Why a frame could not be read or written.
#[derive(Debug)]
pub enum FrameError {
    /// Clean end of stream at a frame boundary.
    Eof,
    /// Stream ended inside a frame.
    Truncated { got: usize, expected: Option<usize> },
    /// Frame longer than the limit (declared or seen so far).
    TooLarge { len: u64, max: usize },
    /// A length prefix of zero.
    ZeroLength,
    /// Payload to write contains a newline (line framing).
    EmbeddedNewline,
    /// The stream's read/write timeout expired.
    TimedOut,
    /// Any other I/O error.
    Io(io::Error),
}

/// Reads frames from `R`, keeping partial data across timeouts.
pub struct FrameReader<R> {
    inner: R,
    framing: Framing,
    max: usize,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, framing: Framing) -> Self {
        Self::with_max(inner, framing, MAX_FRAME_LEN)
    }
    pub fn with_max(inner: R, framing: Framing, max: usize) -> Self {
        FrameReader { inner, framing, max }
    }
    /// Next frame's payload (without delimiter / prefix).
    pub fn read_frame(&mut self) -> Result<Vec<u8>, FrameError> {
        let _ = (&mut self.inner, self.framing, self.max);
        todo!()
    }
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Writes one frame and flushes.
pub fn write_frame<W: Write>(w: &mut W, framing: Framing, payload: &[u8]) -> Result<(), FrameError> {
    let _ = (w, framing, payload);
    todo!()
}
