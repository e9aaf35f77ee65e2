//! Connection setup through rdma_cm (librdmacm): an event channel, communication identifiers
//! and the events they report, as thin owners of the raw handles.
//!
//! The calls go through `rdma-mummy-sys`, which loads librdmacm at run time as it does
//! libibverbs. Not sideway's `rdmacm` module: in 0.4.3 it can neither send private data (on
//! connect, accept or reject) nor read it from an event, has no `rdma_reject`, and does not say
//! which port a listener bound to; the handshake needs all four.
//!
//! Every event is copied and acknowledged at once ([`Channel::next`]): `rdma_destroy_id` waits
//! for the events of its identifier to be acknowledged, so holding one while another thread
//! drops an identifier could block that thread.

use crate::fabric::{CmError, FabricError};
use rdma_mummy_sys as sys;
use sideway::ibverbs::queue_pair::{QueuePairAttribute, QueuePairState};
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

pub use sys::rdma_cm_event_type as event;

fn call_error(call: &'static str) -> FabricError {
    FabricError::ConnectionManager(CmError::Call { call, kind: io::Error::last_os_error().kind() })
}

/// An event channel: where the events of the identifiers created on it arrive.
pub struct Channel {
    raw: NonNull<sys::rdma_event_channel>,
}

// SAFETY: an event channel is a file descriptor behind a pointer librdmacm never moves; its calls
// (get event, create id) are safe from any thread.
unsafe impl Send for Channel {}
unsafe impl Sync for Channel {}

impl Drop for Channel {
    fn drop(&mut self) {
        // SAFETY: every identifier holds an `Arc<Channel>`, so none is left on it.
        unsafe { sys::rdma_destroy_event_channel(self.raw.as_ptr()) }
    }
}

/// One event, copied out of librdmacm's (which is acknowledged already).
pub struct Event {
    /// `RDMA_CM_EVENT_*` ([`event`]).
    pub kind: u32,
    /// The event's status: a negative errno for resolution and connection errors, the CM's
    /// reject reason for `REJECTED`.
    pub status: i32,
    /// The identifier it is about ([`CmId::key`]).
    pub id: usize,
    /// For `CONNECT_REQUEST`: the new identifier of the requested connection.
    pub request: Option<CmId>,
    /// The peer's private data (connect request, connect response, reject), zero-padded by the
    /// CM to its fixed size.
    pub private_data: Vec<u8>,
}

impl Channel {
    /// A non-blocking channel. Fails with the typed "no device" reasons where librdmacm or the
    /// kernel's rdma_ucm is missing.
    pub fn new() -> Result<Arc<Channel>, FabricError> {
        // SAFETY: no arguments; a null result is checked.
        let raw = NonNull::new(unsafe { sys::rdma_create_event_channel() })
            .ok_or_else(|| call_error("rdma_create_event_channel"))?;
        let channel = Arc::new(Channel { raw });
        let fd = channel.fd();
        // SAFETY: fcntl on the channel's own descriptor.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(call_error("fcntl(O_NONBLOCK)"));
        }
        Ok(channel)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the channel is valid while `self` lives.
        unsafe { self.raw.as_ref().fd }
    }

    /// An identifier for reliable connections (`RDMA_PS_TCP`) whose events come here.
    pub fn create_id(self: &Arc<Self>) -> Result<CmId, FabricError> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid channel, an out-pointer to a local; the result is checked.
        let rc = unsafe {
            sys::rdma_create_id(self.raw.as_ptr(), &mut raw, std::ptr::null_mut(), sys::rdma_port_space::RDMA_PS_TCP)
        };
        match NonNull::new(raw) {
            Some(raw) if rc == 0 => Ok(CmId { raw, _channel: self.clone() }),
            _ => Err(call_error("rdma_create_id")),
        }
    }

    /// The next event, waiting at most `timeout` for one; None if none came.
    pub fn next(self: &Arc<Self>, timeout: Duration) -> Result<Option<Event>, FabricError> {
        let mut pfd = libc::pollfd { fd: self.fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return Ok(None);
        }
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid channel (non-blocking), out-pointer to a local.
        if unsafe { sys::rdma_get_cm_event(self.raw.as_ptr(), &mut raw) } != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                kind => Err(FabricError::ConnectionManager(CmError::Call { call: "rdma_get_cm_event", kind })),
            };
        }
        // SAFETY: librdmacm returned a valid event that stays valid until acknowledged below;
        // its private data (if any) is `private_data_len` bytes owned by the event.
        unsafe {
            let e = &*raw;
            let kind = e.event;
            let conn_event = matches!(
                kind,
                event::RDMA_CM_EVENT_CONNECT_REQUEST
                    | event::RDMA_CM_EVENT_CONNECT_RESPONSE
                    | event::RDMA_CM_EVENT_REJECTED
                    | event::RDMA_CM_EVENT_ESTABLISHED
            );
            let conn = &e.param.conn;
            let private_data = if conn_event && !conn.private_data.is_null() {
                std::slice::from_raw_parts(conn.private_data as *const u8, conn.private_data_len as usize).to_vec()
            } else {
                Vec::new()
            };
            // A connect request's identifier is new: it is the caller's from now on (accept it
            // or drop it, which rejects the request).
            let request = if kind == event::RDMA_CM_EVENT_CONNECT_REQUEST {
                NonNull::new(e.id).map(|raw| CmId { raw, _channel: self.clone() })
            } else {
                None
            };
            let out = Event { kind, status: e.status, id: e.id as usize, request, private_data };
            sys::rdma_ack_cm_event(raw);
            Ok(Some(out))
        }
    }

    /// Waits (at most `timeout` in all) for the next event about `id`; events about other
    /// identifiers are dropped (a client's channel has only its own identifier).
    pub fn wait_for(self: &Arc<Self>, id: &CmId, timeout: Duration) -> Result<Event, FabricError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(FabricError::ConnectionManager(CmError::Timeout));
            }
            if let Some(e) = self.next(left)? {
                if e.id == id.key() {
                    return Ok(e);
                }
            }
        }
    }
}

/// A communication identifier (`rdma_cm_id`): a listener, or one end of a connection.
pub struct CmId {
    raw: NonNull<sys::rdma_cm_id>,
    /// Keeps the channel alive while its identifier is: destroying the channel first is an error.
    _channel: Arc<Channel>,
}

// SAFETY: librdmacm's identifier calls are thread-safe (each is one command to the kernel's
// rdma_ucm); the fields read here are written only by the calls that bind and resolve.
unsafe impl Send for CmId {}
unsafe impl Sync for CmId {}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the identifier is ours, and its events were acknowledged when received.
        unsafe { sys::rdma_destroy_id(self.raw.as_ptr()) };
    }
}

fn check(rc: i32, call: &'static str) -> Result<(), FabricError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(call_error(call))
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

impl CmId {
    /// What events say this identifier is.
    pub fn key(&self) -> usize {
        self.raw.as_ptr() as usize
    }

    pub fn bind(&self, addr: SocketAddr) -> Result<(), FabricError> {
        let addr = socket2::SockAddr::from(addr);
        // SAFETY: a valid identifier and a socket address that lives across the call.
        check(unsafe { sys::rdma_bind_addr(self.raw.as_ptr(), addr.as_ptr() as *mut _) }, "rdma_bind_addr")
    }

    pub fn listen(&self, backlog: i32) -> Result<(), FabricError> {
        // SAFETY: a valid, bound identifier.
        check(unsafe { sys::rdma_listen(self.raw.as_ptr(), backlog) }, "rdma_listen")
    }

    /// The address this identifier is bound to (a listener's port, once bound).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: librdmacm keeps the bound source address in the identifier (a sockaddr_storage).
        let storage = unsafe { &self.raw.as_ref().route.addr.src_addr_union.src_storage };
        from_storage(storage)
    }

    /// Starts resolving `dst` to an RDMA address (from `src` if given): `ADDR_RESOLVED` or
    /// `ADDR_ERROR` follows.
    pub fn resolve_addr(&self, src: Option<SocketAddr>, dst: SocketAddr, timeout: Duration) -> Result<(), FabricError> {
        let src = src.map(socket2::SockAddr::from);
        let dst = socket2::SockAddr::from(dst);
        let src_ptr = src.as_ref().map_or(std::ptr::null_mut(), |s| s.as_ptr() as *mut _);
        // SAFETY: a valid identifier; both addresses live across the call (librdmacm copies them).
        let rc = unsafe { sys::rdma_resolve_addr(self.raw.as_ptr(), src_ptr, dst.as_ptr() as *mut _, millis(timeout)) };
        check(rc, "rdma_resolve_addr")
    }

    /// Starts resolving the route to the resolved address: `ROUTE_RESOLVED` or `ROUTE_ERROR`.
    pub fn resolve_route(&self, timeout: Duration) -> Result<(), FabricError> {
        // SAFETY: a valid identifier.
        check(unsafe { sys::rdma_resolve_route(self.raw.as_ptr(), millis(timeout)) }, "rdma_resolve_route")
    }

    /// The device and port the identifier is bound to (after binding to a specific address,
    /// resolving one, or for a connect request's identifier).
    pub fn device(&self) -> Option<(String, u8)> {
        // SAFETY: `verbs` is null or librdmacm's open context of the bound device, which lives
        // as long as librdmacm; its device name is a NUL-terminated string of that device.
        unsafe {
            let id = self.raw.as_ref();
            if id.verbs.is_null() {
                return None;
            }
            let name = sys::ibv_get_device_name((*id.verbs).device);
            if name.is_null() {
                return None;
            }
            Some((std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned(), id.port_num))
        }
    }

    /// The attributes that take a queue pair to `state` for this connection (addresses, GIDs,
    /// PSNs, the peer's queue pair number, as the CM negotiated them).
    pub fn qp_attr(&self, state: QueuePairState) -> Result<QueuePairAttribute, FabricError> {
        let mut attr = MaybeUninit::<sys::ibv_qp_attr>::zeroed();
        let mut mask = 0;
        // SAFETY: a valid identifier; `attr` is a zeroed ibv_qp_attr whose state field says
        // which transition is asked for, and rdma_init_qp_attr fills it.
        unsafe {
            (*attr.as_mut_ptr()).qp_state = state as _;
            check(sys::rdma_init_qp_attr(self.raw.as_ptr(), attr.as_mut_ptr(), &mut mask), "rdma_init_qp_attr")?;
            Ok(QueuePairAttribute::from(attr.assume_init_ref(), mask))
        }
    }

    fn param(qp_num: u32, private_data: &[u8], depth: u8) -> sys::rdma_conn_param {
        sys::rdma_conn_param {
            private_data: private_data.as_ptr() as *const _,
            private_data_len: private_data.len().min(u8::MAX as usize) as u8,
            responder_resources: depth,
            initiator_depth: depth,
            flow_control: 0,
            retry_count: 7,
            rnr_retry_count: 7,
            srq: 0,
            qp_num,
        }
    }

    /// Asks the listener for a connection of the queue pair `qp_num` (in INIT), with
    /// `private_data` (at most [`MAX_CONNECT_DATA`] bytes) and `depth` READs in flight each way.
    pub fn connect(&self, qp_num: u32, private_data: &[u8], depth: u8) -> Result<(), FabricError> {
        debug_assert!(private_data.len() <= MAX_CONNECT_DATA);
        let mut p = Self::param(qp_num, private_data, depth);
        // SAFETY: a valid identifier; the parameters and their private data live across the call.
        check(unsafe { sys::rdma_connect(self.raw.as_ptr(), &mut p) }, "rdma_connect")
    }

    /// Accepts a connect request with the queue pair `qp_num` (already in RTS).
    pub fn accept(&self, qp_num: u32, private_data: &[u8], depth: u8) -> Result<(), FabricError> {
        let mut p = Self::param(qp_num, private_data, depth);
        // SAFETY: as for connect.
        check(unsafe { sys::rdma_accept(self.raw.as_ptr(), &mut p) }, "rdma_accept")
    }

    /// Refuses a connect request, saying why in `private_data`.
    pub fn reject(&self, private_data: &[u8]) -> Result<(), FabricError> {
        let len = private_data.len().min(u8::MAX as usize) as u8;
        // SAFETY: a valid identifier; the private data lives across the call.
        check(unsafe { sys::rdma_reject(self.raw.as_ptr(), private_data.as_ptr() as *const _, len) }, "rdma_reject")
    }

    /// Completes the connection on the active side (after `CONNECT_RESPONSE`, the queue pair in
    /// RTS): the passive side then gets `ESTABLISHED`.
    pub fn establish(&self) -> Result<(), FabricError> {
        // SAFETY: a valid identifier.
        check(unsafe { sys::rdma_establish(self.raw.as_ptr()) }, "rdma_establish")
    }

    /// Tells the peer the connection is over (it gets `DISCONNECTED`).
    pub fn disconnect(&self) -> Result<(), FabricError> {
        // SAFETY: a valid identifier.
        check(unsafe { sys::rdma_disconnect(self.raw.as_ptr()) }, "rdma_disconnect")
    }
}

/// Bytes of private data a connect request carries on InfiniBand and RoCE (the CM's REQ has 92,
/// of which rdma_cm's own header takes 36).
pub const MAX_CONNECT_DATA: usize = 56;
/// Bytes of private data a reject carries (an accept carries 196).
pub const MAX_REJECT_DATA: usize = 148;

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in (it is large enough and
            // suitably aligned for any socket address).
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
