//! The software NIC over TCP (being written): its wire protocol.

pub mod wire;
