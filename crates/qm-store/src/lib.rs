//! qm-store
