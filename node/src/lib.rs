//! edgeswarm node (placeholder while the foundation lands).
