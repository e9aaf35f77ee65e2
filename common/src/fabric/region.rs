//! Registered memory: the bytes a remote peer may READ and WRITE, and the table of keys that
//! grants that access.
//!
//! A [`MemoryRegion`] is an array of `AtomicU64` words, so that the owner (the server's worker
//! threads) and remote peers (a NIC thread, or a real NIC's DMA) may touch it at the same time
//! without a data race. Like a NIC reading host memory over PCIe, a READ copies word by word:
//! it is atomic per aligned 8-byte word, **not** as a whole. Words are read in increasing address
//! order with acquire loads, and written in increasing address order with release stores, so a
//! reader that sees a later-written word also sees everything written before it on the same
//! queue pair.

use super::{Access, PeerId, RemoteAccessError, RemoteAddr};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Memory that can be registered for remote access.
pub struct MemoryRegion {
    words: Words,
    len: usize,
}

/// Bytes of the hugepages [`MemoryRegion::on_hugepages`] maps (x86-64's and arm64's 2 MiB).
pub const HUGEPAGE: usize = 2 << 20;

/// Why a region could not be put on hugepages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HugePageError {
    /// The hugepage pool has fewer free 2 MiB pages than the region needs (none are reserved
    /// by default).
    #[error(
        "{needed} hugepages of 2 MiB needed but not free: reserve them first \
         (echo N > /proc/sys/vm/nr_hugepages, or vm.nr_hugepages in sysctl.conf)"
    )]
    NotReserved { needed: usize },
    /// mmap refused for another reason (no hugetlbfs support in the kernel, a limit).
    #[error("mmap(MAP_HUGETLB) failed: {0}")]
    Map(std::io::ErrorKind),
}

/// The words of a region: on the heap, or in an anonymous mapping of 2 MiB hugepages (a NIC
/// then needs one translation entry per 2 MiB instead of per 4 KiB).
enum Words {
    Heap(Box<[AtomicU64]>),
    Huge { ptr: std::ptr::NonNull<AtomicU64>, words: usize, map_len: usize },
}

// SAFETY: `Huge` owns its mapping exclusively (like the Box of `Heap`), and the words are atomics,
// which any thread may share.
unsafe impl Send for Words {}
unsafe impl Sync for Words {}

impl std::ops::Deref for Words {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        match self {
            Words::Heap(b) => b,
            // SAFETY: the mapping holds `words` zero-initialised (the kernel zeroes new pages),
            // suitably aligned u64s, readable and writable until `drop` unmaps it.
            Words::Huge { ptr, words, .. } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *words) },
        }
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        if let Words::Huge { ptr, map_len, .. } = self {
            // SAFETY: the mapping this value made and nothing else refers to any more (a
            // region's registrations are dropped before or with it).
            unsafe { libc::munmap(ptr.as_ptr().cast(), *map_len) };
        }
    }
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len)
            .finish()
    }
}

impl MemoryRegion {
    /// A zeroed region of `len` bytes.
    pub fn new(len: usize) -> MemoryRegion {
        let words = (0..len.div_ceil(8)).map(|_| AtomicU64::new(0)).collect();
        MemoryRegion { words: Words::Heap(words), len }
    }

    /// A zeroed region of `len` bytes on 2 MiB hugepages (`len` rounded up to whole pages),
    /// taken from the pool reserved in `/proc/sys/vm/nr_hugepages`. The pages are reserved when
    /// mapped, so a pool too small fails here, typed, and never later on a page fault.
    pub fn on_hugepages(len: usize) -> Result<MemoryRegion, HugePageError> {
        let map_len = len.max(1).div_ceil(HUGEPAGE) * HUGEPAGE;
        // SAFETY: a new anonymous private mapping at an address of the kernel's choosing: it
        // aliases nothing; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOMEM) => HugePageError::NotReserved { needed: map_len / HUGEPAGE },
                _ => HugePageError::Map(e.kind()),
            });
        }
        let ptr = std::ptr::NonNull::new(p.cast::<AtomicU64>()).expect("mmap never maps page 0 here");
        Ok(MemoryRegion { words: Words::Huge { ptr, words: len.div_ceil(8), map_len }, len })
    }

    /// Whether the region is on hugepages.
    pub fn is_on_hugepages(&self) -> bool {
        matches!(self.words, Words::Huge { .. })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of the first byte: the base of remote addresses into this region.
    pub fn addr(&self) -> u64 {
        self.words.as_ptr() as u64
    }

    /// Raw pointer to the memory, for registration with a real NIC.
    pub fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), RemoteAccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(RemoteAccessError::OutOfBounds),
        }
    }

    /// Copies `out.len()` bytes starting at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), RemoteAccessError> {
        self.read_with(offset, out, usize::MAX, &mut || {})
    }

    /// Like [`read`](Self::read), but calls `pause` once after the first `pause_after` bytes have
    /// been copied: fault injection uses it to tear a READ in the middle of a concurrent WRITE.
    pub fn read_with(
        &self,
        offset: usize,
        out: &mut [u8],
        pause_after: usize,
        pause: &mut dyn FnMut(),
    ) -> Result<(), RemoteAccessError> {
        self.check(offset, out.len())?;
        let mut done = 0;
        let mut paused = false;
        while done < out.len() {
            if !paused && done >= pause_after {
                pause();
                paused = true;
            }
            let at = offset + done;
            let (w, b) = (at / 8, at % 8);
            let n = (8 - b).min(out.len() - done);
            let word = self.words[w].load(Ordering::Acquire).to_le_bytes();
            if n == 8 {
                // Whole word: a fixed-size copy the compiler turns into one store.
                out[done..done + 8].copy_from_slice(&word);
            } else {
                out[done..done + n].copy_from_slice(&word[b..b + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// Stores `data` at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), RemoteAccessError> {
        self.check(offset, data.len())?;
        let mut done = 0;
        while done < data.len() {
            let at = offset + done;
            let (w, b) = (at / 8, at % 8);
            let n = (8 - b).min(data.len() - done);
            if n == 8 {
                let v = u64::from_le_bytes(data[done..done + 8].try_into().unwrap());
                self.words[w].store(v, Ordering::Release);
            } else {
                // Part of a word: merge with the bytes around it atomically, so that a concurrent
                // writer of the other bytes of this word is not undone.
                let _ = self.words[w].fetch_update(Ordering::Release, Ordering::Relaxed, |old| {
                    let mut bytes = old.to_le_bytes();
                    bytes[b..b + n].copy_from_slice(&data[done..done + n]);
                    Some(u64::from_le_bytes(bytes))
                });
            }
            done += n;
        }
        Ok(())
    }

    /// One byte (an acquire load).
    pub fn load_u8(&self, offset: usize) -> u8 {
        self.words[offset / 8].load(Ordering::Acquire).to_le_bytes()[offset % 8]
    }

    /// Stores one byte (release).
    pub fn store_u8(&self, offset: usize, v: u8) {
        self.write(offset, &[v]).expect("store_u8 out of bounds");
    }

    /// An aligned little-endian u64 (acquire).
    pub fn load_u64(&self, offset: usize) -> u64 {
        assert_eq!(offset % 8, 0, "unaligned u64 load");
        self.words[offset / 8].load(Ordering::Acquire)
    }

    /// Stores an aligned little-endian u64 (release).
    pub fn store_u64(&self, offset: usize, v: u64) {
        assert_eq!(offset % 8, 0, "unaligned u64 store");
        self.words[offset / 8].store(v, Ordering::Release);
    }
}

/// A registration that grants only some bytes of a region: `len` bytes at offsets `first`,
/// `first + stride`, `first + 2 × stride`, ... (each window clipped to the region's end). An
/// access must lie inside one window; anything else is refused as out of bounds. The cache table
/// uses it to let clients write the client range of every slot and nothing else (on RDMA
/// hardware: one memory window per range, or a strided memory key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strided {
    first: u64,
    len: u64,
    stride: u64,
}

impl Strided {
    /// A pattern of windows of `len` bytes every `stride` bytes from `first`. None unless
    /// `0 < len <= stride` (windows that overlap or are empty describe nothing useful).
    pub fn new(first: u64, len: u64, stride: u64) -> Option<Strided> {
        (len > 0 && len <= stride).then_some(Strided { first, len, stride })
    }

    /// Whether `len` bytes at `offset` lie inside one window.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        let Some(rel) = offset.checked_sub(self.first) else { return false };
        let within = rel % self.stride;
        within.checked_add(len).is_some_and(|end| end <= self.len)
    }
}

struct Registered {
    region: Arc<MemoryRegion>,
    access: Access,
    /// None: the whole region.
    windows: Option<Strided>,
    /// A window granted to one connection ([`RegionTable::grant_window`]): accesses from any
    /// other are refused as a bad key (as a verbs NIC refuses a type-2 window's key on any queue
    /// pair but the one it was bound on).
    grantee: Option<PeerId>,
}

/// What a peer needs to address a registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    pub addr: u64,
    pub len: u64,
    pub rkey: u32,
}

impl RegionDesc {
    /// The remote address of byte `offset` of the region.
    pub fn at(&self, offset: u64) -> RemoteAddr {
        RemoteAddr { addr: self.addr + offset, rkey: self.rkey }
    }
}

/// The server's registrations: remote key → region and rights. Every backend's NIC side checks
/// each READ and WRITE here (key, bounds, rights) before touching memory.
pub struct RegionTable {
    regions: RwLock<HashMap<u32, Registered>>,
    next: AtomicU32,
}

impl Default for RegionTable {
    fn default() -> Self {
        RegionTable::new()
    }
}

impl RegionTable {
    pub fn new() -> RegionTable {
        // Start the key sequence somewhere unpredictable so that keys are not trivially guessed.
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        RegionTable { regions: RwLock::new(HashMap::new()), next: AtomicU32::new(seed | 1) }
    }

    /// Registers `region` with `access` rights and returns its descriptor.
    pub fn register(&self, region: Arc<MemoryRegion>, access: Access) -> RegionDesc {
        self.insert(Registered { region, access, windows: None, grantee: None })
    }

    /// Registers the windows `pattern` of `region` with `access` rights. The descriptor spans the
    /// whole region (addresses are the region's own), but an access outside the windows is
    /// refused as [`RemoteAccessError::OutOfBounds`].
    pub fn register_strided(&self, region: Arc<MemoryRegion>, access: Access, pattern: Strided) -> RegionDesc {
        self.insert(Registered { region, access, windows: Some(pattern), grantee: None })
    }

    /// Grants `peer` alone `access` to `len` bytes at `offset` of the region registered as
    /// `base` (which must have been registered with [`Access::WINDOWS`]), under a new key. An
    /// access with it from another peer is refused as [`RemoteAccessError::BadKey`], one outside
    /// the window as [`RemoteAccessError::OutOfBounds`]. Revoked with
    /// [`revoke_window`](Self::revoke_window).
    pub fn grant_window(
        &self,
        peer: PeerId,
        base: RegionDesc,
        offset: u64,
        len: u64,
        access: Access,
    ) -> Result<RegionDesc, super::FabricError> {
        let not_bindable = super::FabricError::Unsupported(super::Unsupported::NotBindable);
        let region = {
            let map = self.regions.read();
            let r = map.get(&base.rkey).ok_or(not_bindable.clone())?;
            if !r.access.allows(Access::WINDOWS) || r.grantee.is_some() || r.region.addr() != base.addr {
                return Err(not_bindable);
            }
            r.region.clone()
        };
        let end = offset.checked_add(len).filter(|e| *e <= region.len() as u64 && len > 0);
        end.ok_or(super::FabricError::TooLarge(len as usize))?;
        let pattern = Strided::new(offset, len, u64::MAX).expect("len > 0");
        let rights = Access(access.0 & Access::READ_WRITE.0);
        let desc = self.insert(Registered { region, access: rights, windows: Some(pattern), grantee: Some(peer) });
        Ok(RegionDesc { addr: desc.addr + offset, len, rkey: desc.rkey })
    }

    /// Revokes a window granted to `peer`. Returns whether it was in force.
    pub fn revoke_window(&self, peer: PeerId, rkey: u32) -> bool {
        let mut map = self.regions.write();
        if map.get(&rkey).is_some_and(|r| r.grantee == Some(peer)) {
            map.remove(&rkey);
            return true;
        }
        false
    }

    fn insert(&self, registered: Registered) -> RegionDesc {
        let mut map = self.regions.write();
        let rkey = loop {
            // A multiplicative step (odd constant) visits every u32 before repeating.
            let k = self.next.fetch_add(0x9E37_79B9, Ordering::Relaxed);
            if k != 0 && !map.contains_key(&k) {
                break k;
            }
        };
        let region = &registered.region;
        let desc = RegionDesc { addr: region.addr(), len: region.len() as u64, rkey };
        map.insert(rkey, registered);
        desc
    }

    /// Revokes a key. Returns whether it was registered.
    pub fn deregister(&self, rkey: u32) -> bool {
        self.regions.write().remove(&rkey).is_some()
    }

    /// Checks an access of `len` bytes at `remote` needing `need`, and returns the region and the
    /// offset into it. An access from no connection in particular: window keys are refused.
    pub fn resolve(
        &self,
        remote: RemoteAddr,
        len: usize,
        need: Access,
    ) -> Result<(Arc<MemoryRegion>, usize), RemoteAccessError> {
        self.resolve_for(None, remote, len, need)
    }

    /// [`resolve`](Self::resolve) for an access by the connection `peer`: its windows count.
    pub fn resolve_for(
        &self,
        peer: Option<PeerId>,
        remote: RemoteAddr,
        len: usize,
        need: Access,
    ) -> Result<(Arc<MemoryRegion>, usize), RemoteAccessError> {
        let map = self.regions.read();
        let r = map.get(&remote.rkey).ok_or(RemoteAccessError::BadKey)?;
        if r.grantee.is_some() && r.grantee != peer {
            return Err(RemoteAccessError::BadKey);
        }
        if !r.access.allows(need) {
            return Err(RemoteAccessError::AccessDenied);
        }
        let base = r.region.addr();
        let offset = remote.addr.checked_sub(base).ok_or(RemoteAccessError::OutOfBounds)?;
        let end = offset.checked_add(len as u64).ok_or(RemoteAccessError::OutOfBounds)?;
        if end > r.region.len() as u64 || r.windows.is_some_and(|w| !w.covers(offset, len as u64)) {
            return Err(RemoteAccessError::OutOfBounds);
        }
        Ok((r.region.clone(), offset as usize))
    }

    /// Serves a READ of `out.len()` bytes at `remote`.
    pub fn read(&self, remote: RemoteAddr, out: &mut [u8]) -> Result<(), RemoteAccessError> {
        let (region, offset) = self.resolve(remote, out.len(), Access::READ)?;
        region.read(offset, out)
    }

    /// Serves a WRITE of `data` at `remote`.
    pub fn write(&self, remote: RemoteAddr, data: &[u8]) -> Result<(), RemoteAccessError> {
        self.write_for(None, remote, data)
    }

    /// Serves a WRITE of `data` at `remote` by the connection `peer` (its windows count).
    pub fn write_for(&self, peer: Option<PeerId>, remote: RemoteAddr, data: &[u8]) -> Result<(), RemoteAccessError> {
        let (region, offset) = self.resolve_for(peer, remote, data.len(), Access::WRITE)?;
        region.write(offset, data)
    }
}

impl super::Registrar for RegionTable {
    fn register(&self, region: Arc<MemoryRegion>, access: Access) -> Result<RegionDesc, super::FabricError> {
        Ok(RegionTable::register(self, region, access))
    }

    fn register_strided(
        &self,
        region: Arc<MemoryRegion>,
        access: Access,
        pattern: Strided,
    ) -> Result<RegionDesc, super::FabricError> {
        Ok(RegionTable::register_strided(self, region, access, pattern))
    }

    fn deregister(&self, rkey: u32) -> bool {
        RegionTable::deregister(self, rkey)
    }

    fn grant_window(
        &self,
        peer: PeerId,
        base: RegionDesc,
        offset: u64,
        len: u64,
        access: Access,
    ) -> Result<RegionDesc, super::FabricError> {
        RegionTable::grant_window(self, peer, base, offset, len, access)
    }

    fn revoke_window(&self, peer: PeerId, rkey: u32) -> bool {
        RegionTable::revoke_window(self, peer, rkey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Free hugepages in the pool now (`HugePages_Free` of /proc/meminfo).
    fn free_hugepages() -> usize {
        let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let line = info.lines().find(|l| l.starts_with("HugePages_Free:"));
        line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    }

    /// The kernel's page size (KiB) of the mapping holding `addr`, from /proc/self/smaps.
    fn kernel_page_kib(addr: u64) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().and_then(|r| r.split_once('-'));
            if let Some((a, b)) =
                range.and_then(|(a, b)| Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?)))
            {
                inside = (a..b).contains(&addr);
            } else if inside && line.starts_with("KernelPageSize:") {
                return line.split_whitespace().nth(1)?.parse().ok();
            }
        }
        None
    }

    /// With hugepages reserved, a region maps onto them (the kernel says 2 MiB pages) and reads
    /// and writes like any other; without, the refusal is typed and says how many were needed.
    /// `SCALIO_REQUIRE_HUGEPAGES=1` (the CI guest reserves some) makes the first case required.
    #[test]
    fn hugepage_regions_or_a_typed_refusal() {
        let len = 3 * HUGEPAGE + 100;
        let free = free_hugepages();
        match MemoryRegion::on_hugepages(len) {
            Ok(r) => {
                assert!(r.is_on_hugepages());
                assert_eq!(r.len(), len);
                assert_eq!(r.addr() % HUGEPAGE as u64, 0);
                assert_eq!(kernel_page_kib(r.addr()), Some(2048), "backed by 2 MiB pages");
                assert_eq!(kernel_page_kib(r.addr() + 3 * HUGEPAGE as u64), Some(2048));
                let mut zeros = [1u8; 16];
                r.read(HUGEPAGE - 8, &mut zeros).unwrap();
                assert_eq!(zeros, [0; 16], "fresh pages are zeroed");
                r.write(HUGEPAGE - 4, b"across a page").unwrap();
                let mut back = [0u8; 13];
                r.read(HUGEPAGE - 4, &mut back).unwrap();
                assert_eq!(&back, b"across a page");
                assert_eq!(r.read(len - 1, &mut [0; 2]), Err(RemoteAccessError::OutOfBounds));
                assert!(!MemoryRegion::new(8).is_on_hugepages());
            }
            Err(e @ HugePageError::NotReserved { needed }) => {
                assert_eq!(needed, 4, "3 pages and 100 bytes take 4");
                assert!(free < needed, "refused although {free} hugepages were free");
                assert!(
                    std::env::var("SCALIO_REQUIRE_HUGEPAGES").as_deref() != Ok("1"),
                    "SCALIO_REQUIRE_HUGEPAGES=1 but {e}"
                );
                assert!(e.to_string().contains("/proc/sys/vm/nr_hugepages"), "the error says what to do");
                eprintln!("skipped the mapping: {e}");
            }
            Err(other) => panic!("{other}"),
        }
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn region_read_write(offset in 0usize..200, data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let r = MemoryRegion::new(300);
            r.write(offset, &data).unwrap();
            let mut back = vec![0; data.len()];
            r.read(offset, &mut back).unwrap();
            prop_assert_eq!(&back, &data);
            // Bytes around the write are untouched.
            let mut all = vec![0; 300];
            r.read(0, &mut all).unwrap();
            prop_assert!(all[..offset].iter().all(|b| *b == 0));
            prop_assert!(all[offset + data.len()..].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn strided_registration_grants_only_its_windows() {
        let t = RegionTable::new();
        let region = Arc::new(MemoryRegion::new(100));
        // Windows 4..8, 14..18, ..., 94..98 (the last one ends before the region does).
        let d = t.register_strided(region, Access::WRITE, Strided::new(4, 4, 10).unwrap());
        for w in 0..10u64 {
            assert!(t.resolve(d.at(w * 10 + 4), 4, Access::WRITE).is_ok(), "window {w}");
            assert!(t.resolve(d.at(w * 10 + 5), 3, Access::WRITE).is_ok());
            for (at, len) in [(w * 10 + 3, 1), (w * 10 + 8, 1), (w * 10 + 4, 5), (w * 10 + 7, 8)] {
                assert_eq!(
                    t.resolve(d.at(at), len as usize, Access::WRITE).unwrap_err(),
                    RemoteAccessError::OutOfBounds,
                    "{len} bytes at {at}"
                );
            }
        }
        assert_eq!(t.resolve(d.at(4), 4, Access::READ).unwrap_err(), RemoteAccessError::AccessDenied);
        assert_eq!(t.resolve(d.at(104), 4, Access::WRITE).unwrap_err(), RemoteAccessError::OutOfBounds);
        assert!(Strided::new(0, 0, 8).is_none() && Strided::new(0, 9, 8).is_none());
    }

    proptest! {
        /// `covers` agrees with a byte-by-byte model of the windows.
        #[test]
        fn strided_covers_matches_its_windows(first in 0u64..64, len in 1u64..32, extra in 0u64..32,
                                              offset in 0u64..512, n in 0u64..64) {
            let stride = len + extra;
            let p = Strided::new(first, len, stride).unwrap();
            let in_window = |b: u64| b >= first && (b - first) % stride < len;
            let window = |b: u64| (b - first) / stride;
            let model = if n == 0 {
                offset >= first && (offset - first) % stride <= len
            } else {
                (offset..offset + n).all(in_window) && window(offset) == window(offset + n - 1)
            };
            prop_assert_eq!(p.covers(offset, n), model);
        }
    }

    #[test]
    fn resolve_checks_key_bounds_and_rights() {
        let t = RegionTable::new();
        let d = t.register(Arc::new(MemoryRegion::new(64)), Access::READ);
        assert!(t.resolve(d.at(0), 64, Access::READ).is_ok());
        assert_eq!(t.resolve(d.at(1), 64, Access::READ).unwrap_err(), RemoteAccessError::OutOfBounds);
        assert_eq!(
            t.resolve(RemoteAddr { addr: d.addr - 1, rkey: d.rkey }, 1, Access::READ).unwrap_err(),
            RemoteAccessError::OutOfBounds
        );
        assert_eq!(t.resolve(d.at(0), 8, Access::WRITE).unwrap_err(), RemoteAccessError::AccessDenied);
        assert_eq!(
            t.resolve(RemoteAddr { addr: d.addr, rkey: d.rkey ^ 1 }, 8, Access::READ).unwrap_err(),
            RemoteAccessError::BadKey
        );
        assert!(t.deregister(d.rkey));
        assert_eq!(t.resolve(d.at(0), 8, Access::READ).unwrap_err(), RemoteAccessError::BadKey);
    }
}
