//! The finops consumer of `qm.evt.*`: billing events open and close cost intervals, usage events
//! record tokens. The consumer records each event id as processed in the same transaction, and
//! the writes themselves are idempotent and order-independent (the first start and the earliest
//! stop win), so late, duplicated or out-of-order events leave the same result.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use qm_domain::{InstanceId, OrganizationId};
use qm_events::{Envelope, MessageType};
use qm_runtime::consumer::{Handler, HandlerError};
use qm_store::{BillingStart, StoreTx, UsageRecord};
use serde::Deserialize;

pub const GROUP: &str = "finops";

#[derive(Debug, Deserialize)]
struct BillingStarted {
    instance_id: InstanceId,
    provider: String,
    region: String,
    zone: String,
    instance_type: String,
    model: String,
    currency: String,
    hourly_price_micros: i64,
    reporting_currency: String,
    reporting_hourly_price_micros: i64,
    started_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct BillingStopped {
    instance_id: InstanceId,
    stopped_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct UsageTokens {
    instance_id: Option<InstanceId>,
    api_key_id: Option<uuid::Uuid>,
    model: String,
    prompt_tokens: i64,
    completion_tokens: i64,
    provider: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    instance_type: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(envelope: &Envelope) -> Result<T, HandlerError> {
    serde_json::from_value(envelope.data.clone())
        .map_err(|error| HandlerError::Reject(format!("malformed `{}`: {error}", envelope.message_type)))
}

fn organization(envelope: &Envelope) -> Result<OrganizationId, HandlerError> {
    envelope.org_id.ok_or_else(|| HandlerError::Reject(format!("`{}` without org_id", envelope.message_type)))
}

pub struct CostEvents;

#[async_trait]
impl Handler for CostEvents {
    async fn handle(&self, envelope: &Envelope, tx: &mut dyn StoreTx) -> Result<(), HandlerError> {
        match envelope.known_type() {
            Some(MessageType::InstanceBillingStarted) => {
                let event: BillingStarted = parse(envelope)?;
                if event.hourly_price_micros < 0 || event.reporting_hourly_price_micros < 0 {
                    return Err(HandlerError::Reject("a negative hourly price".into()));
                }
                let start = BillingStart {
                    instance_id: event.instance_id,
                    organization_id: organization(envelope)?,
                    provider: event.provider,
                    region: event.region,
                    zone: event.zone,
                    instance_type: event.instance_type,
                    model: event.model,
                    currency: event.currency,
                    hourly_price_micros: event.hourly_price_micros,
                    reporting_currency: event.reporting_currency,
                    reporting_hourly_micros: event.reporting_hourly_price_micros,
                    started_s: event.started_at.timestamp(),
                };
                tx.open_interval(&start).await?;
            }
            Some(MessageType::InstanceBillingStopped) => {
                let event: BillingStopped = parse(envelope)?;
                tx.close_interval(event.instance_id, envelope.org_id, event.stopped_at.timestamp()).await?;
            }
            Some(MessageType::UsageTokens) => {
                let event: UsageTokens = parse(envelope)?;
                let plausible = 0..=qm_events::MAX_TOKENS_PER_REPORT;
                if !plausible.contains(&event.prompt_tokens) || !plausible.contains(&event.completion_tokens) {
                    return Err(HandlerError::Reject(format!(
                        "token counts must be between 0 and {} per report",
                        qm_events::MAX_TOKENS_PER_REPORT
                    )));
                }
                let usage = UsageRecord {
                    event_id: envelope.id.as_uuid(),
                    at_s: envelope.occurred_at.timestamp(),
                    organization_id: organization(envelope)?,
                    instance_id: event.instance_id,
                    api_key_id: event.api_key_id,
                    model: event.model,
                    provider: event.provider,
                    region: event.region,
                    zone: event.zone,
                    instance_type: event.instance_type,
                    prompt_tokens: event.prompt_tokens,
                    completion_tokens: event.completion_tokens,
                };
                tx.record_usage(&usage).await?;
            }
            // Every other event is someone else's.
            _ => {}
        }
        Ok(())
    }
}
