//! The guest agent (what `ukload-guest` runs): listens on vsock or on a hybrid
//! Unix socket, answers `ukload/status` with its timestamps, and MCP
//! (the built-in tools, or a bridged stdio server).
//!
//! - `config`: [`AgentConfig`] and [`ListenAddr`] (what to listen on, how).
//! - `agent`: [`run_agent`], the accept loop and the per-connection server
//!   ([`ConnectionMode`]: JSON-RPC answered here, or the MCP bridge).
//! - [`bridge`]: `--mcp-server`: each connection relayed to a fresh stdio MCP server.
//! - [`pid1`]: running as PID 1 inside a microVM.

mod agent;
pub mod bridge;
mod config;
pub mod pid1;
pub mod tools;

pub use agent::{
    mark_process_start, run_agent, run_agent_mode, run_agent_with, AgentConn, AgentError,
    AgentReply, ConnectionMode, DefaultHandler, Handler, RpcMode, ACCEPT_POLL_INTERVAL,
    IDLE_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_GRACE, WRITE_TIMEOUT,
};
pub use config::{parse_listen, AgentConfig, ListenAddr, ParseListenError};
