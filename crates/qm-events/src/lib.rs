//! The bus envelope and the catalogue of message types (DESIGN section 4, `docs/events.md`).
//!
//! Layout:
//! - [`envelope`]: the [`Envelope`] every message travels in.
//! - [`catalogue`]: message type names and the [`Channel`] (commands or events) each belongs to.

pub mod catalogue;
pub mod envelope;

pub use catalogue::{Channel, MessageType};
pub use envelope::{Envelope, EnvelopeError};

/// The most tokens of each kind (prompt, completion) one `usage.tokens` report may carry: far
/// above what an engine serves between two heartbeats, low enough that no sum of reports can
/// overflow a 64-bit counter. Producers refuse more and consumers dead-letter it.
pub const MAX_TOKENS_PER_REPORT: i64 = 1_000_000_000;
