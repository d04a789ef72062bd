//! MCP (Model Context Protocol) client and server pieces.
//! OWNER: MCP helper.
