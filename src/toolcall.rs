//! The tool-call phase of `ukload run --tool-call TOOL[:JSON]`: each booted
//! instance executes one MCP tool over its vsock connection; the latency of
//! the `tools/call` exchange itself is measured (connect and the era
//! negotiation — `server/discover`, or `initialize` for a legacy server — are
//! reported apart, with the `tools/list` that finds the tool), and a failed
//! or wrong result is a failure, as is a result that does not match the
//! tool's `outputSchema` (a protocol error naming the JSON path). The
//! revision and era spoken are reported per instance.
//!
//! Every wait honours the run's stop flag (set by SIGINT/SIGTERM): connect,
//! `initialize`, `tools/list` and `tools/call` give up within
//! [`crate::vsock::STOP_POLL`] of it and the call is reported as
//! interrupted, so a signal never waits for a silent guest's tool timeout.

use crate::mcp::{McpError, Session, SessionOptions, Tool, Transport};
use crate::vsock::{self, Endpoint};
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Default deadline of one tool call (and of connecting + `initialize`).
pub const DEFAULT_TOOL_TIMEOUT: Duration = crate::mcp::DEFAULT_REQUEST_TIMEOUT;

/// What to call.
#[derive(Clone, Debug)]
pub struct ToolCall {
    pub name: String,
    /// Arguments; `None`: made from the tool's `inputSchema` (every required
    /// property gets a sample value of its type).
    pub args: Option<Value>,
    /// Text the result must contain (a wrong result fails the instance).
    pub expect: Option<String>,
    pub timeout: Duration,
}

/// Why a `--tool-call` value is not `TOOL` or `TOOL:{JSON arguments}`.
#[derive(Debug)]
pub enum ToolCallParseError {
    /// The arguments are not JSON.
    NotJson {
        args: String,
        error: serde_json::Error,
    },
    /// The arguments are JSON, but not an object.
    NotObject { args: String },
    /// No tool name.
    NoName,
}

impl std::fmt::Display for ToolCallParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolCallParseError::NotJson { args, error } => {
                write!(f, "arguments {args:?} are not JSON: {error}")
            }
            ToolCallParseError::NotObject { args } => {
                write!(f, "arguments {args:?} must be a JSON object")
            }
            ToolCallParseError::NoName => f.write_str("expected TOOL or TOOL:{JSON arguments}"),
        }
    }
}

impl std::error::Error for ToolCallParseError {}

impl std::str::FromStr for ToolCall {
    type Err = ToolCallParseError;
    /// `TOOL` or `TOOL:{"json":"args"}`.
    fn from_str(s: &str) -> Result<Self, ToolCallParseError> {
        let (name, args) = match s.split_once(':') {
            Some((n, a)) => {
                let v: Value =
                    serde_json::from_str(a).map_err(|error| ToolCallParseError::NotJson {
                        args: a.to_string(),
                        error,
                    })?;
                if !v.is_object() {
                    let args = a.to_string();
                    return Err(ToolCallParseError::NotObject { args });
                }
                (n, Some(v))
            }
            None => (s, None),
        };
        if name.is_empty() {
            return Err(ToolCallParseError::NoName);
        }
        Ok(ToolCall {
            name: name.to_string(),
            args,
            expect: None,
            timeout: DEFAULT_TOOL_TIMEOUT,
        })
    }
}

/// One instance's tool call.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ToolOutcome {
    /// Connect + era negotiation (`server/discover` or `initialize`) +
    /// `tools/list`, ms.
    pub session_ms: Option<f64>,
    /// The MCP revision and era spoken, e.g. `2026-07-28 (modern)`.
    pub protocol: Option<String>,
    /// The server's start, as the client sees it: from the first request on
    /// the open connection (`server/discover`) to the server's first answer
    /// (the era negotiation, ms). With a bridged server (`--mcp-server`) the
    /// guest starts the server on that request, so this is the server's
    /// start-up; with the built-in tools it is one round trip.
    pub server_start_ms: Option<f64>,
    /// The `tools/call` round trip, ms.
    pub call_ms: Option<f64>,
    /// The result's text.
    pub text: Option<String>,
    /// Why it failed (tool error, JSON-RPC error, wrong result, transport).
    pub error: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prefix of [`ToolOutcome::error`] for a call given up because the run's
/// stop flag was set.
pub const INTERRUPTED: &str = "interrupted by signal";

/// Why a tool call failed: its Display is [`ToolOutcome::error`].
#[derive(Debug)]
pub enum ToolError {
    /// The run's stop flag was set during `step`, `after_ms` into the call.
    Interrupted { step: &'static str, after_ms: f64 },
    /// The vsock connection failed.
    Connect(vsock::ConnectError),
    /// The connected socket could not be set up.
    Socket(McpError),
    /// The era negotiation (`server/discover` or `initialize`) failed.
    Initialize(McpError),
    /// `tools/list` failed.
    ListTools(McpError),
    /// The tool needs tasks, which ukload does not run.
    NeedsTasks(McpError),
    /// The guest does not list the tool (and no arguments were given).
    NoSuchTool { tool: String, listed: Vec<String> },
    /// The result does not match the tool's `outputSchema`.
    Protocol { endpoint: String, detail: String },
    /// The tool answered with `isError`.
    ToolReported(String),
    /// The result lacks the `--tool-expect` text.
    WrongResult { text: String, want: String },
    /// `tools/call` failed.
    Call(McpError),
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Interrupted { step, after_ms } => {
                write!(f, "{INTERRUPTED} during {step} after {after_ms:.0} ms")
            }
            ToolError::Connect(e) => write!(f, "connect: {e}"),
            ToolError::Socket(e) => write!(f, "socket: {e}"),
            // A JSON-RPC error names its method already.
            ToolError::Initialize(e @ McpError::Rpc { .. })
            | ToolError::ListTools(e @ McpError::Rpc { .. }) => e.fmt(f),
            ToolError::Initialize(e) => write!(f, "initialize: {e}"),
            ToolError::ListTools(e) => write!(f, "tools/list: {e}"),
            ToolError::NeedsTasks(e) | ToolError::Call(e) => e.fmt(f),
            ToolError::NoSuchTool { tool, listed } => write!(
                f,
                "the guest has no tool {tool:?} (it has: {})",
                listed.join(", ")
            ),
            ToolError::Protocol { endpoint, detail } => {
                write!(f, "protocol error from {endpoint}: {detail}")
            }
            ToolError::ToolReported(text) => write!(f, "tool reported an error: {text}"),
            ToolError::WrongResult { text, want } => {
                write!(f, "wrong result: {text:?} does not contain {want:?}")
            }
        }
    }
}

impl std::error::Error for ToolError {}

/// Runs `call` against the guest at `ep`. Gives up within
/// [`crate::vsock::STOP_POLL`] of `stop` being set (the run's SIGINT/SIGTERM
/// flag), at whatever step it is, with an error starting with [`INTERRUPTED`].
pub fn execute(
    ep: &Endpoint,
    framing: crate::framing::Framing,
    call: &ToolCall,
    stop: &AtomicBool,
) -> ToolOutcome {
    let mut exec = Execution {
        ep,
        call,
        stop,
        t0: Instant::now(),
        out: ToolOutcome::default(),
    };
    if let Err(e) = exec.run(framing) {
        exec.out.error = Some(e.to_string());
    }
    exec.out
}

/// One tool call in progress: what it has measured so far.
struct Execution<'a> {
    ep: &'a Endpoint,
    call: &'a ToolCall,
    stop: &'a AtomicBool,
    t0: Instant,
    out: ToolOutcome,
}

impl Execution<'_> {
    /// Connects, finds the tool and calls it; the session is closed (or,
    /// once interrupted, aborted) whatever happens after it opened.
    fn run(&mut self, framing: crate::framing::Framing) -> Result<(), ToolError> {
        let session = self.open(framing)?;
        let result = self
            .find_tool(&session)
            .and_then(|(tool, args)| self.call_tool(&session, tool.as_ref(), args));
        match &result {
            // Cancelled already; end the connection without the flush grace.
            Err(ToolError::Interrupted { .. }) => {
                let _ = session.abort();
            }
            _ => {
                let _ = session.close();
            }
        }
        result
    }

    /// Interrupted during `step`.
    fn interrupted(&self, step: &'static str) -> ToolError {
        ToolError::Interrupted {
            step,
            after_ms: ms(self.t0.elapsed()),
        }
    }

    /// Connects and negotiates the era; notes the server's start and the
    /// protocol spoken.
    fn open(&mut self, framing: crate::framing::Framing) -> Result<Session, ToolError> {
        let (ep, call, stop) = (self.ep, self.call, self.stop);
        if stop.load(Ordering::Relaxed) {
            return Err(self.interrupted("connect"));
        }
        let stream = match vsock::connect_interruptible(ep, call.timeout, stop) {
            Ok(s) => s,
            Err(vsock::ConnectError::Interrupted { .. }) => return Err(self.interrupted("connect")),
            Err(e) => return Err(ToolError::Connect(e)),
        };
        let transport =
            Transport::vsock_stream(stream, framing, ep.to_string()).map_err(ToolError::Socket)?;
        let options = SessionOptions {
            init_timeout: call.timeout,
            request_timeout: call.timeout,
            ..Default::default()
        };
        let negotiation = Instant::now();
        let session = match Session::connect_interruptible(transport, options, stop) {
            Ok(s) => s,
            Err(e) if e.is_interrupted() => return Err(self.interrupted("initialize")),
            Err(e) => return Err(ToolError::Initialize(e)),
        };
        self.out.server_start_ms = Some(ms(negotiation.elapsed()));
        self.out.protocol = Some(format!(
            "{} ({})",
            session.protocol_version(),
            session.era()
        ));
        Ok(session)
    }

    /// The tool as listed (None: not listed, but arguments were given) and
    /// the arguments to call it with. The tool list is fetched even when
    /// the arguments are given: the result is checked against the tool's
    /// outputSchema (one `tools/list` round trip, counted in `session_ms`).
    fn find_tool(&mut self, session: &Session) -> Result<(Option<Tool>, Value), ToolError> {
        let call = self.call;
        let tools = match session.list_tools_interruptible(self.stop) {
            Ok(tools) => tools,
            Err(e) if e.is_interrupted() => return Err(self.interrupted("tools/list")),
            Err(e) => return Err(ToolError::ListTools(e)),
        };
        let tool = tools.iter().find(|t| t.name == call.name).cloned();
        if tool.as_ref().is_some_and(Tool::requires_tasks) {
            let tool = call.name.clone();
            return Err(ToolError::NeedsTasks(McpError::NeedsTasks { tool }));
        }
        let args = match (&call.args, &tool) {
            (Some(a), _) => a.clone(),
            (None, Some(t)) => sample_arguments(&t.input_schema),
            // Given arguments, an unlisted tool is still called: the guest's
            // answer (−32602 "Unknown tool") is the error reported.
            (None, None) => {
                return Err(ToolError::NoSuchTool {
                    tool: call.name.clone(),
                    listed: tools.into_iter().map(|t| t.name).collect(),
                })
            }
        };
        self.out.session_ms = Some(ms(self.t0.elapsed()));
        Ok((tool, args))
    }

    /// The `tools/call` round trip, timed, and its result checked against
    /// the tool's outputSchema and `--tool-expect`.
    fn call_tool(
        &mut self,
        session: &Session,
        tool: Option<&Tool>,
        args: Value,
    ) -> Result<(), ToolError> {
        let call = self.call;
        let t1 = Instant::now();
        let result = session.call_tool_interruptible(&call.name, args, call.timeout, self.stop);
        let r = match result {
            Err(e) if e.is_interrupted() => return Err(self.interrupted("tools/call")),
            Err(e) => return Err(ToolError::Call(e)),
            Ok(r) => r,
        };
        self.out.call_ms = Some(ms(t1.elapsed()));
        let text = r.text();
        self.out.text = Some(text.clone());
        if let Some(Err(detail)) = tool.map(|t| t.check_output(&r)) {
            let endpoint = self.ep.to_string();
            return Err(ToolError::Protocol { endpoint, detail });
        }
        if r.is_error {
            return Err(ToolError::ToolReported(text));
        }
        if let Some(want) = call.expect.as_deref().filter(|w| !text.contains(w)) {
            let want = want.to_string();
            return Err(ToolError::WrongResult { text, want });
        }
        Ok(())
    }
}

/// Sample value for a string property in made-up arguments.
pub const SAMPLE_STRING: &str = "ukload";

/// Arguments satisfying `schema`'s required properties with sample values
/// (`"ukload"`, `1`, `true`, `[]`, `{}`), used when `--tool-call` names a tool
/// without arguments.
pub fn sample_arguments(schema: &Value) -> Value {
    let mut args = serde_json::Map::new();
    let props = schema.get("properties").and_then(Value::as_object);
    for key in crate::mcp::schema::required(schema) {
        let ty = props
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str);
        let v = match ty {
            Some("number") | Some("integer") => Value::from(1),
            Some("boolean") => Value::Bool(true),
            Some("array") => Value::Array(Vec::new()),
            Some("object") => Value::Object(Default::default()),
            _ => Value::from(SAMPLE_STRING),
        };
        args.insert(key.to_string(), v);
    }
    Value::Object(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_step_is_named_once() {
        let rpc = || McpError::Rpc {
            method: "initialize".into(),
            code: -32603,
            message: "never answered".into(),
            data: None,
        };
        assert_eq!(
            ToolError::Initialize(rpc()).to_string(),
            "initialize: server returned JSON-RPC error -32603: never answered"
        );
        let gone = ToolError::ListTools(McpError::Closed {
            peer: "guest".into(),
            reason: "eof".into(),
        })
        .to_string();
        assert!(gone.starts_with("tools/list: "), "{gone}");
    }

    #[test]
    fn tool_call_flag_parses_name_and_json_arguments() {
        let t: ToolCall = r#"echo:{"message":"hi: there"}"#.parse().unwrap();
        assert_eq!(t.name, "echo");
        assert_eq!(t.args.unwrap()["message"], "hi: there");
        let t: ToolCall = "get_timestamp".parse().unwrap();
        assert_eq!(t.args, None);
        assert!("add:[1,2]"
            .parse::<ToolCall>()
            .unwrap_err()
            .to_string()
            .contains("JSON object"));
        assert!("add:{"
            .parse::<ToolCall>()
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert!(":{}".parse::<ToolCall>().is_err());
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;

    #[test]
    fn sample_arguments_fill_every_required_property_by_type() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"message": {"type": "string"}, "a": {"type": "number"}, "n": {"type": "integer"},
                           "f": {"type": "boolean"}, "opt": {"type": "string"}},
            "required": ["message", "a", "n", "f"]
        });
        assert_eq!(
            sample_arguments(&schema),
            serde_json::json!({"message": "ukload", "a": 1, "n": 1, "f": true})
        );
        assert_eq!(
            sample_arguments(&serde_json::json!({"type": "object"})),
            serde_json::json!({})
        );
    }
}
