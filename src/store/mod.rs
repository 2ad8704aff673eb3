//! The storage layer, Workers-free: SQL as data and the one [`sql::Sql`] trait (its D1
//! implementation in `d1`, over the REST API in `rest`), the control plane's tables (`control`,
//! their one owner), the tenant directory on the request path (`directory`), a tenant's own
//! database as the platform sees it (`tenant_db`), its audit chain (`audit`: sealing and
//! verifying), the one migration runner (`migrate`), and the
//! lifecycle's other ports (`ports`: backups, bindings, clock).
//!
//! It may use the Cloudflare client and the core; nothing above.

pub mod audit;
pub mod control;
pub mod d1;
pub mod directory;
pub mod host;
pub mod migrate;
pub mod ports;
pub mod rest;
pub mod sql;
pub mod tenant_db;
