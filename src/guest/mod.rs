//! The guest agent (what `ukload-guest` runs): listens on vsock or on a hybrid
//! Unix socket, answers `ping` with its timestamps, later MCP tools.
//! OWNER: transport helper.

pub mod pid1;
