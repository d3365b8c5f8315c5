//! The finops consumer of `qm.evt.*`: billing events open and close cost intervals, usage events
//! record tokens. The consumer records each event id as processed in the same transaction, and
//! the writes themselves are idempotent and order-independent (the first start and the earliest
//! stop win), so late, duplicated or out-of-order events leave the same result.

use async_trait::async_trait;
use qm_domain::OrganizationId;
use qm_events::payloads::{InstanceBillingStarted, InstanceBillingStopped, UsageTokens};
use qm_events::{Envelope, MessageType};
use qm_runtime::consumer::{Handler, HandlerError};
use qm_store::{BillingStart, StoreTx, UsageRecord};

pub const GROUP: &str = "finops";

/// Reads the payload; another version or shape is dead-lettered with the reason.
fn decode<P: qm_events::Payload>(envelope: &Envelope) -> Result<P, HandlerError> {
    envelope.decode().map_err(|error| HandlerError::Reject(error.to_string()))
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
                let event: InstanceBillingStarted = decode(envelope)?;
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
                let event: InstanceBillingStopped = decode(envelope)?;
                tx.close_interval(event.instance_id, envelope.org_id, event.stopped_at.timestamp()).await?;
            }
            Some(MessageType::UsageTokens) => {
                let event: UsageTokens = decode(envelope)?;
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
