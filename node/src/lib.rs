//! edgeswarm node (placeholder while the foundation lands).

pub mod import;
