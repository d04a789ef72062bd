//! The one error type of the MCP client.
//!
//! Two kinds of outcome must never be confused: a JSON-RPC error the server sent
//! ([`McpError::Rpc`]: it understood us and refused) and a failure of the
//! connection or the protocol (everything else: we do not know what the server
//! did). A tool that *ran and failed* is neither: it is a
//! [`ToolResult`](super::ToolResult) with `is_error == true`.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Why an MCP operation failed.
#[derive(Clone, Debug)]
pub enum McpError {
    /// The server answered with a JSON-RPC error object.
    Rpc {
        /// The method that was called.
        method: String,
        code: i64,
        message: String,
        data: Option<serde_json::Value>,
    },
    /// No answer before the deadline. For `tools/call` a `notifications/cancelled`
    /// was sent; the session stays usable and a late answer is dropped.
    Timeout {
        method: String,
        id: u64,
        after: Duration,
        /// What the session saw that may explain the silence (e.g. replies with ids
        /// it never issued).
        hint: Option<String>,
    },
    /// The caller's stop flag (SIGINT/SIGTERM) was set while waiting: the call
    /// was given up (a `tools/call` is cancelled with `notifications/cancelled`).
    Interrupted { method: String, after: Duration },
    /// The connection is gone: the server closed its end, exited, or the session
    /// was closed. Carries the peer's description and, for a stdio child, the tail
    /// of its stderr.
    Closed { peer: String, reason: String },
    /// The server broke the protocol (output that is not JSON-RPC, a frame over the
    /// size limit, a malformed result). The session is dead after a framing or
    /// parse failure of the stream.
    Protocol { peer: String, detail: String },
    /// The server picked a protocol revision this client does not speak.
    UnsupportedVersion {
        offered: String,
        got: String,
        supported: &'static [&'static str],
    },
    /// Modern negotiation found no revision both sides speak.
    NoCommonVersion {
        /// What the server listed.
        server_supports: Vec<String>,
        /// What this client would have accepted.
        supported: &'static [&'static str],
    },
    /// The server did not declare the capability the operation needs (e.g.
    /// `tools`): nothing was sent.
    NotOffered {
        peer: String,
        capability: &'static str,
    },
    /// The tool declares `execution.taskSupport: "required"`: it can only be
    /// called as a task, and this client has no task support. Nothing was sent.
    NeedsTasks { tool: String },
    /// A local I/O failure (spawning the server, a socket call) with its context.
    Io {
        context: String,
        source: Arc<io::Error>,
    },
}

impl McpError {
    /// The JSON-RPC error code, for [`McpError::Rpc`].
    pub fn rpc_code(&self) -> Option<i64> {
        match self {
            McpError::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for [`McpError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, McpError::Timeout { .. })
    }

    /// True for [`McpError::Interrupted`].
    pub fn is_interrupted(&self) -> bool {
        matches!(self, McpError::Interrupted { .. })
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        McpError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            McpError::Rpc {
                method,
                code,
                message,
                ..
            } => {
                write!(
                    f,
                    "{method}: server returned JSON-RPC error {code}: {message}"
                )
            }
            McpError::Timeout {
                method,
                id,
                after,
                hint,
            } => {
                write!(f, "{method} (request id {id}): no answer within {after:?}")?;
                if let Some(hint) = hint {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            McpError::Interrupted { method, after } => {
                write!(f, "{method}: interrupted by signal after {after:?}")
            }
            McpError::Closed { peer, reason } => write!(f, "connection to {peer} closed: {reason}"),
            McpError::Protocol { peer, detail } => {
                write!(f, "protocol error from {peer}: {detail}")
            }
            McpError::UnsupportedVersion {
                offered,
                got,
                supported,
            } => write!(
                f,
                "server chose MCP protocol revision {got:?} (we offered {offered:?}); \
                 this client speaks {}",
                supported.join(", ")
            ),
            McpError::NoCommonVersion {
                server_supports,
                supported,
            } => write!(
                f,
                "no MCP protocol revision in common: the server supports {}; this client speaks {}",
                if server_supports.is_empty() {
                    "(none listed)".to_string()
                } else {
                    server_supports.join(", ")
                },
                supported.join(", ")
            ),
            McpError::NotOffered { peer, capability } => write!(
                f,
                "{peer} offers no {capability} (it did not declare the {capability:?} capability)"
            ),
            McpError::NeedsTasks { tool } => write!(
                f,
                "tool {tool} requires task-augmented execution (execution.taskSupport is \"required\"); \
                 ukload has no task support, so the tool was not called"
            ),
            McpError::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for McpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            McpError::Io { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}
