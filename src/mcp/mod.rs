//! MCP (Model Context Protocol) client and server pieces, synchronous.
//!
//! - [`Session`]: a client over any [`Transport`] (stdio child, Unix / hybrid
//!   vsock stream, `AF_VSOCK`), many calls in flight from many threads.
//! - [`stdio`]: the stdio child transport (own process group, stderr kept, always
//!   ended and reaped).
//! - [`tools`] / [`server`]: the four built-in tools and a minimal server over
//!   them, for the guest agent.
//! - [`coerce_args`]: `--arg key=value` typed by a tool's input schema.
//! - [`cli`]: `ukload mcp tools|call|bench`.
//!
//! OWNER: MCP helper.

mod args;
pub mod cli;
mod error;
pub mod server;
mod session;
pub mod stdio;
pub mod tools;
mod transport;
mod types;
mod wire;

pub use args::{coerce_args, parse_arg_pair, split_command};
pub use error::{codes, McpError};
pub use session::{Session, SessionOptions, SessionStats};
pub use stdio::{spawn_stdio_child, spawn_stdio_child_with, SpawnOptions, StderrTail, StdioChild};
pub use transport::{CloseOutcome, Transport, TransportGuard};
pub use types::{Content, InitializeResult, Tool, ToolResult};
pub use wire::{McpFraming, MAX_FRAME_LEN};

/// The MCP revisions this crate speaks, oldest first.
pub const SUPPORTED_PROTOCOL_VERSIONS: [&str; 4] =
    ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The revision offered in `initialize` by default.
pub const LATEST_PROTOCOL_VERSION: &str = "2025-11-25";
