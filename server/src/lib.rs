//! The scalio server: the JBOF/DPU side.

pub mod device;
pub mod store;
pub mod table;
