//! A strict checker of JSON values against the OpenAPI document's schemas: types (with `null`),
//! required fields, no undocumented fields, enums, uuid and date-time formats, arrays, `$ref`,
//! `allOf`, `oneOf` and `anyOf`. Enough to prove that what the API answers is what it documents.

#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{Map, Value};

pub struct Document<'a> {
    pub root: &'a Value,
}

impl<'a> Document<'a> {
    /// The schema of the answer to `method template` with `status`.
    pub fn response_schema(&self, method: &str, template: &str, status: u16) -> Option<&'a Value> {
        let operation = &self.root["paths"][template][method.to_lowercase()];
        assert!(operation.is_object(), "{method} {template} is not in the document");
        let response = operation["responses"].get(status.to_string())?;
        let content = response.get("content")?;
        content.as_object()?.values().next()?.get("schema")
    }

    fn resolve(&self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.rsplit('/').next().unwrap();
                let target = &self.root["components"]["schemas"][name];
                assert!(target.is_object(), "dangling $ref {reference}");
                self.resolve(target)
            }
            None => schema,
        }
    }

    /// Every property name the schema allows (through `allOf`, `oneOf`, `anyOf`), or `None`
    /// when it does not constrain them.
    fn allowed_properties(&self, schema: &'a Value) -> Option<Vec<&'a str>> {
        let schema = self.resolve(schema);
        let mut names: Vec<&str> = Vec::new();
        let mut constrained = false;
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            constrained = true;
            names.extend(properties.keys().map(String::as_str));
        }
        for key in ["allOf", "oneOf", "anyOf"] {
            for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
                match self.allowed_properties(branch) {
                    Some(more) => {
                        constrained = true;
                        names.extend(more);
                    }
                    None if self.resolve(branch).get("type").is_none_or(|kind| kind == "object") => return None,
                    None => {}
                }
            }
        }
        if schema.get("additionalProperties").is_some_and(|additional| additional != &Value::Bool(false)) {
            return None;
        }
        constrained.then_some(names)
    }

    /// Problems found, each with its JSON path.
    pub fn check(&self, value: &Value, schema: &'a Value) -> Vec<String> {
        let mut problems = Vec::new();
        self.walk(value, schema, "$", &mut problems);
        problems
    }

    fn walk(&self, value: &Value, schema: &'a Value, path: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
            for branch in branches {
                self.walk_lenient(value, branch, path, problems);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(branches) = schema.get(key).and_then(Value::as_array) {
                let fits = branches.iter().any(|branch| {
                    let mut found = Vec::new();
                    self.walk(value, branch, path, &mut found);
                    found.is_empty()
                });
                if !fits {
                    problems.push(format!("{path}: matches no branch of {key}: {value}"));
                }
            }
        }
        self.walk_lenient(value, schema, path, problems);
        if let (Value::Object(object), Some(allowed)) = (value, self.allowed_properties(schema)) {
            for key in object.keys() {
                if !allowed.contains(&key.as_str()) {
                    problems.push(format!("{path}.{key}: not in the documented schema"));
                }
            }
        }
    }

    /// Type, required, properties, items, enum and format; not the undocumented-field check
    /// (which needs the whole `allOf`).
    fn walk_lenient(&self, value: &Value, schema: &'a Value, path: &str, problems: &mut Vec<String>) {
        let schema = self.resolve(schema);
        if let Some(kinds) = schema.get("type") {
            let kinds: Vec<&str> = match kinds {
                Value::String(kind) => vec![kind.as_str()],
                Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let fits = kinds.iter().any(|kind| match *kind {
                "null" => value.is_null(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                _ => true,
            });
            if !fits {
                problems.push(format!("{path}: {value} is not of type {kinds:?}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !value.is_null()
            && !allowed.contains(value)
        {
            problems.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
        if let (Some(text), Some(format)) = (value.as_str(), schema.get("format").and_then(Value::as_str)) {
            let valid = match format {
                "uuid" => uuid::Uuid::parse_str(text).is_ok(),
                "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                _ => true,
            };
            if !valid {
                problems.push(format!("{path}: `{text}` is not a valid {format}"));
            }
        }
        if let Value::Object(object) = value {
            self.walk_object(object, schema, path, problems);
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            for (index, item) in items.iter().enumerate() {
                self.walk(item, item_schema, &format!("{path}[{index}]"), problems);
            }
        }
    }

    fn walk_object(&self, object: &Map<String, Value>, schema: &'a Value, path: &str, problems: &mut Vec<String>) {
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                problems.push(format!("{path}.{name}: required but missing"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                if let Some(field) = object.get(name) {
                    self.walk(field, property, &format!("{path}.{name}"), problems);
                }
            }
        }
    }
}
