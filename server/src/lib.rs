//! The scalio server.
