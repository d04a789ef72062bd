//! The four built-in tools, in Rust, with the same names, schemas and results as
//! `examples/test_mcp_servers/echo_server.js`, so a guest with nothing else inside
//! can execute tools and the tests can expect the same answers from both.
//!
//! - `echo {message: string}` → text `Echo: <message>`
//! - `add {a: number, b: number}` → text `<a> + <b> = <sum>`, `structuredContent {sum}`
//! - `get_timestamp {}` → Unix seconds as text and `structuredContent {timestamp}`
//! - `error_test {error_message?: string}` → a result with `isError: true` and the message
//!
//! Every tool accepts `delay_ms` (0..=60000): the server answers only after that
//! long ([`requested_delay`]; [`call_builtin`] itself never sleeps, so a
//! server can keep other requests going and drop a cancelled one).
//!
//! Arguments that break the tool's input schema are a *tool execution error*
//! (a result with `isError: true` naming the argument, SEP-1303), not a
//! JSON-RPC error; an unknown tool or `arguments` that are not an object stay
//! JSON-RPC −32602. `"arguments": null` is the same as no arguments.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::jsonrpc::INVALID_PARAMS;

/// Upper bound of the `delay_ms` argument, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;
/// What `error_test` reports when no `error_message` is given.
pub const DEFAULT_ERROR_MESSAGE: &str = "Intentional error for testing";
/// Largest integer an f64 holds exactly (2^53): sums below it print without a fraction.
const MAX_EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

fn delay_property() -> Value {
    json!({
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_DELAY_MS,
        "description": "Test aid: answer only after this many milliseconds",
    })
}

/// The `tools/list` entries of the built-in tools (name, description, inputSchema,
/// and outputSchema where the tool returns `structuredContent`).
pub fn builtin_tools() -> Vec<Value> {
    vec![
        json!({
            "name": "echo",
            "description": "Returns the message it is given, prefixed with \"Echo: \"",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "Text to echo back"},
                    "delay_ms": delay_property(),
                },
                "required": ["message"],
                "additionalProperties": false,
            },
        }),
        json!({
            "name": "add",
            "description": "Adds two numbers",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "a": {"type": "number", "description": "First addend"},
                    "b": {"type": "number", "description": "Second addend"},
                    "delay_ms": delay_property(),
                },
                "required": ["a", "b"],
                "additionalProperties": false,
            },
            "outputSchema": {
                "type": "object",
                "properties": {"sum": {"type": "number"}},
                "required": ["sum"],
            },
        }),
        json!({
            "name": "get_timestamp",
            "description": "Returns the current Unix time in seconds",
            "inputSchema": {
                "type": "object",
                "properties": {"delay_ms": delay_property()},
                "additionalProperties": false,
            },
            "outputSchema": {
                "type": "object",
                "properties": {"timestamp": {"type": "integer"}},
                "required": ["timestamp"],
            },
        }),
        json!({
            "name": "error_test",
            "description": "Always fails: returns a tool result with isError true and the given message",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "error_message": {"type": "string", "description": "Message of the failure"},
                    "delay_ms": delay_property(),
                },
                "additionalProperties": false,
            },
        }),
    ]
}

/// Runs built-in tool `name` with `args` (`Value::Null` means no arguments)
/// and returns at once (see [`requested_delay`] for when to answer).
///
/// `Ok` is the `tools/call` result object: a tool failure, and arguments that
/// break the tool's input schema, are `Ok` with `isError: true` and a message
/// naming the problem. `Err((code, message))` is a JSON-RPC error: −32602 for
/// an unknown tool or `arguments` that are not an object.
pub fn call_builtin(name: &str, args: &Value) -> Result<Value, (i64, String)> {
    call_builtin_timed(name, args).map(|(result, _)| result)
}

/// [`call_builtin`], with how long to wait before answering: the call's
/// [`requested_delay`], or zero when its arguments were refused.
pub fn call_builtin_timed(name: &str, args: &Value) -> Result<(Value, Duration), (i64, String)> {
    let tools = builtin_tools();
    let tool = tools
        .iter()
        .find(|t| t["name"] == name)
        .ok_or_else(|| (INVALID_PARAMS, format!("Unknown tool: {name}")))?;
    let empty = Value::Object(Map::new());
    let args = if args.is_null() { &empty } else { args };
    if !args.is_object() {
        return Err((
            INVALID_PARAMS,
            format!(
                "Invalid params: tools/call arguments must be an object, got {}",
                json_type(args)
            ),
        ));
    }
    if let Err(what) = validate_args(&tool["inputSchema"], args) {
        let mut r = text_result(format!("Invalid arguments for tool {name}: {what}"));
        r["isError"] = Value::Bool(true);
        return Ok((r, Duration::ZERO));
    }
    let result = match name {
        "echo" => text_result(format!(
            "Echo: {}",
            args["message"].as_str().unwrap_or_default()
        )),
        "add" => add(&args["a"], &args["b"]),
        "get_timestamp" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut r = text_result(now.to_string());
            r["structuredContent"] = json!({"timestamp": now});
            r
        }
        "error_test" => {
            let message = args
                .get("error_message")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_ERROR_MESSAGE);
            let mut r = text_result(message.to_string());
            r["isError"] = Value::Bool(true);
            r
        }
        other => return Err((INVALID_PARAMS, format!("Unknown tool: {other}"))),
    };
    Ok((result, requested_delay(args)))
}

/// How long to wait before answering a call with `args`: its `delay_ms`
/// (zero when absent or invalid: an invalid one made the call an error).
pub fn requested_delay(args: &Value) -> Duration {
    match args.get("delay_ms").and_then(Value::as_f64) {
        Some(ms) if (0.0..=MAX_DELAY_MS as f64).contains(&ms) && ms.fract() == 0.0 => {
            Duration::from_millis(ms as u64)
        }
        _ => Duration::ZERO,
    }
}

fn text_result(text: String) -> Value {
    json!({"content": [{"type": "text", "text": text}]})
}

fn add(a: &Value, b: &Value) -> Value {
    let sum = match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) if x.checked_add(y).is_some() => json!(x + y),
        _ => {
            let s = a.as_f64().unwrap_or_default() + b.as_f64().unwrap_or_default();
            if !s.is_finite() {
                let mut r = text_result(format!(
                    "Invalid arguments for tool add: {a} + {b} overflows"
                ));
                r["isError"] = Value::Bool(true);
                return r;
            }
            number_value(s)
        }
    };
    let mut r = text_result(format!(
        "{} + {} = {}",
        js_number(a),
        js_number(b),
        js_number(&sum)
    ));
    r["structuredContent"] = json!({ "sum": sum });
    r
}

/// An f64 as JSON the way JavaScript would write it: integral values without `.0`.
fn number_value(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < MAX_EXACT_F64_INT {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// A JSON number printed as JavaScript's `String(n)` would for ordinary values
/// (`5`, `2.5`, `0.30000000000000004`).
fn js_number(v: &Value) -> String {
    match (v.as_i64(), v.as_u64(), v.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (None, Some(u), _) => u.to_string(),
        (_, _, Some(f)) => number_value(f).to_string(),
        _ => v.to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn matches_type(v: &Value, ty: &str) -> bool {
    match ty {
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// Checks `args` against the subset of JSON Schema the built-in tools use
/// (type, required, additionalProperties: false, minimum, maximum).
fn validate_args(schema: &Value, args: &Value) -> Result<(), String> {
    let Some(obj) = args.as_object() else {
        return Err(format!(
            "arguments must be an object, got {}",
            json_type(args)
        ));
    };
    let props = schema["properties"].as_object();
    for key in super::schema::required(schema) {
        if !obj.contains_key(key) {
            return Err(format!("missing required argument '{key}'"));
        }
    }
    for (key, value) in obj {
        let Some(prop) = props.and_then(|p| p.get(key)) else {
            if schema["additionalProperties"] == Value::Bool(false) {
                return Err(format!("unknown argument '{key}'"));
            }
            continue;
        };
        if let Some(ty) = prop["type"].as_str() {
            if !matches_type(value, ty) {
                let article = if ty == "integer" { "an" } else { "a" };
                return Err(format!(
                    "argument '{key}' must be {article} {ty}, got {}",
                    json_type(value)
                ));
            }
        }
        if let (Some(min), Some(x)) = (prop["minimum"].as_f64(), value.as_f64()) {
            if x < min {
                return Err(format!(
                    "argument '{key}' must be >= {}, got {}",
                    js_number(&prop["minimum"]),
                    js_number(value)
                ));
            }
        }
        if let (Some(max), Some(x)) = (prop["maximum"].as_f64(), value.as_f64()) {
            if x > max {
                return Err(format!(
                    "argument '{key}' must be <= {}, got {}",
                    js_number(&prop["maximum"]),
                    js_number(value)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_and_add_answer_like_the_echo_server() {
        assert_eq!(
            call_builtin("echo", &json!({"message": "hi"})).unwrap(),
            json!({"content": [{"type": "text", "text": "Echo: hi"}]})
        );
        assert_eq!(
            call_builtin("add", &json!({"a": 2, "b": 3})).unwrap(),
            json!({"content": [{"type": "text", "text": "2 + 3 = 5"}], "structuredContent": {"sum": 5}})
        );
        let r = call_builtin("add", &json!({"a": 0.1, "b": 0.2})).unwrap();
        assert_eq!(r["content"][0]["text"], "0.1 + 0.2 = 0.30000000000000004");
        let r = call_builtin("add", &json!({"a": 2.5, "b": 2.5})).unwrap();
        assert_eq!(r["content"][0]["text"], "2.5 + 2.5 = 5");
        assert_eq!(r["structuredContent"], json!({"sum": 5}));
        let r = call_builtin("add", &json!({"a": -7, "b": 1.5})).unwrap();
        assert_eq!(r["structuredContent"], json!({"sum": -5.5}));
    }

    #[test]
    fn error_test_is_a_tool_failure_not_a_protocol_error() {
        let r = call_builtin("error_test", &Value::Null).unwrap();
        assert_eq!(r["isError"], true);
        assert_eq!(r["content"][0]["text"], DEFAULT_ERROR_MESSAGE);
        let r = call_builtin("error_test", &json!({"error_message": "boom"})).unwrap();
        assert_eq!(r["content"][0]["text"], "boom");
    }

    #[test]
    fn get_timestamp_is_now() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let r = call_builtin("get_timestamp", &json!({})).unwrap();
        let ts = r["structuredContent"]["timestamp"].as_u64().unwrap();
        assert!(ts.abs_diff(now) <= 2, "{ts} vs {now}");
        assert_eq!(r["content"][0]["text"], ts.to_string());
    }

    #[test]
    fn schema_violations_are_tool_errors_and_unknown_tools_invalid_params() {
        let err = |name: &str, args: Value| call_builtin(name, &args).unwrap_err();
        let tool_error = |name: &str, args: Value| {
            let r = call_builtin(name, &args).unwrap();
            assert_eq!(r["isError"], true, "{r}");
            r["content"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(
            err("nope", json!({})),
            (-32602, "Unknown tool: nope".into())
        );
        assert_eq!(
            err("echo", json!(["x"])),
            (
                -32602,
                "Invalid params: tools/call arguments must be an object, got array".into()
            )
        );
        assert_eq!(
            tool_error("add", json!({"a": 1})),
            "Invalid arguments for tool add: missing required argument 'b'"
        );
        assert_eq!(
            tool_error("add", json!({"a": "2", "b": 1})),
            "Invalid arguments for tool add: argument 'a' must be a number, got string"
        );
        assert_eq!(
            tool_error("echo", json!({"message": "x", "extra": 1})),
            "Invalid arguments for tool echo: unknown argument 'extra'"
        );
        assert_eq!(
            tool_error("echo", json!({"message": "x", "delay_ms": 1.5})),
            "Invalid arguments for tool echo: argument 'delay_ms' must be an integer, got number"
        );
        assert_eq!(
            tool_error("echo", json!({"message": "x", "delay_ms": 60001})),
            "Invalid arguments for tool echo: argument 'delay_ms' must be <= 60000, got 60001"
        );
        // null arguments are no arguments.
        assert_eq!(
            tool_error("echo", Value::Null),
            "Invalid arguments for tool echo: missing required argument 'message'"
        );
    }

    #[test]
    fn delay_ms_is_reported_not_slept() {
        let start = std::time::Instant::now();
        call_builtin("echo", &json!({"message": "x", "delay_ms": 500})).unwrap();
        assert!(start.elapsed() < Duration::from_millis(400));
        assert_eq!(
            requested_delay(&json!({"delay_ms": 50})),
            Duration::from_millis(50)
        );
        assert_eq!(requested_delay(&json!({"delay_ms": -1})), Duration::ZERO);
        assert_eq!(requested_delay(&json!({})), Duration::ZERO);
    }

    #[test]
    fn builtin_tools_list_the_four_tools_with_schemas() {
        let tools = builtin_tools();
        let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["echo", "add", "get_timestamp", "error_test"]);
        assert!(tools.iter().all(|t| t["inputSchema"]["type"] == "object"));
        assert_eq!(tools[1]["inputSchema"]["required"], json!(["a", "b"]));
    }
}
