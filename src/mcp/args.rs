//! `--arg key=value` for `ukload mcp call`: a value takes the type the tool's
//! `inputSchema` gives its key, so `--arg a=2` is the number 2 for a number
//! property and the string "2" for a string property. Keys the schema does not
//! type are JSON if the value parses as JSON, else a string.

use serde_json::{Map, Value};

/// Splits `key=value` at the first `=`; the key must not be empty.
pub fn parse_arg_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("--arg {s:?}: expected key=value")),
    }
}

/// Builds the arguments object from `key=value` pairs, typed by `schema`
/// (a tool's `inputSchema`). Errors name the key, the value and the expected type.
pub fn coerce_args(schema: &Value, pairs: &[(String, String)]) -> Result<Value, String> {
    let mut out = Map::new();
    for (key, raw) in pairs {
        if out.contains_key(key) {
            return Err(format!("--arg {key} given more than once"));
        }
        let types: Vec<&str> = match schema
            .get("properties")
            .and_then(|p| p.get(key))
            .and_then(|p| p.get("type"))
        {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let value = if types.is_empty() {
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.clone()))
        } else {
            // Try the non-string types first: a string accepts anything.
            let mut ordered: Vec<&str> = types.iter().copied().filter(|t| *t != "string").collect();
            if types.contains(&"string") {
                ordered.push("string");
            }
            ordered
                .iter()
                .find_map(|ty| coerce_one(ty, raw))
                .ok_or_else(|| {
                    format!(
                        "--arg {key}={raw}: the tool's schema wants {} for {key}",
                        types.join(" or ")
                    )
                })?
        };
        out.insert(key.clone(), value);
    }
    Ok(Value::Object(out))
}

fn coerce_one(ty: &str, raw: &str) -> Option<Value> {
    let json = || serde_json::from_str::<Value>(raw.trim()).ok();
    match ty {
        "string" => Some(Value::String(raw.to_string())),
        "number" => json().filter(Value::is_number),
        "integer" => json().filter(|v| v.is_i64() || v.is_u64()),
        "boolean" => match raw.trim() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        "null" => json().filter(Value::is_null),
        "object" => json().filter(Value::is_object),
        "array" => json().filter(Value::is_array),
        // A type we do not know: same rule as an untyped key.
        _ => Some(json().unwrap_or_else(|| Value::String(raw.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "a": {"type": "number"}, "n": {"type": "integer"}, "s": {"type": "string"},
            "flag": {"type": "boolean"}, "o": {"type": "object"}, "l": {"type": "array"},
            "maybe": {"type": ["string", "null"]}, "either": {"type": ["integer", "string"]},
        }})
    }

    #[test]
    fn values_take_the_schema_type_of_their_key() {
        let got = coerce_args(
            &schema(),
            &pairs(&[
                ("a", "2"),
                ("n", "-3"),
                ("s", "2"),
                ("flag", "true"),
                ("o", r#"{"x":1}"#),
                ("l", "[1]"),
            ]),
        )
        .unwrap();
        assert_eq!(
            got,
            json!({"a": 2, "n": -3, "s": "2", "flag": true, "o": {"x": 1}, "l": [1]})
        );
        assert_eq!(
            coerce_args(&schema(), &pairs(&[("a", "2.5")])).unwrap(),
            json!({"a": 2.5})
        );
        assert_eq!(
            coerce_args(&schema(), &pairs(&[("s", "")])).unwrap(),
            json!({"s": ""})
        );
    }

    #[test]
    fn union_types_prefer_the_non_string_member() {
        assert_eq!(
            coerce_args(&schema(), &pairs(&[("maybe", "null")])).unwrap(),
            json!({"maybe": null})
        );
        assert_eq!(
            coerce_args(&schema(), &pairs(&[("maybe", "hi")])).unwrap(),
            json!({"maybe": "hi"})
        );
        assert_eq!(
            coerce_args(&schema(), &pairs(&[("either", "4")])).unwrap(),
            json!({"either": 4})
        );
        assert_eq!(
            coerce_args(&schema(), &pairs(&[("either", "4x")])).unwrap(),
            json!({"either": "4x"})
        );
    }

    #[test]
    fn untyped_keys_are_json_if_they_parse_else_strings() {
        let got = coerce_args(
            &json!({}),
            &pairs(&[("x", "1"), ("y", "hello"), ("z", "[true]"), ("w", "\"q\"")]),
        )
        .unwrap();
        assert_eq!(got, json!({"x": 1, "y": "hello", "z": [true], "w": "q"}));
    }

    #[test]
    fn wrong_types_and_duplicates_are_errors_naming_the_key() {
        let e = coerce_args(&schema(), &pairs(&[("a", "two")])).unwrap_err();
        assert_eq!(e, "--arg a=two: the tool's schema wants number for a");
        assert!(coerce_args(&schema(), &pairs(&[("n", "1.5")]))
            .unwrap_err()
            .contains("integer"));
        assert!(coerce_args(&schema(), &pairs(&[("flag", "yes")]))
            .unwrap_err()
            .contains("boolean"));
        assert!(coerce_args(&schema(), &pairs(&[("o", "[1]")]))
            .unwrap_err()
            .contains("object"));
        assert!(coerce_args(&schema(), &pairs(&[("s", "a"), ("s", "b")]))
            .unwrap_err()
            .contains("more than once"));
    }

    #[test]
    fn arg_pairs_split_at_the_first_equals() {
        assert_eq!(
            parse_arg_pair("message=a=b").unwrap(),
            ("message".into(), "a=b".into())
        );
        assert_eq!(parse_arg_pair("k=").unwrap(), ("k".into(), "".into()));
        assert!(parse_arg_pair("=v").is_err());
        assert!(parse_arg_pair("novalue").is_err());
    }
}

/// Splits a `--stdio 'CMD ARGS'` command line into argv, shell-style but without a
/// shell: whitespace separates words; single quotes keep text literally; double
/// quotes keep text except that `\"` and `\\` are unescaped; outside quotes a
/// backslash keeps the next character. No variables, globs or redirections.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated single quote in {line:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {line:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated double quote in {line:?}")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("trailing backslash in {line:?}")),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err("empty command".to_string());
    }
    Ok(words)
}

#[cfg(test)]
mod split_tests {
    use super::split_command;

    #[test]
    fn splits_words_and_honours_quotes() {
        assert_eq!(
            split_command("node  examples/test_mcp_servers/echo_server.js --delay-ms 5").unwrap(),
            [
                "node",
                "examples/test_mcp_servers/echo_server.js",
                "--delay-ms",
                "5"
            ]
        );
        assert_eq!(
            split_command(r#"a 'b c' "d \"e\"" f\ g '' x"#).unwrap(),
            ["a", "b c", "d \"e\"", "f g", "", "x"]
        );
        assert_eq!(split_command(r#""a\nb""#).unwrap(), ["a\\nb"]);
    }

    #[test]
    fn refuses_unbalanced_quotes_and_empty_commands() {
        assert!(split_command("node 'x").is_err());
        assert!(split_command("node \"x").is_err());
        assert!(split_command("node x\\").is_err());
        assert!(split_command("   ").is_err());
    }
}
