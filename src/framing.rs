//! Message framing on a byte stream, bounded: newline-delimited JSON (MCP's
//! stdio form, the default) and the seed's 4-byte little-endian length prefix.
//!
//! Both readers are bounded: no frame larger than the reader's `max` is ever
//! buffered, whatever the peer sends, so a hostile or broken peer cannot make
//! us allocate without limit. Both keep partial data across read timeouts,
//! because streams here use `set_read_timeout` to bound every blocking read:
//! a timeout is reported as [`FrameError::TimedOut`] and the next
//! [`FrameReader::read_frame`] call continues the same frame.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;
use std::time::Instant;

/// Largest frame accepted by default (the seed's limit).
pub const MAX_FRAME_LEN: usize = 10 * 1024 * 1024;

/// Size of the length prefix in [`Framing::Length`].
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Most bytes asked of the stream by one `read` call in line mode. Reads are
/// also capped by what the current line may still hold, so the buffer never
/// exceeds the limit.
const READ_CHUNK: usize = 64 * 1024;

/// Line mode: after a frame larger than this, the buffer's memory is given
/// back, so that one big message does not pin megabytes per connection.
const SHRINK_ABOVE: usize = 4 * READ_CHUNK;

/// How messages are delimited on a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per line, `\n`-terminated, no embedded newlines
    /// (MCP's stdio form; the default).
    #[default]
    Line,
    /// 4-byte little-endian length, then that many bytes; zero rejected.
    Length,
}

impl Framing {
    /// The spellings accepted by [`FromStr`], for help texts.
    pub const VALID: &'static str = "\"line\" or \"length\"";

    /// The name accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Line => "line",
            Framing::Length => "length",
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A framing name that is neither `line` nor `length`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseFramingError(pub String);

impl fmt::Display for ParseFramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown framing {:?}: expected {}",
            self.0,
            Framing::VALID
        )
    }
}

impl std::error::Error for ParseFramingError {}

impl FromStr for Framing {
    type Err = ParseFramingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "line" => Ok(Framing::Line),
            "length" => Ok(Framing::Length),
            other => Err(ParseFramingError(other.to_string())),
        }
    }
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
    /// A length prefix of zero (or, when writing, an empty payload).
    ZeroLength,
    /// Payload to write contains a newline (line framing).
    EmbeddedNewline,
    /// The stream's read/write timeout expired.
    TimedOut,
    /// Any other I/O error.
    Io(io::Error),
}

impl FrameError {
    /// Whether the stream can still be used after this error: true only for
    /// [`FrameError::TimedOut`] while reading (the partial frame is kept).
    /// After any other error the caller should close the connection.
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::TimedOut)
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Eof => f.write_str("end of stream"),
            FrameError::Truncated {
                got,
                expected: Some(n),
            } => {
                write!(f, "stream ended inside a frame: got {got} of {n} bytes")
            }
            FrameError::Truncated {
                got,
                expected: None,
            } => {
                write!(f, "stream ended inside a frame after {got} bytes")
            }
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte limit")
            }
            FrameError::ZeroLength => f.write_str("zero-length frame (not allowed)"),
            FrameError::EmbeddedNewline => {
                f.write_str("payload contains a newline, which line framing cannot carry")
            }
            FrameError::TimedOut => f.write_str("timed out waiting for the stream"),
            FrameError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Maps an I/O error to a frame error, folding both timeout kinds (Linux
/// sockets report an expired `SO_RCVTIMEO` as `WouldBlock`) into `TimedOut`.
fn io_error(e: io::Error) -> FrameError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => FrameError::TimedOut,
        _ => FrameError::Io(e),
    }
}

/// Progress of a length-prefixed frame, kept across timeouts.
enum LengthState {
    /// Reading the prefix: `got` of its bytes are in `prefix`.
    Prefix {
        prefix: [u8; LENGTH_PREFIX_LEN],
        got: usize,
    },
    /// Reading the payload: `got` of `payload.len()` bytes are filled in.
    Body { payload: Vec<u8>, got: usize },
}

impl LengthState {
    fn start() -> Self {
        LengthState::Prefix {
            prefix: [0; LENGTH_PREFIX_LEN],
            got: 0,
        }
    }
}

/// Reads frames from `R`, keeping partial data across timeouts.
///
/// Line mode: a frame is everything up to `\n`, with one trailing `\r`
/// stripped; blank lines are skipped. The reader never buffers more than
/// `max + 2` bytes (the payload, a `\r` and the `\n`). A line whose payload
/// exceeds `max` is reported once as [`FrameError::TooLarge`]; the reader then
/// **discards the rest of that line** and the next `read_frame` continues
/// with the line after it, so a caller may choose to keep the connection.
/// Bytes read past a `\n` belong to the next frame and stay buffered.
///
/// Length mode: a 4-byte little-endian length then the payload. A zero
/// length is [`FrameError::ZeroLength`]; a length above `max` is
/// [`FrameError::TooLarge`] and nothing is allocated for it. After either the
/// stream is out of step (the payload, if any, was not consumed): close it.
/// The reader never reads past the end of the current frame.
pub struct FrameReader<R> {
    inner: R,
    framing: Framing,
    max: usize,
    /// Line mode: bytes read but not yet returned.
    buf: Vec<u8>,
    /// Line mode: the current line starts at `buf[start]`; bytes before it
    /// were returned already.
    start: usize,
    /// Line mode: `buf[start..scanned]` is known to contain no `\n`.
    scanned: usize,
    /// Line mode: skipping the rest of an oversized line.
    discarding: bool,
    /// Length mode progress.
    length: LengthState,
    /// No read of the stream is started after this (see [`FrameReader::set_deadline`]).
    deadline: Option<Instant>,
}

impl<R: Read> FrameReader<R> {
    /// A reader with the default limit [`MAX_FRAME_LEN`].
    pub fn new(inner: R, framing: Framing) -> Self {
        Self::with_max(inner, framing, MAX_FRAME_LEN)
    }

    /// A reader accepting frames of at most `max` payload bytes.
    pub fn with_max(inner: R, framing: Framing, max: usize) -> Self {
        FrameReader {
            inner,
            framing,
            max,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            discarding: false,
            length: LengthState::start(),
            deadline: None,
        }
    }

    /// After `deadline`, `read_frame` starts no further read of the stream
    /// and returns [`FrameError::TimedOut`] (partial data kept, as for a
    /// stream timeout). Why: a stream read timeout bounds each `read` call,
    /// not a frame, so a peer sending one byte just before every timeout
    /// (slow-loris) could otherwise hold `read_frame` forever.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    fn check_deadline(&self) -> Result<(), FrameError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(FrameError::TimedOut),
            _ => Ok(()),
        }
    }

    /// Next frame's payload (without delimiter / prefix).
    pub fn read_frame(&mut self) -> Result<Vec<u8>, FrameError> {
        match self.framing {
            Framing::Line => self.read_line_frame(),
            Framing::Length => self.read_length_frame(),
        }
    }

    /// The framing this reader decodes.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The largest payload this reader accepts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether part of a frame has been read but not yet returned (useful to
    /// tell an idle stream from a slow sender after a timeout).
    pub fn has_partial(&self) -> bool {
        match &self.length {
            LengthState::Prefix { got, .. } if *got > 0 => return true,
            LengthState::Body { .. } => return true,
            LengthState::Prefix { .. } => {}
        }
        self.buf.len() > self.start
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the stream; buffered bytes are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// One `read` into `buf`'s spare room of at most `want` bytes, growing
    /// the vector exactly (never past `max + 2` in total). Returns the count.
    fn fill(&mut self, want: usize) -> Result<usize, FrameError> {
        self.check_deadline()?;
        let len = self.buf.len();
        if self.buf.capacity() < len + want {
            // Grow geometrically for throughput, but never past the bound.
            let bound = self.max.saturating_add(2);
            let target = (self.buf.capacity() * 2)
                .max(len + want)
                .min(bound.max(len + want));
            self.buf.reserve_exact(target - len);
        }
        self.buf.resize(len + want, 0);
        loop {
            match self.inner.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(io_error(e));
                }
            }
        }
    }

    fn read_line_frame(&mut self) -> Result<Vec<u8>, FrameError> {
        let bound = self.max.saturating_add(2);
        loop {
            if let Some(off) = memchr_newline(&self.buf[self.scanned..]) {
                let nl = self.scanned + off;
                let line_start = self.start;
                self.start = nl + 1;
                self.scanned = self.start;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                let mut end = nl;
                if end > line_start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                if end == line_start {
                    continue;
                }
                if end - line_start > self.max {
                    return Err(FrameError::TooLarge {
                        len: (end - line_start) as u64,
                        max: self.max,
                    });
                }
                let line = self.buf[line_start..end].to_vec();
                if self.start == self.buf.len() {
                    self.compact();
                }
                return Ok(line);
            }
            // No newline after `start`: move the pending line to the front
            // so that `buf` holds nothing but it, and give back the memory
            // of a large frame now returned.
            self.compact();
            self.scanned = self.buf.len();
            if self.discarding {
                self.buf.clear();
                self.scanned = 0;
            } else if self.line_too_long() {
                let len = self.buf.len() as u64;
                self.buf.clear();
                self.scanned = 0;
                self.discarding = true;
                return Err(FrameError::TooLarge { len, max: self.max });
            }
            let want = READ_CHUNK.min(bound - self.buf.len());
            if self.fill(want)? == 0 {
                let pending = std::mem::take(&mut self.buf);
                self.scanned = 0;
                let was_discarding = std::mem::replace(&mut self.discarding, false);
                // A discarded line was already reported as TooLarge, and a
                // lone "\r" before the end is an empty line.
                return if was_discarding || pending.iter().all(|&b| b == b'\r') {
                    Err(FrameError::Eof)
                } else {
                    Err(FrameError::Truncated {
                        got: pending.len(),
                        expected: None,
                    })
                };
            }
        }
    }

    /// Drops the bytes already returned, and gives back the memory of a
    /// large frame once it is gone.
    fn compact(&mut self) {
        let done = std::mem::take(&mut self.start);
        self.buf.drain(..done);
        self.scanned -= done;
        if self.buf.len() < READ_CHUNK && self.buf.capacity() > SHRINK_ABOVE {
            self.buf.shrink_to(READ_CHUNK);
        }
    }

    /// With no `\n` in `buf`: can the line still fit the limit? It can while
    /// it holds at most `max` bytes, or exactly `max + 1` ending in `\r`
    /// (which a following `\n` would strip).
    fn line_too_long(&self) -> bool {
        let n = self.buf.len();
        n > self.max + 1 || (n == self.max + 1 && self.buf.last() != Some(&b'\r'))
    }

    fn read_length_frame(&mut self) -> Result<Vec<u8>, FrameError> {
        loop {
            match &mut self.length {
                LengthState::Prefix { prefix, got } => {
                    if *got == LENGTH_PREFIX_LEN {
                        let len = u32::from_le_bytes(*prefix) as usize;
                        self.length = LengthState::start();
                        if len == 0 {
                            return Err(FrameError::ZeroLength);
                        }
                        if len > self.max {
                            return Err(FrameError::TooLarge {
                                len: len as u64,
                                max: self.max,
                            });
                        }
                        self.length = LengthState::Body {
                            payload: vec![0; len],
                            got: 0,
                        };
                        continue;
                    }
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(FrameError::TimedOut);
                    }
                    match read_retrying(&mut self.inner, &mut prefix[*got..]) {
                        Ok(0) if *got == 0 => return Err(FrameError::Eof),
                        Ok(0) => {
                            let got_now = *got;
                            self.length = LengthState::start();
                            return Err(FrameError::Truncated {
                                got: got_now,
                                expected: None,
                            });
                        }
                        Ok(n) => *got += n,
                        Err(e) => return Err(io_error(e)),
                    }
                }
                LengthState::Body { payload, got } => {
                    if *got == payload.len() {
                        let done = std::mem::replace(&mut self.length, LengthState::start());
                        let LengthState::Body { payload, .. } = done else {
                            unreachable!("state was Body just above")
                        };
                        return Ok(payload);
                    }
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(FrameError::TimedOut);
                    }
                    match read_retrying(&mut self.inner, &mut payload[*got..]) {
                        Ok(0) => {
                            let err = FrameError::Truncated {
                                got: LENGTH_PREFIX_LEN + *got,
                                expected: Some(LENGTH_PREFIX_LEN + payload.len()),
                            };
                            self.length = LengthState::start();
                            return Err(err);
                        }
                        Ok(n) => *got += n,
                        Err(e) => return Err(io_error(e)),
                    }
                }
            }
        }
    }
}

/// `read`, retried on `EINTR`.
fn read_retrying<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn memchr_newline(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

/// Encodes one frame (payload plus delimiter or prefix), ready to go out in
/// one write. Refuses an empty payload, one over [`MAX_FRAME_LEN`], and (line
/// framing) one containing a newline, which would split the message.
pub fn encode_frame(framing: Framing, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: payload.len() as u64,
            max: MAX_FRAME_LEN,
        });
    }
    if payload.is_empty() {
        return Err(FrameError::ZeroLength);
    }
    let mut frame = Vec::with_capacity(payload.len() + LENGTH_PREFIX_LEN);
    match framing {
        Framing::Line => {
            if payload.contains(&b'\n') {
                return Err(FrameError::EmbeddedNewline);
            }
            frame.extend_from_slice(payload);
            frame.push(b'\n');
        }
        Framing::Length => {
            // Fits: MAX_FRAME_LEN < u32::MAX, checked above.
            let len = payload.len() as u32;
            frame.extend_from_slice(&len.to_le_bytes());
            frame.extend_from_slice(payload);
        }
    }
    Ok(frame)
}

/// Writes an encoded frame ([`encode_frame`]) in a single `write_all` and
/// flushes, so that concurrent writers on clones of one socket cannot
/// interleave halves of frames. A timeout or error mid-write leaves the
/// stream out of step: close it.
pub fn write_encoded<W: Write + ?Sized>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).map_err(io_error)?;
    w.flush().map_err(io_error)
}

/// Encodes and writes one frame ([`encode_frame`], [`write_encoded`]).
pub fn write_frame<W: Write>(
    w: &mut W,
    framing: Framing,
    payload: &[u8],
) -> Result<(), FrameError> {
    write_encoded(w, &encode_frame(framing, payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_names_round_trip() {
        for f in [Framing::Line, Framing::Length] {
            assert_eq!(f.to_string().parse::<Framing>().unwrap(), f);
        }
        let err = "json".parse::<Framing>().unwrap_err().to_string();
        assert!(
            err.contains("line") && err.contains("length") && err.contains("json"),
            "{err}"
        );
    }

    #[test]
    fn crlf_line_of_exactly_max_is_accepted() {
        let mut r = FrameReader::with_max(&b"abcd\r\nabcde\r\nx\n"[..], Framing::Line, 4);
        assert_eq!(r.read_frame().unwrap(), b"abcd");
        assert!(matches!(r.read_frame(), Err(FrameError::TooLarge { .. })));
        assert_eq!(r.read_frame().unwrap(), b"x");
        assert!(matches!(r.read_frame(), Err(FrameError::Eof)));
    }

    #[test]
    fn line_buffer_never_exceeds_bound() {
        let data = vec![b'a'; 1000];
        let mut r = FrameReader::with_max(&data[..], Framing::Line, 10);
        assert!(matches!(r.read_frame(), Err(FrameError::TooLarge { .. })));
        assert!(r.buf.capacity() <= 12, "capacity {}", r.buf.capacity());
    }

    #[test]
    fn many_lines_in_one_read_and_big_frame_memory_is_given_back() {
        let mut data = Vec::new();
        for i in 0..1000 {
            data.extend_from_slice(format!("{{\"n\":{i}}}\n").as_bytes());
        }
        data.extend(std::iter::repeat_n(b'z', 1 << 20));
        data.extend_from_slice(b"\nend\n");
        let mut r = FrameReader::new(&data[..], Framing::Line);
        for i in 0..1000 {
            assert_eq!(r.read_frame().unwrap(), format!("{{\"n\":{i}}}").as_bytes());
        }
        assert_eq!(r.read_frame().unwrap().len(), 1 << 20);
        assert_eq!(r.read_frame().unwrap(), b"end");
        assert!(
            r.buf.capacity() <= SHRINK_ABOVE,
            "capacity {}",
            r.buf.capacity()
        );
        assert!(matches!(r.read_frame(), Err(FrameError::Eof)));
    }
}
