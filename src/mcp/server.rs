//! A dual-era MCP server over the built-in tools: what the guest agent answers on
//! its vsock port when it runs no MCP server of its own. The same answers as
//! `examples/test_mcp_servers/echo_server.js`, message for message.
//!
//! [`ServerSession`] is the state of one connection and the method dispatch,
//! without I/O: it turns each incoming message into an [`Outcome`] (a reply to
//! send now, a tool answer to send after a delay unless cancelled, a
//! cancellation, or nothing). The connection loop (`guest::tools::McpMode`)
//! does the I/O and the timing, so calls on one connection run concurrently.
//!
//! Eras (see `docs/mcp.md`):
//! - a request whose `params._meta` names a protocol version is served
//!   statelessly per 2026-07-28: its version is checked (−32022 with the
//!   supported list when unknown), `server/discover` answers versions,
//!   capabilities and identity, every result carries `resultType: "complete"`
//!   and the server's identity in `_meta`, `ping` does not exist;
//! - `initialize` selects legacy semantics for the connection (2024-11-05 …
//!   2025-11-25): version negotiation, `ping` → `{}`, and JSON-RPC batches
//!   when 2025-03-26 was negotiated (−32600 otherwise).
//!
//! [`handle_payload`] is a stateless convenience (a fresh session, delays not
//! applied) for tests and fuzzing.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::tools::{builtin_tools, call_builtin_timed};
use super::{
    meta, Era, BATCH_PROTOCOL_VERSION, LATEST_LEGACY_PROTOCOL_VERSION, LEGACY_PROTOCOL_VERSIONS,
    MODERN_PROTOCOL_VERSIONS,
};
use crate::jsonrpc::{
    INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
};

/// `serverInfo.name` of the built-in server.
pub const SERVER_NAME: &str = "ukload-builtin-tools";
/// Most `tools/call` requests one connection may have in flight; past it a
/// call is refused with [`INTERNAL_ERROR`] and [`TOO_MANY_IN_FLIGHT`].
pub const MAX_IN_FLIGHT: usize = 256;
/// Start of the error message for a call past [`MAX_IN_FLIGHT`].
pub const TOO_MANY_IN_FLIGHT: &str = "Too many requests in flight";
/// How often a delayed call with a `progressToken` reports progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// `ttlMs` on modern `server/discover` and `tools/list` results: the tool list
/// never changes while the server runs, but a client should ask again after
/// this long (a guest may be replaced).
pub const RESULT_TTL_MS: u64 = 60_000;

/// Which eras a server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EraSupport {
    /// Both: modern per request, legacy after `initialize` (the default).
    Dual,
    /// 2026-07-28 only: `initialize` is refused with −32022.
    ModernOnly,
    /// 2024-11-05 … 2025-11-25 only: `_meta` is ignored, `server/discover` is −32601.
    LegacyOnly,
}

impl std::str::FromStr for EraSupport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dual" => Ok(EraSupport::Dual),
            "modern" => Ok(EraSupport::ModernOnly),
            "legacy" => Ok(EraSupport::LegacyOnly),
            other => Err(format!(
                "unknown era {other:?}: expected dual, modern or legacy"
            )),
        }
    }
}

impl EraSupport {
    /// The revisions served, oldest first.
    pub fn versions(self) -> Vec<&'static str> {
        let legacy = LEGACY_PROTOCOL_VERSIONS.iter().copied();
        let modern = MODERN_PROTOCOL_VERSIONS.iter().copied();
        match self {
            EraSupport::Dual => legacy.chain(modern).collect(),
            EraSupport::ModernOnly => modern.collect(),
            EraSupport::LegacyOnly => legacy.collect(),
        }
    }

    fn modern(self) -> bool {
        self != EraSupport::LegacyOnly
    }

    fn legacy(self) -> bool {
        self != EraSupport::ModernOnly
    }
}

/// A tool answer to send later (after `delay`), unless the request is cancelled.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingCall {
    /// The request's id (`None` for a batch: not cancellable).
    pub id: Option<Value>,
    /// The complete JSON-RPC response (or array of responses) to send.
    pub response: Value,
    /// How long to wait before sending it.
    pub delay: Duration,
    /// `_meta.progressToken` of the request: progress is reported while waiting.
    pub progress_token: Option<Value>,
}

/// What to do with one incoming message.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Send this response now.
    Reply(Value),
    /// Send `response` after `delay` (a `tools/call`).
    Later(PendingCall),
    /// `notifications/cancelled`: drop the pending answer to this request id.
    Cancel(Value),
    /// Nothing to send (a notification, a stray response).
    Nothing,
}

/// The MCP state of one connection.
#[derive(Clone, Debug)]
pub struct ServerSession {
    support: EraSupport,
    /// The version `initialize` negotiated (legacy semantics), if any.
    legacy_version: Option<&'static str>,
}

fn error_response(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn server_info() -> Value {
    json!({"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION")})
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}})
}

/// A request's error before its method runs: (code, message, data).
type Refusal = (i64, String, Option<Value>);

impl ServerSession {
    pub fn new(support: EraSupport) -> Self {
        ServerSession {
            support,
            legacy_version: None,
        }
    }

    /// The version negotiated by `initialize`, if one was.
    pub fn legacy_version(&self) -> Option<&'static str> {
        self.legacy_version
    }

    /// Handles one frame's bytes: −32700 with id null if it is not JSON.
    pub fn handle_payload(&mut self, payload: &[u8]) -> Outcome {
        match serde_json::from_slice::<Value>(payload) {
            Ok(msg) => self.handle_value(&msg),
            Err(e) => Outcome::Reply(error_response(
                Value::Null,
                PARSE_ERROR,
                format!("Parse error: {e}"),
            )),
        }
    }

    /// Handles one decoded message (an object, or a batch array).
    pub fn handle_value(&mut self, msg: &Value) -> Outcome {
        match msg {
            Value::Array(items) => self.handle_batch(items),
            _ => self.handle_message(msg),
        }
    }

    /// A JSON-RPC batch: accepted only when 2025-03-26 was negotiated (that
    /// revision says MUST; later ones removed batches). The answers are sent
    /// together once the slowest call's delay has passed.
    fn handle_batch(&mut self, items: &[Value]) -> Outcome {
        if self.legacy_version != Some(BATCH_PROTOCOL_VERSION) {
            let why = match self.legacy_version {
                Some(v) => format!("protocol {v} has no JSON-RPC batches"),
                None => format!(
                    "JSON-RPC batches need protocol {BATCH_PROTOCOL_VERSION} negotiated by initialize"
                ),
            };
            return Outcome::Reply(error_response(
                Value::Null,
                INVALID_REQUEST,
                format!("Invalid Request: {why}"),
            ));
        }
        if items.is_empty() {
            return Outcome::Reply(error_response(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: empty batch",
            ));
        }
        let mut responses = Vec::new();
        let mut delay = Duration::ZERO;
        for item in items {
            match self.handle_message(item) {
                Outcome::Reply(r) => responses.push(r),
                Outcome::Later(call) => {
                    delay = delay.max(call.delay);
                    responses.push(call.response);
                }
                Outcome::Cancel(_) | Outcome::Nothing => {}
            }
        }
        if responses.is_empty() {
            // Only notifications: nothing is sent back.
            return Outcome::Nothing;
        }
        Outcome::Later(PendingCall {
            id: None,
            response: Value::Array(responses),
            delay,
            progress_token: None,
        })
    }

    fn handle_message(&mut self, msg: &Value) -> Outcome {
        let Some(obj) = msg.as_object() else {
            return Outcome::Reply(error_response(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: expected a JSON-RPC object",
            ));
        };
        let valid_id = |id: &Value| id.is_string() || id.is_number();
        let id = obj.get("id").cloned();
        let Some(method) = obj.get("method").and_then(Value::as_str) else {
            if obj.contains_key("result") || obj.contains_key("error") {
                return Outcome::Nothing;
            }
            let id = id.filter(valid_id).unwrap_or(Value::Null);
            return Outcome::Reply(error_response(
                id,
                INVALID_REQUEST,
                "Invalid Request: no method",
            ));
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return match id {
                None => Outcome::Nothing,
                Some(id) => Outcome::Reply(error_response(
                    if valid_id(&id) { id } else { Value::Null },
                    INVALID_REQUEST,
                    "Invalid Request: jsonrpc must be \"2.0\"",
                )),
            };
        }
        let params = obj.get("params");
        let Some(id) = id else {
            return self.notification(method, params);
        };
        if !valid_id(&id) {
            return Outcome::Reply(error_response(
                Value::Null,
                INVALID_REQUEST,
                "Invalid Request: id must be a string or a number",
            ));
        }
        if params.is_some_and(|p| !p.is_object()) {
            return Outcome::Reply(error_response(
                id,
                INVALID_PARAMS,
                "Invalid params: params must be an object",
            ));
        }
        let modern = self.support.modern() && method != "initialize" && has_modern_meta(params);
        let handled = if modern {
            self.modern_request(method, params)
        } else {
            self.legacy_request(method, params)
        };
        match handled {
            Ok((result, delay)) if delay.is_zero() => Outcome::Reply(json!({
                "jsonrpc": "2.0", "id": id, "result": result,
            })),
            Ok((result, delay)) => Outcome::Later(PendingCall {
                response: json!({"jsonrpc": "2.0", "id": id.clone(), "result": result}),
                id: Some(id),
                delay,
                progress_token: progress_token(params),
            }),
            Err((code, message, data)) => {
                let mut r = error_response(id, code, message);
                if let Some(data) = data {
                    r["error"]["data"] = data;
                }
                Outcome::Reply(r)
            }
        }
    }

    fn notification(&mut self, method: &str, params: Option<&Value>) -> Outcome {
        match method {
            "notifications/cancelled" => match params.and_then(|p| p.get("requestId")) {
                Some(id) if id.is_string() || id.is_number() => Outcome::Cancel(id.clone()),
                _ => Outcome::Nothing,
            },
            _ => Outcome::Nothing,
        }
    }

    /// A request in the modern era: version checked, `resultType` added.
    fn modern_request(
        &mut self,
        method: &str,
        params: Option<&Value>,
    ) -> Result<(Value, Duration), Refusal> {
        let m = params
            .and_then(|p| p.get("_meta"))
            .and_then(Value::as_object);
        let requested = m
            .and_then(|m| m.get(meta::PROTOCOL_VERSION))
            .and_then(Value::as_str);
        let Some(requested) = requested else {
            return Err((
                INVALID_PARAMS,
                format!(
                    "Invalid params: _meta[\"{}\"] must be a string",
                    meta::PROTOCOL_VERSION
                ),
                None,
            ));
        };
        if !MODERN_PROTOCOL_VERSIONS.contains(&requested) {
            return Err(self.unsupported(requested));
        }
        if !m
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
            .is_some_and(Value::is_object)
        {
            return Err((
                INVALID_PARAMS,
                format!(
                    "Invalid params: _meta[\"{}\"] must be an object",
                    meta::CLIENT_CAPABILITIES
                ),
                None,
            ));
        }
        let (mut result, delay) = match method {
            "server/discover" => (
                json!({
                    "supportedVersions": self.support.versions(),
                    "capabilities": capabilities(),
                    "ttlMs": RESULT_TTL_MS,
                    "cacheScope": "public",
                }),
                Duration::ZERO,
            ),
            "tools/list" => {
                let mut r = list_tools(params)?;
                r["ttlMs"] = json!(RESULT_TTL_MS);
                r["cacheScope"] = json!("public");
                (r, Duration::ZERO)
            }
            "tools/call" => call_tool(params)?,
            _ => return Err(not_found(method)),
        };
        result["resultType"] = json!("complete");
        result["_meta"] = json!({ meta::SERVER_INFO: server_info() });
        Ok((result, delay))
    }

    /// A request in the legacy era (after `initialize`, or without `_meta`).
    fn legacy_request(
        &mut self,
        method: &str,
        params: Option<&Value>,
    ) -> Result<(Value, Duration), Refusal> {
        if !self.support.legacy() {
            let requested = match method {
                "initialize" => params
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                _ => "",
            };
            return Err(self.unsupported(requested));
        }
        Ok(match method {
            "initialize" => {
                let asked = params
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str);
                let version = LEGACY_PROTOCOL_VERSIONS
                    .iter()
                    .copied()
                    .find(|v| Some(*v) == asked)
                    .unwrap_or(LATEST_LEGACY_PROTOCOL_VERSION);
                self.legacy_version = Some(version);
                (
                    json!({
                        "protocolVersion": version,
                        "capabilities": capabilities(),
                        "serverInfo": server_info(),
                    }),
                    Duration::ZERO,
                )
            }
            "ping" => (json!({}), Duration::ZERO),
            "tools/list" => (list_tools(params)?, Duration::ZERO),
            "tools/call" => call_tool(params)?,
            _ => return Err(not_found(method)),
        })
    }

    fn unsupported(&self, requested: &str) -> Refusal {
        let supported = self.support.versions();
        (
            UNSUPPORTED_PROTOCOL_VERSION,
            format!(
                "Unsupported protocol version {requested:?} (supported: {})",
                supported.join(", ")
            ),
            Some(json!({"requested": requested, "supported": supported})),
        )
    }
}

fn not_found(method: &str) -> Refusal {
    (
        METHOD_NOT_FOUND,
        format!("Method not found: {method}"),
        None,
    )
}

/// Whether `params._meta` names a protocol version: the mark of a modern request.
fn has_modern_meta(params: Option<&Value>) -> bool {
    params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(meta::PROTOCOL_VERSION))
        .is_some()
}

fn progress_token(params: Option<&Value>) -> Option<Value> {
    params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.is_string() || t.is_number())
        .cloned()
}

fn list_tools(params: Option<&Value>) -> Result<Value, Refusal> {
    match params.and_then(|p| p.get("cursor")) {
        // Everything fits on one page, so no cursor was ever handed out.
        Some(c) if !c.is_null() => Err((INVALID_PARAMS, format!("Invalid cursor {c}"), None)),
        _ => Ok(json!({ "tools": builtin_tools() })),
    }
}

fn call_tool(params: Option<&Value>) -> Result<(Value, Duration), Refusal> {
    let name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
    let Some(name) = name else {
        return Err((
            INVALID_PARAMS,
            "Invalid params: tools/call needs params {name: string, arguments?: object}".into(),
            None,
        ));
    };
    let args = params
        .and_then(|p| p.get("arguments"))
        .cloned()
        .unwrap_or(Value::Null);
    call_builtin_timed(name, &args).map_err(|(c, m)| (c, m, None))
}

/// The error for a `tools/call` past [`MAX_IN_FLIGHT`] on one connection.
pub fn too_many_in_flight(id: Value) -> Value {
    error_response(
        id,
        INTERNAL_ERROR,
        format!(
            "{TOO_MANY_IN_FLIGHT}: this connection already has {MAX_IN_FLIGHT} calls pending; \
             wait for one to finish or open another connection"
        ),
    )
}

/// A `notifications/progress` for `token`: `elapsed` of `total`.
pub fn progress_notification(token: &Value, elapsed: Duration, total: Duration) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {
            "progressToken": token,
            "progress": elapsed.as_millis() as u64,
            "total": total.as_millis() as u64,
            "message": "waiting for delay_ms",
        },
    })
}

/// Stateless convenience: a fresh dual-era session answers one frame, at once
/// (a requested delay is not applied). `None` when nothing is to be sent.
pub fn handle_payload(payload: &[u8]) -> Option<Value> {
    match ServerSession::new(EraSupport::Dual).handle_payload(payload) {
        Outcome::Reply(r) => Some(r),
        Outcome::Later(call) => Some(call.response),
        Outcome::Cancel(_) | Outcome::Nothing => None,
    }
}

/// The `_meta` a modern client puts on a request.
pub fn modern_request_meta(
    version: &str,
    client_name: &str,
    client_version: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(meta::PROTOCOL_VERSION.into(), json!(version));
    m.insert(meta::CLIENT_CAPABILITIES.into(), json!({}));
    m.insert(
        meta::CLIENT_INFO.into(),
        json!({"name": client_name, "version": client_version}),
    );
    m
}

/// The era a request message would be served in by a dual-era server.
pub fn request_era(msg: &Value) -> Era {
    if has_modern_meta(msg.get("params")) {
        Era::Modern
    } else {
        Era::Legacy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &mut ServerSession, msg: Value) -> Value {
        match s.handle_value(&msg) {
            Outcome::Reply(r) => r,
            Outcome::Later(c) => c.response,
            other => panic!("no reply to {msg}: {other:?}"),
        }
    }

    fn modern(method: &str, mut params: Value) -> Value {
        params["_meta"] = Value::Object(modern_request_meta("2026-07-28", "t", "1"));
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    }

    #[test]
    fn initialize_negotiates_a_legacy_version() {
        for v in LEGACY_PROTOCOL_VERSIONS {
            let mut s = ServerSession::new(EraSupport::Dual);
            let r = reply(
                &mut s,
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion": v}}),
            );
            assert_eq!(r["result"]["protocolVersion"], v);
            assert_eq!(s.legacy_version(), Some(v));
        }
        for asked in ["2099-01-01", "2026-07-28"] {
            let mut s = ServerSession::new(EraSupport::Dual);
            let r = reply(
                &mut s,
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion": asked}}),
            );
            assert_eq!(
                r["result"]["protocolVersion"],
                LATEST_LEGACY_PROTOCOL_VERSION
            );
        }
    }

    #[test]
    fn modern_requests_are_stateless_with_result_type_and_version_check() {
        let mut s = ServerSession::new(EraSupport::Dual);
        let r = reply(&mut s, modern("server/discover", json!({})));
        assert_eq!(r["result"]["resultType"], "complete");
        assert_eq!(
            r["result"]["supportedVersions"],
            json!([
                "2024-11-05",
                "2025-03-26",
                "2025-06-18",
                "2025-11-25",
                "2026-07-28"
            ])
        );
        assert_eq!(r["result"]["_meta"][meta::SERVER_INFO]["name"], SERVER_NAME);
        let r = reply(
            &mut s,
            modern(
                "tools/call",
                json!({"name": "echo", "arguments": {"message": "hi"}}),
            ),
        );
        assert_eq!(r["result"]["content"][0]["text"], "Echo: hi");
        assert_eq!(r["result"]["resultType"], "complete");
        let r = reply(&mut s, modern("ping", json!({})));
        assert_eq!(r["error"]["code"], METHOD_NOT_FOUND);
        let mut bad = modern("tools/list", json!({}));
        bad["params"]["_meta"][meta::PROTOCOL_VERSION] = json!("2099-01-01");
        let r = reply(&mut s, bad);
        assert_eq!(r["error"]["code"], UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(r["error"]["data"]["requested"], "2099-01-01");
        assert!(s.legacy_version().is_none());
    }

    #[test]
    fn era_support_limits_what_is_served() {
        let mut legacy = ServerSession::new(EraSupport::LegacyOnly);
        let r = reply(&mut legacy, modern("server/discover", json!({})));
        assert_eq!(r["error"]["code"], METHOD_NOT_FOUND);
        let mut m = ServerSession::new(EraSupport::ModernOnly);
        let r = reply(
            &mut m,
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}),
        );
        assert_eq!(r["error"]["code"], UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(r["error"]["data"]["supported"], json!(["2026-07-28"]));
    }

    #[test]
    fn batches_only_in_2025_03_26() {
        let batch = json!([{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]);
        let mut s = ServerSession::new(EraSupport::Dual);
        reply(
            &mut s,
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26"}}),
        );
        assert_eq!(
            reply(&mut s, batch.clone()),
            json!([{"jsonrpc":"2.0","id":2,"result":{}}])
        );
        let mut s = ServerSession::new(EraSupport::Dual);
        reply(
            &mut s,
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}),
        );
        assert_eq!(reply(&mut s, batch)["error"]["code"], INVALID_REQUEST);
    }

    #[test]
    fn delayed_calls_and_cancellation_are_outcomes() {
        let mut s = ServerSession::new(EraSupport::Dual);
        let out = s.handle_value(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
            "params":{"name":"echo","arguments":{"message":"x","delay_ms":1500},"_meta":{"progressToken":"p"}}}));
        let Outcome::Later(call) = out else {
            panic!("{out:?}")
        };
        assert_eq!(call.delay, Duration::from_millis(1500));
        assert_eq!(call.id, Some(json!(3)));
        assert_eq!(call.progress_token, Some(json!("p")));
        assert_eq!(
            s.handle_value(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}})),
            Outcome::Cancel(json!(3))
        );
    }

    #[test]
    fn envelope_errors_and_notifications() {
        let r = handle_payload(b"not json").unwrap();
        assert_eq!(r["id"], Value::Null);
        assert_eq!(r["error"]["code"], -32700);
        let r = handle_payload(br#"{"jsonrpc":"2.0","id":7,"method":"nope"}"#).unwrap();
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(7), json!(-32601))
        );
        assert!(
            handle_payload(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_none()
        );
        assert!(handle_payload(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_none());
        let r = handle_payload(br#"[1,2]"#).unwrap();
        assert_eq!(r["error"]["code"], -32600);
        let r = handle_payload(br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#).unwrap();
        assert_eq!(r, json!({"jsonrpc": "2.0", "id": "a", "result": {}}));
        let r = handle_payload(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
        )
        .unwrap();
        assert_eq!(r["error"]["code"], -32602);
        let r = handle_payload(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2}}}"#).unwrap();
        assert_eq!(r["result"]["isError"], true);
    }
}
