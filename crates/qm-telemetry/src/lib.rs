//! qm-telemetry
