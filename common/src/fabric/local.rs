//! The caller's side of a work request, as on verbs: memory the caller registered with its queue
//! pair (the `ibv_reg_mr` of a client), the slices of it that READs fill and WRITEs send (an
//! `ibv_sge`), and the completions that say, by work-request id, that a request is done (an
//! `ibv_wc` polled from a completion queue).
//!
//! A READ posted with [`WorkRequest::ReadInto`](super::WorkRequest::ReadInto) lands in the
//! caller's registered memory, and its completion is a [`WorkCompletion`] carrying only the id
//! the caller chose and the status: nothing is allocated per operation, by the backend or the
//! caller. Ownership follows verbs: the bytes of a slice belong to the backend from the post until
//! the request's completion has been polled (a READ may land in them until then; a WRITE may
//! read them until then). Registered memory is a [`MemoryRegion`] (atomic words), so a caller
//! that breaks this rule reads torn data, never undefined behaviour.

use super::{FabricError, MemoryRegion};
use std::sync::Arc;

/// Local registrations one queue pair may hold: enough for a client's buffer pools; a bound so
/// that a caller's bug cannot grow a backend's table without limit.
pub const MAX_LOCAL_REGIONS: usize = 64;

/// The key of a local registration (an `lkey`), valid on the queue pair that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalKey(pub u32);

/// `len` bytes at `offset` of the local registration `lkey`: where a READ places its data, or
/// where a WRITE takes its data from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSlice {
    pub lkey: LocalKey,
    pub offset: usize,
    pub len: u32,
}

/// Why a post's local memory was refused (nothing was sent; the queue pair's state is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LocalAccessError {
    #[error("unknown local key")]
    BadKey,
    #[error("slice outside its local registration")]
    OutOfBounds,
    #[error("the queue pair holds its maximum of {MAX_LOCAL_REGIONS} local registrations")]
    TooManyRegistrations,
}

/// What the completion queue says about one signaled chain posted with
/// [`QueuePair::post_signaled`](super::QueuePair::post_signaled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The id the caller posted the chain with.
    pub wr_id: u64,
    /// Success (every READ's data is in its local slice), or why not: the failing request's
    /// remote error, or [`FabricError::Flushed`] and the like for what the error state or a lost
    /// connection ended.
    pub result: Result<(), FabricError>,
}

/// The local registrations of one queue pair of a software backend: key → region.
#[derive(Debug, Default)]
pub struct LocalRegions {
    regions: Vec<Arc<MemoryRegion>>,
}

impl LocalRegions {
    /// Registers `region`; its key is its index, so resolving is a bounds check.
    pub fn register(&mut self, region: Arc<MemoryRegion>) -> Result<LocalKey, FabricError> {
        if self.regions.len() >= MAX_LOCAL_REGIONS {
            return Err(FabricError::LocalAccess(LocalAccessError::TooManyRegistrations));
        }
        self.regions.push(region);
        Ok(LocalKey(self.regions.len() as u32 - 1))
    }

    /// The region and offset `slice` addresses, if it lies inside its registration.
    pub fn resolve(&self, slice: &LocalSlice) -> Result<(&MemoryRegion, usize), FabricError> {
        let region =
            self.regions.get(slice.lkey.0 as usize).ok_or(FabricError::LocalAccess(LocalAccessError::BadKey))?;
        match slice.offset.checked_add(slice.len as usize) {
            Some(end) if end <= region.len() => Ok((region, slice.offset)),
            _ => Err(FabricError::LocalAccess(LocalAccessError::OutOfBounds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_checks_key_and_bounds() {
        let mut t = LocalRegions::default();
        let k = t.register(Arc::new(MemoryRegion::new(100))).unwrap();
        assert!(t.resolve(&LocalSlice { lkey: k, offset: 60, len: 40 }).is_ok());
        let err = |offset, len, lkey| t.resolve(&LocalSlice { lkey, offset, len }).unwrap_err();
        assert_eq!(err(61, 40, k), FabricError::LocalAccess(LocalAccessError::OutOfBounds));
        assert_eq!(err(usize::MAX, 1, k), FabricError::LocalAccess(LocalAccessError::OutOfBounds));
        assert_eq!(err(0, 1, LocalKey(1)), FabricError::LocalAccess(LocalAccessError::BadKey));
    }

    #[test]
    fn registrations_are_bounded() {
        let mut t = LocalRegions::default();
        for _ in 0..MAX_LOCAL_REGIONS {
            t.register(Arc::new(MemoryRegion::new(8))).unwrap();
        }
        assert_eq!(
            t.register(Arc::new(MemoryRegion::new(8))),
            Err(FabricError::LocalAccess(LocalAccessError::TooManyRegistrations))
        );
    }
}
