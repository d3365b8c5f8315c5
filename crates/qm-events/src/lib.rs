//! The bus envelope and the catalogue of message types (DESIGN section 4, `docs/events.md`).
//!
//! Layout:
//! - [`envelope`]: the [`Envelope`] every message travels in.
//! - [`catalogue`]: message type names and the [`Channel`] (commands or events) each belongs to.
//! - [`payloads`]: one payload type per message type, for producers and consumers alike.
//! - [`worker`]: the worker protocol's requests and responses, for the api and the agent.
//! - [`docs`]: the payload tables of `docs/events.md`, generated from the types.

pub mod catalogue;
pub mod docs;
pub mod envelope;
pub mod payloads;
pub mod worker;

pub use catalogue::{Channel, MessageType};
pub use envelope::{Envelope, EnvelopeError};
pub use payloads::{DecodeError, Payload};

/// The most tokens of each kind (prompt, completion) one `usage.tokens` report may carry: far
/// above what an engine serves between two heartbeats, low enough that no sum of reports can
/// overflow a 64-bit counter. Producers refuse more and consumers dead-letter it.
pub const MAX_TOKENS_PER_REPORT: i64 = 1_000_000_000;
