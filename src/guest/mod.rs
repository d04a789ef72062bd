//! The guest agent (what `ukload-guest` runs): listens on vsock or on a hybrid
//! Unix socket, answers `ping` with its timestamps, later MCP tools.
//!
//! - `config`: [`AgentConfig`] and [`ListenAddr`] (what to listen on, how).
//! - `agent`: [`run_agent`], the accept loop and the per-connection server.
//! - [`pid1`]: running as PID 1 inside a microVM (owned by the microVM helper).

mod agent;
mod config;
pub mod pid1;
pub mod tools;

pub use agent::{
    mark_process_start, run_agent, run_agent_with, AgentError, DefaultHandler, Handler,
    ACCEPT_POLL_INTERVAL, IDLE_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_GRACE, WRITE_TIMEOUT,
};
pub use config::{parse_listen, AgentConfig, ListenAddr, ParseListenError};
