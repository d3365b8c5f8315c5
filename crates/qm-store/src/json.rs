//! [`Instance`] written as JSON by hand, for the instance list (`GET /instances`), the API's
//! most read page: byte for byte what its `Serialize` writes, without escaping what cannot need
//! it (the keys, ids, timestamps, states, numbers), which was most of a 50-row page's
//! serialization; written from an [`InstanceRef`], which the list borrows from the database's
//! rows. A test compares both writers on instances of every shape.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::InstanceRef;

impl InstanceRef<'_> {
    /// Appends the instance's JSON (as `serde_json` writes [`Instance`]'s `Serialize`) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        uuid(out, self.id.as_uuid());
        out.extend_from_slice(b",\"organization_id\":");
        uuid(out, self.organization_id.as_uuid());
        out.extend_from_slice(b",\"deployment_id\":");
        option(out, self.deployment_id.map(|id| id.as_uuid()), uuid);
        out.extend_from_slice(b",\"provider\":");
        text(out, self.provider);
        out.extend_from_slice(b",\"zone_id\":");
        uuid(out, self.zone_id.as_uuid());
        out.extend_from_slice(b",\"zone\":");
        text(out, self.zone);
        out.extend_from_slice(b",\"instance_type_id\":");
        uuid(out, self.instance_type_id.as_uuid());
        out.extend_from_slice(b",\"instance_type\":");
        text(out, self.instance_type);
        out.extend_from_slice(b",\"model\":");
        text(out, self.model);
        out.extend_from_slice(b",\"state\":\"");
        out.extend_from_slice(self.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"state_changed_at\":");
        timestamp(out, self.state_changed_at);
        out.extend_from_slice(b",\"progress_percent\":");
        integer(out, self.progress_percent);
        out.extend_from_slice(b",\"provider_instance_id\":");
        option(out, self.provider_instance_id, text);
        out.extend_from_slice(b",\"address\":");
        option(out, self.address, text);
        out.extend_from_slice(b",\"hourly_price_micros\":");
        integer(out, self.hourly_price_micros);
        out.extend_from_slice(b",\"currency\":");
        text(out, self.currency);
        out.extend_from_slice(b",\"failure_reason\":");
        option(out, self.failure_reason, text);
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
    out.extend_from_slice(rfc3339(&at, &mut [0; RFC3339_MAX]).as_bytes());
    out.push(b'"');
}

/// The longest [`rfc3339`] text: `2026-12-06T03:50:00.123456789Z`.
pub(crate) const RFC3339_MAX: usize = 30;

/// `at` as chrono's `to_rfc3339_opts(SecondsFormat::AutoSi, true)` writes it (the fraction in
/// 0, 3, 6 or 9 digits, `Z`), written digit by digit into `buffer` rather than through `fmt`
/// (a third of an instance's JSON); years outside 0 to 9999 and leap seconds, which chrono
/// writes differently, are left to chrono.
pub(crate) fn rfc3339<'b>(at: &DateTime<Utc>, buffer: &'b mut [u8; RFC3339_MAX]) -> Cow<'b, str> {
    use chrono::{Datelike, Timelike};
    let chrono_writes = || Cow::Owned(at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    // Once: each of `DateTime`'s accessors works out the local date and time again.
    let (date, time) = (at.date_naive(), at.time());
    let nanos = time.nanosecond();
    let Some(year) = u32::try_from(date.year()).ok().filter(|year| *year <= 9999) else { return chrono_writes() };
    if nanos >= 1_000_000_000 {
        return chrono_writes();
    }
    let mut text = Text { buffer, length: 0 };
    text.pair(year / 100);
    text.pair(year % 100);
    text.byte(b'-');
    text.pair(date.month());
    text.byte(b'-');
    text.pair(date.day());
    text.byte(b'T');
    text.pair(time.hour());
    text.byte(b':');
    text.pair(time.minute());
    text.byte(b':');
    text.pair(time.second());
    match nanos {
        0 => {}
        _ if nanos.is_multiple_of(1_000_000) => text.fraction(nanos / 1_000_000, 3),
        _ if nanos.is_multiple_of(1_000) => text.fraction(nanos / 1_000, 6),
        _ => text.fraction(nanos, 9),
    }
    text.byte(b'Z');
    let Text { buffer, length } = text;
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&buffer[..length]).map_or_else(|_| chrono_writes(), Cow::Borrowed)
}

/// ASCII written into a fixed buffer.
struct Text<'b> {
    buffer: &'b mut [u8; RFC3339_MAX],
    length: usize,
}

impl Text<'_> {
    fn byte(&mut self, byte: u8) {
        self.buffer[self.length] = byte;
        self.length += 1;
    }

    /// `value` (below 100) in two digits.
    fn pair(&mut self, value: u32) {
        // Single decimal digits.
        #[allow(clippy::cast_possible_truncation)]
        let (tens, ones) = ((value / 10 % 10) as u8, (value % 10) as u8);
        self.byte(b'0' + tens);
        self.byte(b'0' + ones);
    }

    /// `.` and `value`'s last `count` (3, 6 or 9) decimal digits, zero-padded.
    fn fraction(&mut self, value: u32, count: u32) {
        self.byte(b'.');
        let mut place = 10u32.pow(count);
        for _ in 0..count / 3 {
            place /= 1000;
            let group = value / place % 1000;
            self.byte(b'0' + u8::try_from(group / 100).unwrap_or_default());
            self.pair(group % 100);
        }
    }
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
        instance.borrow().write_json(&mut written);
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
