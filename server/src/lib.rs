//! The scalio server.

pub mod target;
