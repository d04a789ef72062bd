//! Boot readiness: the first answer to a JSON-RPC `ukload/status` request
//! ([`jsonrpc::STATUS_METHOD`]) over vsock, or the first console line matching
//! a pattern. Retries with a short capped backoff so the resolution is a few
//! milliseconds, until a deadline.
//!
//! ukload-guest answers `ukload/status` with its [`PingInfo`]; a guest with
//! another agent that answers "method not found" (or another refusal a JSON-RPC
//! or MCP server gives to a method it does not serve, see [`answered_without_status`])
//! is up too, but reports nothing.

use crate::framing::Framing;
use crate::jsonrpc::{self, PingInfo};
use crate::launcher::Readiness;
use crate::vsock::{self, Endpoint};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How the launch command lines at the head of an instance's log begin
/// (written by the run, skipped by console readiness and log tails).
pub const LOG_HEADER_PREFIX: &str = "# ukload: ";

/// First retry delay after a failed attempt.
pub const BACKOFF_START: Duration = Duration::from_millis(1);
/// Largest retry delay: bounds how late a ready guest can be noticed.
pub const BACKOFF_MAX: Duration = Duration::from_millis(4);
/// Deadline of one connect attempt (handshake included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one `ukload/status` exchange once connected.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// A gap this long between two probe attempts means the harness was not
/// running (stopped by SIGSTOP, or starved): normally it is the backoff.
const STALL_GAP: Duration = Duration::from_millis(500);
/// How long the one last probe after such a stall may take.
const FINAL_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Whether a probe whose deadline passed at `now` gets one last attempt:
/// only once (`final_chance`), and only if the harness was not running for a
/// while (no attempt since `last_try` for longer than [`STALL_GAP`]). The new
/// deadline, if so.
pub(crate) fn last_chance(
    now: Instant,
    last_try: Instant,
    final_chance: &mut bool,
) -> Option<Instant> {
    if *final_chance && now.duration_since(last_try) > STALL_GAP {
        *final_chance = false;
        Some(now + FINAL_PROBE_TIMEOUT)
    } else {
        None
    }
}

/// How often the console log is read.
pub const CONSOLE_POLL: Duration = Duration::from_millis(2);
/// Longest console line kept while waiting for its end.
const CONSOLE_LINE_MAX: usize = 64 * 1024;

/// The guest answered.
#[derive(Clone, Debug)]
pub struct Ready {
    /// When the answer arrived.
    pub at: Instant,
    /// `CLOCK_MONOTONIC` at the same moment.
    pub at_mono_ns: u64,
    /// The guest's own report (ukload-guest answers `ukload/status` with it).
    pub info: Option<PingInfo>,
    /// The console line that matched (console readiness).
    pub console_line: Option<String>,
    /// Attempts made (connects or log reads).
    pub attempts: u32,
    /// The successful attempt's vsock connection: connect plus the hybrid
    /// `CONNECT`/`OK` handshake, ms (probe readiness only).
    pub connect_ms: Option<f64>,
}

impl Ready {
    /// Ready now (stamped on both clocks).
    pub(crate) fn now(
        info: Option<PingInfo>,
        console_line: Option<String>,
        attempts: u32,
        connect_ms: Option<f64>,
    ) -> Ready {
        Ready {
            at: Instant::now(),
            at_mono_ns: crate::clock::monotonic_ns(),
            info,
            console_line,
            attempts,
            connect_ms,
        }
    }
}

/// Why an instance did not become ready.
#[derive(Clone, Debug, PartialEq)]
pub enum BootFailure {
    /// Nothing answered before the boot deadline.
    Timeout { after: Duration, last_error: String },
    /// The launcher ended before the guest was ready.
    LauncherExited { status: String },
    /// The guest answered something that is not a valid reply.
    Protocol(String),
    /// Connecting can never work (bad address, forbidden CID...).
    Unreachable(String),
    /// The harness is stopping (SIGINT/SIGTERM).
    Interrupted,
}

impl std::fmt::Display for BootFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootFailure::Timeout { after, last_error } => {
                write!(
                    f,
                    "no reply within {:.1}s (last: {last_error})",
                    after.as_secs_f64()
                )
            }
            BootFailure::LauncherExited { status } => {
                write!(f, "launcher exited before the guest was ready ({status})")
            }
            BootFailure::Protocol(m) => write!(f, "protocol error: {m}"),
            BootFailure::Unreachable(m) => write!(f, "unreachable: {m}"),
            BootFailure::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// Waits until the instance is ready.
///
/// `dead` is asked between attempts whether the instance can no longer
/// become ready (e.g. its launcher failed); `stop` is the harness's
/// interruption flag.
pub fn wait_ready(
    readiness: &Readiness,
    framing: Framing,
    log: ConsoleLog<'_>,
    started: Instant,
    deadline: Instant,
    stop: &AtomicBool,
    dead: &dyn Fn() -> Option<String>,
) -> Result<Ready, BootFailure> {
    match readiness {
        Readiness::Probe(ep) => probe(ep, framing, started, deadline, stop, dead),
        Readiness::Console(re) => console(re, log, started, deadline, stop, dead),
        Readiness::ConsoleThenProbe(re, ep) => {
            let seen = console(re, log, started, deadline, stop, dead)?;
            let mut r = probe(ep, framing, started, deadline, stop, dead)?;
            r.console_line = seen.console_line;
            r.attempts += seen.attempts;
            Ok(r)
        }
    }
}

/// Probe readiness: asks `ep` for `ukload/status` with a capped backoff
/// until the guest answers or the deadline passes.
fn probe(
    ep: &Endpoint,
    framing: Framing,
    started: Instant,
    deadline: Instant,
    stop: &AtomicBool,
    dead: &dyn Fn() -> Option<String>,
) -> Result<Ready, BootFailure> {
    let mut backoff = BACKOFF_START;
    let mut attempts = 0u32;
    let mut last_error = String::from("not tried");
    let mut deadline = deadline;
    let mut last_try = Instant::now();
    let mut final_chance = true;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(BootFailure::Interrupted);
        }
        let now = Instant::now();
        if now >= deadline {
            // The deadline passed while we were not running (the harness was
            // stopped, or starved): the guest gets one last probe before it
            // is blamed for our stall.
            if let Some(d) = last_chance(now, last_try, &mut final_chance) {
                deadline = d;
            } else {
                return Err(BootFailure::Timeout {
                    after: now - started,
                    last_error,
                });
            }
        }
        attempts += 1;
        match probe_once(ep, framing, now, deadline, attempts)? {
            Attempt::Ready(ready) => return Ok(ready),
            Attempt::Retry(why) => last_error = why,
        }
        if let Some(why) = dead() {
            return Err(BootFailure::LauncherExited { status: why });
        }
        last_try = Instant::now();
        std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// How one probe attempt that did not fail for good ended.
enum Attempt {
    /// The guest answered.
    Ready(Ready),
    /// Not yet, and why (the guest may still come up).
    Retry(String),
}

/// One probe attempt (number `attempts`, started at `now`): connect to `ep`
/// and ask for `ukload/status`. `Err` when the guest can never be reached or
/// answered something that is not a reply.
fn probe_once(
    ep: &Endpoint,
    framing: Framing,
    now: Instant,
    deadline: Instant,
    attempts: u32,
) -> Result<Attempt, BootFailure> {
    let conn_started = Instant::now();
    let mut stream = match vsock::connect(ep, CONNECT_TIMEOUT.min(deadline - now)) {
        Ok(stream) => stream,
        Err(e) if e.is_retryable() => return Ok(Attempt::Retry(e.to_string())),
        Err(e) => return Err(BootFailure::Unreachable(e.to_string())),
    };
    let connect_ms = conn_started.elapsed().as_secs_f64() * 1000.0;
    let ping_deadline = deadline.min(Instant::now() + PING_TIMEOUT);
    let reply = jsonrpc::call(
        &mut stream,
        framing,
        1,
        jsonrpc::STATUS_METHOD,
        serde_json::json!({}),
        ping_deadline,
    );
    Ok(match status_reply(ep, reply)? {
        Status::Up(info) => Attempt::Ready(Ready::now(info, None, attempts, Some(connect_ms))),
        Status::NotYet(why) => Attempt::Retry(why),
    })
}

/// What a `ukload/status` exchange says of the guest.
pub(crate) enum Status {
    /// It is up, with its report if it gave one.
    Up(Option<PingInfo>),
    /// Not yet, and why (the guest may still come up).
    NotYet(String),
}

/// Judges a `ukload/status` exchange with `ep`, for the blocking probe and
/// the readiness loop alike: a reply is up (`null` or anything but a
/// [`PingInfo`] reports nothing), as is a refusal that proves a JSON-RPC
/// server ([`answered_without_status`]); no reply or a peer that went away
/// is not yet; anything else is a protocol error.
pub(crate) fn status_reply(
    ep: &Endpoint,
    reply: Result<serde_json::Value, jsonrpc::CallError>,
) -> Result<Status, BootFailure> {
    match reply {
        Ok(v) => Ok(Status::Up(serde_json::from_value::<PingInfo>(v).ok())),
        Err(e) if answered_without_status(&e) => Ok(Status::Up(None)),
        Err(jsonrpc::CallError::TimedOut { .. }) => {
            Ok(Status::NotYet(format!("ping to {ep}: no reply")))
        }
        // The connection was accepted then dropped: the guest
        // is still coming up (a VMM accepts before the guest listens).
        Err(jsonrpc::CallError::Closed)
        | Err(jsonrpc::CallError::Frame(crate::framing::FrameError::Eof)) => {
            Ok(Status::NotYet(format!("{ep}: closed before replying")))
        }
        Err(other) => Err(BootFailure::Protocol(format!("{ep}: {other}"))),
    }
}

/// Whether `e` is a guest's refusal of `ukload/status` that still proves it is
/// up and speaking JSON-RPC: "method not found" (−32601), invalid params
/// (−32602: a server that checks params before the method) or MCP's
/// unsupported protocol version (−32022: a 2026-07-28 server wants `_meta`).
fn answered_without_status(e: &jsonrpc::CallError) -> bool {
    matches!(
        e,
        jsonrpc::CallError::Rpc { code, .. }
            if *code == jsonrpc::METHOD_NOT_FOUND
                || *code == jsonrpc::INVALID_PARAMS
                || *code == jsonrpc::UNSUPPORTED_PROTOCOL_VERSION
    )
}

/// Where an instance's console goes: its log, of which the first `skip`
/// bytes are ukload's own header (the launch command lines).
#[derive(Clone, Copy, Debug)]
pub struct ConsoleLog<'a> {
    pub path: &'a Path,
    pub skip: u64,
}

/// Reads a growing log file from where it left off and finds the first
/// complete line matching a pattern. Shared by the blocking console wait and
/// the readiness loop.
pub(crate) struct ConsoleTail {
    file: Option<File>,
    pos: u64,
    line: Vec<u8>,
    buf: Vec<u8>,
}

impl ConsoleTail {
    /// A tail that starts reading at byte `pos` (what precedes it is not
    /// the console: ukload's own header lines).
    pub(crate) fn at(pos: u64) -> Self {
        ConsoleTail {
            file: None,
            pos,
            line: Vec::new(),
            buf: vec![0u8; 16 * 1024],
        }
    }

    /// Reads what was appended since the last call; the first new line
    /// matching `re`, if any.
    pub(crate) fn poll(&mut self, re: &regex_lite::Regex, log: &Path) -> Option<String> {
        if self.file.is_none() {
            self.file = File::open(log).ok();
        }
        let f = self.file.as_mut()?;
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return None;
        }
        while let Ok(n) = f.read(&mut self.buf) {
            if n == 0 {
                break;
            }
            self.pos += n as u64;
            for &b in &self.buf[..n] {
                if b == b'\n' {
                    let text = String::from_utf8_lossy(&self.line).into_owned();
                    self.line.clear();
                    if re.is_match(&text) {
                        // Later bytes are re-read from here if asked again.
                        return Some(text);
                    }
                } else if self.line.len() < CONSOLE_LINE_MAX {
                    self.line.push(b);
                }
            }
        }
        None
    }
}

/// The console failure after the deadline.
pub(crate) fn console_timeout(re: &regex_lite::Regex, log: &Path, after: Duration) -> BootFailure {
    BootFailure::Timeout {
        after,
        last_error: format!(
            "no console line matching /{}/ in {}",
            re.as_str(),
            log.display()
        ),
    }
}

fn console(
    re: &regex_lite::Regex,
    log: ConsoleLog<'_>,
    started: Instant,
    deadline: Instant,
    stop: &AtomicBool,
    dead: &dyn Fn() -> Option<String>,
) -> Result<Ready, BootFailure> {
    let mut tail = ConsoleTail::at(log.skip);
    let log = log.path;
    let mut attempts = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(BootFailure::Interrupted);
        }
        attempts += 1;
        if let Some(text) = tail.poll(re, log) {
            return Ok(Ready::now(None, Some(text), attempts, None));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(console_timeout(re, log, now - started));
        }
        if let Some(why) = dead() {
            return Err(BootFailure::LauncherExited { status: why });
        }
        std::thread::sleep(CONSOLE_POLL.min(deadline - now));
    }
}

/// `cid=N` in a console line, if present.
pub fn cid_in_line(line: &str) -> Option<u32> {
    let at = line.find("cid=")? + 4;
    let digits: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Last `n` lines of a log, for error messages.
pub fn log_tail(log: &Path, n: usize) -> Vec<String> {
    const TAIL_BYTES: u64 = 16 * 1024;
    let Ok(mut f) = File::open(log) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut s = Vec::new();
    let _ = f.take(TAIL_BYTES).read_to_end(&mut s);
    let text = String::from_utf8_lossy(&s);
    // ukload's own header lines (the launch commands) are not the guest's.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(LOG_HEADER_PREFIX))
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_is_read_from_the_ready_line() {
        assert_eq!(
            cid_in_line("ukload-guest: ready cid=217 port=5252"),
            Some(217)
        );
        assert_eq!(cid_in_line("ukload-guest: ready cid=- port=5252"), None);
    }
}
