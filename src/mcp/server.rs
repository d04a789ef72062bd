//! A minimal MCP server over the built-in tools: what the guest agent answers on
//! its vsock port when it runs no MCP server of its own.
//!
//! [`handle_request`] is the method dispatch; [`handle_message`] and
//! [`handle_payload`] add the JSON-RPC envelope (ids, notifications get no reply,
//! -32700 / -32600 / -32601), so a server loop is: read a frame, call
//! `handle_payload`, write back what it returns, if anything.

use serde_json::{json, Value};

use super::error::codes::{INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR};
use super::tools::{builtin_tools, call_builtin};
use super::{LATEST_PROTOCOL_VERSION, SUPPORTED_PROTOCOL_VERSIONS};

/// `serverInfo.name` of the built-in server.
pub const SERVER_NAME: &str = "ukload-builtin-tools";

/// The revision to answer to a client that asked for `requested`: the same one if
/// supported, otherwise the newest this side speaks (the client then decides).
pub fn negotiate_version(requested: Option<&str>) -> &'static str {
    SUPPORTED_PROTOCOL_VERSIONS
        .iter()
        .copied()
        .find(|v| Some(*v) == requested)
        .unwrap_or(LATEST_PROTOCOL_VERSION)
}

/// Handles one request by method: `initialize` (version negotiation), `ping`,
/// `tools/list`, `tools/call` over the built-in tools. `None` for a method this
/// server does not know (the caller answers -32601). Notifications must not be
/// passed here: they get no reply.
pub fn handle_request(method: &str, params: Option<Value>) -> Option<Result<Value, (i64, String)>> {
    let params = params.unwrap_or(Value::Null);
    Some(match method {
        "initialize" => Ok(json!({
            "protocolVersion": negotiate_version(params.get("protocolVersion").and_then(Value::as_str)),
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION")},
        })),
        "ping" => Ok(json!({})),
        "tools/list" => match params.get("cursor") {
            // Everything fits on one page, so no cursor was ever handed out.
            Some(c) if !c.is_null() => Err((INVALID_PARAMS, format!("Invalid cursor {c}"))),
            _ => Ok(json!({ "tools": builtin_tools() })),
        },
        "tools/call" => match params.get("name").and_then(Value::as_str) {
            Some(name) => call_builtin(name, params.get("arguments").unwrap_or(&Value::Null)),
            None => Err((
                INVALID_PARAMS,
                "tools/call needs params {name: string, arguments?: object}".into(),
            )),
        },
        _ => return None,
    })
}

fn error_response(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// Handles one decoded JSON-RPC message; returns the response to send, or `None`
/// (notifications and responses get no reply).
pub fn handle_message(msg: &Value) -> Option<Value> {
    let Some(obj) = msg.as_object() else {
        return Some(error_response(
            Value::Null,
            INVALID_REQUEST,
            "Invalid Request: expected a JSON-RPC object",
        ));
    };
    let id = obj.get("id").cloned();
    let valid_id = |id: &Value| id.is_string() || id.is_number();
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        if obj.contains_key("result") || obj.contains_key("error") {
            return None;
        }
        let id = id.filter(valid_id).unwrap_or(Value::Null);
        return Some(error_response(
            id,
            INVALID_REQUEST,
            "Invalid Request: no method",
        ));
    };
    let id = id?;
    if !valid_id(&id) || obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        let id = if valid_id(&id) { id } else { Value::Null };
        return Some(error_response(
            id,
            INVALID_REQUEST,
            "Invalid Request: needs \"jsonrpc\":\"2.0\" and a string or number id",
        ));
    }
    let params = obj.get("params").cloned();
    Some(match handle_request(method, params) {
        Some(Ok(result)) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Some(Err((code, message))) => error_response(id, code, message),
        None => error_response(id, METHOD_NOT_FOUND, format!("Method not found: {method}")),
    })
}

/// Handles one frame's bytes: -32700 with id null if it is not JSON, otherwise
/// [`handle_message`].
pub fn handle_payload(payload: &[u8]) -> Option<Value> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(msg) => handle_message(&msg),
        Err(e) => Some(error_response(
            Value::Null,
            PARSE_ERROR,
            format!("Parse error: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_negotiates_the_version() {
        for v in SUPPORTED_PROTOCOL_VERSIONS {
            let r = handle_request("initialize", Some(json!({"protocolVersion": v})))
                .unwrap()
                .unwrap();
            assert_eq!(r["protocolVersion"], v);
            assert_eq!(r["capabilities"]["tools"], json!({"listChanged": false}));
        }
        let r = handle_request("initialize", Some(json!({"protocolVersion": "2099-01-01"})))
            .unwrap()
            .unwrap();
        assert_eq!(r["protocolVersion"], LATEST_PROTOCOL_VERSION);
        let r = handle_request("initialize", None).unwrap().unwrap();
        assert_eq!(r["protocolVersion"], LATEST_PROTOCOL_VERSION);
    }

    #[test]
    fn tools_list_and_call_dispatch_to_the_builtins() {
        let r = handle_request("tools/list", None).unwrap().unwrap();
        assert_eq!(r["tools"].as_array().unwrap().len(), 4);
        assert!(r.get("nextCursor").is_none());
        assert_eq!(
            handle_request("tools/list", Some(json!({"cursor": "x"})))
                .unwrap()
                .unwrap_err()
                .0,
            -32602
        );
        let r = handle_request(
            "tools/call",
            Some(json!({"name": "echo", "arguments": {"message": "hi"}})),
        );
        assert_eq!(r.unwrap().unwrap()["content"][0]["text"], "Echo: hi");
        let r = handle_request("tools/call", Some(json!({"arguments": {}})))
            .unwrap()
            .unwrap_err();
        assert_eq!(r.0, -32602);
        assert_eq!(handle_request("ping", None).unwrap().unwrap(), json!({}));
        assert!(handle_request("resources/list", None).is_none());
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
    }
}
