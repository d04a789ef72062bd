//! A small JSON Schema validator: the subset MCP uses, in its own schema
//! (`schema.json` of each revision) and in tools' input and output schemas.
//!
//! Keywords checked: `type` (a name or a list), `properties`, `required`,
//! `additionalProperties` (`false` or a schema), `items` (one schema),
//! `maxItems`, `const`, `enum`, `anyOf`, `allOf`, `oneOf`, `not`,
//! `minimum`, `maximum`, and `$ref` to `#/$defs/NAME` (or `#/definitions/NAME`)
//! of the root document. Anything else (`format`, `pattern`, `if`/`then`,
//! remote `$ref`s, ...) is ignored, so a value can pass here and fail a full
//! validator: the subset is what MCP's own schemas and ukload's tools use.
//! No dependency: a full validator crate (`jsonschema`) pulls in a regex
//! engine, an HTTP client and dozens of crates for features MCP does not use.

use serde_json::{Map, Value};

/// Most nested `$ref`s followed before giving up (a self-referencing schema).
const MAX_DEPTH: usize = 64;

/// Validates `value` against `schema`, whose `$ref`s resolve in `root`.
/// `Err` names the first failure: its JSON path (`$.content[0].text`) and why.
pub fn validate(root: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    check(root, schema, value, "$", 0)
}

/// Validates `value` against definition `name` of a schema document (its
/// `$defs`, e.g. `CallToolResult` of an MCP revision's schema).
pub fn validate_def(root: &Value, name: &str, value: &Value) -> Result<(), String> {
    let def =
        definition(root, name).ok_or_else(|| format!("the schema has no definition {name:?}"))?;
    check(root, def, value, "$", 0)
}

/// The property names in `schema`'s `required` list (none without one).
pub fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema.as_object().into_iter().flat_map(required_in)
}

/// [`required`] of a schema object.
fn required_in(s: &Map<String, Value>) -> impl Iterator<Item = &str> {
    s.get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn definition<'a>(root: &'a Value, name: &str) -> Option<&'a Value> {
    root.get("$defs")
        .and_then(|d| d.get(name))
        .or_else(|| root.get("definitions").and_then(|d| d.get(name)))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    let actual = type_name(v);
    actual == ty || (ty == "number" && actual == "integer")
}

/// Validates `v` (at `path`) against `schema`, keyword by keyword; `depth`
/// counts the nesting so far.
fn check(root: &Value, schema: &Value, v: &Value, path: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: schema nesting deeper than {MAX_DEPTH}"));
    }
    let s = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{path}: no value is allowed here")),
        Value::Object(s) => s,
        _ => return Ok(()),
    };
    check_ref(root, s, v, path, depth)?;
    check_type(s, v, path)?;
    check_const_enum_range(s, v, path)?;
    check_combinators(root, s, v, path, depth)?;
    match v {
        Value::Object(obj) => check_object(root, s, obj, path, depth),
        Value::Array(items) => check_array(root, s, items, path, depth),
        _ => Ok(()),
    }
}

/// `$ref`: the referenced definition (or the root, for `#`) must match too.
fn check_ref(
    root: &Value,
    s: &Map<String, Value>,
    v: &Value,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    let Some(r) = s.get("$ref").and_then(Value::as_str) else {
        return Ok(());
    };
    let name = r
        .strip_prefix("#/$defs/")
        .or_else(|| r.strip_prefix("#/definitions/"));
    match name.and_then(|n| definition(root, n)) {
        Some(def) => check(root, def, v, path, depth + 1),
        None if r == "#" => check(root, root, v, path, depth + 1),
        None => Err(format!("{path}: unresolvable $ref {r:?}")),
    }
}

/// `type`: one type name or a list of them (an integer is a number too).
fn check_type(s: &Map<String, Value>, v: &Value, path: &str) -> Result<(), String> {
    match s.get("type") {
        Some(Value::String(t)) if !has_type(v, t) => {
            Err(format!("{path}: expected {t}, got {}", type_name(v)))
        }
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(|t| has_type(v, t)) => {
            Err(format!(
                "{path}: expected one of {}, got {}",
                Value::Array(ts.clone()),
                type_name(v)
            ))
        }
        _ => Ok(()),
    }
}

/// `const`, `enum`, `minimum` and `maximum`.
fn check_const_enum_range(s: &Map<String, Value>, v: &Value, path: &str) -> Result<(), String> {
    if let Some(c) = s.get("const") {
        if c != v {
            return Err(format!("{path}: expected {c}, got {v}"));
        }
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            return Err(format!(
                "{path}: {v} is not one of {}",
                Value::Array(options.clone())
            ));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            return Err(format!("{path}: {x} is below the minimum {min}"));
        }
    }
    if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            return Err(format!("{path}: {x} is above the maximum {max}"));
        }
    }
    Ok(())
}

/// `allOf`, `anyOf`, `oneOf` and `not`.
fn check_combinators(
    root: &Value,
    s: &Map<String, Value>,
    v: &Value,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check(root, sub, v, path, depth + 1)?;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf") {
        let mut why = Vec::new();
        for sub in any {
            match check(root, sub, v, path, depth + 1) {
                Ok(()) => {
                    why.clear();
                    break;
                }
                Err(e) => why.push(e),
            }
        }
        if !why.is_empty() {
            return Err(format!(
                "{path}: matches none of anyOf ({})",
                why.join(" | ")
            ));
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let n = one
            .iter()
            .filter(|sub| check(root, sub, v, path, depth + 1).is_ok())
            .count();
        if n != 1 {
            return Err(format!(
                "{path}: matches {n} of oneOf's schemas, not exactly one"
            ));
        }
    }
    if let Some(not) = s.get("not") {
        if check(root, not, v, path, depth + 1).is_ok() {
            return Err(format!("{path}: matches a schema it must not"));
        }
    }
    Ok(())
}

/// An object's `required` keys, then each property against `properties`
/// or `additionalProperties`.
fn check_object(
    root: &Value,
    s: &Map<String, Value>,
    obj: &Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    let props = s.get("properties").and_then(Value::as_object);
    for key in required_in(s) {
        if !obj.contains_key(key) {
            return Err(format!("{path}: missing required property {key:?}"));
        }
    }
    for (key, value) in obj {
        let sub_path = format!("{path}.{key}");
        match props.and_then(|p| p.get(key)) {
            Some(sub) => check(root, sub, value, &sub_path, depth + 1)?,
            None => match s.get("additionalProperties") {
                Some(Value::Bool(false)) => {
                    return Err(format!("{path}: property {key:?} is not allowed"))
                }
                Some(extra @ Value::Object(_)) => check(root, extra, value, &sub_path, depth + 1)?,
                _ => {}
            },
        }
    }
    Ok(())
}

/// An array's `maxItems`, then each item against `items`.
fn check_array(
    root: &Value,
    s: &Map<String, Value>,
    items: &[Value],
    path: &str,
    depth: usize,
) -> Result<(), String> {
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
        if items.len() as u64 > max {
            return Err(format!(
                "{path}: {} items, at most {max} allowed",
                items.len()
            ));
        }
    }
    if let Some(item_schema) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(root, item_schema, item, &format!("{path}[{i}]"), depth + 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failures_name_the_path() {
        let schema = json!({
            "type": "object",
            "properties": {"sum": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["sum"],
            "additionalProperties": false,
        });
        assert!(validate(&schema, &schema, &json!({"sum": 5})).is_ok());
        assert!(validate(&schema, &schema, &json!({"sum": 5.5, "tags": ["a"]})).is_ok());
        assert_eq!(
            validate(&schema, &schema, &json!({"sum": "5"})).unwrap_err(),
            "$.sum: expected number, got string"
        );
        assert_eq!(
            validate(&schema, &schema, &json!({})).unwrap_err(),
            "$: missing required property \"sum\""
        );
        assert_eq!(
            validate(&schema, &schema, &json!({"sum": 1, "tags": ["a", 2]})).unwrap_err(),
            "$.tags[1]: expected string, got integer"
        );
        assert!(validate(&schema, &schema, &json!({"sum": 1, "x": 1})).is_err());
    }

    #[test]
    fn refs_any_of_const_and_integers() {
        let root = json!({
            "$defs": {
                "Id": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "Msg": {"type": "object", "properties": {"id": {"$ref": "#/$defs/Id"}, "v": {"const": "2.0"}}},
            }
        });
        assert!(validate_def(&root, "Msg", &json!({"id": 3, "v": "2.0"})).is_ok());
        assert!(validate_def(&root, "Msg", &json!({"id": 3.5})).is_err());
        assert!(validate_def(&root, "Msg", &json!({"v": "1.0"})).is_err());
        assert!(validate_def(&root, "Nope", &json!({})).is_err());
        // 2.0 is an integer in JSON Schema.
        assert!(validate(&root, &json!({"type": "integer"}), &json!(2.0)).is_ok());
    }
}
