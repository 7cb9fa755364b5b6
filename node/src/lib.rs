//! edgeswarm node (placeholder while the foundation lands).

pub mod store;
pub mod swarm;
