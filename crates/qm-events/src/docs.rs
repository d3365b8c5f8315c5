//! The payload tables of `docs/events.md`, rendered from the payload types themselves (their
//! fields, types and doc comments, through their OpenAPI schemas), so the catalogue cannot drift
//! from the code: a test compares the document with [`payload_tables`].

use serde_json::Value;
use utoipa::PartialSchema;

use crate::payloads::{self, Payload};
use crate::worker::{GpuMetrics, WorkerStatus};

/// Marks where the generated tables start and end in `docs/events.md`.
pub const BEGIN_MARKER: &str = "<!-- payload tables: generated from qm_events::payloads, do not edit by hand -->";
pub const END_MARKER: &str = "<!-- end of payload tables -->";

fn schema_json<T: PartialSchema>() -> Value {
    serde_json::to_value(T::schema()).unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().replace('\n', " ")
}

/// A property's type in words: `string (uuid)`, `array of Offer`, `integer or null`.
fn type_text(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    for combinator in ["oneOf", "anyOf"] {
        if let Some(variants) = schema.get(combinator).and_then(Value::as_array) {
            let nullable = variants.iter().any(|variant| variant.get("type") == Some(&Value::from("null")));
            let named: Vec<String> = variants
                .iter()
                .filter(|variant| variant.get("type") != Some(&Value::from("null")))
                .map(type_text)
                .collect();
            let joined = named.join(" or ");
            return if nullable { format!("{joined} or null") } else { joined };
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().filter_map(Value::as_str).map(|value| format!("`{value}`")).collect();
        return format!("one of {}", values.join(", "));
    }
    let (kinds, nullable) = match schema.get("type") {
        Some(Value::Array(kinds)) => (
            kinds.iter().filter_map(Value::as_str).filter(|kind| *kind != "null").map(str::to_owned).collect(),
            kinds.iter().any(|kind| kind == "null"),
        ),
        Some(Value::String(kind)) => (vec![kind.clone()], false),
        _ => (vec!["any".to_owned()], false),
    };
    let mut described: Vec<String> = kinds
        .into_iter()
        .map(|kind| match kind.as_str() {
            "array" => format!("array of {}", schema.get("items").map_or_else(|| "any".to_owned(), type_text)),
            _ => match schema.get("format").and_then(Value::as_str) {
                Some(format) => format!("{kind} ({format})"),
                None => kind,
            },
        })
        .collect();
    if nullable {
        described.push("null".to_owned());
    }
    described.join(" or ")
}

/// A table of an object schema's fields.
fn fields_table(schema: &Value) -> String {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |names| names.iter().filter_map(Value::as_str).collect());
    let mut table = String::from("| field | type | required | description |\n|---|---|---|---|\n");
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let required = if required.contains(&name.as_str()) { "yes" } else { "no" };
            let description = property.get("description").map(text).unwrap_or_default();
            table.push_str(&format!("| `{name}` | {} | {required} | {description} |\n", type_text(property)));
        }
    }
    table
}

fn section<P: Payload>() -> String {
    let schema = schema_json::<P>();
    let channel = match P::TYPE.channel() {
        crate::Channel::Commands => "command",
        crate::Channel::Events => "event",
    };
    let description = schema.get("description").map(text).unwrap_or_default();
    format!(
        "### `{}` ({channel}, version {})\n\n{description}\n\n{}\n",
        P::TYPE.as_str(),
        P::VERSION,
        fields_table(&schema)
    )
}

/// The generated part of `docs/events.md`: one section per message type, then the shapes they
/// share.
pub fn payload_tables() -> String {
    let sections = [
        section::<payloads::InstanceProvision>(),
        section::<payloads::InstanceTerminate>(),
        section::<payloads::CatalogSync>(),
        section::<payloads::FleetReconcile>(),
        section::<payloads::PoolScale>(),
        section::<payloads::InstanceStateChanged>(),
        section::<payloads::InstanceBillingStarted>(),
        section::<payloads::InstanceBillingStopped>(),
        section::<payloads::WorkerRegistered>(),
        section::<payloads::WorkerHeartbeat>(),
        section::<payloads::UsageTokens>(),
        section::<payloads::BudgetThresholdCrossed>(),
        section::<payloads::PoolScaled>(),
    ];
    let offer = schema_json::<qm_domain::Offer>();
    let gpu = schema_json::<GpuMetrics>();
    let status = schema_json::<WorkerStatus>();
    format!(
        "{BEGIN_MARKER}\n\n{}\n### Shared shapes\n\n`Offer`: an instance type in a zone at a price.\n\n{}\n`GpuMetrics`: one GPU's \
         metrics (NVML).\n\n{}\n`WorkerStatus`: {}.\n\n{END_MARKER}",
        sections.join("\n"),
        fields_table(&offer),
        fields_table(&gpu),
        type_text(&status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_type_has_its_section() {
        let tables = payload_tables();
        for kind in crate::MessageType::ALL {
            assert!(tables.contains(&format!("### `{}` (", kind.as_str())), "{} has no section", kind.as_str());
        }
        assert!(tables.contains("| `placements` | array of Offer | yes |"), "{tables}");
        assert!(tables.contains("| `from` | "), "{tables}");
    }
}
