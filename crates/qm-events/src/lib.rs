//! The bus envelope and the catalogue of message types (DESIGN section 4, `docs/events.md`).
//!
//! Layout:
//! - [`envelope`]: the [`Envelope`] every message travels in.
//! - [`catalogue`]: message type names and the [`Channel`] (commands or events) each belongs to.

pub mod catalogue;
pub mod envelope;

pub use catalogue::{Channel, MessageType};
pub use envelope::{Envelope, EnvelopeError};
