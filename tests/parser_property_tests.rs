//! Property / fuzz-style tests of everything that decodes bytes from a peer:
//! the line and length framings (`framing::FrameReader`, and the MCP
//! client's own reader through `mcp::Session` over a hostile byte stream),
//! JSON-RPC decoding (`jsonrpc::parse`), the MCP server's `handle_payload`
//! and `ToolResult::from_value`.
//!
//! Properties: never a panic; every frame within the limit; and never an
//! allocation larger than the frame limit, measured by a counting global
//! allocator (largest single allocation while a check runs). Inputs come from
//! a tiny seeded xorshift PRNG, so every failure is reproducible from its
//! seed. (`cargo fuzz` needs a nightly toolchain, which is not available
//! here; see docs/reliability.md.)

use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use ukload::framing::{write_frame, FrameError, FrameReader, Framing, MAX_FRAME_LEN};
use ukload::jsonrpc;

// ---- the counting allocator -------------------------------------------------

/// Records the largest single allocation (or reallocation target) made by
/// the measuring thread since [`peak_of`] started (by any thread during
/// [`peak_of_all_threads`]).
struct Counting;

static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Count allocations of every thread (the MCP session reads on its own).
static ALL_THREADS: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Count this thread's allocations. Const-initialized: reading it never allocates.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    if ALL_THREADS.load(Ordering::Relaxed) || ARMED.try_with(Cell::get).unwrap_or(false) {
        PEAK.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is an atomic max, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        // SAFETY: `p` was allocated by us (i.e. by System) with layout `l`.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by System with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The peak is shared, so the tests of this file run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, returning its result and the largest single allocation this
/// thread made meanwhile (the test harness's own threads are not counted).
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.store(0, Ordering::Relaxed);
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, PEAK.load(Ordering::Relaxed))
}

/// Like [`peak_of`], counting every thread's allocations (the harness's
/// are small: this is for bounds of megabytes).
fn peak_of_all_threads<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALL_THREADS.store(true, Ordering::Relaxed);
    let r = peak_of(f);
    ALL_THREADS.store(false, Ordering::Relaxed);
    r
}

// ---- a tiny deterministic PRNG -----------------------------------------------

/// xorshift64*: enough to vary inputs; seeded, so reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    /// Bytes biased towards what framings and JSON care about.
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        const INTERESTING: &[u8] = b"\n\r{}[]\":,\\0123456789 aeEnrtufl-+.\xff\xc0\x00";
        (0..len)
            .map(|_| {
                if self.chance(2) {
                    INTERESTING[self.below(INTERESTING.len())]
                } else {
                    self.next() as u8
                }
            })
            .collect()
    }
}

/// Number of random cases per property.
const CASES: u64 = 400;

/// A reader over `data` that returns random short reads and, now and then,
/// a timeout (as a socket with `SO_RCVTIMEO` does). It never allocates.
struct Chunky<'a> {
    data: &'a [u8],
    pos: usize,
    rng: Rng,
    max_chunk: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rng.chance(7) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = (1 + self.rng.below(self.max_chunk))
            .min(buf.len())
            .min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads every frame of `data` (random chunking and timeouts) with limit
/// `max`; checks each frame; returns the frames and the allocation peak.
fn read_all(data: &[u8], framing: Framing, max: usize, seed: u64) -> (Vec<Vec<u8>>, usize) {
    let mut r = FrameReader::with_max(
        Chunky {
            data,
            pos: 0,
            rng: Rng::new(seed),
            max_chunk: 1 + (seed as usize % 300),
        },
        framing,
        max,
    );
    // Generous: every byte could end a frame, plus one timeout per read.
    let max_steps = 4 * data.len() + 100;
    let mut frames = Vec::new();
    let mut peak = 0;
    for _ in 0..max_steps {
        // Measured per call, so the test's own bookkeeping is not counted.
        let (res, p) = peak_of(|| r.read_frame());
        peak = peak.max(p);
        match res {
            Ok(f) => {
                assert!(!f.is_empty(), "seed {seed}: empty frame");
                assert!(f.len() <= max, "seed {seed}: frame of {} > {max}", f.len());
                if framing == Framing::Line {
                    assert!(!f.contains(&b'\n'), "seed {seed}: newline in a line frame");
                }
                frames.push(f);
            }
            Err(FrameError::TimedOut) => {}
            // Line mode keeps going after an oversized line.
            Err(FrameError::TooLarge { .. }) if framing == Framing::Line => {}
            Err(FrameError::Eof) => return (frames, peak),
            // Length mode is out of step after these: the caller closes.
            Err(FrameError::TooLarge { .. } | FrameError::ZeroLength) => return (frames, peak),
            Err(FrameError::Truncated { .. }) => return (frames, peak),
            Err(e) => panic!("seed {seed}: unexpected error {e}"),
        }
    }
    panic!("seed {seed}: reader made no progress");
}

#[test]
fn random_bytes_through_both_framings_never_panic_or_overallocate() {
    let _s = serial();
    for seed in 0..CASES {
        let mut rng = Rng::new(seed);
        let max = [300, 1000, 4096][rng.below(3)];
        let len = rng.below(16 * 1024);
        let mut data = rng.bytes(len);
        if rng.chance(3) {
            // A long run without newline, to cross the limit in line mode.
            let at = rng.below(data.len() + 1);
            data.splice(at..at, std::iter::repeat_n(b'x', max + rng.below(3 * max)));
        }
        for framing in [Framing::Line, Framing::Length] {
            let (_, peak) = read_all(&data, framing, max, seed);
            // The reader's buffer is bounded by max + 2 ("\r\n"); frames by max.
            assert!(
                peak <= max + 2,
                "seed {seed} {framing}: allocation of {peak} bytes with a {max}-byte limit"
            );
        }
    }
}

#[test]
fn written_frames_read_back_identically_through_any_chunking() {
    let _s = serial();
    for seed in 0..CASES / 4 {
        let mut rng = Rng::new(seed ^ 0xF00D);
        let payloads: Vec<Vec<u8>> = (0..1 + rng.below(10))
            .map(|_| {
                let n = 1 + rng.below(1000);
                rng.bytes(n)
                    .into_iter()
                    .map(|b| if b == b'\n' { b' ' } else { b })
                    .collect::<Vec<u8>>()
            })
            // A trailing "\r" would be stripped by line framing, by design.
            .filter(|p: &Vec<u8>| p.last() != Some(&b'\r'))
            .collect();
        for framing in [Framing::Line, Framing::Length] {
            let mut wire = Vec::new();
            for p in &payloads {
                write_frame(&mut wire, framing, p).unwrap();
            }
            let (frames, _) = read_all(&wire, framing, 4096, seed);
            assert_eq!(frames, payloads, "seed {seed} {framing}");
        }
    }
}

#[test]
fn every_truncation_of_a_valid_stream_is_an_error_not_a_panic() {
    let _s = serial();
    let msgs = [
        jsonrpc::request(1, "ping", json!({})),
        jsonrpc::response(
            json!(7),
            json!({"pid": 1, "cid": 200, "agent": "ukload-guest"}),
        ),
        jsonrpc::error_response(Value::Null, jsonrpc::PARSE_ERROR, "bad"),
    ];
    for framing in [Framing::Line, Framing::Length] {
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, framing, &jsonrpc::to_bytes(m)).unwrap();
        }
        for cut in 0..wire.len() {
            let (frames, _) = read_all(&wire[..cut], framing, MAX_FRAME_LEN, cut as u64);
            assert!(frames.len() <= msgs.len());
            for f in frames {
                // Whole frames decode; the cut one never comes out.
                jsonrpc::parse(&f).unwrap();
            }
        }
    }
}

#[test]
fn huge_and_zero_length_prefixes_allocate_nothing_big() {
    let _s = serial();
    let mut rng = Rng::new(42);
    let mut prefixes: Vec<u32> = vec![0, u32::MAX, MAX_FRAME_LEN as u32 + 1, 1 << 31];
    prefixes.extend((0..200).map(|_| rng.next() as u32));
    for len in prefixes {
        let mut data = len.to_le_bytes().to_vec();
        data.extend_from_slice(b"{\"jsonrpc\":\"2.0\"}");
        let mut r = FrameReader::new(&data[..], Framing::Length);
        let (res, peak) = peak_of(|| r.read_frame());
        match res {
            Err(FrameError::ZeroLength) => assert_eq!(len, 0),
            Err(FrameError::TooLarge { len: l, max }) => {
                assert_eq!(l, u64::from(len));
                assert!(l > max as u64);
            }
            // Within the limit: the payload buffer is exactly the declared length.
            Err(FrameError::Truncated { .. }) => assert!(len as usize <= MAX_FRAME_LEN),
            other => panic!("prefix {len}: {other:?}"),
        }
        assert!(
            peak <= (len as usize).min(MAX_FRAME_LEN),
            "prefix {len}: allocated {peak} bytes"
        );
    }
}

/// JSON values built at random, to exercise decoders past the JSON parser.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.chance(2)),
        2 => json!(rng.next() as i64),
        3 => json!(rng.next() as f64 / 7.0),
        4 => json!(["text", "image", "audio", "2.0", "", "ping"][rng.below(6)]),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            const KEYS: [&str; 14] = [
                "jsonrpc",
                "id",
                "method",
                "params",
                "result",
                "error",
                "code",
                "message",
                "data",
                "content",
                "type",
                "text",
                "isError",
                "structuredContent",
            ];
            Value::Object(
                (0..rng.below(6))
                    .map(|_| {
                        (
                            KEYS[rng.below(KEYS.len())].to_string(),
                            random_value(rng, depth - 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Largest single allocation decoding a JSON text of `n` bytes may make:
/// serde_json turns each array element of a 2-byte text like `0,` into a
/// 32-byte `Value`, and vectors grow by doubling: 32 bytes per input byte,
/// plus a constant. (So a 10 MiB frame can cost a few hundred MiB of
/// `Value`s; see docs/reliability.md.)
fn json_alloc_bound(n: usize) -> usize {
    32 * n + 4096
}

#[test]
fn jsonrpc_and_mcp_decoders_survive_random_and_mutated_input() {
    let _s = serial();
    let valid: Vec<Vec<u8>> = [
        jsonrpc::request(1, "ping", json!({})),
        jsonrpc::request(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "hi"}}),
        ),
        jsonrpc::request(3, "initialize", json!({"protocolVersion": "2025-06-18"})),
        jsonrpc::notification("notifications/initialized", json!({})),
        jsonrpc::response(
            json!(1),
            json!({"content": [{"type": "text", "text": "a"}]}),
        ),
        jsonrpc::error_response(json!("x"), jsonrpc::INVALID_PARAMS, "no"),
    ]
    .iter()
    .map(jsonrpc::to_bytes)
    .collect();
    for seed in 0..CASES * 5 {
        let mut rng = Rng::new(seed ^ 0xBEEF);
        let input: Vec<u8> = match rng.below(4) {
            0 => {
                let n = rng.below(512);
                rng.bytes(n)
            }
            1 => {
                // A valid message with a few bytes changed.
                let mut m = valid[rng.below(valid.len())].clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(m.len());
                    m[at] = rng.bytes(1)[0];
                }
                m
            }
            2 => {
                // A valid message cut short.
                let m = &valid[rng.below(valid.len())];
                m[..rng.below(m.len())].to_vec()
            }
            _ => jsonrpc::to_bytes(&random_value(&mut rng, 4)),
        };
        let bound = json_alloc_bound(input.len());
        let (parsed, peak) = peak_of(|| jsonrpc::parse(&input));
        assert!(peak <= bound, "seed {seed}: parse allocated {peak}");
        if let Ok(m) = parsed {
            // What parses re-encodes and parses to the same message.
            assert_eq!(jsonrpc::from_value(m.to_value()).unwrap(), m, "seed {seed}");
        }
        let (reply, peak) = peak_of(|| ukload::mcp::server::handle_payload(&input));
        assert!(
            peak <= bound,
            "seed {seed}: handle_payload allocated {peak}"
        );
        if let Some(r) = reply {
            assert_eq!(r["jsonrpc"], "2.0", "seed {seed}: {r}");
            assert!(r.get("result").is_some() != r.get("error").is_some());
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&input) {
            let _ = ukload::mcp::ToolResult::from_value(v);
        }
        let _ = ukload::mcp::ToolResult::from_value(random_value(&mut rng, 5));
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let _s = serial();
    for depth in [129, 1000, 100_000, 1_000_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            assert!(
                matches!(
                    jsonrpc::parse(text.as_bytes()),
                    Err(jsonrpc::ParseError::NotJson(_))
                ),
                "depth {depth}"
            );
            let r = ukload::mcp::server::handle_payload(text.as_bytes()).unwrap();
            assert_eq!(r["error"]["code"], jsonrpc::PARSE_ERROR);
        }
    }
}

// ---- the MCP client's reader, through a Session over a hostile stream --------

/// Endless or long hostile input produced without holding it in memory.
struct Hostile {
    head: Vec<u8>,
    pos: usize,
    /// Bytes of `fill` after `head` (then end of stream).
    fill_len: usize,
    fill: u8,
}

impl Read for Hostile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.pos < self.head.len() {
            buf[n] = self.head[self.pos];
            n += 1;
            self.pos += 1;
        }
        let fill_pos = self.pos - self.head.len();
        let k = (buf.len() - n).min(self.fill_len - fill_pos);
        buf[n..n + k].fill(self.fill);
        self.pos += k;
        Ok(n + k)
    }
}

/// Deadline of the session's `initialize` in these tests.
const INIT_TIMEOUT: Duration = Duration::from_secs(20);

fn session_over(input: Hostile, framing: ukload::framing::Framing) -> (String, usize) {
    let t = ukload::mcp::Transport::new(Box::new(input), Box::new(io::sink()), framing, "hostile");
    let opts = ukload::mcp::SessionOptions {
        init_timeout: INIT_TIMEOUT,
        ..Default::default()
    };
    let (r, peak) = peak_of_all_threads(|| ukload::mcp::Session::initialize(t, opts));
    match r {
        Ok(_) => panic!("a hostile stream completed initialize"),
        Err(e) => (e.to_string(), peak),
    }
}

#[test]
fn mcp_client_refuses_a_4gib_length_prefix_without_allocating_it() {
    let _s = serial();
    let (err, peak) = session_over(
        Hostile {
            head: u32::MAX.to_le_bytes().to_vec(),
            pos: 0,
            fill_len: 1024,
            fill: b'x',
        },
        ukload::framing::Framing::Length,
    );
    assert!(err.contains("exceeds"), "{err}");
    assert!(peak <= ukload::mcp::MAX_FRAME_LEN, "allocated {peak} bytes");
}

/// A 20 MiB line at the MCP client: refused, and the reader's allocation is
/// bounded by `bound`.
fn mcp_line_over_limit(bound: usize) {
    let (err, peak) = session_over(
        Hostile {
            head: Vec::new(),
            pos: 0,
            fill_len: 20 * 1024 * 1024,
            fill: b'x',
        },
        ukload::framing::Framing::Line,
    );
    assert!(err.contains("exceeds"), "{err}");
    assert!(
        peak <= bound,
        "a {}-byte limit allocated {peak} bytes",
        ukload::mcp::MAX_FRAME_LEN
    );
}

#[test]
fn mcp_client_refuses_a_20mib_line_with_bounded_allocation() {
    let _s = serial();
    // What holds today: the line buffer grows by doubling, so up to twice the limit.
    mcp_line_over_limit(2 * ukload::mcp::MAX_FRAME_LEN);
}

/// A line just under the 10 MiB limit must not make the MCP client's reader
/// allocate past the limit (plain doubling would allocate 16 MiB).
#[test]
fn mcp_client_line_buffer_never_exceeds_the_frame_limit() {
    let _s = serial();
    mcp_line_over_limit(ukload::mcp::MAX_FRAME_LEN + 2);
}
