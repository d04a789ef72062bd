//! `ukload mcp`: talk to one MCP server from the command line.
//!
//! - `ukload mcp tools [transport]`: list the server's tools.
//! - `ukload mcp call TOOL [--arg k=v ...] [--args JSON] [transport]`: call one
//!   tool and print its result (text, or the raw result with `--format json`).
//! - `ukload mcp bench [transport] --calls N --parallel P TOOL [--arg ...]`: call
//!   a tool N times, P at a time over one session, and report latency
//!   min/median/p95/p99/max and calls per second.
//!
//! Transports (exactly one): `--stdio 'CMD ARGS'` (a child in its own process
//! group, killed and reaped when the session closes, and SIGKILLed by the kernel
//! if ukload dies: `PR_SET_PDEATHSIG`), `--vsock CID:PORT` (`AF_VSOCK`, CID 3 or
//! more), `--uds PATH:PORT` (hybrid vsock: Unix socket, then `CONNECT PORT`).
//!
//! Exit codes: [`EXIT_OK`] 0, [`EXIT_TOOL_ERROR`] 1 (the tool ran and returned
//! `isError: true`; its text is printed on stdout), [`EXIT_RPC_ERROR`] 3 (the
//! server answered with a JSON-RPC error; `error <code>: <message>` on stderr),
//! [`EXIT_TRANSPORT`] 4 (transport, protocol or timeout failure),
//! [`EXIT_NOT_OFFERED`] 5 (the server declared no `tools` capability),
//! [`EXIT_NEEDS_TASKS`] 6 (the tool requires task support, which ukload
//! lacks: nothing was called), [`EXIT_USAGE`]
//! 64 (bad command line; one line naming the flag), [`EXIT_IOERR`] 74 (the
//! result could not be written to stdout; said on stderr).

use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ukload::stats::Stats;

use argh::FromArgs;
use serde_json::{json, Map, Value};

use ukload::framing::Framing;
use ukload::mcp::{
    coerce_args, parse_arg_pair, CallOptions, McpError, Progress, ProtocolChoice, Session,
    SessionOptions, SpawnOptions, Tool, ToolResult, Transport,
};
use ukload::vsock::{self, Endpoint};

use super::values::{HybridPeer, VsockPeer};
use super::{CommandLine, Count, Deadline, Format, Usage};
use ukload::exit::{
    EXIT_FAIL as EXIT_TOOL_ERROR, EXIT_IOERR, EXIT_NEEDS_TASKS, EXIT_NOT_OFFERED,
    EXIT_PASS as EXIT_OK, EXIT_RPC_ERROR, EXIT_TRANSPORT, EXIT_USAGE,
};

/// Default `--max-total-ms` with `--progress-resets-timeout`: the hard bound
/// of a call that keeps reporting progress (or `--timeout-ms` if longer).
pub const DEFAULT_MAX_TOTAL_MS: u64 = 600_000;
/// Default number of calls of `mcp bench`.
pub const DEFAULT_BENCH_CALLS: usize = 100;
/// Default number of calls in flight at once in `mcp bench`.
pub const DEFAULT_BENCH_PARALLEL: usize = 1;
/// Most calls `mcp bench` makes (keeps the latency vector in memory bounded).
pub const MAX_BENCH_CALLS: u64 = 10_000_000;
/// Most caller threads `mcp bench` starts (one thread per call in flight).
pub const MAX_BENCH_PARALLEL: u64 = 1024;
/// Prefix of the `UKLOAD_RUN` marker given to a `--stdio` child: `mcp-<ukload pid>`,
/// so `ukload ps`/`cleanup` and tests can find it by its marker.
pub const STDIO_MARKER_PREFIX: &str = "mcp-";

#[derive(FromArgs, Debug)]
#[argh(
    subcommand,
    name = "mcp",
    note = "Transports (give exactly one): --stdio 'CMD ARGS' runs the server as a child \
            (own process group, killed and reaped at the end, killed too if ukload dies); \
            --vsock CID:PORT connects over AF_VSOCK (CID 3 or more); --uds PATH:PORT \
            connects to a hybrid-vsock Unix socket and sends CONNECT PORT.",
    error_code(0, "success"),
    error_code(1, "the tool ran and returned isError: true (its text is on stdout)"),
    error_code(
        3,
        "the server answered with a JSON-RPC error (`error <code>: <message>` on stderr)"
    ),
    error_code(4, "transport, protocol or timeout failure"),
    error_code(5, "the server offers no tools (no tools capability)"),
    error_code(
        6,
        "the tool requires task support (taskSupport required), which ukload lacks: not called"
    ),
    error_code(64, "bad usage"),
    error_code(74, "the output could not be written to stdout")
)]
/// Talk to an MCP server: list its tools, call one, or benchmark one.
pub struct McpArgs {
    #[argh(subcommand)]
    pub cmd: McpCmd,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum McpCmd {
    Tools(ToolsArgs),
    Call(CallArgs),
    Bench(BenchArgs),
}

flag_group! { $
    /// Where the server is and how to speak to it: the flags every `mcp`
    /// command shares.
    TransportFlags, with_transport_flags, transport_flags {
        /// run this stdio MCP server: 'CMD ARGS' (split like a shell, without
        /// a shell)
        #[argh(option)]
        stdio: (Option<CommandLine>),
        /// connect over AF_VSOCK to CID:PORT (CID 3 or more)
        #[argh(option)]
        vsock: (Option<VsockPeer>),
        /// connect over hybrid vsock: Unix socket PATH, then CONNECT PORT
        /// (PATH:PORT)
        #[argh(option)]
        uds: (Option<HybridPeer>),
        /// framing: line (default, MCP's) or length (4-byte little-endian prefix)
        #[argh(option)]
        framing: (Option<Framing>),
        /// MCP era: auto (default: probe with server/discover, fall back to
        /// initialize), modern, legacy, or a revision such as 2025-06-18
        #[argh(option)]
        protocol: (Option<ProtocolChoice>),
        /// deadline of each request in ms (default 10000, at most 86400000)
        #[argh(option)]
        timeout_ms: (Option<Deadline>),
    }
}

flag_group! { $
    /// A tool call's arguments and how long it may run: the flags `mcp call`
    /// and `mcp bench` share.
    CallFlags, with_call_flags, call_flags {
        /// an argument key=value (repeatable), typed by the tool's input schema
        #[argh(option)]
        arg: (Vec<String>),
        /// the arguments as one JSON object
        #[argh(option)]
        args: (Option<String>),
        /// restart --timeout-ms at each progress notification of the call
        /// (bounded by --max-total-ms)
        #[argh(switch)]
        progress_resets_timeout: (bool),
        /// hard bound of a call in ms, whatever its progress (default with
        /// --progress-resets-timeout: 600000 or --timeout-ms if longer)
        #[argh(option)]
        max_total_ms: (Option<Deadline>),
    }
}

with_transport_flags! { []
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "tools",
        error_code(0, "success"),
        error_code(3, "the server answered tools/list with a JSON-RPC error"),
        error_code(4, "transport, protocol or timeout failure"),
        error_code(5, "the server offers no tools (no tools capability)"),
        error_code(64, "bad usage"),
        error_code(74, "the output could not be written to stdout")
    )]
    /// List the server's tools (following tools/list pagination).
    pub struct ToolsArgs {
        #[argh(switch, short = 'q')]
        /// do not say on stderr which server, revision and era were spoken
        pub quiet: bool,
        #[argh(option)]
        /// output: human (default) or json (the raw tools/list entries)
        pub format: Option<Format>,
    }
}

with_transport_flags! { [with_call_flags]
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "call",
        note = "An --arg value takes the type the tool's inputSchema gives its key (--arg a=2 \
                is the number 2 for a number property); untyped keys are JSON if they parse, \
                else strings. --args gives a JSON object; --arg keys are added to it.",
        error_code(
            0,
            "the tool succeeded; its text (or --format json: the raw result) is on stdout"
        ),
        error_code(1, "the tool ran and returned isError: true (its text is on stdout)"),
        error_code(
            3,
            "the server answered with a JSON-RPC error (`error <code>: <message>` on stderr)"
        ),
        error_code(4, "transport, protocol or timeout failure"),
        error_code(5, "the server offers no tools (no tools capability)"),
        error_code(
            6,
            "the tool requires task support (taskSupport required), which ukload lacks: not called"
        ),
        error_code(64, "bad usage"),
        error_code(74, "the output could not be written to stdout")
    )]
    /// Call one tool and print its result.
    pub struct CallArgs {
        #[argh(positional)]
        /// the tool's name
        pub tool: String,
        #[argh(switch, short = 'q')]
        /// print no progress on stderr
        pub quiet: bool,
        #[argh(option)]
        /// output: text (default: every content item, text as text, others one
        /// line each) or json (the raw result)
        pub format: Option<Format>,
    }
}

with_transport_flags! { [with_call_flags]
    #[derive(FromArgs, Debug)]
    #[argh(
        subcommand,
        name = "bench",
        note = "Latency is measured per call, from sending the request to its answer, over \
                every call the server answered (results, tool errors and JSON-RPC errors); \
                percentiles are nearest-rank. Calls per second = answered calls / wall time.",
        error_code(0, "every call succeeded"),
        error_code(1, "some call returned isError: true (and none failed worse)"),
        error_code(3, "some call got a JSON-RPC error (and none failed worse)"),
        error_code(4, "some call failed: transport, protocol or timeout"),
        error_code(5, "the server offers no tools (no tools capability)"),
        error_code(
            6,
            "the tool requires task support (taskSupport required), which ukload lacks: not called"
        ),
        error_code(64, "bad usage"),
        error_code(74, "the output could not be written to stdout")
    )]
    /// Call a tool many times over one session and report latency and throughput.
    pub struct BenchArgs {
        #[argh(positional)]
        /// the tool's name
        pub tool: String,
        #[argh(option)]
        /// number of calls (default 100)
        pub calls: Option<Count<MAX_BENCH_CALLS>>,
        #[argh(option)]
        /// calls in flight at once (default 1)
        pub parallel: Option<Count<MAX_BENCH_PARALLEL>>,
        #[argh(option)]
        /// output: human (default) or json
        pub format: Option<Format>,
    }
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A child process speaking MCP on stdio.
    Stdio(Vec<String>),
    /// `AF_VSOCK` or hybrid vsock.
    Vsock(Endpoint),
}

/// A validated transport: where, how framed, the per-call deadline and the era.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub target: Target,
    pub framing: Framing,
    pub timeout: Duration,
    pub protocol: ProtocolChoice,
}

/// Runs `ukload mcp ...`; returns the exit code. Call it from a thread that
/// lives until it returns (e.g. the main thread): a `--stdio` child is set to
/// be SIGKILLed when the spawning thread dies.
pub fn run(args: McpArgs) -> i32 {
    let result = match args.cmd {
        McpCmd::Tools(a) => cmd_tools(a),
        McpCmd::Call(a) => cmd_call(a),
        McpCmd::Bench(a) => cmd_bench(a),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(Usage(msg))) => {
            say!("ukload mcp: {msg}");
            EXIT_USAGE
        }
        Err(Failure::Mcp(e)) => report_mcp_error(&e),
    }
}

/// Why a subcommand stopped early.
enum Failure {
    Usage(Usage),
    Mcp(McpError),
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Self {
        Failure::Usage(u)
    }
}

impl From<McpError> for Failure {
    fn from(e: McpError) -> Self {
        Failure::Mcp(e)
    }
}

/// Prints an MCP error the documented way and returns its exit code.
fn report_mcp_error(e: &McpError) -> i32 {
    match e {
        McpError::Rpc { code, message, .. } => {
            say!("error {code}: {message}");
            EXIT_RPC_ERROR
        }
        e @ McpError::NotOffered { .. } => {
            say!("ukload mcp: {e}");
            EXIT_NOT_OFFERED
        }
        e @ McpError::NeedsTasks { .. } => {
            say!("ukload mcp: {e}");
            EXIT_NEEDS_TASKS
        }
        other => {
            say!("ukload mcp: {other}");
            EXIT_TRANSPORT
        }
    }
}

/// Validates the transport flags (exactly one transport).
fn connection(f: TransportFlags) -> Result<Connection, Usage> {
    let given: Vec<&str> = [
        (f.stdio.is_some(), "--stdio"),
        (f.vsock.is_some(), "--vsock"),
        (f.uds.is_some(), "--uds"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| *name)
    .collect();
    let target = match (f.stdio, f.vsock, f.uds) {
        (Some(cmd), None, None) => Target::Stdio(cmd.argv),
        (None, Some(VsockPeer(e)), None) | (None, None, Some(HybridPeer(e))) => Target::Vsock(e),
        _ => {
            let got = if given.is_empty() {
                "none".to_string()
            } else {
                given.join(" and ")
            };
            return Err(Usage(format!(
                "give exactly one transport: --stdio 'CMD ARGS', --vsock CID:PORT or --uds PATH:PORT (got {got})"
            )));
        }
    };
    Ok(Connection {
        target,
        framing: f.framing.unwrap_or(Framing::Line),
        timeout: f
            .timeout_ms
            .map_or(ukload::mcp::DEFAULT_REQUEST_TIMEOUT, |d| d.0),
        protocol: f.protocol.unwrap_or(ProtocolChoice::Auto),
    })
}

/// How each call waits: `--timeout-ms`, restarted by progress with
/// `--progress-resets-timeout`, bounded by `--max-total-ms`.
fn call_options(conn: &Connection, f: &CallFlags) -> CallOptions<'static> {
    let max_total = match f.max_total_ms {
        Some(Deadline(d)) => Some(d),
        None if f.progress_resets_timeout => Some(
            conn.timeout
                .max(Duration::from_millis(DEFAULT_MAX_TOTAL_MS)),
        ),
        None => None,
    };
    CallOptions {
        timeout: conn.timeout,
        progress_resets_timeout: f.progress_resets_timeout,
        max_total,
        stop: None,
    }
}

/// A call's `notifications/progress` on stderr: one line redrawn in place on
/// a terminal, one line per notification otherwise, nothing with `--quiet`.
struct ProgressLine {
    mode: ProgressMode,
    /// A terminal line is drawn and must be cleared.
    drawn: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    Quiet,
    Terminal,
    Lines,
}

impl ProgressLine {
    fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        let mode = if quiet {
            ProgressMode::Quiet
        } else if io::stderr().is_terminal() {
            ProgressMode::Terminal
        } else {
            ProgressMode::Lines
        };
        ProgressLine { mode, drawn: false }
    }

    fn show(&mut self, p: &Progress) {
        let text = progress_text(p);
        let mut err = io::stderr().lock();
        let _ = match self.mode {
            ProgressMode::Quiet => return,
            ProgressMode::Terminal => {
                self.drawn = true;
                write!(err, "\r\x1b[K{text}").and_then(|()| err.flush())
            }
            ProgressMode::Lines => writeln!(err, "{text}"),
        };
    }

    /// Clears a terminal line, so that what follows starts on a clean line.
    fn finish(&mut self) {
        if self.drawn {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K").and_then(|()| err.flush());
            self.drawn = false;
        }
    }
}

/// `progress 400/1000 (40%): waiting for delay_ms` (total and message when given).
fn progress_text(p: &Progress) -> String {
    let num = |x: f64| {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            format!("{}", x as i64)
        } else {
            format!("{x}")
        }
    };
    let mut s = format!("progress {}", num(p.progress));
    if let Some(total) = p.total {
        s.push_str(&format!("/{}", num(total)));
        if total > 0.0 {
            s.push_str(&format!(" ({:.0}%)", (p.progress / total * 100.0).floor()));
        }
    }
    if let Some(m) = &p.message {
        s.push_str(": ");
        s.push_str(&m.replace(['\n', '\r'], " "));
    }
    s
}

/// `--args` (a JSON object) and `--arg` pairs, validated before connecting.
#[derive(Debug)]
struct ArgSpec {
    base: Map<String, Value>,
    pairs: Vec<(String, String)>,
}

fn arg_spec(arg: &[String], args: &Option<String>) -> Result<ArgSpec, Usage> {
    let base = match args {
        None => Map::new(),
        Some(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(Usage(format!(
                    "--args: expected a JSON object, got {}",
                    json_kind(&other)
                )))
            }
            Err(e) => return Err(Usage(format!("--args: not valid JSON: {e}"))),
        },
    };
    let pairs = arg
        .iter()
        .map(|a| parse_arg_pair(a).map_err(Usage))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| base.contains_key(k)) {
        return Err(Usage(format!(
            "--arg {k}: the key is also in --args; give it once"
        )));
    }
    Ok(ArgSpec { base, pairs })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a call needs before it is sent: its arguments and the tool's
/// `tools/list` entry (`None` when the server does not list it: the call
/// itself then reports the server's error for the unknown tool).
struct Prepared {
    arguments: Value,
    tool: Option<Tool>,
}

/// Fetches the tool list (one `tools/list` round trip, every page: the cost
/// of checking results against the tool's `outputSchema`), refuses a tool
/// that requires task support before anything is sent, and builds the
/// arguments: `--args` plus `--arg` pairs typed by the tool's input schema
/// (untyped for a tool the server does not list).
fn prepare(session: &Session, tool: &str, spec: &ArgSpec) -> Result<Prepared, Failure> {
    let entry = session.list_tools()?.into_iter().find(|t| t.name == tool);
    if entry.as_ref().is_some_and(Tool::requires_tasks) {
        return Err(McpError::NeedsTasks {
            tool: tool.to_string(),
        }
        .into());
    }
    let mut out = spec.base.clone();
    if !spec.pairs.is_empty() {
        let schema = entry
            .as_ref()
            .map(|t| t.input_schema.clone())
            .unwrap_or_else(|| json!({}));
        match coerce_args(&schema, &spec.pairs).map_err(Usage)? {
            Value::Object(m) => out.extend(m),
            _ => unreachable!("coerce_args builds an object"),
        }
    }
    Ok(Prepared {
        arguments: Value::Object(out),
        tool: entry,
    })
}

/// A successful call's result checked against the tool's `outputSchema`: a
/// mismatch is a protocol failure naming the JSON path.
fn checked(
    session: &Session,
    tool: Option<&Tool>,
    result: Result<ToolResult, McpError>,
) -> Result<ToolResult, McpError> {
    let result = result?;
    match tool.map(|t| t.check_output(&result)) {
        Some(Err(detail)) => Err(McpError::Protocol {
            peer: session.peer().to_string(),
            detail,
        }),
        _ => Ok(result),
    }
}

/// Connects and initializes; `--stdio` children die with ukload and carry the
/// `UKLOAD_RUN=mcp-<pid>` marker.
pub fn connect(conn: &Connection) -> Result<Session, McpError> {
    let transport = match &conn.target {
        Target::Stdio(argv) => {
            let opts = SpawnOptions {
                die_with_parent: true,
                env: vec![(
                    ukload::ENV_RUN.into(),
                    format!("{STDIO_MARKER_PREFIX}{}", std::process::id()).into(),
                )],
                ..Default::default()
            };
            Transport::stdio_with(argv, conn.framing, &opts)?
        }
        Target::Vsock(ep) => {
            let stream = vsock::connect(ep, conn.timeout)
                .map_err(|e| McpError::io(format!("connecting to {ep}"), io::Error::other(e)))?;
            Transport::vsock_stream(stream, conn.framing, ep.to_string())?
        }
    };
    let defaults = SessionOptions::default();
    let options = SessionOptions {
        // A cold `node` start on a loaded machine takes seconds: a short call
        // deadline must not make the handshake fail.
        init_timeout: conn.timeout.max(defaults.init_timeout),
        request_timeout: conn.timeout,
        protocol: conn.protocol.clone(),
        ..defaults
    };
    Session::connect(transport, options)
}

/// Closes the session; a failure to end the server is reported (exit 4) unless
/// an earlier outcome already decided the exit code.
fn finish(session: Session, code: i32) -> i32 {
    match session.close() {
        Ok(_) => code,
        Err(e) => {
            say!("ukload mcp: {e}");
            if code == EXIT_OK {
                EXIT_TRANSPORT
            } else {
                code
            }
        }
    }
}

/// Writes to stdout; never panics (a full disk, a closed pipe).
fn print_out(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush())
}

/// `code`, or [`EXIT_IOERR`] when the output was lost: a script must not
/// take a missing result for a success. Said on stderr, if stderr can take it.
fn printed(result: io::Result<()>, code: i32) -> i32 {
    match result {
        Ok(()) => code,
        Err(e) => {
            say!("ukload mcp: cannot write the result to stdout: {e}");
            EXIT_IOERR
        }
    }
}

fn cmd_tools(a: ToolsArgs) -> Result<i32, Failure> {
    let conn = connection(a.transport_flags())?;
    let format = a.format.unwrap_or(Format::Human);
    let session = connect(&conn)?;
    // On stderr, so that stdout stays one line per tool (or pure JSON).
    if !a.quiet {
        say!("{}", describe_session(&session));
    }
    let tools = match session.list_tools() {
        Ok(t) => t,
        Err(e) => {
            let code = report_mcp_error(&e);
            return Ok(finish(session, code));
        }
    };
    let text = match format {
        Format::Json => {
            let raw: Vec<&Value> = tools.iter().map(|t| &t.raw).collect();
            format!(
                "{}\n",
                serde_json::to_string_pretty(&raw).unwrap_or_default()
            )
        }
        Format::Human => tools.iter().map(describe_tool).collect(),
    };
    let written = print_out(&text);
    Ok(printed(written, finish(session, EXIT_OK)))
}

/// `server NAME VERSION at PEER speaks MCP VERSION (ERA)`.
pub fn describe_session(session: &Session) -> String {
    let server = session.server();
    let name = if server.server_name.is_empty() {
        "server".to_string()
    } else {
        format!("server {} {}", server.server_name, server.server_version)
    };
    format!(
        "{} at {} speaks MCP {} ({})",
        name.trim_end(),
        session.peer(),
        session.protocol_version(),
        session.era()
    )
}

/// What `ukload mcp tools` writes after the parameters of a tool whose
/// `execution.taskSupport` is `required` (ukload cannot call it).
pub const TASK_REQUIRED_MARKER: &str = "  [task required]";

/// One line: `name(arg: type, [optional: type])  description`, with
/// [`TASK_REQUIRED_MARKER`] before the description for a tool that needs tasks.
fn describe_tool(t: &Tool) -> String {
    let required: Vec<&str> = ukload::mcp::schema::required(&t.input_schema).collect();
    let params: Vec<String> = t.input_schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(k, v)| {
                    let ty = match &v["type"] {
                        Value::String(s) => s.clone(),
                        Value::Array(ts) => ts
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("|"),
                        _ => "any".to_string(),
                    };
                    if required.contains(&k.as_str()) {
                        format!("{k}: {ty}")
                    } else {
                        format!("[{k}: {ty}]")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let desc = t.description.as_deref().unwrap_or("").replace('\n', " ");
    let marker = if t.requires_tasks() {
        TASK_REQUIRED_MARKER
    } else {
        ""
    };
    format!("{}({}){marker}  {}\n", t.name, params.join(", "), desc)
}

fn cmd_call(a: CallArgs) -> Result<i32, Failure> {
    let conn = connection(a.transport_flags())?;
    let format = a.format.unwrap_or(Format::Human);
    let call = a.call_flags();
    let options = call_options(&conn, &call);
    let spec = arg_spec(&call.arg, &call.args)?;
    let session = connect(&conn)?;
    let prepared = match prepare(&session, &a.tool, &spec) {
        Ok(p) => p,
        Err(f) => {
            let code = failure_code(f);
            return Ok(finish(session, code));
        }
    };
    let mut shown = ProgressLine::new(a.quiet);
    let result = session.call_tool_with_progress(&a.tool, prepared.arguments, &options, &mut |p| {
        shown.show(p)
    });
    shown.finish();
    let (code, written) = match checked(&session, prepared.tool.as_ref(), result) {
        Ok(result) => {
            let written = print_out(&render_result(&result, format));
            let code = if result.is_error {
                EXIT_TOOL_ERROR
            } else {
                EXIT_OK
            };
            (code, written)
        }
        Err(e) => (report_mcp_error(&e), Ok(())),
    };
    Ok(printed(written, finish(session, code)))
}

/// Says why a subcommand stopped and returns its exit code.
fn failure_code(f: Failure) -> i32 {
    match f {
        Failure::Usage(Usage(msg)) => {
            say!("ukload mcp: {msg}");
            EXIT_USAGE
        }
        Failure::Mcp(e) => report_mcp_error(&e),
    }
}

/// Every content item in order (text items as their text, others as one
/// line each: [`Content::summary`]), or the raw result as JSON.
fn render_result(result: &ToolResult, format: Format) -> String {
    match format {
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&result.raw).unwrap_or_default()
        ),
        Format::Human => result
            .content
            .iter()
            .map(|c| format!("{}\n", c.summary()))
            .collect(),
    }
}

/// What one benchmark call came to.
#[derive(Debug, Clone, PartialEq)]
enum CallOutcome {
    Ok,
    ToolError,
    Rpc,
    Timeout,
    Failed,
}

impl CallOutcome {
    /// How a failed call is named in the report; `None` for a success.
    fn kind(&self) -> Option<&'static str> {
        match self {
            CallOutcome::Ok => None,
            CallOutcome::ToolError => Some("tool error"),
            CallOutcome::Rpc => Some("JSON-RPC error"),
            CallOutcome::Timeout => Some("timeout"),
            CallOutcome::Failed => Some("failure"),
        }
    }
}

/// Most distinct error texts `mcp bench` prints.
pub const MAX_BENCH_ERROR_TEXTS: usize = 5;

/// One distinct error text of the failed calls and how many calls gave it.
#[derive(Debug, Clone, PartialEq)]
struct ErrorGroup {
    kind: &'static str,
    text: String,
    count: usize,
}

/// The first [`MAX_BENCH_ERROR_TEXTS`] distinct (kind, text) pairs, in the
/// order first seen, each with its count, and how many failed calls had
/// another text (not kept: memory stays bounded whatever the server says).
#[derive(Debug, Default, PartialEq)]
struct ErrorGroups {
    shown: Vec<ErrorGroup>,
    not_shown: usize,
}

fn error_groups<'a>(errors: impl Iterator<Item = (&'static str, &'a str)>) -> ErrorGroups {
    let mut groups = ErrorGroups::default();
    for (kind, text) in errors {
        let seen = groups
            .shown
            .iter()
            .position(|g| g.kind == kind && g.text == text);
        match seen {
            Some(i) => groups.shown[i].count += 1,
            None if groups.shown.len() < MAX_BENCH_ERROR_TEXTS => groups.shown.push(ErrorGroup {
                kind,
                text: text.to_string(),
                count: 1,
            }),
            None => groups.not_shown += 1,
        }
    }
    groups
}

fn cmd_bench(a: BenchArgs) -> Result<i32, Failure> {
    let conn = connection(a.transport_flags())?;
    let format = a.format.unwrap_or(Format::Human);
    let (calls, parallel) = bench_counts(&a);
    let call = a.call_flags();
    let options = call_options(&conn, &call);
    let spec = arg_spec(&call.arg, &call.args)?;
    let session = Arc::new(connect(&conn)?);
    let Prepared {
        arguments,
        tool: entry,
    } = match prepare(&session, &a.tool, &spec) {
        Ok(p) => p,
        Err(f) => {
            let code = failure_code(f);
            return Ok(close_shared(session, code));
        }
    };
    let job = BenchJob {
        session: Arc::clone(&session),
        tool: a.tool.clone(),
        arguments,
        entry: Arc::new(entry),
        options,
        timeout: conn.timeout,
    };
    let run = run_bench_workers(&job, calls, parallel);
    drop(job);
    let (results, elapsed) = match run {
        Ok(run) => run,
        Err(msg) => {
            say!("ukload mcp: {msg}");
            return Ok(close_shared(session, EXIT_TRANSPORT));
        }
    };
    let (text, code) = bench_output(
        &a.tool,
        session.peer(),
        calls,
        parallel,
        &results,
        elapsed,
        format,
    );
    let written = print_out(&text);
    Ok(printed(written, close_shared(session, code)))
}

/// `--calls` and `--parallel` (never more workers than calls).
fn bench_counts(a: &BenchArgs) -> (usize, usize) {
    let calls = a.calls.map_or(DEFAULT_BENCH_CALLS, |c| c.0 as usize);
    let parallel = a.parallel.map_or(DEFAULT_BENCH_PARALLEL, |p| p.0 as usize);
    (calls, parallel.min(calls))
}

/// One benchmark call: how it ended, how long it took, and its error text.
type CallRecord = (CallOutcome, Duration, Option<String>);

/// What every benchmark worker needs to make its calls.
#[derive(Clone)]
struct BenchJob {
    session: Arc<Session>,
    tool: String,
    arguments: Value,
    /// The tool's list entry, to check results against its `outputSchema`.
    entry: Arc<Option<Tool>>,
    options: CallOptions<'static>,
    timeout: Duration,
}

impl BenchJob {
    /// Makes one call and records how it ended.
    fn call(&self) -> CallRecord {
        let t0 = Instant::now();
        let r = self.session.call_tool_with_progress(
            &self.tool,
            self.arguments.clone(),
            &self.options,
            &mut |_| {},
        );
        let took = t0.elapsed();
        match checked(&self.session, self.entry.as_ref().as_ref(), r) {
            Ok(res) if res.is_error => (CallOutcome::ToolError, took, Some(res.text())),
            Ok(_) => (CallOutcome::Ok, took, None),
            Err(McpError::Rpc { code, message, .. }) => (
                CallOutcome::Rpc,
                took,
                Some(format!("error {code}: {message}")),
            ),
            // Without the request id, so that timeouts count as one text.
            Err(e) if e.is_timeout() => (
                CallOutcome::Timeout,
                took,
                Some(format!("no answer within {:?}", self.timeout)),
            ),
            Err(e) => (CallOutcome::Failed, took, Some(e.to_string())),
        }
    }
}

/// Runs `calls` calls of `job` on `parallel` threads that claim them one at
/// a time; returns every call's record and the wall time, or why the
/// benchmark could not run as asked.
fn run_bench_workers(
    job: &BenchJob,
    calls: usize,
    parallel: usize,
) -> Result<(Vec<CallRecord>, Duration), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(parallel);
    let mut spawn_error = None;
    for i in 0..parallel {
        let claimed = Arc::clone(&next);
        let job = job.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("mcp-bench-{i}"))
            .spawn(move || {
                let mut done = Vec::new();
                while claimed.fetch_add(1, Ordering::Relaxed) < calls {
                    done.push(job.call());
                }
                done
            });
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                // Running with fewer workers would report a different parallelism.
                spawn_error = Some(e);
                next.store(calls, Ordering::Relaxed);
                break;
            }
        }
    }
    let mut results = Vec::with_capacity(calls);
    for w in workers {
        match w.join() {
            Ok(done) => results.extend(done),
            Err(_) => return Err("a benchmark thread panicked".to_string()),
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = spawn_error {
        return Err(format!("cannot start {parallel} benchmark threads: {e}"));
    }
    Ok((results, elapsed))
}

/// The benchmark's report in `format` and its exit code (the worst outcome
/// of any call).
fn bench_output(
    tool: &str,
    peer: &str,
    calls: usize,
    parallel: usize,
    results: &[CallRecord],
    elapsed: Duration,
    format: Format,
) -> (String, i32) {
    let tally = Tally::of(results);
    let answered = answered_latencies(results);
    let first_error = results
        .iter()
        .filter(|r| r.0 != CallOutcome::ToolError)
        .find_map(|r| r.2.clone());
    let errors = error_groups(
        results
            .iter()
            .filter_map(|r| Some((r.0.kind()?, r.2.as_deref()?))),
    );
    let stats = Stats::of_millis(&answered);
    let per_sec = if elapsed.is_zero() {
        0.0
    } else {
        answered.len() as f64 / elapsed.as_secs_f64()
    };
    let report = BenchReport {
        tool,
        peer,
        calls,
        parallel,
        ok: tally.ok,
        tool_errors: tally.tool_errors,
        rpc_errors: tally.rpc_errors,
        timeouts: tally.timeouts,
        failures: tally.timeouts + tally.failed,
        elapsed,
        calls_per_sec: per_sec,
        stats: stats.as_ref(),
        first_error: first_error.as_deref(),
        errors: &errors,
    };
    let text = match format {
        Format::Json => report.json(),
        Format::Human => report.human(),
    };
    (text, tally.exit_code())
}

/// How many benchmark calls ended each way.
struct Tally {
    ok: usize,
    tool_errors: usize,
    rpc_errors: usize,
    timeouts: usize,
    failed: usize,
}

impl Tally {
    /// Counts `results` by outcome.
    fn of(results: &[CallRecord]) -> Tally {
        let count_of = |o: CallOutcome| results.iter().filter(|r| r.0 == o).count();
        Tally {
            ok: count_of(CallOutcome::Ok),
            tool_errors: count_of(CallOutcome::ToolError),
            rpc_errors: count_of(CallOutcome::Rpc),
            timeouts: count_of(CallOutcome::Timeout),
            failed: count_of(CallOutcome::Failed),
        }
    }

    /// The exit code of the worst outcome: transport, then JSON-RPC, then
    /// tool errors.
    fn exit_code(&self) -> i32 {
        if self.timeouts + self.failed > 0 {
            EXIT_TRANSPORT
        } else if self.rpc_errors > 0 {
            EXIT_RPC_ERROR
        } else if self.tool_errors > 0 {
            EXIT_TOOL_ERROR
        } else {
            EXIT_OK
        }
    }
}

/// Latencies of the calls the server answered (results, tool errors and
/// JSON-RPC errors; not timeouts or failures).
fn answered_latencies(results: &[CallRecord]) -> Vec<Duration> {
    results
        .iter()
        .filter(|r| {
            matches!(
                r.0,
                CallOutcome::Ok | CallOutcome::ToolError | CallOutcome::Rpc
            )
        })
        .map(|r| r.1)
        .collect()
}

/// Closes a session shared with (finished) worker threads.
fn close_shared(session: Arc<Session>, code: i32) -> i32 {
    match Arc::try_unwrap(session) {
        Ok(s) => finish(s, code),
        // Unreachable once workers are joined; closing through the Arc is equivalent.
        Err(shared) => match shared.close() {
            Ok(_) => code,
            Err(e) => {
                say!("ukload mcp: {e}");
                code.max(EXIT_TRANSPORT)
            }
        },
    }
}

struct BenchReport<'a> {
    tool: &'a str,
    peer: &'a str,
    calls: usize,
    parallel: usize,
    ok: usize,
    tool_errors: usize,
    rpc_errors: usize,
    timeouts: usize,
    failures: usize,
    elapsed: Duration,
    calls_per_sec: f64,
    stats: Option<&'a Stats>,
    first_error: Option<&'a str>,
    errors: &'a ErrorGroups,
}

impl BenchReport<'_> {
    fn json(&self) -> String {
        let latency = self.stats.map_or(Value::Null, |s| {
            json!({
                "min": s.min, "median": s.median, "p95": s.p95,
                "p99": s.p99, "max": s.max, "mean": s.mean,
            })
        });
        let doc = json!({
            "tool": self.tool,
            "server": self.peer,
            "calls": self.calls,
            "parallel": self.parallel,
            "count": self.stats.map_or(0, |s| s.count),
            "ok": self.ok,
            "tool_errors": self.tool_errors,
            "rpc_errors": self.rpc_errors,
            "timeouts": self.timeouts,
            "failures": self.failures,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "calls_per_sec": self.calls_per_sec,
            "latency_ms": latency,
            "first_error": self.first_error,
            "errors": self.errors.shown.iter().map(|g| json!({
                "kind": g.kind.replace(' ', "_"), "text": g.text, "count": g.count,
            })).collect::<Vec<_>>(),
            "errors_not_shown": self.errors.not_shown,
        });
        format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        )
    }

    fn human(&self) -> String {
        let mut s = format!(
            "mcp bench: {} calls of {} ({} in parallel) over {}\n  ok {}  tool errors {}  \
             JSON-RPC errors {}  failures {} (timeouts {})\n",
            self.calls,
            self.tool,
            self.parallel,
            self.peer,
            self.ok,
            self.tool_errors,
            self.rpc_errors,
            self.failures,
            self.timeouts
        );
        match self.stats {
            Some(l) => s.push_str(&format!(
                "  latency ms: min {:.3}  median {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  \
                 (mean {:.3}, {} answered)\n",
                l.min, l.median, l.p95, l.p99, l.max, l.mean, l.count
            )),
            None => s.push_str("  latency: no call was answered\n"),
        }
        s.push_str(&format!(
            "  throughput: {:.1} calls/s over {:.3} s\n",
            self.calls_per_sec,
            self.elapsed.as_secs_f64()
        ));
        if !self.errors.shown.is_empty() {
            s.push_str("  errors (first distinct texts, by kind):\n");
            for g in &self.errors.shown {
                let text = g.text.replace('\n', " ");
                s.push_str(&format!("    {} × {}: {text}\n", g.count, g.kind));
            }
            if self.errors.not_shown > 0 {
                s.push_str(&format!(
                    "    ({} more failed calls with other texts)\n",
                    self.errors.not_shown
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(stdio: Option<&str>, vsock: Option<&str>, uds: Option<&str>) -> TransportFlags {
        TransportFlags {
            stdio: stdio.map(|s| s.parse().unwrap()),
            vsock: vsock.map(|s| s.parse().unwrap()),
            uds: uds.map(|s| s.parse().unwrap()),
            ..TransportFlags::default()
        }
    }

    #[test]
    fn exactly_one_transport() {
        let (s, v, u) = (
            Some("node x.js"),
            Some("200:5252"),
            Some("/tmp/a:b.sock:5252"),
        );
        let e = connection(flags(None, None, None)).unwrap_err().0;
        assert!(e.contains("--stdio") && e.contains("--vsock") && e.contains("--uds"));
        assert!(e.contains("got none"), "{e}");
        let e = connection(flags(s, None, u)).unwrap_err().0;
        assert!(e.contains("got --stdio and --uds"), "{e}");
        let e = connection(flags(s, v, u)).unwrap_err().0;
        assert!(e.contains("got --stdio and --vsock and --uds"), "{e}");
        let c = connection(flags(s, None, None)).unwrap();
        assert_eq!(c.target, Target::Stdio(vec!["node".into(), "x.js".into()]));
        assert_eq!(c.timeout, ukload::mcp::DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(c.framing, Framing::Line);
        assert_eq!(c.protocol, ProtocolChoice::Auto);
        let c = connection(flags(None, v, None)).unwrap();
        assert_eq!(
            c.target,
            Target::Vsock(Endpoint::Vsock {
                cid: 200,
                port: 5252
            })
        );
        let c = connection(flags(None, None, u)).unwrap();
        assert_eq!(
            c.target,
            Target::Vsock(Endpoint::Hybrid {
                path: "/tmp/a:b.sock".into(),
                port: 5252
            })
        );
    }

    #[test]
    fn a_deadline_bounds_progress_resets_unless_given() {
        let conn = connection(flags(Some("node"), None, None)).unwrap();
        let plain = call_options(&conn, &CallFlags::default());
        assert_eq!(plain.max_total, None);
        let resets = CallFlags {
            progress_resets_timeout: true,
            ..CallFlags::default()
        };
        let o = call_options(&conn, &resets);
        assert_eq!(
            o.max_total,
            Some(Duration::from_millis(DEFAULT_MAX_TOTAL_MS))
        );
        let given = CallFlags {
            max_total_ms: Some("1500".parse().unwrap()),
            ..resets
        };
        assert_eq!(
            call_options(&conn, &given).max_total,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn args_object_and_pairs_merge_without_duplicates() {
        let spec = arg_spec(&["b=3".into()], &Some(r#"{"a": 2}"#.into())).unwrap();
        assert_eq!(spec.base["a"], json!(2));
        assert_eq!(spec.pairs, vec![("b".to_string(), "3".to_string())]);
        assert!(arg_spec(&["a=1".into()], &Some(r#"{"a": 2}"#.into()))
            .unwrap_err()
            .0
            .contains("also in --args"));
        assert!(arg_spec(&[], &Some("[1]".into()))
            .unwrap_err()
            .0
            .contains("JSON object, got an array"));
        assert!(arg_spec(&[], &Some("{".into()))
            .unwrap_err()
            .0
            .starts_with("--args"));
        assert!(arg_spec(&["novalue".into()], &None)
            .unwrap_err()
            .0
            .starts_with("--arg"));
    }

    #[test]
    fn bench_errors_group_by_kind_and_text_and_stay_bounded() {
        let mut errors = vec![("tool error", "a"), ("timeout", "t"), ("tool error", "a")];
        for i in 0..10 {
            errors.push(("failure", ["x", "y", "z", "w", "v", "u"][i % 6]));
        }
        let g = error_groups(errors.into_iter());
        assert_eq!(g.shown.len(), MAX_BENCH_ERROR_TEXTS);
        assert_eq!(
            (g.shown[0].kind, g.shown[0].text.as_str(), g.shown[0].count),
            ("tool error", "a", 2)
        );
        assert_eq!((g.shown[1].kind, g.shown[1].count), ("timeout", 1));
        assert_eq!((g.shown[2].text.as_str(), g.shown[2].count), ("x", 2));
        // x, y and z (twice each) are shown; w, v, u, w (4 calls) are counted, not kept.
        assert_eq!(g.not_shown, 10 - 2 - 2 - 2);
    }

    #[test]
    fn progress_lines_show_total_percent_and_message() {
        let p = |progress, total, message: Option<&str>| Progress {
            progress,
            total,
            message: message.map(str::to_string),
        };
        assert_eq!(
            progress_text(&p(400.0, Some(1000.0), Some("waiting\nfor delay_ms"))),
            "progress 400/1000 (40%): waiting for delay_ms"
        );
        assert_eq!(progress_text(&p(0.5, None, None)), "progress 0.5");
        assert_eq!(progress_text(&p(3.0, Some(0.0), None)), "progress 3/0");
    }

    #[test]
    fn results_render_as_text_or_raw_json() {
        let r = ToolResult::from_value(json!({"content": [{"type": "text", "text": "Echo: hi"}]}))
            .unwrap();
        assert_eq!(render_result(&r, Format::Human), "Echo: hi\n");
        let j: Value = serde_json::from_str(&render_result(&r, Format::Json)).unwrap();
        assert_eq!(j, r.raw);
        let r = ToolResult::from_value(
            json!({"content": [{"type": "image", "data": "AA==", "mimeType": "image/png"}]}),
        )
        .unwrap();
        assert_eq!(
            render_result(&r, Format::Human),
            "[image image/png, 1 byte]\n"
        );
    }
}
