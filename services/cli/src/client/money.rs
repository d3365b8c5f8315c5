//! `qm cost` and `qm budget`.

use clap::Subcommand;
use reqwest::Method;
use serde_json::json;

use super::output::{money, sparkline, text};
use super::{Context, Failure, Outcome};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum By {
    Provider,
    Model,
    Type,
    Org,
    Zone,
    Instance,
}

impl By {
    fn field(self) -> &'static str {
        match self {
            Self::Provider => "by_provider",
            Self::Model => "by_model",
            Self::Type => "by_instance_type",
            Self::Org => "by_organization",
            Self::Zone => "by_zone",
            Self::Instance => "by_instance",
        }
    }
}

/// This month so far, its breakdown, the last 24 h per hour, and (`--forecast`) the projection.
pub async fn cost(context: &Context, by: Option<By>, forecast: bool) -> Outcome {
    let api = &context.api;
    let now = chrono::Utc::now();
    let month = now.format("%Y-%m-01T00:00:00Z").to_string();
    let summary = api.get(&format!("/finops/dashboard/costs/summary?from={month}&top=10")).await?;
    let day_ago = (now - chrono::Duration::hours(24)).format("%Y-%m-%dT%H:00:00Z").to_string();
    let series = api.get(&format!("/finops/cost/actual/minute?from={day_ago}&step=hour")).await?;
    let projection = if forecast { Some(api.get("/finops/cost/forecast").await?) } else { None };
    if context.output.structured(&json!({ "summary": summary, "last_24h": series, "forecast": projection })) {
        return Ok(());
    }
    let currency = text(&summary["currency"]);
    println!("this month: {} {currency}", money(&summary["total_micros"]));
    let hourly: Vec<i64> = series["points"]
        .as_array()
        .map(|points| points.iter().map(|point| point["cost_micros"].as_i64().unwrap_or(0)).collect())
        .unwrap_or_default();
    let day: i64 = hourly.iter().sum();
    println!("last 24 h:  {} {currency}  {}", money(&json!(day)), sparkline(&hourly));
    let by = by.unwrap_or(By::Provider);
    let entries = summary[by.field()].as_array().cloned().unwrap_or_default();
    if !entries.is_empty() {
        println!();
        let width = entries.iter().map(|entry| text(&entry["key"]).len()).max().unwrap_or(0).max(8);
        for entry in &entries {
            println!("  {:<width$}  {:>12} {currency}", text(&entry["key"]), money(&entry["cost_micros"]));
        }
    }
    if let Some(projection) = projection {
        println!();
        println!("burn rate:  {} {currency}/h", money(&projection["burn_rate_micros_per_hour"]));
        println!("month end:  {} {currency} projected", money(&projection["projected_month_end_micros"]));
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum Budget {
    /// The organization's monthly budget and where the month stands.
    Get,
    /// Sets the monthly budget (in the reporting currency, e.g. 500 or 1250.50).
    Set {
        amount: String,
        /// Refuse deployments and pool growth that would exceed it.
        #[arg(long)]
        hard_cap: bool,
        /// Alert thresholds in percent, comma-separated (default 50,80,100).
        #[arg(long, value_delimiter = ',')]
        thresholds: Option<Vec<u32>>,
    },
}

/// `12.5` → 12500000 micro-units.
fn micros(amount: &str) -> Outcome<i64> {
    let usage = || Failure::Usage(format!("`{amount}` is not an amount (use a decimal such as 500 or 1250.50)"));
    let (whole, fraction) = amount.trim().split_once('.').unwrap_or((amount.trim(), ""));
    if whole.is_empty()
        || fraction.len() > 6
        || !whole.chars().chain(fraction.chars()).all(|digit| digit.is_ascii_digit())
    {
        return Err(usage());
    }
    let whole: i64 = whole.parse().map_err(|_| usage())?;
    let fraction: i64 = format!("{fraction:0<6}").parse().map_err(|_| usage())?;
    whole.checked_mul(1_000_000).and_then(|micros| micros.checked_add(fraction)).ok_or_else(usage)
}

pub async fn budget(context: &Context, command: &Budget) -> Outcome {
    let api = &context.api;
    let me = api.get("/auth/me").await?;
    let organization = text(&me["organization_id"]);
    let path = format!("/finops/budgets/{organization}");
    let status = match command {
        Budget::Get => api.get(&path).await?,
        Budget::Set { amount, hard_cap, thresholds } => {
            let body = json!({ "amount_micros": micros(amount)?, "hard_cap": hard_cap, "thresholds": thresholds });
            api.send(Method::PUT, &path, &body).await?
        }
    };
    let currency = text(&status["currency"]);
    let fields = [
        ("period", text(&status["period"])),
        (
            "budget",
            format!(
                "{} {currency}{}",
                money(&status["amount_micros"]),
                if status["hard_cap"] == true { " (hard cap)" } else { "" }
            ),
        ),
        (
            "spent",
            format!(
                "{} {currency} ({}%)",
                money(&status["month_to_date_micros"]),
                status["spent_percent"].as_f64().map_or_else(|| "-".into(), |percent| format!("{percent:.1}"))
            ),
        ),
        ("projected", format!("{} {currency}", money(&status["projected_month_end_micros"]))),
        (
            "thresholds",
            status["thresholds"]
                .as_array()
                .map(|thresholds| thresholds.iter().map(|value| format!("{value}%")).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
        ),
    ];
    context.output.record(&status, &fields);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::micros;

    #[test]
    fn amounts_are_decimals() {
        assert_eq!(micros("500").ok(), Some(500_000_000));
        assert_eq!(micros("12.5").ok(), Some(12_500_000));
        assert_eq!(micros("0.000001").ok(), Some(1));
        for wrong in ["", "-1", "1.2.3", "1e3", "0.0000001", "abc"] {
            assert!(micros(wrong).is_err(), "{wrong}");
        }
    }
}
