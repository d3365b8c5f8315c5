//! qm-config
