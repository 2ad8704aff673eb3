//! The storage layer: SQL as data and the [`sql::Sql`] trait, its D1 implementation.
pub mod d1;
pub mod sql;
