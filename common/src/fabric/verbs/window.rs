//! Type-2 memory windows (`ibv_alloc_mw(IBV_MW_TYPE_2)`): what a verbs server grants one client
//! connection over one byte range of a registration made with `IBV_ACCESS_MW_BIND`
//! ([`Registrar::grant_window`](crate::fabric::Registrar::grant_window)).
//!
//! A type-2 window is bound by an `IBV_WR_BIND_MW` work request on a queue pair, and its key is
//! good only for requests that arrive on that queue pair: bound on the server's queue pair to
//! one client, it is that client's alone. The bind is posted in order with the queue pair's
//! SENDs: a client that has received a response sent after it can use the window. It is revoked
//! by deallocating it (`ibv_dealloc_mw` unbinds it before returning), one window per grant: an
//! `IBV_WR_LOCAL_INV` on the queue pair would let the window be bound again without two system
//! calls, but on Soft-RoCE (the CI guest) the invalidation ended the connection.
//!
//! sideway has no window API, so these are raw `rdma-mummy-sys` calls; `unsafe` stays here.

use super::device::VerbsDevice;
use crate::fabric::{DeviceError, FabricError};
use sideway::ibverbs::memory_region::MemoryRegion as Mr;
use sideway::ibverbs::queue_pair::{BasicQueuePair, QueuePair as _};
use std::io;
use std::ptr::NonNull;

/// One allocated type-2 memory window, deallocated (and so unbound) when dropped.
pub struct Window {
    mw: NonNull<rdma_mummy_sys::ibv_mw>,
    /// The key of its current (or last) binding.
    pub rkey: u32,
}

// SAFETY: an `ibv_mw` is a handle into the device context; libibverbs calls on it are
// thread-safe, and this type hands it to one call at a time (its owner holds it under the
// connection's lock).
unsafe impl Send for Window {}

impl Window {
    /// Allocates a type-2 window in the device's protection domain.
    pub fn alloc(dev: &VerbsDevice) -> Result<Window, FabricError> {
        // SAFETY: the protection domain is valid while `dev` lives, and every window is dropped
        // (deallocated) before its connection, which holds an `Arc<VerbsDevice>`.
        let mw = unsafe { rdma_mummy_sys::ibv_alloc_mw(dev.pd_ptr(), rdma_mummy_sys::ibv_mw_type::IBV_MW_TYPE_2) };
        let mw = NonNull::new(mw).ok_or_else(|| {
            FabricError::Device(DeviceError::Verbs { call: "ibv_alloc_mw", kind: io::Error::last_os_error().kind() })
        })?;
        // SAFETY: `mw` was just returned by ibv_alloc_mw and is valid.
        let rkey = unsafe { mw.as_ref().rkey };
        Ok(Window { mw, rkey })
    }

    /// Posts, signaled, the binding of this window to `len` bytes at `addr` inside `mr` with
    /// remote-write access, under the next key, on `qp` (the server's queue pair to the client
    /// that gets the window). Returns the key.
    pub fn post_bind(
        &mut self,
        qp: &mut BasicQueuePair,
        wr_id: u64,
        mr: &Mr,
        addr: u64,
        len: u64,
    ) -> Result<u32, FabricError> {
        use rdma_mummy_sys::*;
        let rkey = next_rkey(self.rkey);
        // SAFETY: zeroed is a valid `ibv_send_wr` (null pointers, no SGEs); the fields set below
        // are the ones IBV_WR_BIND_MW reads.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.opcode = ibv_wr_opcode::IBV_WR_BIND_MW;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.bind_mw_tso_union.bind_mw = bind_mw_t {
            mw: self.mw.as_ptr(),
            rkey,
            bind_info: ibv_mw_bind_info {
                // SAFETY (of the pointer's use): the registration outlives every binding over
                // it: the registrar keeps it while windows may be granted over it, and a window
                // bound over it is invalidated or deallocated before the connection ends.
                mr: unsafe { mr.mr().as_ptr() },
                addr,
                length: len,
                mw_access_flags: ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0,
            },
        };
        post(qp, &mut wr, "ibv_post_send(BIND_MW)")?;
        self.rkey = rkey;
        Ok(rkey)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the window was allocated by ibv_alloc_mw and is deallocated once, here; a bound
        // window is unbound by its deallocation.
        unsafe { rdma_mummy_sys::ibv_dealloc_mw(self.mw.as_ptr()) };
    }
}

/// The key of a window's next binding: the same window index, the next 8-bit tag
/// (`ibv_inc_rkey`).
fn next_rkey(rkey: u32) -> u32 {
    (rkey & !0xff) | (rkey.wrapping_add(1) & 0xff)
}

fn post(qp: &mut BasicQueuePair, wr: &mut rdma_mummy_sys::ibv_send_wr, call: &'static str) -> Result<(), FabricError> {
    let mut bad = std::ptr::null_mut();
    // SAFETY: `qp` is a valid queue pair for the duration of the call (we hold it mutably);
    // `wr` is one complete work request with no SGEs and no successor.
    let rc = unsafe { rdma_mummy_sys::ibv_post_send(qp.qp().as_ptr(), wr, &mut bad) };
    match rc {
        0 => Ok(()),
        libc::ENOMEM => Err(FabricError::QueueFull),
        e => Err(FabricError::Device(DeviceError::Verbs { call, kind: io::Error::from_raw_os_error(e).kind() })),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_rkey_changes_only_the_tag() {
        assert_eq!(super::next_rkey(0x1234_56fe), 0x1234_56ff);
        assert_eq!(super::next_rkey(0x1234_56ff), 0x1234_5600);
    }
}
