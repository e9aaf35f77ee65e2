//! The scalio client.

pub mod nvme;
