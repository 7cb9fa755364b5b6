//! edgeswarm node (placeholder while the foundation lands).

pub mod swarm;
