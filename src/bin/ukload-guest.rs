//! `ukload-guest`: the guest agent and tool executor. OWNER: transport helper.
fn main() {}
