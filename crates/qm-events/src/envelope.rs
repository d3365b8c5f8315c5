//! The envelope of DESIGN section 4.

use chrono::{DateTime, SubsecRound, Utc};
use qm_domain::{EventId, OrganizationId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::catalogue::{Channel, MessageType, is_valid_type_name};

/// Every message on the bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUID v7; consumers deduplicate on it.
    pub id: EventId,
    #[serde(rename = "type")]
    pub message_type: String,
    /// Version of `data`'s schema for this type.
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    /// The service that wrote it (`api`, `orchestrator`, ...).
    pub source: String,
    /// The organization it concerns; `None` for platform-wide commands such as `catalog.sync`.
    pub org_id: Option<OrganizationId>,
    /// Shared by every message caused, directly or not, by one request.
    pub correlation_id: Uuid,
    /// The id of the message that caused this one.
    pub causation_id: Option<Uuid>,
    /// W3C trace context, so that one trace follows the work across services.
    pub traceparent: Option<String>,
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("message type `{0}` is not a valid type name")]
    InvalidType(String),
    #[error("message is not a valid envelope: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl Envelope {
    /// A new root message: its own correlation id, no cause.
    pub fn new(message_type: MessageType, source: &str, org_id: Option<OrganizationId>, data: Value) -> Self {
        let id = EventId::new();
        Self {
            id,
            message_type: message_type.as_str().to_owned(),
            version: 1,
            // Microseconds are what PostgreSQL keeps; truncating here makes a stored and reloaded
            // envelope equal to the original.
            occurred_at: Utc::now().trunc_subsecs(6),
            source: source.to_owned(),
            org_id,
            correlation_id: id.as_uuid(),
            causation_id: None,
            traceparent: None,
            data,
        }
    }

    /// A message caused by `self`: same correlation and trace, `causation_id` = this id.
    pub fn caused(&self, message_type: MessageType, source: &str, data: Value) -> Self {
        Self {
            correlation_id: self.correlation_id,
            causation_id: Some(self.id.as_uuid()),
            traceparent: self.traceparent.clone(),
            ..Envelope::new(message_type, source, self.org_id, data)
        }
    }

    /// A new root message carrying `payload`.
    pub fn of<P: crate::Payload>(payload: &P, source: &str, org_id: Option<OrganizationId>) -> Self {
        let mut envelope = Self::new(P::TYPE, source, org_id, crate::payloads::encode(payload));
        envelope.version = P::VERSION;
        envelope
    }

    /// A message carrying `payload` caused by `self`.
    pub fn caused_by<P: crate::Payload>(&self, payload: &P, source: &str) -> Self {
        let mut envelope = self.caused(P::TYPE, source, crate::payloads::encode(payload));
        envelope.version = P::VERSION;
        envelope
    }

    /// Reads the payload back.
    ///
    /// # Errors
    /// [`DecodeError`](crate::DecodeError) for another type, another version or another shape;
    /// consumers dead-letter the message with it.
    pub fn decode<P: crate::Payload>(&self) -> Result<P, crate::DecodeError> {
        crate::payloads::decode(self)
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn known_type(&self) -> Option<MessageType> {
        MessageType::parse(&self.message_type)
    }

    /// The channel the type belongs to; unknown types are treated as events.
    pub fn channel(&self) -> Channel {
        self.known_type().map_or(Channel::Events, |kind| kind.channel())
    }

    /// # Errors
    /// [`EnvelopeError::Malformed`] when the bytes are not an envelope,
    /// [`EnvelopeError::InvalidType`] when the type could not be a subject suffix.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        if !is_valid_type_name(&envelope.message_type) {
            return Err(EnvelopeError::InvalidType(envelope.message_type));
        }
        Ok(envelope)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of plain fields and a `Value` cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_envelope_round_trips_through_json() {
        let envelope = Envelope::new(
            MessageType::InstanceProvision,
            "api",
            Some(OrganizationId::new()),
            json!({"instance_id": "x"}),
        );
        let decoded = Envelope::from_json(&envelope.to_json()).expect("decodes");
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn the_wire_form_uses_the_design_field_names() {
        let envelope = Envelope::new(MessageType::CatalogSync, "api", None, json!({}));
        let wire: Value = serde_json::from_slice(&envelope.to_json()).expect("json");
        for field in [
            "id",
            "type",
            "version",
            "occurred_at",
            "source",
            "org_id",
            "correlation_id",
            "causation_id",
            "traceparent",
            "data",
        ] {
            assert!(wire.get(field).is_some(), "missing {field}");
        }
        assert_eq!(wire["type"], "catalog.sync");
    }

    #[test]
    fn a_caused_message_keeps_the_correlation_and_points_at_its_cause() {
        let root = Envelope::new(MessageType::InstanceProvision, "api", None, json!({}))
            .with_traceparent(Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()));
        let effect = root.caused(MessageType::InstanceStateChanged, "orchestrator", json!({}));
        assert_eq!(effect.correlation_id, root.correlation_id);
        assert_eq!(effect.causation_id, Some(root.id.as_uuid()));
        assert_eq!(effect.traceparent, root.traceparent);
        assert_ne!(effect.id, root.id);
    }

    #[test]
    fn garbage_and_wildcard_types_are_rejected() {
        assert!(Envelope::from_json(b"{not json").is_err());
        let mut envelope = Envelope::new(MessageType::CatalogSync, "api", None, json!({}));
        envelope.message_type = "catalog.>".into();
        assert!(matches!(Envelope::from_json(&envelope.to_json()), Err(EnvelopeError::InvalidType(_))));
    }
}
