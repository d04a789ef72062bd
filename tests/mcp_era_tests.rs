//! MCP's two eras (2026-07-28 "modern" beside 2024-11-05 … 2025-11-25
//! "legacy") across ukload's client and its three servers (echo_server.js,
//! ukload-guest's built-in tools, the `--mcp-server` bridge), driving the real
//! binaries. Every message exchanged is validated against the JSON schema of the
//! revision it belongs to, read from `../shared/mcp-schema/` (legacy revisions
//! against 2025-11-25, the only legacy schema there).
//!
//! The era matrix (spec: basic/versioning, "Backward Compatibility"):
//! - ukload's client (auto) × modern-only server → modern; × dual-era → modern;
//!   × legacy-only → legacy (the `server/discover` probe fails, `initialize` follows);
//! - a modern-only client (`--protocol modern`) × legacy-only server → fails;
//! - a legacy client (`--protocol legacy`) × modern-only server → fails (−32022);
//! - each of ukload's servers × {modern client, legacy client} → works.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ukload::mcp::schema::validate_def;
use ukload::vsock::{self, Endpoint, Stream};

const RUN_BOUND: Duration = Duration::from_secs(60);
const SOON: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Node.js runs echo_server.js: CI installs it, so its absence fails there.
macro_rules! need_node {
    () => {
        if !common::node_available() {
            assert!(!in_ci(), "node is missing, and CI installs it");
            eprintln!("skipped: node not found");
            return;
        }
    };
}

/// The official JSON schema of `revision`.
fn schema(revision: &str) -> Option<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/mcp-schema")
        .join(format!("{revision}.schema.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("the schema is JSON")),
        Err(e) => {
            assert!(
                !in_ci(),
                "{}: {e} (CI has shared/ beside the checkout)",
                path.display()
            );
            eprintln!("skipped: {}: {e}", path.display());
            None
        }
    }
}

/// Both schemas, or `None` (test skipped outside CI).
struct Schemas {
    legacy: Value,
    modern: Value,
}

fn schemas() -> Option<Schemas> {
    Some(Schemas {
        legacy: schema("2025-11-25")?,
        modern: schema("2026-07-28")?,
    })
}

fn is_modern_request(msg: &Value) -> bool {
    msg.get("params")
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
        .is_some()
}

/// The result definition that answers `method`.
fn result_def(method: &str) -> &'static str {
    match method {
        "initialize" => "InitializeResult",
        "server/discover" => "DiscoverResult",
        "tools/list" => "ListToolsResult",
        "tools/call" => "CallToolResult",
        _ => "EmptyResult",
    }
}

impl Schemas {
    fn of(&self, modern: bool) -> &Value {
        if modern {
            &self.modern
        } else {
            &self.legacy
        }
    }

    /// Validates a conversation: what the client sent and what the server sent,
    /// each message against its revision (a response against the era of the
    /// request it answers). Panics naming the message and the failing path.
    fn check(&self, client: &[Value], server: &[Value]) {
        let mut asked: HashMap<String, (String, bool)> = HashMap::new();
        for msg in client {
            let modern = is_modern_request(msg);
            let def = if msg.get("id").is_some() {
                "ClientRequest"
            } else {
                "ClientNotification"
            };
            validate_def(self.of(modern), def, msg)
                .unwrap_or_else(|e| panic!("client message {msg} is not a {def}: {e}"));
            validate_def(self.of(modern), "JSONRPCMessage", msg)
                .unwrap_or_else(|e| panic!("client message {msg}: {e}"));
            if let (Some(id), Some(method)) = (msg.get("id"), msg["method"].as_str()) {
                asked.insert(id.to_string(), (method.to_string(), modern));
            }
        }
        for msg in server {
            let items = match msg {
                Value::Array(items) => items.clone(),
                one => vec![one.clone()],
            };
            for msg in &items {
                if msg.get("method").is_some() {
                    // Server notifications (progress) in either era.
                    let modern = true;
                    validate_def(self.of(modern), "ServerNotification", msg)
                        .or_else(|_| validate_def(&self.legacy, "ServerNotification", msg))
                        .unwrap_or_else(|e| panic!("server notification {msg}: {e}"));
                    continue;
                }
                let (method, modern) = asked
                    .get(&msg["id"].to_string())
                    .cloned()
                    .unwrap_or_else(|| ("?".into(), false));
                let schema = self.of(modern);
                if msg.get("error").is_some() {
                    validate_def(schema, "JSONRPCErrorResponse", msg)
                        .unwrap_or_else(|e| panic!("error response {msg}: {e}"));
                    continue;
                }
                let def = result_def(&method);
                validate_def(schema, "JSONRPCResultResponse", msg)
                    .unwrap_or_else(|e| panic!("response to {method} {msg}: {e}"));
                validate_def(schema, def, &msg["result"]).unwrap_or_else(|e| {
                    panic!(
                        "{} result of {method} is not a {def}: {e}\n{msg}",
                        if modern { "2026-07-28" } else { "legacy" }
                    )
                });
            }
        }
    }
}

fn lines_of(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// `ukload mcp ARGS --stdio <echo_server.js --era ERA>` with both directions
/// recorded; returns the output and (client messages, server messages).
fn mcp_through_tee(era: &str, args: &[&str]) -> (Output, Vec<Value>, Vec<Value>) {
    let server = format!("node {} --era {era}", common::echo_server().display());
    mcp_through_tee_to(&server, args)
}

/// `ukload mcp ARGS --stdio SERVER` (SERVER run by `sh -c`) with both
/// directions recorded.
fn mcp_through_tee_to(server: &str, args: &[&str]) -> (Output, Vec<Value>, Vec<Value>) {
    let dir = common::TempDir::new("mcpera");
    let inlog = dir.path().join("in.jsonl");
    let outlog = dir.path().join("out.jsonl");
    let server = format!(
        "sh -c 'tee {} | {server} | tee {}'",
        inlog.display(),
        outlog.display()
    );
    let mut cmd = common::ukload(dir.path());
    cmd.arg("mcp").args(args).args(["--stdio", &server]);
    let out = common::output_within(cmd, RUN_BOUND);
    (out, lines_of(&inlog), lines_of(&outlog))
}

/// `tests/fixtures/mcp/content_server.js`: tools that break their output
/// schema, return every kind of content, require tasks, fail every other call.
fn content_server() -> String {
    format!(
        "node {}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mcp/content_server.js")
            .display()
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn ukload_client_against_modern_dual_and_legacy_servers() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    for (era, want) in [
        ("modern", "MCP 2026-07-28 (modern)"),
        ("dual", "MCP 2026-07-28 (modern)"),
        ("legacy", "MCP 2025-11-25 (legacy)"),
    ] {
        let (o, client, server) = mcp_through_tee(era, &["tools"]);
        assert_eq!(code(&o), 0, "{era}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{era}: {}", stderr(&o));
        assert_eq!(stdout(&o).lines().count(), 4, "{era}: {}", stdout(&o));
        schemas.check(&client, &server);
        assert_eq!(
            client[0]["method"], "server/discover",
            "{era}: the client probes first"
        );
        let (o, client, server) =
            mcp_through_tee(era, &["call", "add", "--args", r#"{"a":2,"b":3}"#]);
        assert_eq!(
            (code(&o), stdout(&o)),
            (0, "2 + 3 = 5\n".into()),
            "{era}: {}",
            stderr(&o)
        );
        schemas.check(&client, &server);
        let methods: Vec<&str> = client.iter().filter_map(|m| m["method"].as_str()).collect();
        if era == "legacy" {
            assert_eq!(
                methods,
                [
                    "server/discover",
                    "initialize",
                    "notifications/initialized",
                    "tools/list",
                    "tools/call"
                ]
            );
        } else {
            // tools/list gives the outputSchema the result is checked against.
            assert_eq!(
                methods,
                ["server/discover", "tools/list", "tools/call"],
                "{era}: stateless"
            );
        }
    }
}

#[test]
fn forced_eras_fail_against_a_server_of_the_other_era() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    // A modern-only client cannot talk to a legacy-only server.
    let (o, client, server) = mcp_through_tee("legacy", &["tools", "--protocol", "modern"]);
    assert_ne!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("server/discover"), "{}", stderr(&o));
    schemas.check(&client, &server);
    // A legacy client is refused by a modern-only server, with the versions it speaks.
    let (o, client, server) = mcp_through_tee("modern", &["tools", "--protocol", "legacy"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("error -32022"), "{}", stderr(&o));
    assert!(stderr(&o).contains("2026-07-28"), "{}", stderr(&o));
    schemas.check(&client, &server);
    // Forcing a revision the server speaks works in either era.
    for (era, flag, want) in [
        ("dual", "2025-06-18", "MCP 2025-06-18 (legacy)"),
        ("dual", "2026-07-28", "MCP 2026-07-28 (modern)"),
        ("dual", "legacy", "MCP 2025-11-25 (legacy)"),
    ] {
        let (o, client, server) = mcp_through_tee(era, &["tools", "--protocol", flag]);
        assert_eq!(code(&o), 0, "{flag}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{flag}: {}", stderr(&o));
        schemas.check(&client, &server);
    }
}

/// A raw line-framed MCP conversation over a hybrid socket.
struct Raw {
    reader: BufReader<Stream>,
    writer: Stream,
}

impl Raw {
    fn connect(sock: &Path) -> Raw {
        let ep = Endpoint::Hybrid {
            path: sock.to_path_buf(),
            port: ukload::DEFAULT_PORT,
        };
        let deadline = Instant::now() + SOON;
        let stream = loop {
            match vsock::connect(&ep, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) if e.is_retryable() && Instant::now() < deadline => std::thread::sleep(POLL),
                Err(e) => panic!("guest not reachable: {e}"),
            }
        };
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Raw {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, msg: &Value) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("a reply in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }
}

const MODERN_META: &str = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"test","version":"1"}}"#;

fn modern(id: u64, method: &str, mut params: Value) -> Value {
    params["_meta"] = serde_json::from_str(MODERN_META).unwrap();
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The same conversation, modern then legacy, for every server.
fn conversation() -> Vec<Value> {
    vec![
        modern(1, "server/discover", json!({})),
        modern(2, "tools/list", json!({})),
        modern(
            3,
            "tools/call",
            json!({"name": "add", "arguments": {"a": 2, "b": 3}}),
        ),
        modern(
            4,
            "tools/call",
            json!({"name": "add", "arguments": {"a": 2}}),
        ),
        modern(5, "tools/call", json!({"name": "nope", "arguments": {}})),
        modern(6, "ping", json!({})),
        {
            let mut m = modern(7, "tools/list", json!({}));
            m["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
            m
        },
        json!({"jsonrpc":"2.0","id":8,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":9,"method":"ping"}),
        json!({"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":null}}),
        json!({"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}),
    ]
}

/// Runs the conversation; returns the answers in order, server identity
/// replaced by a placeholder so that servers can be compared.
fn converse(raw: &mut Raw, schemas: &Schemas) -> Vec<Value> {
    let msgs = conversation();
    let mut answers = Vec::new();
    for m in &msgs {
        raw.send(m);
        if m.get("id").is_some() {
            answers.push(raw.recv());
        }
    }
    // Requests 6 (ping, gone in 2026-07-28), 7 (an unknown version) and 10
    // (`"arguments": null`) are off-schema on purpose: only the answers to
    // them are checked.
    let valid: Vec<Value> = msgs
        .iter()
        .filter(|m| m["id"] != 6 && m["id"] != 7 && m["id"] != 10)
        .cloned()
        .collect();
    schemas.check(&valid, &answers);
    answers.iter().map(normalize).collect()
}

fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(r) = v.get_mut("result") {
        if r.get("serverInfo").is_some() {
            r["serverInfo"] = json!("SERVER");
        }
        if let Some(m) = r.get_mut("_meta") {
            m["io.modelcontextprotocol/serverInfo"] = json!("SERVER");
        }
    }
    v
}

struct Guest {
    child: Child,
    sock: PathBuf,
    _dir: common::TempDir,
}

impl Guest {
    fn start(extra: &[String]) -> Guest {
        let dir = common::TempDir::new("mcpera-guest");
        let sock = dir.path().join("g.sock");
        let child = Command::new(common::guest_bin())
            .args([
                "--listen",
                &format!("uds:{}", sock.display()),
                "--no-ready-line",
            ])
            .args(extra)
            .env_remove(ukload::ENV_RUN)
            .env_remove(ukload::ENV_CID)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning ukload-guest");
        let guest = Guest {
            child,
            sock,
            _dir: dir,
        };
        // Up once it accepts a connection: callers (the CLI among them)
        // connect once, without retrying.
        drop(Raw::connect(&guest.sock));
        guest
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn all_three_servers_answer_both_eras_identically_and_to_the_schema() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    let builtin = Guest::start(&[]);
    let builtin_answers = converse(&mut Raw::connect(&builtin.sock), &schemas);
    let bridge = Guest::start(&[
        "--mcp-server".into(),
        format!("node {}", common::echo_server().display()),
    ]);
    let bridge_answers = converse(&mut Raw::connect(&bridge.sock), &schemas);
    assert_eq!(builtin_answers, bridge_answers);

    let a = &builtin_answers;
    assert_eq!(a[0]["result"]["supportedVersions"][4], "2026-07-28");
    assert_eq!(a[2]["result"]["content"][0]["text"], "2 + 3 = 5");
    assert_eq!(a[2]["result"]["resultType"], "complete");
    assert_eq!(a[3]["result"]["isError"], true, "SEP-1303: {}", a[3]);
    assert_eq!(a[4]["error"]["code"], -32602);
    assert_eq!(a[5]["error"]["code"], -32601, "no ping in 2026-07-28");
    assert_eq!(a[6]["error"]["code"], -32022);
    assert_eq!(a[6]["error"]["data"]["requested"], "2099-01-01");
    assert_eq!(a[7]["result"]["protocolVersion"], "2025-11-25");
    assert_eq!(
        a[8],
        json!({"jsonrpc":"2.0","id":9,"result":{}}),
        "legacy ping is {{}}"
    );
    assert_eq!(
        a[9]["result"]["isError"], true,
        "null arguments are no arguments"
    );
    assert!(a[9]["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("'message'"));
    assert!(
        a[10]["result"].get("resultType").is_none(),
        "legacy results have no resultType"
    );
}

#[test]
fn batches_are_answered_only_in_2025_03_26() {
    let builtin = Guest::start(&[]);
    for (version, batched) in [
        ("2025-03-26", true),
        ("2025-06-18", false),
        ("2025-11-25", false),
    ] {
        let mut raw = Raw::connect(&builtin.sock);
        raw.send(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":version,"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}));
        assert_eq!(raw.recv()["result"]["protocolVersion"], version);
        raw.send(&json!([{"jsonrpc":"2.0","id":2,"method":"ping"},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"b"}}}]));
        let r = raw.recv();
        if batched {
            assert_eq!(r[0], json!({"jsonrpc":"2.0","id":2,"result":{}}), "{r}");
            assert_eq!(r[1]["result"]["content"][0]["text"], "Echo: b", "{r}");
        } else {
            assert_eq!(r["error"]["code"], -32600, "{version}: {r}");
        }
    }
}

#[test]
fn the_guest_serves_calls_concurrently_and_honours_cancellation() {
    let builtin = Guest::start(&[]);
    let mut raw = Raw::connect(&builtin.sock);
    // The issue's repro: a slow call, its cancellation, then ping.
    let start = Instant::now();
    raw.send(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}));
    raw.recv();
    raw.send(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"slow","delay_ms":1500}}}));
    raw.send(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}));
    raw.send(&json!({"jsonrpc":"2.0","id":4,"method":"ping"}));
    let r = raw.recv();
    assert_eq!(r["id"], 4, "{r}");
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "ping waited {:?}",
        start.elapsed()
    );
    // N slow calls in flight finish in about one delay; id 3 is never answered.
    let t0 = Instant::now();
    for id in 10..18 {
        raw.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x","delay_ms":500},"_meta":{"progressToken":id}}}));
    }
    let mut answered = Vec::new();
    let mut progress = 0;
    while answered.len() < 8 {
        let r = raw.recv();
        if r["method"] == "notifications/progress" {
            progress += 1;
            continue;
        }
        assert_ne!(r["id"], 3, "a cancelled request was answered: {r}");
        answered.push(r["id"].as_u64().unwrap());
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1400),
        "8 × 500 ms calls took {took:?}"
    );
    assert!(progress >= 8, "progress notifications: {progress}");
    answered.sort();
    assert_eq!(answered, (10..18).collect::<Vec<u64>>());
}

#[test]
fn the_tool_phase_reports_the_era_per_instance() {
    let _slot = common::shared_slot();
    let dir = common::TempDir::new("mcpera-run");
    let (out, doc) = common::run_report(
        dir.path(),
        2,
        &[
            "--tool-call",
            r#"echo:{"message":"hi"}"#,
            "--max-boot-ms",
            "60000",
        ],
        RUN_BOUND,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for inst in common::instances(&doc) {
        assert_eq!(inst["tool_protocol"], "2026-07-28 (modern)", "{inst}");
        assert_eq!(inst["tool_result"], "Echo: hi");
    }
}

// Client points (docs/mcp.md): 7 outputSchema, 9 content, 10 taskSupport, 8 progress.

#[test]
fn call_and_bench_refuse_structured_content_that_breaks_the_output_schema() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    let server = content_server();
    for (tool, path) in [
        ("bad_sum", "$.sum: expected number, got string"),
        ("no_structured", "$: no structuredContent"),
    ] {
        let (o, client, answers) = mcp_through_tee_to(&server, &["call", tool]);
        assert_eq!(code(&o), 4, "{tool}: {}", stderr(&o));
        assert_eq!(stdout(&o), "", "{tool}");
        assert!(
            stderr(&o).starts_with("ukload mcp: protocol error from stdio MCP server")
                && stderr(&o).contains(&format!(
                    "): the result of tool {tool} does not match its outputSchema: {path}\n"
                )),
            "{tool}: {}",
            stderr(&o)
        );
        schemas.check(&client, &answers);
        let methods: Vec<&str> = client.iter().filter_map(|m| m["method"].as_str()).collect();
        assert!(
            methods.ends_with(&["tools/list", "tools/call"]),
            "the schema comes from tools/list: {methods:?}"
        );
    }
    let (o, _, _) = mcp_through_tee_to(&server, &["call", "good_sum"]);
    assert_eq!((code(&o), stdout(&o)), (0, "5\n".into()), "{}", stderr(&o));
    // echo_server.js's add keeps its schema in both eras.
    let (o, _, _) = mcp_through_tee("dual", &["call", "add", "--args", r#"{"a":2,"b":3}"#]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let (o, client, answers) = mcp_through_tee_to(
        &server,
        &[
            "bench",
            "bad_sum",
            "--calls",
            "6",
            "--parallel",
            "2",
            "--format",
            "json",
        ],
    );
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).expect("bench JSON");
    assert_eq!(doc["failures"], 6, "{doc}");
    assert!(
        doc["first_error"]
            .as_str()
            .unwrap()
            .contains("$.sum: expected number, got string"),
        "{doc}"
    );
    schemas.check(&client, &answers);
}

#[test]
fn the_tool_phase_refuses_structured_content_that_breaks_the_output_schema() {
    need_node!();
    let _slot = common::shared_slot();
    let dir = common::TempDir::new("mcpera-run-schema");
    let server = content_server();
    let bridge = format!("--guest-arg={server}");
    let (out, doc) = common::run_report(
        dir.path(),
        1,
        &[
            "--tool-call",
            "bad_sum",
            "--guest-arg=--mcp-server",
            &bridge,
            "--max-boot-ms",
            "60000",
        ],
        RUN_BOUND,
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let inst = &common::instances(&doc)[0];
    let err = inst["tool_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("does not match its outputSchema: $.sum: expected number, got string"),
        "{inst}"
    );
}

#[test]
fn call_shows_every_content_item_and_bench_counts_error_texts() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    let server = content_server();
    let (o, client, answers) = mcp_through_tee_to(&server, &["call", "media"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "first line\nsecond line\n\
         [image image/png, 8 bytes]\n\
         [audio audio/wav, 4 bytes]\n\
         [resource file:///tmp/notes.txt text/plain, 5 bytes]\n\
         [resource file:///tmp/blob.bin application/octet-stream, 8 bytes]\n\
         [resource_link file:///tmp/report.pdf application/pdf, 2048 bytes]\n"
    );
    schemas.check(&client, &answers);
    // --format json stays the raw result.
    let (o, _, _) = mcp_through_tee_to(&server, &["call", "media", "--format", "json"]);
    let raw: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(raw["content"].as_array().unwrap().len(), 6);

    // bench: every other call of flaky fails with the same text.
    let (o, client, answers) = mcp_through_tee_to(&server, &["bench", "flaky", "--calls", "10"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("tool errors 5"), "{text}");
    assert!(
        text.contains(
            "  errors (first distinct texts, by kind):\n    5 × tool error: flaky failure\n"
        ),
        "{text}"
    );
    schemas.check(&client, &answers);
    let (o, _, _) = mcp_through_tee_to(
        &server,
        &["bench", "flaky", "--calls", "4", "--format", "json"],
    );
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        doc["errors"],
        json!([{"kind": "tool_error", "text": "flaky failure", "count": 2}]),
        "{doc}"
    );
    assert_eq!(doc["errors_not_shown"], 0);
    // A JSON-RPC error and a protocol failure are texts of their own kinds.
    let (o, _, _) = mcp_through_tee_to(&server, &["bench", "nope", "--calls", "3"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("    3 × JSON-RPC error: error -32602: Unknown tool: nope\n"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn tools_that_require_tasks_are_marked_and_never_called() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    let server = content_server();
    let (o, client, answers) = mcp_through_tee_to(&server, &["tools"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("long_job()  [task required]  Needs task support\n"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        stdout(&o).matches("[task required]").count(),
        1,
        "{}",
        stdout(&o)
    );
    schemas.check(&client, &answers);
    for cmd in [
        &["call", "long_job"][..],
        &["bench", "long_job", "--calls", "3"],
    ] {
        let (o, client, answers) = mcp_through_tee_to(&server, cmd);
        assert_eq!(code(&o), 6, "{cmd:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), "", "{cmd:?}");
        assert_eq!(
            stderr(&o),
            "ukload mcp: tool long_job requires task-augmented execution \
             (execution.taskSupport is \"required\"); ukload has no task support, \
             so the tool was not called\n",
            "{cmd:?}"
        );
        assert!(
            !client.iter().any(|m| m["method"] == "tools/call"),
            "{cmd:?}: a tools/call was sent: {client:?}"
        );
        schemas.check(&client, &answers);
    }
    let o = {
        let dir = common::TempDir::new("mcpera-help");
        let mut cmd = common::ukload(dir.path());
        cmd.args(["mcp", "call", "--help"]);
        common::output_within(cmd, RUN_BOUND)
    };
    assert!(
        stdout(&o).contains("6 the tool requires task support"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_tool_phase_does_not_call_a_tool_that_requires_tasks() {
    need_node!();
    let _slot = common::shared_slot();
    let dir = common::TempDir::new("mcpera-run-task");
    let bridge = format!("--guest-arg={}", content_server());
    let (out, doc) = common::run_report(
        dir.path(),
        1,
        &[
            "--tool-call",
            "long_job:{}",
            "--guest-arg=--mcp-server",
            &bridge,
            "--max-boot-ms",
            "60000",
        ],
        RUN_BOUND,
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let inst = &common::instances(&doc)[0];
    assert!(
        inst["tool_error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("tool long_job requires task-augmented execution"),
        "{inst}"
    );
    assert!(inst["tool_result"].is_null(), "{inst}");
}

/// `progress N/TOTAL (P%): waiting for delay_ms` lines of a call's stderr.
fn progress_lines(err: &str) -> Vec<&str> {
    err.lines().filter(|l| l.starts_with("progress ")).collect()
}

#[test]
fn call_sends_a_progress_token_and_shows_progress_on_stderr() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    for era in ["dual", "legacy"] {
        let args = [
            "call",
            "echo",
            "--arg",
            "message=slow",
            "--arg",
            "delay_ms=1000",
        ];
        let (o, client, answers) = mcp_through_tee(era, &args);
        assert_eq!(
            (code(&o), stdout(&o)),
            (0, "Echo: slow\n".into()),
            "{era}: {}",
            stderr(&o)
        );
        schemas.check(&client, &answers);
        let call = client
            .iter()
            .find(|m| m["method"] == "tools/call")
            .expect("a tools/call");
        assert_eq!(
            call["params"]["_meta"]["progressToken"], call["id"],
            "{era}: the token is the request id: {call}"
        );
        let err = stderr(&o);
        let lines = progress_lines(&err);
        // A pipe gets one line per notification (every 200 ms of 1000).
        assert!(lines.len() >= 2, "{era}: {err}");
        assert!(
            lines[0].starts_with("progress ")
                && lines[0].contains("/1000 (")
                && lines[0].ends_with("%): waiting for delay_ms"),
            "{era}: {err}"
        );
        let notified = answers
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count();
        assert_eq!(lines.len(), notified, "{era}: {err}");
        // -q: nothing on stderr.
        let quiet: Vec<&str> = args.iter().copied().chain(["-q"]).collect();
        let (o, _, _) = mcp_through_tee(era, &quiet);
        assert_eq!(code(&o), 0, "{era}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{era}: -q");
    }

    // The guest's built-in tools send the same notifications.
    let guest = Guest::start(&[]);
    let dir = common::TempDir::new("mcpera-progress");
    let mut cmd = common::ukload(dir.path());
    cmd.args([
        "mcp",
        "call",
        "echo",
        "--arg",
        "message=g",
        "--arg",
        "delay_ms=700",
    ])
    .args([
        "--uds",
        &format!("{}:{}", guest.sock.display(), ukload::DEFAULT_PORT),
    ]);
    let o = common::output_within(cmd, RUN_BOUND);
    assert_eq!(
        (code(&o), stdout(&o)),
        (0, "Echo: g\n".into()),
        "{}",
        stderr(&o)
    );
    assert!(!progress_lines(&stderr(&o)).is_empty(), "{}", stderr(&o));
}

#[test]
fn progress_resets_the_timeout_only_when_asked_and_max_total_is_hard() {
    need_node!();
    let Some(schemas) = schemas() else { return };
    let slow = [
        "call",
        "echo",
        "--arg",
        "message=slow",
        "--arg",
        "delay_ms=2000",
        "--timeout-ms",
        "700",
        "-q",
    ];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { slow.iter().chain(extra).copied().collect() };
    // Without the switch the 700 ms deadline holds, progress or not.
    let (o, client, answers) = mcp_through_tee("dual", &slow);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no answer within 700ms"),
        "{}",
        stderr(&o)
    );
    schemas.check(&client, &answers);
    // Progress every 200 ms keeps restarting it: the 2 s call succeeds.
    let (o, client, answers) = mcp_through_tee("dual", &with(&["--progress-resets-timeout"]));
    assert_eq!(
        (code(&o), stdout(&o)),
        (0, "Echo: slow\n".into()),
        "{}",
        stderr(&o)
    );
    schemas.check(&client, &answers);
    // ... but never past --max-total-ms.
    let (o, client, answers) = mcp_through_tee(
        "dual",
        &with(&["--progress-resets-timeout", "--max-total-ms", "1200"]),
    );
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "no answer within 1.2s; the hard limit on the whole call (1.2s, max total) was reached"
        ),
        "{}",
        stderr(&o)
    );
    assert!(
        client
            .iter()
            .any(|m| m["method"] == "notifications/cancelled"),
        "the call is cancelled at the hard limit: {client:?}"
    );
    schemas.check(&client, &answers);
    // A bad value names its flag.
    let (o, _, _) = mcp_through_tee("dual", &with(&["--max-total-ms", "0"]));
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-total-ms"), "{}", stderr(&o));
}
