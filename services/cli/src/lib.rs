//! qm-cli
