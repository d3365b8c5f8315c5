//! qm-api
