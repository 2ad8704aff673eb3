//! In-memory stand-ins for everything the control plane talks to, for native tests and the fleet
//! simulation (`examples/simulate.rs`). Native only: none of this is in the Worker.
//!
//! - [`MemorySql`]: the control store and tenant databases, on in-memory SQLite (the same SQL).
//! - [`FakeCloudflare`]: the Cloudflare API (D1, script settings, exports) behind the real client's
//!   `Transport`, with latency, faults and call accounting.
//! - [`MemoryBackups`], [`FakeBindings`], [`VirtualClock`]: the lifecycle's other ports.
//! - [`Crash`]: kills a run right after any write; [`Crashing`] makes the control store's writes
//!   count.
//! - [`World`]: all of it wired into a [`FakePlatform`], with the fleet's invariants.

pub mod cloudflare;
pub mod crash;
pub mod ports;
pub mod sqlite;
pub mod world;

pub use cloudflare::{FakeCloudflare, Fault};
pub use crash::Crash;
pub use ports::{Crashing, FakeBindings, MemoryBackups, VirtualClock};
pub use sqlite::MemorySql;
pub use world::{FakePlatform, World, NAMESPACE, PREFIX, SCRIPT};
