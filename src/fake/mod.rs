//! In-memory stand-ins for everything the control plane talks to, for native tests and the fleet
//! simulation (`examples/simulate.rs`). Native only: none of this is in the Worker.
//!
//! - [`MemorySql`]: the control store and tenant databases, on in-memory SQLite.
pub mod sqlite;
pub use sqlite::MemorySql;
pub mod crash;
pub use crash::Crash;
