//! JSON-RPC 2.0 messages (as used by MCP and by the boot probe's `ping`).
//! OWNER: transport helper. Contract:

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the guest agent answers to `ping`: enough to split a boot into VMM,
/// guest and probe time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PingInfo {
    /// Guest agent's pid (1 inside a VM).
    pub pid: u32,
    /// The CID the guest really has (from the vsock device, or given to it in process mode).
    pub cid: Option<u32>,
    /// Port it listens on.
    pub port: u32,
    /// CLOCK_MONOTONIC when the agent process started.
    pub started_mono_ns: u64,
    /// CLOCK_MONOTONIC when the listener became ready.
    pub ready_mono_ns: u64,
    /// CLOCK_BOOTTIME when the listener became ready (time since the guest kernel booted).
    pub ready_boottime_ns: u64,
    /// CLOCK_MONOTONIC when this reply was made.
    pub now_mono_ns: u64,
    /// Agent version.
    pub agent: String,
}

/// A decoded JSON-RPC message.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request { id: Value, method: String, params: Option<Value> },
    Notification { method: String, params: Option<Value> },
    Response { id: Value, result: Value },
    Error { id: Value, code: i64, message: String, data: Option<Value> },
}

/// Builds a request object.
pub fn request(id: u64, method: &str, params: Value) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}
