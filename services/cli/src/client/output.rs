//! How listings are printed: an aligned table for people (times relative, money in units, colour
//! only on a terminal and never with `NO_COLOR`), or the API's own JSON or YAML for scripts
//! (times RFC 3339, money in micro-units, as the API gives them).

use std::io::IsTerminal as _;

use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub format: Format,
    /// Colour in tables (stdout is a terminal and `NO_COLOR` is unset).
    pub colour: bool,
}

/// A table column: its header and how a row's cell is read.
pub struct Column {
    pub header: &'static str,
    pub cell: fn(&Value) -> String,
}

impl Output {
    pub fn new(format: Format) -> Self {
        let colour =
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
        Self { format, colour }
    }

    /// Prints `value` as JSON or YAML; `false` for the table format (the caller prints it).
    pub fn structured(&self, value: &Value) -> bool {
        match self.format {
            Format::Table => false,
            Format::Json => {
                println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
                true
            }
            Format::Yaml => {
                print!("{}", serde_yaml::to_string(value).unwrap_or_default());
                true
            }
        }
    }

    /// A listing: the rows as they came from the API, or a table of `columns`.
    pub fn list(&self, rows: &[Value], columns: &[Column]) {
        if self.structured(&Value::Array(rows.to_vec())) {
            return;
        }
        let mut table = comfy_table::Table::new();
        table.load_preset(comfy_table::presets::NOTHING);
        table.set_header(columns.iter().map(|column| column.header));
        for row in rows {
            table.add_row(columns.iter().map(|column| self.paint(column.header, (column.cell)(row))));
        }
        // The preset pads every cell by one space; the first column needs none.
        for line in table.to_string().lines() {
            println!("{}", line.strip_prefix(' ').unwrap_or(line).trim_end());
        }
    }

    /// One record as `key: value` lines.
    pub fn record(&self, value: &Value, fields: &[(&'static str, String)]) {
        if self.structured(value) {
            return;
        }
        let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        for (name, text) in fields {
            println!("{name:<width$}  {}", self.paint(name, text.clone()));
        }
    }

    /// States in colour on a terminal: green when serving, red when failed, yellow on the way.
    fn paint(&self, header: &str, text: String) -> String {
        if !self.colour || !matches!(header, "STATE" | "state") {
            return text;
        }
        let code = match text.as_str() {
            "ready" => "32",
            "provisioning_failed" | "startup_failed" | "unhealthy" => "31",
            "terminated" => "2",
            _ => "33",
        };
        format!("\u{1b}[{code}m{text}\u{1b}[0m")
    }
}

/// A string field, `-` when absent.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time as "5s ago", "3m ago", "2h ago", "4d ago" (or "in 3m").
pub fn ago(value: &Value) -> String {
    let Some(at) = value.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok()) else { return "-".into() };
    relative(Utc::now().signed_duration_since(at.with_timezone(&Utc)).num_seconds())
}

fn relative(seconds: i64) -> String {
    let (magnitude, future) = (seconds.unsigned_abs(), seconds < 0);
    let amount = match magnitude {
        0..60 => format!("{magnitude}s"),
        60..3_600 => format!("{}m", magnitude / 60),
        3_600..86_400 => format!("{}h", magnitude / 3_600),
        _ => format!("{}d", magnitude / 86_400),
    };
    if future { format!("in {amount}") } else { format!("{amount} ago") }
}

/// Micro-units as a decimal with two places (`1234567` → `1.23`), all six below a cent (a few
/// seconds of a cheap instance are not shown as nothing), `-` when absent.
pub fn money(value: &Value) -> String {
    value
        .as_i64()
        .map_or_else(|| "-".into(), |micros| units(micros, if micros != 0 && micros.abs() < 5_000 { 6 } else { 2 }))
}

/// Micro-units as a decimal with `places` places, rounded half away from zero.
pub fn units(micros: i64, places: u32) -> String {
    let scale = 10_i64.pow(6 - places.min(6));
    let rounded = (i128::from(micros) + i128::from(micros.signum()) * i128::from(scale) / 2) / i128::from(scale);
    let divisor = 10_i128.pow(places.min(6));
    let sign = if rounded < 0 { "-" } else { "" };
    let magnitude = rounded.abs();
    if places == 0 {
        return format!("{sign}{magnitude}");
    }
    format!("{sign}{}.{:0width$}", magnitude / divisor, magnitude % divisor, width = places as usize)
}

/// `values` as a line of block characters, lowest to highest.
pub fn sparkline(values: &[i64]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let high = values.iter().copied().max().unwrap_or(0).max(1);
    values
        .iter()
        .map(|value| {
            let level = usize::try_from(value.max(&0).saturating_mul(7) / high).unwrap_or(0).min(7);
            BLOCKS[level]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_money_and_sparklines() {
        assert_eq!(relative(5), "5s ago");
        assert_eq!(relative(185), "3m ago");
        assert_eq!(relative(-7_300), "in 2h");
        assert_eq!(relative(200_000), "2d ago");
        assert_eq!(units(1_234_567, 2), "1.23");
        assert_eq!(units(1_235_000, 2), "1.24");
        assert_eq!(units(-5_000, 2), "-0.01");
        assert_eq!(units(700_000, 4), "0.7000");
        assert_eq!(money(&Value::Null), "-");
        assert_eq!(money(&serde_json::json!(69)), "0.000069");
        assert_eq!(money(&serde_json::json!(0)), "0.00");
        assert_eq!(sparkline(&[0, 1, 7, 3]), "▁▂█▄");
        assert_eq!(sparkline(&[]), "");
    }
}
