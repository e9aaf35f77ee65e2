//! One opened RDMA device: its context, protection domain, port and GID, and the few verbs
//! objects both ends build from it (completion queues with their notification channel, RC queue
//! pairs taken to RTS, registrations of [`MemoryRegion`]s).
//!
//! `unsafe` is confined to the calls that hand memory or raw handles to libibverbs; each block
//! says why it holds.

use super::cm::CmId;
use super::wire::Endpoint;
use super::VerbsConfig;
use crate::fabric::{Access, DeviceError, FabricError, MemoryRegion};
use crate::fabric::{CmError, VerbsConnect};
use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, CompletionQueue};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, Mtu};
use sideway::ibverbs::memory_region::MemoryRegion as Mr;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{BasicQueuePair, QueuePair as _, QueuePairAttribute, QueuePairState};
use sideway::ibverbs::AccessFlags;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of a WRITE or SEND small enough to post inline (copied into the work request: no
/// registered memory needed). 64 is within what every provider offers.
pub const MAX_INLINE: usize = 64;
/// READs (and atomics) one queue pair may have in flight to its peer, and accepts from it.
pub const READ_DEPTH: u8 = 16;

fn verbs(call: &'static str) -> impl Fn(io::Error) -> FabricError {
    move |e| FabricError::Device(DeviceError::Verbs { call, kind: e.kind() })
}

/// An opened device, shared by every queue pair and registration of one end.
pub struct VerbsDevice {
    ctx: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    name: String,
    port: u8,
    gid_index: u32,
    gid: Gid,
    lid: u16,
    mtu: Mtu,
    connect: VerbsConnect,
}

impl std::fmt::Debug for VerbsDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsDevice")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("gid_index", &self.gid_index)
            .field("gid", &format_args!("{}", self.gid))
            .finish()
    }
}

impl VerbsDevice {
    /// Opens the configured device (or the first one), its port, and a GID: the configured
    /// index, else the first IPv4-mapped GID (RoCE v2 over IPv4, routable), else the first
    /// non-zero one (on InfiniBand or a link-local-only RoCE port).
    pub fn open(config: &VerbsConfig) -> Result<Arc<VerbsDevice>, FabricError> {
        let list = DeviceList::new().map_err(|e| FabricError::Device(DeviceError::NoDevice(list_error_kind(&e))))?;
        let device = match &config.device {
            Some(want) => list.iter().find(|d| d.name() == *want).ok_or(FabricError::Device(DeviceError::NotFound))?,
            None => list.iter().next().ok_or(FabricError::Device(DeviceError::NoDevice(io::ErrorKind::NotFound)))?,
        };
        let name = device.name();
        let ctx = device.open().map_err(|e| verbs("ibv_open_device")(io::Error::other(e)))?;
        let pd = ctx.alloc_pd().map_err(|e| verbs("ibv_alloc_pd")(io::Error::other(e)))?;
        let port_attr = ctx.query_port(config.port).map_err(|e| verbs("ibv_query_port")(io::Error::other(e)))?;
        let table_len = port_attr.gid_tbl_len().max(0) as u32;
        let gid_at = |i: u32| ctx.query_gid(config.port, i).ok().filter(|g| !g.is_zero());
        let (gid_index, gid) = match config.gid_index {
            Some(i) => (i, gid_at(i).ok_or(FabricError::Device(DeviceError::BadGid(i)))?),
            None => {
                let ipv4_mapped = |g: &Gid| g.raw[..10] == [0; 10] && g.raw[10..12] == [0xff, 0xff];
                let found = (0..table_len).filter_map(|i| gid_at(i).map(|g| (i, g)));
                let all: Vec<_> = found.collect();
                all.iter()
                    .find(|(_, g)| ipv4_mapped(g))
                    .or(all.first())
                    .copied()
                    .ok_or(FabricError::Device(DeviceError::BadGid(0)))?
            }
        };
        Ok(Arc::new(VerbsDevice {
            lid: port_attr.lid(),
            mtu: port_attr.active_mtu(),
            ctx,
            pd,
            name,
            port: config.port,
            gid_index,
            gid,
            connect: config.connect,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How queue pairs on this device connect (the configuration's `connect`).
    pub fn connect_method(&self) -> VerbsConnect {
        self.connect
    }

    /// The IP address of this end's GID, port 0: IPv4 for an IPv4-mapped GID, else IPv6 (with
    /// the scope of the GID's network interface when link-local). Where an rdma_cm listener on
    /// this device binds, and the source a client resolves from. None for a GID with no
    /// interface (InfiniBand without IPoIB).
    pub fn ip_addr(&self) -> Option<std::net::SocketAddr> {
        use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
        let ip = Ipv6Addr::from(self.gid.raw);
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Some(SocketAddr::from((v4, 0)));
        }
        let scope = if ip.segments()[0] & 0xffc0 == 0xfe80 {
            let path =
                format!("/sys/class/infiniband/{}/ports/{}/gid_attrs/ndevs/{}", self.name, self.port, self.gid_index);
            let ifname = std::ffi::CString::new(std::fs::read_to_string(path).ok()?.trim()).ok()?;
            // SAFETY: a NUL-terminated name that lives across the call.
            match unsafe { libc::if_nametoindex(ifname.as_ptr()) } {
                0 => return None,
                i => i,
            }
        } else {
            0
        };
        Some(SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, scope)))
    }

    /// Whether rdma_cm bound `id` to this device and port (it picks them from the address).
    pub(super) fn check_cm_device(&self, id: &CmId) -> Result<(), FabricError> {
        match id.device() {
            Some((name, port)) if name == self.name && port == self.port => Ok(()),
            _ => Err(FabricError::ConnectionManager(CmError::OtherDevice)),
        }
    }

    /// Takes `qp` (in INIT, on this device's port) to RTR and RTS with what rdma_cm negotiated
    /// for `id` (the peer's queue pair, PSNs, path and GIDs), and this backend's READ depth,
    /// timeouts and retries (as [`connect`](Self::connect)).
    pub(super) fn connect_cm(&self, qp: &mut BasicQueuePair, id: &CmId) -> Result<(), FabricError> {
        let mut attr = id.qp_attr(QueuePairState::ReadyToReceive)?;
        attr.setup_max_dest_read_atomic(READ_DEPTH).setup_min_rnr_timer(1);
        qp.modify(&attr).map_err(|e| verbs("ibv_modify_qp(RTR)")(io::Error::other(e)))?;
        let mut attr = id.qp_attr(QueuePairState::ReadyToSend)?;
        attr.setup_timeout(14).setup_retry_cnt(7).setup_rnr_retry(7).setup_max_read_atomic(READ_DEPTH);
        qp.modify(&attr).map_err(|e| verbs("ibv_modify_qp(RTS)")(io::Error::other(e)))
    }

    pub fn gid(&self) -> [u8; 16] {
        self.gid.raw
    }

    /// Registers `region` with the rights `access` grants remote peers (and local write, which
    /// verbs requires with remote write and which READs landing in local memory need).
    pub fn register(
        &self,
        region: &Arc<MemoryRegion>,
        access: Access,
        local_write: bool,
    ) -> Result<Arc<Mr>, FabricError> {
        let mut flags = AccessFlags::none();
        if access.allows(Access::READ) {
            flags |= AccessFlags::RemoteRead;
        }
        if access.allows(Access::WRITE) {
            flags |= AccessFlags::RemoteWrite | AccessFlags::LocalWrite;
        }
        if local_write {
            flags |= AccessFlags::LocalWrite;
        }
        if access.allows(Access::WINDOWS) {
            // Binding a window with remote write needs local write on the registration.
            flags |= AccessFlags::MemoryWindowBind | AccessFlags::LocalWrite;
        }
        // ibv_reg_mr refuses a zero length; a one-word region stands in for an empty one.
        let len = region.len().max(1);
        // SAFETY: `region.as_ptr()` points at `region.len()` bytes (rounded up to whole words, so
        // at least `len`) that stay allocated as long as the returned registration: every caller
        // keeps the `Arc<MemoryRegion>` beside the `Arc<Mr>` and drops the registration first or
        // together. The bytes are atomics, so the NIC's DMA racing with the owner's loads and
        // stores is the same as another thread's, never a data race on plain memory.
        unsafe { self.pd.reg_mr(region.as_ptr() as usize, len, flags) }
            .map_err(|e| verbs("ibv_reg_mr")(io::Error::other(e)))
    }

    /// Whether the device binds type-2 memory windows (`IBV_DEVICE_MEM_WINDOW_TYPE_2B` in
    /// `ibv_query_device`'s `device_cap_flags`; type 2A windows are not used).
    pub fn has_type2_windows(&self) -> bool {
        use sideway::ibverbs::device_context::DeviceCapabilityFlags as F;
        self.ctx.query_device().is_ok_and(|a| a.device_cap_flags().contains(F::MemoryWindowType2B))
    }

    /// The protection domain's handle, for the window calls sideway does not wrap.
    pub(super) fn pd_ptr(&self) -> *mut rdma_mummy_sys::ibv_pd {
        // SAFETY: the handle is valid while `self.pd` lives; callers use it only while they
        // hold this device.
        unsafe { self.pd.pd().as_ptr() }
    }

    /// A completion queue of `entries` with its own notification channel.
    pub fn completion_queue(&self, entries: u32) -> Result<Cq, FabricError> {
        let channel =
            self.ctx.create_comp_channel().map_err(|e| verbs("ibv_create_comp_channel")(io::Error::other(e)))?;
        channel.set_nonblocking(true).map_err(verbs("fcntl(O_NONBLOCK)"))?;
        let cq = self
            .ctx
            .create_cq_builder()
            .setup_cqe(entries)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| verbs("ibv_create_cq")(io::Error::other(e)))?;
        Ok(Cq { cq, channel })
    }

    /// An RC queue pair on `cq`, in the INIT state.
    pub fn queue_pair(&self, cq: &Cq, send_wr: u32, recv_wr: u32) -> Result<BasicQueuePair, FabricError> {
        let mut builder = self.pd.create_qp_builder();
        builder
            .setup_max_send_wr(send_wr)
            .setup_max_recv_wr(recv_wr)
            .setup_max_send_sge(1)
            .setup_max_recv_sge(1)
            .setup_max_inline_data(MAX_INLINE as u32)
            .setup_send_cq(cq.cq.clone())
            .setup_recv_cq(cq.cq.clone());
        let mut qp = builder.build().map_err(|e| verbs("ibv_create_qp")(io::Error::other(e)))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(self.port)
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteWrite | AccessFlags::RemoteRead);
        qp.modify(&attr).map_err(|e| verbs("ibv_modify_qp(INIT)")(io::Error::other(e)))?;
        Ok(qp)
    }

    /// This end of `qp` as the peer needs it.
    pub fn endpoint(&self, qp: &BasicQueuePair, psn: u32) -> Endpoint {
        Endpoint { qpn: qp.qp_number(), psn, gid: self.gid.raw, lid: self.lid }
    }

    /// Takes `qp` to RTR and RTS towards `peer`. A request gets no answer for about 0.5 s
    /// (timeout 14 ≈ 67 ms, 7 retries) before it fails; a peer out of receive buffers is
    /// retried without limit (RNR retry 7), which is what bounds a sender to the receiver's pace.
    pub fn connect(&self, qp: &mut BasicQueuePair, my_psn: u32, peer: &Endpoint) -> Result<(), FabricError> {
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(self.mtu)
            .setup_dest_qp_num(peer.qpn)
            .setup_rq_psn(peer.psn)
            .setup_max_dest_read_atomic(READ_DEPTH)
            .setup_min_rnr_timer(1);
        let mut ah = AddressHandleAttribute::new();
        ah.setup_dest_lid(peer.lid)
            .setup_port(self.port)
            .setup_service_level(0)
            .setup_grh_src_gid_index(self.gid_index as u8)
            .setup_grh_dest_gid(&Gid { raw: peer.gid })
            .setup_grh_hop_limit(64);
        attr.setup_address_vector(&ah);
        qp.modify(&attr).map_err(|e| verbs("ibv_modify_qp(RTR)")(io::Error::other(e)))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(my_psn)
            .setup_timeout(14)
            .setup_retry_cnt(7)
            .setup_rnr_retry(7)
            .setup_max_read_atomic(READ_DEPTH);
        qp.modify(&attr).map_err(|e| verbs("ibv_modify_qp(RTS)")(io::Error::other(e)))
    }
}

fn list_error_kind(e: &sideway::ibverbs::device::GetDeviceListError) -> io::ErrorKind {
    use sideway::ibverbs::device::GetDeviceListErrorKind;
    match &e.0 {
        GetDeviceListErrorKind::Ibverbs(io) => io.kind(),
        #[allow(unreachable_patterns)]
        _ => io::ErrorKind::Unsupported,
    }
}

/// A completion queue and the channel that says it has completions.
pub struct Cq {
    pub cq: Arc<BasicCompletionQueue>,
    channel: Arc<CompletionChannel>,
}

impl Cq {
    /// Asks for the next completion to signal the channel. The caller polls the queue once more
    /// after arming and blocks ([`block`](Self::block)) only if that finds nothing, so a
    /// completion that arrived before arming is not missed.
    pub fn arm(&self) -> bool {
        // SAFETY: the CQ handle is valid while `self.cq` lives; ibv_req_notify_cq only asks the
        // provider to signal the channel on the next completion.
        unsafe { rdma_mummy_sys::ibv_req_notify_cq(self.cq.cq().as_ptr(), 0) == 0 }
    }

    /// Blocks until the channel signals (or `timeout` passes), and consumes the event.
    pub fn block(&self, timeout: Duration) {
        let mut pfd = libc::pollfd { fd: self.channel.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            let mut cq = std::ptr::null_mut();
            let mut ctx = std::ptr::null_mut();
            // SAFETY: the channel is valid while `self.channel` lives; the out-pointers are
            // locals; the event, if any, is for our CQ and is acknowledged at once.
            unsafe {
                if rdma_mummy_sys::ibv_get_cq_event(self.channel.comp_channel().as_ptr(), &mut cq, &mut ctx) == 0 {
                    rdma_mummy_sys::ibv_ack_cq_events(cq, 1);
                }
            }
        }
    }
}
