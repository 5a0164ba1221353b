//! The operators.

pub mod aggregate;
pub mod filter;
pub mod join;
pub mod materialize;
pub mod project;
pub mod union;
