//! The guest as a tool executor: MCP requests (`initialize`, `tools/list`,
//! `tools/call` over the built-in tools) answered by the agent itself, so a
//! VM with nothing else inside can execute tools. `ping` stays the agent's.

use super::Handler;
use serde_json::Value;

/// Answers MCP methods with [`crate::mcp::server::handle_request`].
pub struct BuiltinTools;

impl Handler for BuiltinTools {
    fn handle(&self, method: &str, params: Option<Value>) -> Option<Result<Value, (i64, String)>> {
        crate::mcp::server::handle_request(method, params)
    }
}
