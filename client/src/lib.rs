//! The scalio client.
