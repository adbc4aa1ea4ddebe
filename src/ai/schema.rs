//! Structured output: checking JSON Schemas and the answers that must match them, with the
//! `jsonschema` crate (draft detected from `$schema`, 2020-12 by default).
//!
//! The crate is built without remote reference resolving: a schema's `$ref` may point inside
//! the schema, never at a URL, so checking a schema cannot make eddy fetch anything.

use serde_json::Value;

/// How many schema violations an error message lists.
const SHOWN: usize = 3;

/// A compiled schema.
pub struct Checker {
    validator: jsonschema::Validator,
}

impl Checker {
    /// Compiles `schema`; the error says why it is not a usable JSON Schema.
    pub fn new(schema: &Value) -> Result<Checker, String> {
        if !schema.is_object() {
            return Err("must be a JSON Schema object".to_string());
        }
        let validator = jsonschema::validator_for(schema).map_err(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                format!("is not a valid JSON Schema: {e}")
            } else {
                format!("is not a valid JSON Schema: at {at}: {e}")
            }
        })?;
        Ok(Checker { validator })
    }

    /// Checks `instance`; the error lists the first few violations with their paths.
    pub fn check(&self, instance: &Value) -> Result<(), String> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(instance)
            .take(SHOWN + 1)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("{at}: {e}")
            })
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let mut message = errors[..errors.len().min(SHOWN)].join("; ");
        if errors.len() > SHOWN {
            message.push_str("; …");
        }
        Err(message)
    }
}

/// Checks a structured output as `POST /console/structured-outputs` receives it: the schema
/// compiles and the sample data, if any, matches it. The error names the field.
pub fn check_output(schema: &Value, sample_data: Option<&Value>) -> Result<(), String> {
    let checker = Checker::new(schema).map_err(|e| format!("schema: {e}"))?;
    if let Some(sample) = sample_data {
        checker
            .check(sample)
            .map_err(|e| format!("sample_data: does not match the schema: {e}"))?;
    }
    Ok(())
}

/// The JSON object in a model's answer: the whole text, or the inside of a Markdown code
/// fence (models that ignore `response_format` often wrap their JSON in one).
pub fn parse_answer(text: &str) -> Result<Value, String> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(inner.trim()).map_err(|e| {
        let shown: String = trimmed.chars().take(120).collect();
        format!("the answer is not valid JSON ({e}): {shown:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "features": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["title", "features"]
        })
    }

    /// A matching answer passes; a wrong one is refused with the offending paths.
    #[test]
    fn answers_are_checked_with_paths() {
        let checker = Checker::new(&schema()).unwrap();
        assert!(
            checker
                .check(&json!({"title": "T", "features": ["a"]}))
                .is_ok()
        );
        let err = checker
            .check(&json!({"title": 7, "features": ["a", 2]}))
            .unwrap_err();
        assert!(err.contains("/title"), "{err}");
        assert!(err.contains("/features/1"), "{err}");
        let err = checker.check(&json!({"title": "T"})).unwrap_err();
        assert!(err.contains("features"), "{err}");
    }

    /// Broken schemas, remote references and non-matching samples are refused, naming the
    /// field; nothing is fetched.
    #[test]
    fn structured_outputs_are_checked_when_created() {
        assert!(check_output(&schema(), Some(&json!({"title": "T", "features": []}))).is_ok());
        let err = check_output(&json!({"type": "nonsense"}), None).unwrap_err();
        assert!(err.starts_with("schema: "), "{err}");
        let err = check_output(&json!({"$ref": "https://example.com/s.json"}), None).unwrap_err();
        assert!(err.starts_with("schema: "), "{err}");
        let err = check_output(&schema(), Some(&json!({"title": "T"}))).unwrap_err();
        assert!(err.starts_with("sample_data: "), "{err}");
        assert!(check_output(&json!("string"), None).is_err());
    }

    /// Answers are read whole or out of a Markdown code fence.
    #[test]
    fn answers_are_parsed_out_of_fences() {
        assert_eq!(parse_answer(r#" {"a":1} "#).unwrap(), json!({"a": 1}));
        assert_eq!(
            parse_answer("```json\n{\"a\":1}\n```").unwrap(),
            json!({"a": 1})
        );
        assert!(parse_answer("here you go: {").is_err());
    }
}
