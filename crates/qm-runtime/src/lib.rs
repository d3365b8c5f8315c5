//! qm-runtime
