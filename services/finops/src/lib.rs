//! qm-finops
