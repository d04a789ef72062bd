//! Behaviour of the bounded frame readers and writer, and of JSON-RPC
//! parsing of what they return.

use std::collections::VecDeque;
use std::io::{self, Read};

use ukload::framing::{write_frame, FrameError, FrameReader, Framing, MAX_FRAME_LEN};
use ukload::jsonrpc::{self, ParseError};

/// A reader that hands out scripted chunks and errors, one per `read`.
struct Scripted {
    steps: VecDeque<Result<Vec<u8>, io::ErrorKind>>,
}

impl Scripted {
    fn new(steps: Vec<Result<&[u8], io::ErrorKind>>) -> Self {
        Scripted {
            steps: steps.into_iter().map(|s| s.map(<[u8]>::to_vec)).collect(),
        }
    }
}

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.steps.pop_front() {
            None => Ok(0),
            Some(Err(kind)) => Err(io::Error::from(kind)),
            Some(Ok(mut chunk)) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.steps.push_front(Ok(chunk.split_off(n)));
                }
                Ok(n)
            }
        }
    }
}

fn length_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn line_frames_split_on_newline_strip_cr_and_skip_blank_lines() {
    let mut r = FrameReader::new(&b"\n\r\n{\"a\":1}\r\n\n{\"b\":2}\n"[..], Framing::Line);
    assert_eq!(r.read_frame().unwrap(), b"{\"a\":1}");
    assert_eq!(r.read_frame().unwrap(), b"{\"b\":2}");
    assert!(matches!(r.read_frame(), Err(FrameError::Eof)));
}

#[test]
fn oversized_line_is_rejected_then_the_next_line_is_read() {
    let mut data = vec![b'x'; 100];
    data.extend_from_slice(b"\nok\n");
    let mut r = FrameReader::with_max(&data[..], Framing::Line, 10);
    match r.read_frame() {
        Err(FrameError::TooLarge { len, max }) => {
            assert!(len > 10, "reported length {len} must exceed the limit");
            assert_eq!(max, 10);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(r.read_frame().unwrap(), b"ok");
}

#[test]
fn line_at_exactly_the_limit_is_accepted() {
    let mut data = vec![b'y'; 10];
    data.push(b'\n');
    let mut r = FrameReader::with_max(&data[..], Framing::Line, 10);
    assert_eq!(r.read_frame().unwrap().len(), 10);
}

#[test]
fn oversized_length_prefix_is_rejected_without_reading_the_body() {
    let declared = 2 * MAX_FRAME_LEN as u32;
    let mut data = declared.to_le_bytes().to_vec();
    data.extend_from_slice(b"rest");
    let mut r = FrameReader::new(&data[..], Framing::Length);
    let err = r.read_frame().unwrap_err();
    assert!(
        matches!(err, FrameError::TooLarge { len, max } if len == declared as u64 && max == MAX_FRAME_LEN)
    );
    assert_eq!(
        err.to_string(),
        "frame of 20971520 bytes exceeds the 10485760-byte limit"
    );
}

#[test]
fn zero_length_prefix_is_rejected() {
    let mut r = FrameReader::new(&[0u8, 0, 0, 0][..], Framing::Length);
    assert!(matches!(r.read_frame(), Err(FrameError::ZeroLength)));
}

#[test]
fn truncated_frames_are_reported_in_both_framings() {
    let mut data = length_frame(b"hello world");
    data.truncate(9);
    let mut r = FrameReader::new(&data[..], Framing::Length);
    match r.read_frame() {
        Err(FrameError::Truncated { got, expected }) => {
            assert_eq!(got, 9);
            assert_eq!(expected, Some(4 + 11));
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    let mut r = FrameReader::new(&[1u8, 0][..], Framing::Length);
    assert!(matches!(
        r.read_frame(),
        Err(FrameError::Truncated { got: 2, .. })
    ));
    let mut r = FrameReader::new(&b"{\"no\":\"newline\"}"[..], Framing::Line);
    assert!(matches!(
        r.read_frame(),
        Err(FrameError::Truncated { got: 16, .. })
    ));
}

#[test]
fn length_frames_round_trip_through_write_frame() {
    let mut wire = Vec::new();
    write_frame(&mut wire, Framing::Length, b"{\"x\":1}").unwrap();
    write_frame(&mut wire, Framing::Length, b"with\nnewline is fine here").unwrap();
    assert_eq!(&wire[..4], &7u32.to_le_bytes());
    let mut r = FrameReader::new(&wire[..], Framing::Length);
    assert_eq!(r.read_frame().unwrap(), b"{\"x\":1}");
    assert_eq!(r.read_frame().unwrap(), b"with\nnewline is fine here");
    assert!(matches!(r.read_frame(), Err(FrameError::Eof)));
}

#[test]
fn line_writer_rejects_embedded_newline_and_terminates_frames() {
    let mut wire = Vec::new();
    assert!(matches!(
        write_frame(&mut wire, Framing::Line, b"a\nb"),
        Err(FrameError::EmbeddedNewline)
    ));
    assert!(
        wire.is_empty(),
        "nothing may be written for a rejected frame"
    );
    write_frame(&mut wire, Framing::Line, b"ab").unwrap();
    assert_eq!(wire, b"ab\n");
}

#[test]
fn writer_rejects_oversized_and_empty_payloads() {
    let mut wire = Vec::new();
    let big = vec![b'a'; MAX_FRAME_LEN + 1];
    for framing in [Framing::Line, Framing::Length] {
        assert!(matches!(
            write_frame(&mut wire, framing, &big),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            write_frame(&mut wire, framing, b""),
            Err(FrameError::ZeroLength)
        ));
    }
    assert!(wire.is_empty());
}

#[test]
fn line_frame_resumes_after_timeout_mid_frame() {
    let src = Scripted::new(vec![
        Ok(b"{\"jsonrpc\":"),
        Err(io::ErrorKind::WouldBlock),
        Ok(b"\"2.0\",\"id\":1,"),
        Err(io::ErrorKind::TimedOut),
        Ok(b"\"method\":\"ping\"}\n"),
    ]);
    let mut r = FrameReader::new(src, Framing::Line);
    assert!(matches!(r.read_frame(), Err(FrameError::TimedOut)));
    assert!(r.has_partial());
    assert!(matches!(r.read_frame(), Err(FrameError::TimedOut)));
    let frame = r.read_frame().unwrap();
    assert_eq!(frame, br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    assert!(matches!(
        jsonrpc::parse(&frame).unwrap(),
        jsonrpc::Message::Request { method, .. } if method == "ping"
    ));
    assert!(matches!(r.read_frame(), Err(FrameError::Eof)));
}

#[test]
fn length_frame_resumes_after_timeout_in_prefix_and_body() {
    let wire = length_frame(b"0123456789");
    let src = Scripted::new(vec![
        Ok(&wire[..2]),
        Err(io::ErrorKind::WouldBlock),
        Ok(&wire[2..7]),
        Err(io::ErrorKind::WouldBlock),
        Err(io::ErrorKind::Interrupted),
        Ok(&wire[7..]),
    ]);
    let mut r = FrameReader::new(src, Framing::Length);
    assert!(matches!(r.read_frame(), Err(FrameError::TimedOut)));
    assert!(matches!(r.read_frame(), Err(FrameError::TimedOut)));
    assert_eq!(r.read_frame().unwrap(), b"0123456789");
    assert!(matches!(r.read_frame(), Err(FrameError::Eof)));
}

#[test]
fn non_json_and_bad_messages_are_parse_errors_with_clear_words() {
    let frame = FrameReader::new(&b"hello there\n"[..], Framing::Line)
        .read_frame()
        .unwrap();
    let err = jsonrpc::parse(&frame).unwrap_err();
    assert!(matches!(err, ParseError::NotJson(_)));
    assert_eq!(err.code(), jsonrpc::PARSE_ERROR);
    assert!(err.to_string().starts_with("not JSON"), "{err}");
    let err = jsonrpc::parse(br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#).unwrap_err();
    assert_eq!(err, ParseError::BadVersion);
    assert_eq!(err.code(), jsonrpc::INVALID_REQUEST);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(
        jsonrpc::parse(deep.as_bytes()),
        Err(ParseError::NotJson(_))
    ));
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_never_exceed_the_limit() {
    const MAX: usize = 64;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..2000 {
        let len = (rng.next() % 300) as usize;
        // Bias toward bytes that matter to the framers.
        let data: Vec<u8> = (0..len)
            .map(|_| match rng.next() % 8 {
                0 => b'\n',
                1 => b'\r',
                2 => 0,
                3 => b'{',
                _ => rng.next() as u8,
            })
            .collect();
        // Chop the input into random chunks with timeouts between them.
        let mut steps: Vec<Result<&[u8], io::ErrorKind>> = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = 1 + (rng.next() % 40) as usize;
            let end = (at + n).min(data.len());
            steps.push(Ok(&data[at..end]));
            if rng.next().is_multiple_of(3) {
                steps.push(Err(io::ErrorKind::WouldBlock));
            }
            at = end;
        }
        for framing in [Framing::Line, Framing::Length] {
            let mut r = FrameReader::with_max(Scripted::new(steps.clone()), framing, MAX);
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls < 10_000, "round {round}: reader does not terminate");
                match r.read_frame() {
                    Ok(frame) => {
                        assert!(!frame.is_empty(), "round {round}: empty frame returned");
                        assert!(frame.len() <= MAX, "round {round}: frame over the limit");
                        if framing == Framing::Line {
                            assert!(!frame.contains(&b'\n'));
                        }
                        let _ = jsonrpc::parse(&frame);
                    }
                    Err(FrameError::TimedOut) | Err(FrameError::TooLarge { .. }) => {}
                    Err(FrameError::ZeroLength) => {}
                    Err(FrameError::Eof) | Err(FrameError::Truncated { .. }) => break,
                    Err(e) => panic!("round {round}: unexpected error {e:?}"),
                }
            }
        }
    }
}
