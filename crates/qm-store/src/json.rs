//! [`Instance`] written as JSON by hand, for the instance list (`GET /instances`), the API's
//! most read page: byte for byte what its `Serialize` writes, without escaping what cannot need
//! it (the keys, ids, timestamps, states, numbers), which was most of a 50-row page's
//! serialization. A test compares both writers on instances of every shape.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Instance;

impl Instance {
    /// Appends the instance's JSON (as `serde_json` writes its `Serialize`) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        uuid(out, self.id.as_uuid());
        out.extend_from_slice(b",\"organization_id\":");
        uuid(out, self.organization_id.as_uuid());
        out.extend_from_slice(b",\"deployment_id\":");
        option(out, self.deployment_id.map(|id| id.as_uuid()), uuid);
        out.extend_from_slice(b",\"provider\":");
        text(out, &self.provider);
        out.extend_from_slice(b",\"zone_id\":");
        uuid(out, self.zone_id.as_uuid());
        out.extend_from_slice(b",\"zone\":");
        text(out, &self.zone);
        out.extend_from_slice(b",\"instance_type_id\":");
        uuid(out, self.instance_type_id.as_uuid());
        out.extend_from_slice(b",\"instance_type\":");
        text(out, &self.instance_type);
        out.extend_from_slice(b",\"model\":");
        text(out, &self.model);
        out.extend_from_slice(b",\"state\":\"");
        out.extend_from_slice(self.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"state_changed_at\":");
        timestamp(out, self.state_changed_at);
        out.extend_from_slice(b",\"progress_percent\":");
        integer(out, self.progress_percent);
        out.extend_from_slice(b",\"provider_instance_id\":");
        option(out, self.provider_instance_id.as_deref(), text);
        out.extend_from_slice(b",\"address\":");
        option(out, self.address.as_deref(), text);
        out.extend_from_slice(b",\"hourly_price_micros\":");
        integer(out, self.hourly_price_micros);
        out.extend_from_slice(b",\"currency\":");
        text(out, &self.currency);
        out.extend_from_slice(b",\"failure_reason\":");
        option(out, self.failure_reason.as_deref(), text);
        out.extend_from_slice(b",\"deleted_by_provider\":");
        boolean(out, self.deleted_by_provider);
        out.extend_from_slice(b",\"archived\":");
        boolean(out, self.archived);
        out.extend_from_slice(b",\"revision\":");
        option(out, self.revision, integer);
        out.extend_from_slice(b",\"created_at\":");
        timestamp(out, self.created_at);
        out.extend_from_slice(b",\"updated_at\":");
        timestamp(out, self.updated_at);
        out.push(b'}');
    }
}

fn uuid(out: &mut Vec<u8>, id: Uuid) {
    out.push(b'"');
    out.extend_from_slice(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).as_bytes());
    out.push(b'"');
}

/// As [`crate::timestamp`] writes it (RFC 3339 digits, `T`, `:`, `.`, `Z`: nothing to escape).
fn timestamp(out: &mut Vec<u8>, at: DateTime<Utc>) {
    out.push(b'"');
    out.extend_from_slice(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true).as_bytes());
    out.push(b'"');
}

/// Text from the database or a user: escaped, by `serde_json` itself.
fn text(out: &mut Vec<u8>, value: &str) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

fn integer(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn option<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        Some(value) => write(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::Instance;
    use crate::testing::instance;

    fn both(instance: &Instance) -> (String, String) {
        let mut written = Vec::new();
        instance.write_json(&mut written);
        (String::from_utf8(written).expect("UTF-8"), serde_json::to_string(instance).expect("serialize"))
    }

    #[test]
    fn the_hand_written_json_is_what_serde_writes() {
        for text in ["", "plain", "quote \" backslash \\ slash /", "control \u{1} \n \t \u{7f}", "ünïcødé 🚀 \u{2028}"]
        {
            for optional in [true, false] {
                for nanos in [0, 1_000_000, 123_456_000, 999_999_999] {
                    let (written, serialized) = both(&instance(text, optional, nanos, -42));
                    assert_eq!(written, serialized);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_instance_is_written_as_serde_writes_it(
            text in ".{0,40}", optional: bool, nanos in 0u32..1_000_000_000, number: i64,
        ) {
            let (written, serialized) = both(&instance(&text, optional, nanos, number));
            prop_assert_eq!(written, serialized);
        }
    }
}
