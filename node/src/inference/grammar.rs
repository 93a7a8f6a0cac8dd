//! JSON output constraints as llama.cpp GBNF grammars: any JSON object
//! (OpenAI's `json_object`) or a JSON schema (`json_schema`). A task carries
//! the grammar itself, so that its receipt commits to it and a verifier
//! replays exactly what the orchestrator ran; routers and clients convert,
//! orchestrators never see the schema.
//!
//! The schema subset: `type` (`object`, `array`, `string`, `number`,
//! `integer`, `boolean`, `null`, or a list of them), `properties` with
//! `required`, `items`, `enum`, `const`, `anyOf` / `oneOf`. Properties come
//! out in the schema's order: required ones always, optional ones after
//! them when present (an object without `required` has every property
//! required, as OpenAI's strict mode asks). `$ref`, pattern and length
//! keywords are refused with a clear error rather than ignored.

use cactus_protocol::params::MAX_GRAMMAR_BYTES;
use serde_json::Value;
use std::fmt::Write as _;

/// Rules every generated grammar may use.
const PRIMITIVES: &str = r#"ws ::= | " " | "\n" [ \t]{0,20}
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
integer ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} )
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
array ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
"#;

/// Deepest schema nesting converted.
const MAX_DEPTH: usize = 16;

/// Why a schema could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A keyword this converter does not support.
    #[error("JSON schema keyword {0:?} is not supported")]
    Unsupported(String),
    /// A `type` it does not know.
    #[error("JSON schema type {0:?} is not known")]
    UnknownType(String),
    /// Not a schema (not an object or a boolean), or a malformed keyword.
    #[error("not a JSON schema: {0}")]
    Malformed(String),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("the JSON schema nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The grammar would exceed the task's grammar cap.
    #[error("the grammar for this schema is over the {MAX_GRAMMAR_BYTES}-byte cap")]
    TooLarge,
}

/// A grammar for any JSON object.
pub fn json_object() -> String {
    format!("root ::= object\n{PRIMITIVES}")
}

/// A grammar for JSON documents that follow `schema`.
pub fn json_schema(schema: &Value) -> Result<String, SchemaError> {
    let mut c = Converter::default();
    let root = c.rule(schema, 0)?;
    let mut out = format!("root ::= {root}\n");
    for (name, body) in &c.rules {
        let _ = writeln!(out, "{name} ::= {body}");
    }
    out.push_str(PRIMITIVES);
    if out.len() > MAX_GRAMMAR_BYTES {
        return Err(SchemaError::TooLarge);
    }
    Ok(out)
}

#[derive(Default)]
struct Converter {
    rules: Vec<(String, String)>,
}

impl Converter {
    /// A rule for `schema`; returns its name (or a primitive's).
    fn rule(&mut self, schema: &Value, depth: usize) -> Result<String, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError::TooDeep);
        }
        let obj = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Object(o) => o,
            other => return Err(SchemaError::Malformed(format!("{other}"))),
        };
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()) {
                return Err(SchemaError::Unsupported(k.clone()));
            }
        }
        if let Some(c) = obj.get("const") {
            return Ok(self.add(literal(c)));
        }
        if let Some(e) = obj.get("enum") {
            let items = e
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| SchemaError::Malformed("enum is not a non-empty list".into()))?;
            let alts: Vec<String> = items.iter().map(literal).collect();
            return Ok(self.add(alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = obj.get(key) {
                let list = list
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| SchemaError::Malformed(format!("{key} is not a list")))?;
                let alts = list
                    .iter()
                    .map(|s| self.rule(s, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(self.add(alts.join(" | ")));
            }
        }
        match obj.get("type") {
            None if obj.contains_key("properties") => self.object(obj, depth),
            None => Ok("value".into()),
            Some(Value::String(t)) => self.typed(t, obj, depth),
            Some(Value::Array(ts)) => {
                let alts = ts
                    .iter()
                    .map(|t| match t {
                        Value::String(t) => self.typed(t, obj, depth),
                        other => Err(SchemaError::Malformed(format!("type {other}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(self.add(alts.join(" | ")))
            }
            Some(other) => Err(SchemaError::Malformed(format!("type {other}"))),
        }
    }

    fn typed(
        &mut self,
        t: &str,
        obj: &serde_json::Map<String, Value>,
        depth: usize,
    ) -> Result<String, SchemaError> {
        match t {
            "object" => self.object(obj, depth),
            "array" => {
                let item = match obj.get("items") {
                    Some(s) => self.rule(s, depth + 1)?,
                    None => "value".into(),
                };
                Ok(self.add(format!(
                    "\"[\" ws ( {item} ( ws \",\" ws {item} )* )? ws \"]\""
                )))
            }
            "string" | "number" | "integer" | "boolean" | "null" => Ok(t.into()),
            other => Err(SchemaError::UnknownType(other.into())),
        }
    }

    fn object(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        depth: usize,
    ) -> Result<String, SchemaError> {
        let Some(props) = obj.get("properties") else {
            return Ok("object".into());
        };
        let props = props
            .as_object()
            .ok_or_else(|| SchemaError::Malformed("properties is not an object".into()))?;
        let required: Vec<&str> = match obj.get("required") {
            Some(r) => r
                .as_array()
                .ok_or_else(|| SchemaError::Malformed("required is not a list".into()))?
                .iter()
                .filter_map(Value::as_str)
                .collect(),
            None => props.keys().map(String::as_str).collect(),
        };
        let mut mandatory = Vec::new();
        let mut optional = Vec::new();
        for (name, schema) in props {
            let value = self.rule(schema, depth + 1)?;
            let pair = format!(
                "{} ws \":\" ws {value}",
                literal(&Value::String(name.clone()))
            );
            if required.contains(&name.as_str()) {
                mandatory.push(pair);
            } else {
                optional.push(pair);
            }
        }
        let body = match (mandatory.is_empty(), optional.is_empty()) {
            (true, true) => "\"{\" ws \"}\"".to_owned(),
            (false, _) => {
                let mut b = format!("\"{{\" ws {}", mandatory.join(" ws \",\" ws "));
                for o in &optional {
                    let _ = write!(b, " ( ws \",\" ws {o} )?");
                }
                b.push_str(" ws \"}\"");
                b
            }
            // Only optional properties: any one may come first; the others
            // follow in order.
            (true, false) => {
                let alts: Vec<String> = (0..optional.len())
                    .map(|i| {
                        let mut b = optional[i].clone();
                        for o in &optional[i + 1..] {
                            let _ = write!(b, " ( ws \",\" ws {o} )?");
                        }
                        b
                    })
                    .collect();
                format!("\"{{\" ws ( {} )? ws \"}}\"", alts.join(" | "))
            }
        };
        Ok(self.add(body))
    }

    fn add(&mut self, body: String) -> String {
        let name = format!("r{}", self.rules.len());
        self.rules.push((name.clone(), body));
        name
    }
}

/// Keywords that shape the output.
const KNOWN: [&str; 8] = [
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "const",
    "anyOf",
    "oneOf",
];
/// Keywords that only describe (kept out of the grammar on purpose).
const IGNORED: [&str; 7] = [
    "title",
    "description",
    "$schema",
    "$id",
    "additionalProperties",
    "default",
    "examples",
];

/// A GBNF literal matching `v`'s JSON text exactly.
fn literal(v: &Value) -> String {
    let json = v.to_string();
    let mut out = String::with_capacity(json.len() + 2);
    out.push('"');
    for ch in json.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_schema_becomes_rules_in_property_order() {
        let g = json_schema(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b\"c"]}}
            },
            "required": ["name", "age"]
        }))
        .unwrap();
        assert!(g.starts_with("root ::= r"), "{g}");
        assert!(
            g.contains(r#""\"name\"" ws ":" ws string ws "," ws "\"age\"" ws ":" ws integer ( ws "," ws "\"tags\"""#),
            "{g}"
        );
        assert!(g.contains(r#""\"a\"" | "\"b\\\"c\"""#), "{g}");
    }

    #[test]
    fn json_object_and_unsupported_keywords() {
        assert!(json_object().starts_with("root ::= object\n"));
        assert_eq!(
            json_schema(&json!({"$ref": "#/defs/x"})),
            Err(SchemaError::Unsupported("$ref".into()))
        );
        assert_eq!(
            json_schema(&json!({"type": "date"})),
            Err(SchemaError::UnknownType("date".into()))
        );
        let mut deep = json!({"type": "string"});
        for _ in 0..20 {
            deep = json!({"type": "array", "items": deep});
        }
        assert_eq!(json_schema(&deep), Err(SchemaError::TooDeep));
        assert!(matches!(
            json_schema(&json!(3)),
            Err(SchemaError::Malformed(_))
        ));
    }

    #[test]
    fn only_optional_properties_may_each_come_first() {
        let g = json_schema(&json!({
            "type": "object",
            "properties": {"a": {"type": "null"}, "b": {"type": "boolean"}},
            "required": []
        }))
        .unwrap();
        assert!(g.contains(r#"( "\"a\"" ws ":" ws null ( ws "," ws "\"b\"" ws ":" ws boolean )? | "\"b\"" ws ":" ws boolean )?"#), "{g}");
    }
}
