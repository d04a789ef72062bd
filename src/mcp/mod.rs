//! MCP (Model Context Protocol) client and server pieces, synchronous.
//!
//! - [`Session`]: a client over any [`Transport`] (stdio child, Unix / hybrid
//!   vsock stream, `AF_VSOCK`), many calls in flight from many threads.
//! - [`stdio`]: the stdio child transport (own process group, stderr kept, always
//!   ended and reaped).
//! - [`tools`] / [`server`]: the four built-in tools and a minimal server over
//!   them, for the guest agent.
//! - [`coerce_args`]: `--arg key=value` typed by a tool's input schema.
//!
//! `ukload mcp tools|call|bench` is the binary's `src/cli/mcp.rs`, on top of these.

mod args;
mod error;
pub mod schema;
pub mod server;
mod session;
pub mod stdio;
pub mod tools;
mod transport;
mod types;

pub use crate::framing::MAX_FRAME_LEN;
pub use args::{coerce_args, parse_arg_pair, split_command};
pub use error::McpError;
pub use session::{
    CallOptions, Progress, ProtocolChoice, Session, SessionOptions, SessionStats,
    DEFAULT_DISCOVER_TIMEOUT,
};
pub use stdio::{
    spawn_stdio_child, spawn_stdio_child_with, CloseOutcome, SpawnOptions, StderrTail, StdioChild,
};
pub use transport::{Transport, TransportGuard};
pub use types::{Content, InitializeResult, Tool, ToolResult};

/// The *legacy* MCP revisions this crate speaks (a session set up by
/// `initialize`), oldest first.
pub const LEGACY_PROTOCOL_VERSIONS: [&str; 4] =
    ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The *modern* MCP revisions this crate speaks (stateless: version,
/// capabilities and identity in every request's `_meta`; `server/discover`).
pub const MODERN_PROTOCOL_VERSIONS: [&str; 1] = ["2026-07-28"];
/// Every MCP revision this crate speaks, oldest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];
/// The newest revision (modern).
pub const LATEST_PROTOCOL_VERSION: &str = "2026-07-28";
/// The newest legacy revision: what `initialize` offers by default.
pub const LATEST_LEGACY_PROTOCOL_VERSION: &str = "2025-11-25";
/// The only legacy revision in which JSON-RPC batches MUST be accepted.
pub const BATCH_PROTOCOL_VERSION: &str = "2025-03-26";

/// `_meta` keys of the modern revision.
pub mod meta {
    /// The request's protocol revision (required on modern requests).
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    /// The client's capabilities for this request (required on modern requests).
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    /// The client's name and version.
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    /// The server's name and version, on a result.
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
}

/// The two families of MCP revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Era {
    /// 2026-07-28 and later: no handshake, `_meta` on every request.
    Modern,
    /// 2024-11-05 … 2025-11-25: `initialize`, then a session.
    Legacy,
}

impl Era {
    /// The era of revision `version`, if this crate speaks it.
    pub fn of(version: &str) -> Option<Era> {
        if MODERN_PROTOCOL_VERSIONS.contains(&version) {
            Some(Era::Modern)
        } else if LEGACY_PROTOCOL_VERSIONS.contains(&version) {
            Some(Era::Legacy)
        } else {
            None
        }
    }

    /// `"modern"` or `"legacy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Era::Modern => "modern",
            Era::Legacy => "legacy",
        }
    }
}

impl std::fmt::Display for Era {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deadline of one MCP request (initialize, tools/list, tools/call) unless
/// the caller says otherwise: `ukload mcp --timeout-ms`, the tool phase's
/// `--tool-timeout-ms` and the session defaults all start from it.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod version_list_tests {
    use super::*;

    /// The revision lists are written out (they are `const` arrays): they
    /// must agree with each other.
    #[test]
    fn the_revision_lists_agree() {
        let both: Vec<&str> = LEGACY_PROTOCOL_VERSIONS
            .iter()
            .chain(MODERN_PROTOCOL_VERSIONS.iter())
            .copied()
            .collect();
        assert_eq!(both, SUPPORTED_PROTOCOL_VERSIONS);
        assert_eq!(
            MODERN_PROTOCOL_VERSIONS.last(),
            Some(&LATEST_PROTOCOL_VERSION)
        );
        assert_eq!(
            LEGACY_PROTOCOL_VERSIONS.last(),
            Some(&LATEST_LEGACY_PROTOCOL_VERSION)
        );
        assert!(LEGACY_PROTOCOL_VERSIONS.contains(&BATCH_PROTOCOL_VERSION));
    }
}
