//! The software NIC over TCP (to be written).
