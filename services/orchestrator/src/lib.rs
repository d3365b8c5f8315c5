//! qm-orchestrator
