//! The operators.

pub mod aggregate;
pub mod asof;
pub mod connector;
pub mod filter;
pub mod join;
pub mod materialize;
pub mod over;
pub mod partial;
pub mod proctime;
pub mod project;
pub mod session;
pub mod temporal_filter;
pub mod topn;
pub mod union;
pub mod watermark;
