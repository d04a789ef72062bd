//! MCP result shapes the client decodes: the `initialize` result, tools, tool results.
//!
//! Decoding keeps the raw JSON next to the typed fields so a caller can print
//! exactly what the server sent (`ukload mcp call --format json`).

use serde_json::{Map, Value};

/// What the server answered to `initialize`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InitializeResult {
    /// The protocol revision the server picked (one of the supported ones).
    pub protocol_version: String,
    /// `serverInfo.name` (empty if absent).
    pub server_name: String,
    /// `serverInfo.version` (empty if absent).
    pub server_version: String,
    /// The server's `capabilities` object.
    pub capabilities: Value,
    /// Optional usage instructions for the client.
    pub instructions: Option<String>,
    /// The whole result object.
    pub raw: Value,
}

/// One entry of `tools/list`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// JSON Schema of the arguments (`{"type":"object"}` if the server gave none).
    pub input_schema: Value,
    /// JSON Schema of `structuredContent`, if declared.
    pub output_schema: Option<Value>,
    /// The whole entry as sent.
    pub raw: Value,
}

/// One item of a tool result's `content`.
#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text {
        text: String,
    },
    Image {
        data: String,
        mime_type: String,
    },
    Audio {
        data: String,
        mime_type: String,
    },
    /// Resources, resource links and types this client does not model, as sent.
    Other(Value),
}

/// The outcome of a `tools/call` that reached the tool.
///
/// `is_error == true` means the tool ran and failed (a tool-level error the model
/// should see), which is different from a JSON-RPC error (`McpError::Rpc`).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    pub content: Vec<Content>,
    pub is_error: bool,
    /// `structuredContent`, if the tool returned one.
    pub structured: Option<Value>,
    /// The whole result object as sent.
    pub raw: Value,
}

impl ToolResult {
    /// The text items of `content`, joined by newlines.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|c| match c {
                Content::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        texts.join("\n")
    }
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} is not an object: {}", preview(v)))
}

fn opt_string(m: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{what}.{key} is not a string: {}", preview(other))),
    }
}

/// A short rendering of a JSON value for error messages.
pub(crate) fn preview(v: &Value) -> String {
    const MAX: usize = 200;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

impl InitializeResult {
    pub(crate) fn from_value(v: Value) -> Result<Self, String> {
        let m = as_object(&v, "initialize result")?;
        let protocol_version = opt_string(m, "protocolVersion", "initialize result")?
            .ok_or("initialize result has no protocolVersion")?;
        let info = m.get("serverInfo").and_then(Value::as_object);
        Self::from_parts(&v, protocol_version, info, "initialize result")
    }

    /// A modern `server/discover` result, read as what `initialize` would have
    /// said: `version` (the revision chosen), identity from
    /// `_meta["io.modelcontextprotocol/serverInfo"]`, capabilities.
    pub(crate) fn from_discover(v: Value, version: &str) -> Result<Self, String> {
        let m = as_object(&v, "server/discover result")?;
        let info = m
            .get("_meta")
            .and_then(|x| x.get(super::meta::SERVER_INFO))
            .and_then(Value::as_object);
        Self::from_parts(&v, version.to_string(), info, "server/discover result")
    }

    /// Both eras' results: the identity object `info`, `capabilities` and
    /// `instructions` of the result object `v` (`what` names it in errors).
    fn from_parts(
        v: &Value,
        protocol_version: String,
        info: Option<&Map<String, Value>>,
        what: &str,
    ) -> Result<Self, String> {
        let m = as_object(v, what)?;
        let info_str = |k: &str| {
            info.and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Ok(InitializeResult {
            protocol_version,
            server_name: info_str("name"),
            server_version: info_str("version"),
            capabilities: m
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
            instructions: opt_string(m, "instructions", what)?,
            raw: v.clone(),
        })
    }
}

impl Tool {
    pub(crate) fn from_value(v: &Value) -> Result<Self, String> {
        let m = as_object(v, "tool")?;
        let name = opt_string(m, "name", "tool")?
            .ok_or_else(|| format!("tool without a name: {}", preview(v)))?;
        let what = format!("tool {name:?}");
        let input_schema = match m.get("inputSchema") {
            None | Some(Value::Null) => serde_json::json!({"type": "object"}),
            Some(s @ Value::Object(_)) => s.clone(),
            Some(other) => {
                return Err(format!(
                    "{what}: inputSchema is not an object: {}",
                    preview(other)
                ))
            }
        };
        Ok(Tool {
            title: opt_string(m, "title", &what)?,
            description: opt_string(m, "description", &what)?,
            input_schema,
            output_schema: m.get("outputSchema").filter(|s| !s.is_null()).cloned(),
            raw: v.clone(),
            name,
        })
    }
}

/// The value of `execution.taskSupport` that makes a tool callable only as a
/// task (the tasks extension, which this client does not speak).
pub const TASK_SUPPORT_REQUIRED: &str = "required";

impl Tool {
    /// `execution.taskSupport` as declared (`forbidden`, `optional`,
    /// `required`); `None` when absent (which means `forbidden`).
    pub fn task_support(&self) -> Option<&str> {
        self.raw
            .get("execution")
            .and_then(|e| e.get("taskSupport"))
            .and_then(Value::as_str)
    }

    /// Whether the tool can only be called as a task (`taskSupport:
    /// "required"`): this client, which has no task support, must not call it.
    pub fn requires_tasks(&self) -> bool {
        self.task_support() == Some(TASK_SUPPORT_REQUIRED)
    }

    /// Checks a result of this tool against its `outputSchema` (clients
    /// SHOULD): with a schema, a successful result must carry
    /// `structuredContent` that validates against it. A tool error
    /// (`isError: true`) and a tool without a schema are not checked.
    /// `Err` names the JSON path that failed (`$.sum: expected number, got
    /// string`); the schema's `$ref`s resolve within the schema itself. The
    /// keywords checked are [`super::schema`]'s subset.
    pub fn check_output(&self, result: &ToolResult) -> Result<(), String> {
        let Some(schema) = &self.output_schema else {
            return Ok(());
        };
        if result.is_error {
            return Ok(());
        }
        let what = format!(
            "the result of tool {} does not match its outputSchema",
            self.name
        );
        match &result.structured {
            None => Err(format!("{what}: $: no structuredContent")),
            Some(value) => super::schema::validate(schema, schema, value)
                .map_err(|path_and_why| format!("{what}: {path_and_why}")),
        }
    }
}

/// Bytes that base64 text `data` decodes to (without decoding it).
fn base64_len(data: &str) -> usize {
    let chars: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let padding = chars.iter().rev().take_while(|&&b| b == b'=').count();
    (chars.len() * 3 / 4).saturating_sub(padding)
}

impl Content {
    /// The item for a person: a text item's text; any other item as one
    /// line with its type, MIME type and size or URI:
    /// `[image image/png, 8 bytes]`, `[resource file:///a.txt text/plain, 5 bytes]`,
    /// `[resource_link file:///r.pdf application/pdf, 2048 bytes]`; an item of
    /// a type this client does not know as `[TYPE] JSON`.
    pub fn summary(&self) -> String {
        let line = |parts: &[Option<String>]| {
            let (head, size): (Vec<&String>, Option<&String>) = (
                parts[..parts.len() - 1].iter().flatten().collect(),
                parts[parts.len() - 1].as_ref(),
            );
            let head: Vec<&str> = head.iter().map(|s| s.as_str()).collect();
            match size {
                Some(size) => format!("[{}, {size}]", head.join(" ")),
                None => format!("[{}]", head.join(" ")),
            }
        };
        let bytes = |n: usize| Some(format!("{n} byte{}", if n == 1 { "" } else { "s" }));
        match self {
            Content::Text { text } => text.clone(),
            Content::Image { data, mime_type } => line(&[
                Some("image".into()),
                Some(mime_type.clone()),
                bytes(base64_len(data)),
            ]),
            Content::Audio { data, mime_type } => line(&[
                Some("audio".into()),
                Some(mime_type.clone()),
                bytes(base64_len(data)),
            ]),
            Content::Other(v) => {
                let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                match s(v, "type").as_deref() {
                    Some("resource") => {
                        let r = v.get("resource").unwrap_or(&Value::Null);
                        let size = match (s(r, "text"), s(r, "blob")) {
                            (Some(t), _) => bytes(t.len()),
                            (None, Some(b)) => bytes(base64_len(&b)),
                            (None, None) => None,
                        };
                        line(&[Some("resource".into()), s(r, "uri"), s(r, "mimeType"), size])
                    }
                    Some("resource_link") => line(&[
                        Some("resource_link".into()),
                        s(v, "uri"),
                        s(v, "mimeType"),
                        v.get("size")
                            .and_then(Value::as_u64)
                            .and_then(|n| bytes(n as usize)),
                    ]),
                    other => format!("[{}] {}", other.unwrap_or("content"), preview(v)),
                }
            }
        }
    }
}

impl Content {
    fn from_value(v: &Value) -> Content {
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match v.get("type").and_then(Value::as_str) {
            Some("text") => match field("text") {
                Some(text) => Content::Text { text },
                None => Content::Other(v.clone()),
            },
            Some(kind @ ("image" | "audio")) => match (field("data"), field("mimeType")) {
                (Some(data), Some(mime_type)) if kind == "image" => {
                    Content::Image { data, mime_type }
                }
                (Some(data), Some(mime_type)) => Content::Audio { data, mime_type },
                _ => Content::Other(v.clone()),
            },
            _ => Content::Other(v.clone()),
        }
    }
}

impl ToolResult {
    /// Decodes a `tools/call` result. A missing `content` is read as empty.
    pub fn from_value(v: Value) -> Result<Self, String> {
        let m = as_object(&v, "tools/call result")?;
        let content = match m.get("content") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(Content::from_value).collect(),
            Some(other) => {
                return Err(format!(
                    "tools/call result: content is not an array: {}",
                    preview(other)
                ))
            }
        };
        let is_error = match m.get("isError") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!(
                    "tools/call result: isError is not a boolean: {}",
                    preview(other)
                ))
            }
        };
        let structured = m.get("structuredContent").filter(|s| !s.is_null()).cloned();
        Ok(ToolResult {
            content,
            is_error,
            structured,
            raw: v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_result_decodes_text_error_flag_and_structured_content() {
        let r = ToolResult::from_value(json!({
            "content": [{"type":"text","text":"a"}, {"type":"image","data":"AA==","mimeType":"image/png"},
                        {"type":"text","text":"b"}, {"type":"resource_link","uri":"file:///x"}],
            "isError": true,
            "structuredContent": {"sum": 5}
        }))
        .unwrap();
        assert_eq!(r.text(), "a\nb");
        assert!(r.is_error);
        assert_eq!(r.structured, Some(json!({"sum": 5})));
        assert_eq!(
            r.content[1],
            Content::Image {
                data: "AA==".into(),
                mime_type: "image/png".into()
            }
        );
        assert!(matches!(r.content[3], Content::Other(_)));
    }

    #[test]
    fn output_schema_checks_successful_results_only() {
        let tool = Tool::from_value(&json!({
            "name": "add", "inputSchema": {"type": "object"},
            "outputSchema": {"type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]},
        }))
        .unwrap();
        let result = |v: Value| ToolResult::from_value(v).unwrap();
        assert!(tool
            .check_output(&result(
                json!({"content": [], "structuredContent": {"sum": 5}})
            ))
            .is_ok());
        assert_eq!(
            tool.check_output(&result(json!({"content": [], "structuredContent": {"sum": "5"}})))
                .unwrap_err(),
            "the result of tool add does not match its outputSchema: $.sum: expected number, got string"
        );
        assert!(tool
            .check_output(&result(json!({"content": []})))
            .unwrap_err()
            .ends_with("$: no structuredContent"));
        assert!(tool
            .check_output(&result(json!({"content": [], "isError": true})))
            .is_ok());
        assert!(!tool.requires_tasks());
        let task =
            Tool::from_value(&json!({"name": "t", "execution": {"taskSupport": "required"}}))
                .unwrap();
        assert!(task.requires_tasks());
        assert_eq!(task.task_support(), Some("required"));
    }

    #[test]
    fn every_content_item_has_a_summary() {
        let r = ToolResult::from_value(json!({"content": [
            {"type": "text", "text": "a\nb"},
            {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"},
            {"type": "audio", "data": "UklGRg==", "mimeType": "audio/wav"},
            {"type": "resource", "resource": {"uri": "file:///n.txt", "mimeType": "text/plain", "text": "hello"}},
            {"type": "resource", "resource": {"uri": "file:///b.bin", "blob": "AAAA"}},
            {"type": "resource_link", "uri": "file:///r.pdf", "name": "r", "mimeType": "application/pdf", "size": 2048},
            {"type": "resource_link", "uri": "file:///s", "name": "s"},
            {"type": "hologram"},
        ]}))
        .unwrap();
        let lines: Vec<String> = r.content.iter().map(Content::summary).collect();
        assert_eq!(
            lines,
            [
                "a\nb",
                "[image image/png, 8 bytes]",
                "[audio audio/wav, 4 bytes]",
                "[resource file:///n.txt text/plain, 5 bytes]",
                "[resource file:///b.bin, 3 bytes]",
                "[resource_link file:///r.pdf application/pdf, 2048 bytes]",
                "[resource_link file:///s]",
                "[hologram] {\"type\":\"hologram\"}",
            ]
        );
    }

    #[test]
    fn malformed_results_are_refused_with_the_reason() {
        assert!(ToolResult::from_value(json!([1]))
            .unwrap_err()
            .contains("not an object"));
        assert!(ToolResult::from_value(json!({"content": "x"}))
            .unwrap_err()
            .contains("content is not an array"));
        assert!(
            ToolResult::from_value(json!({"content": [], "isError": "yes"}))
                .unwrap_err()
                .contains("isError")
        );
        assert!(Tool::from_value(&json!({"description": "x"}))
            .unwrap_err()
            .contains("without a name"));
        assert!(InitializeResult::from_value(json!({}))
            .unwrap_err()
            .contains("protocolVersion"));
    }
}
