//! qm-router
