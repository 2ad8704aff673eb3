//! The tenancy core: plain Rust with no Workers types, so `cargo test` runs it natively.
//!
//! Everything that decides *which* tenant a request is for, and what that tenant's resources are
//! called, lives here; the layers above only feed it strings from the request and `Env`.

pub mod audit_chain;
pub mod backups;
pub mod bindings;
pub mod cache;
pub mod config;
pub mod digest;
pub mod host;
pub mod lifecycle;
pub mod migrations;
pub mod names;
pub mod password;
pub mod plans;
pub mod retry;
pub mod roles;
pub mod slug;
pub mod sql;
pub mod token;
pub mod usage;
pub mod validate;
