//! JSON-RPC 2.0 messages (as used by MCP and by the boot probe's `ping`),
//! and the one table of error codes (JSON-RPC's own and MCP's).
//!
//! [`parse`] decodes one frame into a [`Message`], saying precisely what was
//! wrong when it cannot; the builders make the four message shapes; [`call`]
//! is the one-shot synchronous request/response the boot probe uses, bounded
//! by an `Instant` deadline.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::framing::{write_frame, FrameError, FrameReader, Framing, Timeouts};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist or is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters (MCP also uses it for an unknown tool).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal JSON-RPC error.
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28: the request's protocol version is not one the server
/// supports; `data: {requested, supported}`.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The only protocol version accepted in the `jsonrpc` member.
pub const VERSION: &str = "2.0";

/// Shortest read timeout `call` sets: std rejects a zero timeout, and a
/// deadline a few microseconds away is better served by one short wait.
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(1);

/// Longest single blocking read while waiting for a reply: the deadline is
/// re-checked at least this often, so a peer that sends a few bytes and then
/// goes silent cannot hold `call` past its deadline by a whole read timeout.
const READ_SLICE: Duration = Duration::from_millis(50);

/// The guest agent's own method, answered with [`PingInfo`]: what the boot
/// probe sends (MCP's `ping` answers `{}`, and the 2026-07-28 revision has no
/// `ping` at all, so the probe's report needs a method of its own).
pub const STATUS_METHOD: &str = "ukload/status";

/// What the guest agent answers to [`STATUS_METHOD`]: enough to split a boot
/// into VMM, guest and probe time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingInfo {
    /// Guest agent's pid (1 inside a VM).
    pub pid: u32,
    /// The CID the guest really has (from the vsock device, or given to it in process mode).
    pub cid: Option<u32>,
    /// Port it listens on.
    pub port: u32,
    /// CLOCK_MONOTONIC when the agent process started.
    pub started_mono_ns: u64,
    /// CLOCK_MONOTONIC when the listener became ready.
    pub ready_mono_ns: u64,
    /// CLOCK_BOOTTIME when the listener became ready (time since the guest kernel booted).
    pub ready_boottime_ns: u64,
    /// CLOCK_MONOTONIC when this reply was made.
    pub now_mono_ns: u64,
    /// Agent version.
    pub agent: String,
}

/// A decoded JSON-RPC message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
        params: Option<Value>,
    },
    Response {
        id: Value,
        result: Value,
    },
    Error {
        id: Value,
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

impl Message {
    /// The message's id (`None` for a notification).
    pub fn id(&self) -> Option<&Value> {
        match self {
            Message::Request { id, .. }
            | Message::Response { id, .. }
            | Message::Error { id, .. } => Some(id),
            Message::Notification { .. } => None,
        }
    }

    /// The JSON object for this message (inverse of [`parse`]).
    pub fn to_value(&self) -> Value {
        let mut v = match self {
            Message::Request { id, method, .. } => {
                json!({"jsonrpc": VERSION, "id": id, "method": method})
            }
            Message::Notification { method, .. } => json!({"jsonrpc": VERSION, "method": method}),
            Message::Response { id, result } => response(id.clone(), result.clone()),
            Message::Error {
                id,
                code,
                message,
                data,
            } => {
                let mut v = error_response(id.clone(), *code, message);
                if let Some(d) = data {
                    v["error"]["data"] = d.clone();
                }
                v
            }
        };
        if let Message::Request {
            params: Some(p), ..
        }
        | Message::Notification {
            params: Some(p), ..
        } = self
        {
            v["params"] = p.clone();
        }
        v
    }
}

/// Builds a request object.
pub fn request(id: u64, method: &str, params: Value) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Builds a notification (a request without id: it gets no reply).
pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": VERSION, "method": method, "params": params})
}

/// Builds a success response echoing the request's `id`.
pub fn response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": VERSION, "id": id, "result": result})
}

/// Builds an error response; `id` is `null` when the request's id is unknown
/// (parse errors).
pub fn error_response(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": VERSION, "id": id, "error": {"code": code, "message": message}})
}

/// Serializes a message for [`write_frame`]. Compact `serde_json` output
/// escapes control characters, so it never contains a raw newline.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serializing a serde_json::Value cannot fail")
}

/// Why a frame is not a JSON-RPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not JSON at all (serde_json's description, with line and column).
    /// Includes nesting deeper than serde_json's recursion limit of 128.
    NotJson(String),
    /// The bytes are not UTF-8.
    NotUtf8,
    /// JSON, but not an object (batches are arrays and are not supported:
    /// MCP dropped batching in 2025-06-18).
    NotObject,
    /// `jsonrpc` member missing or not `"2.0"`.
    BadVersion,
    /// An object with the wrong members; says which.
    Invalid(String),
}

impl ParseError {
    /// The JSON-RPC error code to answer with.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::NotJson(_) | ParseError::NotUtf8 => PARSE_ERROR,
            _ => INVALID_REQUEST,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::NotJson(e) => write!(f, "not JSON: {e}"),
            ParseError::NotUtf8 => f.write_str("not UTF-8 text"),
            ParseError::NotObject => f.write_str("not a JSON object (batches are not supported)"),
            ParseError::BadVersion => f.write_str("\"jsonrpc\" member missing or not \"2.0\""),
            ParseError::Invalid(what) => write!(f, "invalid JSON-RPC message: {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Decodes one frame.
pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    // serde_json's default recursion limit (128) stays on: deep nesting is
    // an error, not a stack overflow.
    let value: Value =
        serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
    from_value(value)
}

/// Decodes an already parsed JSON value.
pub fn from_value(value: Value) -> Result<Message, ParseError> {
    let Value::Object(mut obj) = value else {
        return Err(ParseError::NotObject);
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some(VERSION) {
        return Err(ParseError::BadVersion);
    }
    let id = obj.remove("id");
    if let Some(id) = &id {
        if !matches!(id, Value::Null | Value::Number(_) | Value::String(_)) {
            return Err(ParseError::Invalid(
                "\"id\" must be a number, a string or null".into(),
            ));
        }
    }
    if let Some(method) = obj.remove("method") {
        let Value::String(method) = method else {
            return Err(ParseError::Invalid("\"method\" must be a string".into()));
        };
        let params = obj.remove("params");
        if let Some(p) = &params {
            if !matches!(p, Value::Object(_) | Value::Array(_)) {
                return Err(ParseError::Invalid(format!(
                    "\"params\" of {method:?} must be an object or an array"
                )));
            }
        }
        return Ok(match id {
            Some(id) => Message::Request { id, method, params },
            None => Message::Notification { method, params },
        });
    }
    let Some(id) = id else {
        return Err(ParseError::Invalid(
            "neither \"method\" nor \"id\": not a request, notification or response".into(),
        ));
    };
    match (obj.remove("result"), obj.remove("error")) {
        (Some(result), None) => Ok(Message::Response { id, result }),
        (None, Some(Value::Object(mut err))) => {
            let code = err.get("code").and_then(Value::as_i64).ok_or_else(|| {
                ParseError::Invalid("\"error.code\" missing or not an integer".into())
            })?;
            let message = match err.remove("message") {
                Some(Value::String(m)) => m,
                _ => {
                    return Err(ParseError::Invalid(
                        "\"error.message\" missing or not a string".into(),
                    ))
                }
            };
            Ok(Message::Error {
                id,
                code,
                message,
                data: err.remove("data"),
            })
        }
        (None, Some(_)) => Err(ParseError::Invalid("\"error\" must be an object".into())),
        (Some(_), Some(_)) => Err(ParseError::Invalid(
            "response has both \"result\" and \"error\"".into(),
        )),
        (None, None) => Err(ParseError::Invalid(
            "response has neither \"result\" nor \"error\"".into(),
        )),
    }
}

/// Why [`call`] got no result.
#[derive(Debug)]
pub enum CallError {
    /// The request could not be written, or a reply frame not read.
    Frame(FrameError),
    /// A reply frame that is not a JSON-RPC message.
    Malformed(ParseError),
    /// A response for another request.
    WrongId { expected: u64, got: Value },
    /// The peer answered with a JSON-RPC error.
    Rpc { code: i64, message: String },
    /// The deadline passed before the response arrived.
    TimedOut { method: String },
    /// The peer closed the stream before answering.
    Closed,
    /// Setting a socket timeout failed.
    Io(io::Error),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Frame(e) => write!(f, "transport: {e}"),
            CallError::Malformed(e) => write!(f, "malformed frame: {e}"),
            CallError::WrongId { expected, got } => {
                write!(f, "reply id {got} does not match request id {expected}")
            }
            CallError::Rpc { code, message } => write!(f, "error {code} from peer: {message}"),
            CallError::TimedOut { method } => {
                write!(f, "no reply to {method:?} before the deadline")
            }
            CallError::Closed => f.write_str("peer closed the connection before replying"),
            CallError::Io(e) => write!(f, "setting a socket timeout: {e}"),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Frame(e) => Some(e),
            CallError::Malformed(e) => Some(e),
            CallError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Time left before `deadline`, or `None` if it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.max(MIN_READ_TIMEOUT))
}

/// Sends one request and waits for its response, all before `deadline`.
///
/// Notifications and requests from the peer that arrive meanwhile are
/// skipped (a one-shot caller has nothing to say to them). With line framing
/// bytes that arrive after the response in the same read are dropped with
/// the internal reader: for a conversation use [`call_on`] with one
/// long-lived [`FrameReader`]. The stream's read and write timeouts are
/// restored before returning.
pub fn call<S: Read + Write + Timeouts>(
    stream: &mut S,
    framing: Framing,
    id: u64,
    method: &str,
    params: Value,
    deadline: Instant,
) -> Result<Value, CallError> {
    let mut reader = FrameReader::new(stream, framing);
    call_on(&mut reader, id, method, params, deadline)
}

/// [`call`] over a long-lived reader, so that nothing read past the
/// response is lost. The request is written to `reader.get_mut()`.
pub fn call_on<S: Read + Write + Timeouts>(
    reader: &mut FrameReader<S>,
    id: u64,
    method: &str,
    params: Value,
    deadline: Instant,
) -> Result<Value, CallError> {
    let saved_read = reader.get_ref().read_timeout().map_err(CallError::Io)?;
    let saved_write = reader.get_ref().write_timeout().map_err(CallError::Io)?;
    let result = call_inner(reader, id, method, params, deadline);
    let restore_read = reader.get_ref().set_read_timeout(saved_read);
    let restore_write = reader.get_ref().set_write_timeout(saved_write);
    let value = result?;
    restore_read.and(restore_write).map_err(CallError::Io)?;
    Ok(value)
}

fn call_inner<S: Read + Write + Timeouts>(
    reader: &mut FrameReader<S>,
    id: u64,
    method: &str,
    params: Value,
    deadline: Instant,
) -> Result<Value, CallError> {
    let timed_out = || CallError::TimedOut {
        method: method.to_string(),
    };
    let framing = reader.framing();
    let left = remaining(deadline).ok_or_else(timed_out)?;
    reader
        .get_ref()
        .set_write_timeout(Some(left))
        .map_err(CallError::Io)?;
    let bytes = to_bytes(&request(id, method, params));
    match write_frame(reader.get_mut(), framing, &bytes) {
        Ok(()) => {}
        Err(FrameError::TimedOut) => return Err(timed_out()),
        Err(e) => return Err(CallError::Frame(e)),
    }
    let want = Value::from(id);
    // Bound the whole reply, not only each read: a slow-loris peer sending a
    // byte per read timeout would otherwise keep `read_frame` going forever.
    reader.set_deadline(Some(deadline));
    let result = await_reply(reader, id, &want, deadline, &timed_out);
    reader.set_deadline(None);
    result
}

/// Reads frames until the response to `id`, or the deadline.
fn await_reply<S: Read + Write + Timeouts>(
    reader: &mut FrameReader<S>,
    id: u64,
    want: &Value,
    deadline: Instant,
    timed_out: &dyn Fn() -> CallError,
) -> Result<Value, CallError> {
    loop {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        reader
            .get_ref()
            .set_read_timeout(Some(left.min(READ_SLICE)))
            .map_err(CallError::Io)?;
        let frame = match reader.read_frame() {
            Ok(f) => f,
            // Loop: the deadline check above decides whether to wait again.
            Err(FrameError::TimedOut) => continue,
            Err(FrameError::Eof) => return Err(CallError::Closed),
            Err(e) => return Err(CallError::Frame(e)),
        };
        if let Some(r) = classify_reply(&frame, id, want) {
            return r;
        }
    }
}

/// What one frame read while waiting for the response to request `id`
/// (`want` is `id` as a JSON value) means: `None` for a notification or a
/// request of the peer (skip it, keep reading), else the call's outcome.
pub fn classify_reply(frame: &[u8], id: u64, want: &Value) -> Option<Result<Value, CallError>> {
    let msg = match parse(frame) {
        Ok(m) => m,
        Err(e) => return Some(Err(CallError::Malformed(e))),
    };
    match msg {
        Message::Notification { .. } | Message::Request { .. } => None,
        Message::Response { id: got, result } => Some(if &got == want {
            Ok(result)
        } else {
            Err(CallError::WrongId { expected: id, got })
        }),
        Message::Error {
            id: got,
            code,
            message,
            ..
        } => {
            // A null id answers a request the peer could not read: ours.
            Some(if &got == want || got.is_null() {
                Err(CallError::Rpc { code, message })
            } else {
                Err(CallError::WrongId { expected: id, got })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn builders_parse_back() {
        let cases = [
            request(3, "ping", json!({})),
            notification("notifications/initialized", json!({})),
            response(json!("a"), json!({"ok": true})),
            error_response(Value::Null, PARSE_ERROR, "bad"),
        ];
        for v in cases {
            let m = parse(&to_bytes(&v)).unwrap();
            assert_eq!(m.to_value(), v);
        }
    }

    #[test]
    fn parse_names_what_is_wrong() {
        assert_eq!(parse(b"[1]"), Err(ParseError::NotObject));
        assert_eq!(
            parse(br#"{"id":1,"method":"x"}"#),
            Err(ParseError::BadVersion)
        );
        assert_eq!(parse(b"\xff"), Err(ParseError::NotUtf8));
        assert!(matches!(parse(b"{"), Err(ParseError::NotJson(_))));
        let e = parse(br#"{"jsonrpc":"2.0","id":1,"method":7}"#).unwrap_err();
        assert!(e.to_string().contains("method"), "{e}");
        let e = parse(br#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("id"), "{e}");
        let e = parse(br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#).unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(ParseError::NotJson(_))
        ));
    }

    fn pair() -> (UnixStream, FrameReader<UnixStream>) {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (a, FrameReader::new(b, Framing::Line))
    }

    #[test]
    fn call_skips_notifications_and_rejects_other_ids() {
        let (mut client, mut peer) = pair();
        let server = std::thread::spawn(move || {
            let req = parse(&peer.read_frame().unwrap()).unwrap();
            assert_eq!(req.id(), Some(&json!(3)));
            for v in [
                notification("progress", json!({})),
                response(json!(7), json!(1)),
            ] {
                write_frame(peer.get_mut(), Framing::Line, &to_bytes(&v)).unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = call(&mut client, Framing::Line, 3, "ping", json!({}), deadline).unwrap_err();
        assert!(
            matches!(err, CallError::WrongId { expected: 3, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "reply id 7 does not match request id 3");
        server.join().unwrap();
    }

    #[test]
    fn call_times_out_at_the_deadline_and_restores_timeouts() {
        let (mut client, _peer) = pair();
        let before = Some(Duration::from_secs(30));
        client.set_read_timeout(before).unwrap();
        let start = Instant::now();
        let wait = Duration::from_millis(200);
        let err = call(
            &mut client,
            Framing::Line,
            1,
            "ping",
            json!({}),
            start + wait,
        )
        .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, CallError::TimedOut { .. }), "{err}");
        assert!(
            took >= wait && took < wait + Duration::from_secs(5),
            "took {took:?}"
        );
        assert_eq!(client.read_timeout().unwrap(), before);
    }

    #[test]
    fn slow_loris_reply_cannot_hold_call_past_its_deadline() {
        let (mut client, mut peer) = pair();
        let server = std::thread::spawn(move || {
            peer.read_frame().unwrap();
            let reply = to_bytes(&response(json!(1), json!({"pad": "x".repeat(200)})));
            // One byte every 10 ms: each read returns well within any timeout.
            for b in reply {
                std::thread::sleep(Duration::from_millis(10));
                if std::io::Write::write_all(peer.get_mut(), &[b]).is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let wait = Duration::from_millis(300);
        let err = call(
            &mut client,
            Framing::Line,
            1,
            "ping",
            json!({}),
            start + wait,
        )
        .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, CallError::TimedOut { .. }), "{err}");
        assert!(
            took < wait + Duration::from_millis(500),
            "slow-loris held call for {took:?}"
        );
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn call_reports_rpc_errors_and_malformed_replies() {
        let (mut client, mut peer) = pair();
        let server = std::thread::spawn(move || {
            peer.read_frame().unwrap();
            let e = error_response(json!(1), METHOD_NOT_FOUND, "method not found: x");
            write_frame(peer.get_mut(), Framing::Line, &to_bytes(&e)).unwrap();
            peer.read_frame().unwrap();
            write_frame(peer.get_mut(), Framing::Line, b"garbage").unwrap();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = call(&mut client, Framing::Line, 1, "x", json!({}), deadline).unwrap_err();
        assert!(
            matches!(
                err,
                CallError::Rpc {
                    code: METHOD_NOT_FOUND,
                    ..
                }
            ),
            "{err}"
        );
        let err = call(&mut client, Framing::Line, 2, "x", json!({}), deadline).unwrap_err();
        assert!(
            err.to_string().starts_with("malformed frame: not JSON"),
            "{err}"
        );
        server.join().unwrap();
    }
}
