//! The `qm` command line.
//!
//! Layout:
//! - [`backup`]: `qm backup` and `qm restore` of `QM_DATABASE_URL`.
//! - [`client`]: the operator's commands (`login`, `offers`, `deploy`, `ps`, `down`, `cost`,
//!   `pools`, ...), an HTTP client of the api.
//! - [`dev`]: `qm dev`, every service in one process on embedded defaults.
//! - [`migrate`]: `qm migrate`, applies pending migrations to `QM_DATABASE_URL`.
//! - [`seed`]: `qm seed`, applies the catalog seed to `QM_DATABASE_URL`.

pub mod backup;
pub mod client;
pub mod dev;
pub mod migrate;
pub mod seed;
