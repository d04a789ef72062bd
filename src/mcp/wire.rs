//! The MCP client's own bounded framing: newline-delimited JSON (MCP's stdio
//! form) or the seed's 4-byte little-endian length prefix.
//!
//! Kept private to `mcp` on purpose (the crate-wide `framing` module is written
//! in parallel; the two will be merged later). Both readers refuse a frame over
//! [`MAX_FRAME_LEN`] *before* buffering more than that, so a hostile peer cannot
//! make us allocate without bound.

use std::io::{self, BufRead, BufReader, Read, Write};

/// Largest message accepted or sent (the seed's limit).
pub const MAX_FRAME_LEN: usize = crate::framing::MAX_FRAME_LEN;

/// Read buffer size for the line reader.
const READ_BUF_LEN: usize = 64 * 1024;

/// Bytes of the length prefix in [`McpFraming::Length`].
const LENGTH_PREFIX_LEN: usize = 4;

/// How messages are delimited on the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum McpFraming {
    /// One JSON message per `\n`-terminated line (MCP stdio; the default).
    #[default]
    Line,
    /// A 4-byte little-endian length, then that many bytes (the seed's vsock format).
    Length,
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum WireError {
    /// Clean end of stream between frames.
    Eof,
    /// The stream ended inside a frame after `got` bytes.
    Truncated { got: usize },
    /// The frame is (or was declared) longer than the limit.
    TooLarge { len: u64, max: usize },
    /// A zero length prefix (the seed's format rejects it).
    ZeroLength,
    /// The underlying read failed.
    Io(io::Error),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Eof => write!(f, "end of stream"),
            WireError::Truncated { got } => {
                write!(f, "stream ended inside a message after {got} bytes")
            }
            WireError::TooLarge { len, max } => {
                write!(
                    f,
                    "message of at least {len} bytes exceeds the {max}-byte limit"
                )
            }
            WireError::ZeroLength => write!(f, "zero-length frame"),
            WireError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// Reads frames from a byte stream with a size bound.
pub(crate) struct WireReader<R> {
    inner: BufReader<R>,
    framing: McpFraming,
    max: usize,
}

impl<R: Read> WireReader<R> {
    pub(crate) fn new(inner: R, framing: McpFraming) -> Self {
        Self::with_max(inner, framing, MAX_FRAME_LEN)
    }

    pub(crate) fn with_max(inner: R, framing: McpFraming, max: usize) -> Self {
        WireReader {
            inner: BufReader::with_capacity(READ_BUF_LEN, inner),
            framing,
            max,
        }
    }

    /// The next frame's payload (without newline or prefix). Blank lines are skipped.
    pub(crate) fn read_frame(&mut self) -> Result<Vec<u8>, WireError> {
        match self.framing {
            McpFraming::Line => loop {
                let line = self.read_line()?;
                if !line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(line);
                }
            },
            McpFraming::Length => self.read_length_prefixed(),
        }
    }

    fn fill(&mut self) -> Result<&[u8], WireError> {
        loop {
            match self.inner.fill_buf() {
                Ok(_) => return Ok(self.inner.buffer()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::Io(e)),
            }
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, WireError> {
        let max = self.max;
        let mut line = Vec::new();
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Err(if line.is_empty() {
                    WireError::Eof
                } else {
                    WireError::Truncated { got: line.len() }
                });
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            if line.len() + take > max {
                return Err(WireError::TooLarge {
                    len: (line.len() + take) as u64,
                    max,
                });
            }
            let need = line.len() + take;
            if need > line.capacity() {
                // Grow geometrically but never past the frame limit (plain
                // doubling would allocate 16 MiB for a 10 MiB limit).
                let target = need.max(line.capacity() * 2).min(max);
                line.reserve_exact(target - line.len());
            }
            line.extend_from_slice(&buf[..take]);
            self.inner.consume(if done { take + 1 } else { take });
            if done {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
        }
    }

    /// Fills `out` completely; `Ok(n < out.len())` only when the stream ended.
    fn read_full(&mut self, out: &mut [u8]) -> Result<usize, WireError> {
        let mut got = 0;
        while got < out.len() {
            match self.inner.read(&mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WireError::Io(e)),
            }
        }
        Ok(got)
    }

    fn read_length_prefixed(&mut self) -> Result<Vec<u8>, WireError> {
        let mut prefix = [0u8; LENGTH_PREFIX_LEN];
        match self.read_full(&mut prefix)? {
            0 => return Err(WireError::Eof),
            LENGTH_PREFIX_LEN => {}
            got => return Err(WireError::Truncated { got }),
        }
        let len = u32::from_le_bytes(prefix) as usize;
        if len == 0 {
            return Err(WireError::ZeroLength);
        }
        if len > self.max {
            return Err(WireError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        let mut payload = vec![0u8; len];
        let got = self.read_full(&mut payload)?;
        if got < len {
            return Err(WireError::Truncated {
                got: LENGTH_PREFIX_LEN + got,
            });
        }
        Ok(payload)
    }
}

/// Encodes one frame (payload plus delimiter or prefix) ready to write in one call.
///
/// Fails with `InvalidInput` for a payload over [`MAX_FRAME_LEN`], an empty one, or
/// (line framing) one containing a newline, which would split the message.
pub(crate) fn encode_frame(framing: McpFraming, payload: &[u8]) -> io::Result<Vec<u8>> {
    if payload.is_empty() || payload.len() > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes: must be 1..={MAX_FRAME_LEN} bytes",
                payload.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(payload.len() + LENGTH_PREFIX_LEN);
    match framing {
        McpFraming::Line => {
            if payload.contains(&b'\n') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "message contains a newline",
                ));
            }
            out.extend_from_slice(payload);
            out.push(b'\n');
        }
        McpFraming::Length => {
            // Cannot truncate: payload.len() <= MAX_FRAME_LEN < u32::MAX.
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
    }
    Ok(out)
}

/// Writes one already-encoded frame and flushes.
pub(crate) fn write_encoded<W: Write + ?Sized>(w: &mut W, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], framing: McpFraming, max: usize) -> Vec<Result<Vec<u8>, String>> {
        let mut r = WireReader::with_max(input, framing, max);
        let mut out = Vec::new();
        loop {
            match r.read_frame() {
                Ok(f) => out.push(Ok(f)),
                Err(WireError::Eof) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn line_frames_split_on_newline_skip_blank_lines_and_strip_cr() {
        let got = frames(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n", McpFraming::Line, 100);
        assert_eq!(
            got,
            vec![Ok(b"{\"a\":1}".to_vec()), Ok(b"{\"b\":2}".to_vec())]
        );
    }

    #[test]
    fn line_without_final_newline_is_truncated() {
        let got = frames(b"{\"a\":1}\n{\"b\"", McpFraming::Line, 100);
        assert_eq!(got[0], Ok(b"{\"a\":1}".to_vec()));
        assert!(
            got[1].as_ref().unwrap_err().contains("after 4 bytes"),
            "{got:?}"
        );
    }

    #[test]
    fn overlong_line_is_refused_at_the_limit() {
        let mut input = vec![b'x'; 50];
        input.push(b'\n');
        let got = frames(&input, McpFraming::Line, 10);
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .as_ref()
                .unwrap_err()
                .contains("exceeds the 10-byte limit"),
            "{got:?}"
        );
        // Exactly at the limit is fine.
        assert_eq!(
            frames(b"0123456789\n", McpFraming::Line, 10),
            vec![Ok(b"0123456789".to_vec())]
        );
    }

    #[test]
    fn length_frames_round_trip() {
        let mut input = encode_frame(McpFraming::Length, b"hello").unwrap();
        input.extend(encode_frame(McpFraming::Length, b"{}").unwrap());
        assert_eq!(&input[..4], &5u32.to_le_bytes());
        let got = frames(&input, McpFraming::Length, 100);
        assert_eq!(got, vec![Ok(b"hello".to_vec()), Ok(b"{}".to_vec())]);
    }

    #[test]
    fn length_frame_errors() {
        let zero = frames(&0u32.to_le_bytes(), McpFraming::Length, 100);
        assert_eq!(zero, vec![Err("zero-length frame".to_string())]);
        let big = frames(&1000u32.to_le_bytes(), McpFraming::Length, 100);
        assert!(big[0].as_ref().unwrap_err().contains("exceeds"), "{big:?}");
        let short_prefix = frames(&[1, 0], McpFraming::Length, 100);
        assert!(
            short_prefix[0]
                .as_ref()
                .unwrap_err()
                .contains("after 2 bytes"),
            "{short_prefix:?}"
        );
        let mut short_body = 10u32.to_le_bytes().to_vec();
        short_body.extend_from_slice(b"abc");
        let got = frames(&short_body, McpFraming::Length, 100);
        assert!(
            got[0].as_ref().unwrap_err().contains("after 7 bytes"),
            "{got:?}"
        );
    }

    #[test]
    fn encode_refuses_newlines_and_empty_payloads() {
        assert!(encode_frame(McpFraming::Line, b"a\nb").is_err());
        assert!(encode_frame(McpFraming::Line, b"").is_err());
        assert_eq!(encode_frame(McpFraming::Line, b"{}").unwrap(), b"{}\n");
    }
}
