//! qm-worker-agent
