//! An association with an NVMe/TCP controller: the admin queue, I/O queues, keep-alive, and
//! the commands an application uses (Identify, Read, Write, Flush, discovery).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use scalio_common::nvme::command::{
    cns, feature, log_page, AdminCommand, Connect, FabricsCommand, IoCommand, PropertySize,
};
use scalio_common::nvme::discovery::{decode_discovery_log, DiscoveryEntry, DiscoveryLogHeader, DISCOVERY_RECORD_LEN};
use scalio_common::nvme::fabrics::{
    connect_response_authreq, property, Cap, Cc, ConnectData, Csts, DISCOVERY_NQN, DYNAMIC_CNTLID,
};
use scalio_common::nvme::identify::{
    controller_type, decode_namespace_list, IdentifyController, IdentifyNamespace, IDENTIFY_LEN,
};
use scalio_common::nvme::sqe::{Sqe, StatusField};
use scalio_common::nvme::Digests;
use tokio::task::JoinHandle;

use super::error::NvmeError;
use super::host_queue::{check_status, Completion};
use super::queue::{Queue, QueueSetup};

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host_nqn: String,
    pub host_id: [u8; 16],
    /// I/O queues to create (each its own TCP connection); the controller may grant fewer.
    pub io_queues: u16,
    /// Commands in flight per I/O queue (the SQ gets one more entry).
    pub queue_depth: u16,
    /// Admin queue entries.
    pub admin_queue_entries: u16,
    /// Keep Alive Timeout asked for; `None` disables keep-alive.
    pub keep_alive_timeout: Option<Duration>,
    /// Send Keep Alive commands (every KATO/2). Off only to test a controller's expiry.
    pub send_keep_alive: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Ask the controller not to report SQ heads (then it may complete reads by C2HData alone).
    pub disable_sq_flow_control: bool,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        let host_id: [u8; 16] = rand::random();
        ConnectOptions {
            host_nqn: format!("nqn.2014-08.org.nvmexpress:uuid:{}", uuid_text(&host_id)),
            host_id,
            io_queues: 1,
            queue_depth: 128,
            admin_queue_entries: 32,
            keep_alive_timeout: Some(Duration::from_secs(10)),
            send_keep_alive: true,
            header_digest: false,
            data_digest: false,
            disable_sq_flow_control: true,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
        }
    }
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// What the host knows of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub nsid: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    pub block_size: u32,
    pub write_protected: bool,
}

/// A live association with a controller: admin queue, I/O queues, keep-alive.
pub struct NvmeTcpController {
    addr: SocketAddr,
    subnqn: String,
    cntlid: u16,
    cap: Cap,
    version: u32,
    identity: IdentifyController,
    max_transfer: u32,
    admin: Arc<Queue>,
    io: Vec<Arc<Queue>>,
    next_io: AtomicUsize,
    namespaces: Mutex<HashMap<u32, NamespaceInfo>>,
    keep_alive: Option<JoinHandle<()>>,
    options: ConnectOptions,
}

/// Largest transfer this host asks for in one command, whatever the controller allows.
const HOST_MAX_TRANSFER: u32 = 1 << 20;

impl NvmeTcpController {
    /// Connects to subsystem `subnqn` at `addr`: admin queue, controller enable, Identify,
    /// Number of Queues, then the I/O queues (none for the discovery subsystem).
    pub async fn connect(
        addr: SocketAddr,
        subnqn: &str,
        options: ConnectOptions,
    ) -> Result<NvmeTcpController, NvmeError> {
        if options.queue_depth == 0 || options.admin_queue_entries < 2 {
            return Err(NvmeError::InvalidArgument("queue depth must be at least 1".into()));
        }
        let digests = Digests { header: options.header_digest, data: options.data_digest };
        let setup = QueueSetup {
            qid: 0,
            depth: options.admin_queue_entries - 1,
            digests,
            connect_timeout: options.connect_timeout,
            max_transfer: HOST_MAX_TRANSFER,
        };
        let admin = Arc::new(Queue::open(addr, &setup).await.map_err(|e| connect_err(addr, e))?);
        let kato_ms = options.keep_alive_timeout.map_or(0, |d| d.as_millis().min(u128::from(u32::MAX)) as u32);
        let cntlid =
            fabrics_connect(&admin, &options, subnqn, 0, options.admin_queue_entries - 1, kato_ms, DYNAMIC_CNTLID)
                .await?;

        let timeout = options.command_timeout;
        let cap = Cap::from_u64(property_get(&admin, PropertySize::Eight, property::CAP, timeout).await?);
        let version = property_get(&admin, PropertySize::Four, property::VS, timeout).await? as u32;
        property_set(&admin, property::CC, Cc::enabled_nvm().to_u32(), timeout).await?;
        wait_ready(&admin, &cap, timeout).await?;

        let identity = IdentifyController::decode(&identify(&admin, cns::CONTROLLER, 0, timeout).await?);
        let max_transfer =
            identity.max_transfer(cap.mpsmin).map_or(HOST_MAX_TRANSFER, |m| m.min(u64::from(HOST_MAX_TRANSFER)) as u32);
        let discovery = subnqn == DISCOVERY_NQN || identity.cntrltype == controller_type::DISCOVERY;

        let mut ctrl = NvmeTcpController {
            addr,
            subnqn: subnqn.to_string(),
            cntlid,
            cap,
            version,
            identity,
            max_transfer,
            admin,
            io: Vec::new(),
            next_io: AtomicUsize::new(0),
            namespaces: Mutex::new(HashMap::new()),
            keep_alive: None,
            options: options.clone(),
        };
        if !discovery {
            ctrl.scan_namespaces().await?;
            ctrl.connect_io_queues(digests).await?;
        }
        if let (Some(kato), true) = (options.keep_alive_timeout, options.send_keep_alive) {
            ctrl.keep_alive = Some(tokio::spawn(keep_alive_loop(Arc::downgrade(&ctrl.admin), kato / 2, timeout)));
        }
        Ok(ctrl)
    }

    async fn scan_namespaces(&self) -> Result<(), NvmeError> {
        let timeout = self.options.command_timeout;
        let list = decode_namespace_list(&identify(&self.admin, cns::ACTIVE_NAMESPACES, 0, timeout).await?);
        for nsid in list {
            let info = identify_namespace(&self.admin, nsid, timeout).await?;
            self.namespaces.lock().insert(nsid, info);
        }
        Ok(())
    }

    async fn connect_io_queues(&mut self, digests: Digests) -> Result<(), NvmeError> {
        let timeout = self.options.command_timeout;
        let wanted = self.options.io_queues.max(1);
        let v = u32::from(wanted - 1);
        let cmd =
            AdminCommand::SetFeatures { fid: feature::NUMBER_OF_QUEUES, save: false, nsid: 0, cdw11: v | (v << 16) };
        let c = check_status(
            "Set Features (Number of Queues)",
            self.admin.submit("Set Features", cmd.to_sqe(), None, 0, timeout).await?,
        )?;
        let granted = ((c.cqe.dw0 & 0xffff).min(c.cqe.dw0 >> 16) + 1) as u16;
        let count = wanted.min(granted);
        // The SQ holds depth + 1 entries; MQES bounds that (0's based).
        let depth = self.options.queue_depth.min(self.cap.mqes.max(1));
        let io_in_capsule = self.identity.max_in_capsule_data();
        for qid in 1..=count {
            let setup = QueueSetup {
                qid,
                depth,
                digests,
                connect_timeout: self.options.connect_timeout,
                max_transfer: self.max_transfer,
            };
            let q = Queue::open(self.addr, &setup).await.map_err(|e| connect_err(self.addr, e))?;
            q.set_io_in_capsule(io_in_capsule);
            let q = Arc::new(q);
            fabrics_connect(&q, &self.options, &self.subnqn, qid, depth, 0, self.cntlid).await?;
            self.io.push(q);
        }
        Ok(())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn subnqn(&self) -> &str {
        &self.subnqn
    }

    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The VS property.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Identify Controller data read when connecting.
    pub fn identity(&self) -> &IdentifyController {
        &self.identity
    }

    /// Largest transfer of one command.
    pub fn max_transfer(&self) -> u32 {
        self.max_transfer
    }

    /// I/O queues connected.
    pub fn io_queue_count(&self) -> usize {
        self.io.len()
    }

    /// Whether the admin queue and every I/O queue are still connected.
    pub fn is_alive(&self) -> bool {
        self.admin.is_alive() && self.io.iter().all(|q| q.is_alive())
    }

    /// Active namespaces found when connecting.
    pub fn namespaces(&self) -> Vec<NamespaceInfo> {
        let mut v: Vec<_> = self.namespaces.lock().values().copied().collect();
        v.sort_by_key(|n| n.nsid);
        v
    }

    /// Namespace `nsid`, identified now if not known yet.
    pub async fn namespace(&self, nsid: u32) -> Result<NamespaceInfo, NvmeError> {
        if let Some(n) = self.namespaces.lock().get(&nsid) {
            return Ok(*n);
        }
        let n = identify_namespace(&self.admin, nsid, self.options.command_timeout).await?;
        self.namespaces.lock().insert(nsid, n);
        Ok(n)
    }

    /// Identify Controller, now.
    pub async fn identify_controller(&self) -> Result<IdentifyController, NvmeError> {
        Ok(IdentifyController::decode(&identify(&self.admin, cns::CONTROLLER, 0, self.options.command_timeout).await?))
    }

    /// Identify Namespace, now.
    pub async fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, NvmeError> {
        Ok(IdentifyNamespace::decode(&identify(&self.admin, cns::NAMESPACE, nsid, self.options.command_timeout).await?))
    }

    /// Active namespace IDs, now.
    pub async fn active_namespaces(&self) -> Result<Vec<u32>, NvmeError> {
        Ok(decode_namespace_list(
            &identify(&self.admin, cns::ACTIVE_NAMESPACES, 0, self.options.command_timeout).await?,
        ))
    }

    /// Get Log Page: `len` bytes (a multiple of 4, at most the largest transfer) from `offset`.
    pub async fn get_log_page(&self, lid: u8, nsid: u32, offset: u64, len: u32) -> Result<Vec<u8>, NvmeError> {
        if len == 0 || !len.is_multiple_of(4) || len > self.max_transfer {
            return Err(NvmeError::InvalidArgument(format!("log page length {len}")));
        }
        let cmd = AdminCommand::GetLogPage { nsid, lid, lsp: 0, rae: false, numd: len / 4 - 1, offset };
        let c = self.admin.submit("Get Log Page", cmd.to_sqe(), None, len, self.options.command_timeout).await?;
        Ok(check_status("Get Log Page", c)?.data)
    }

    /// Get Features: dword 0 of the completion.
    pub async fn get_features(&self, fid: u8) -> Result<u32, NvmeError> {
        let cmd = AdminCommand::GetFeatures { fid, sel: 0, nsid: 0, cdw11: 0 };
        let c = self.admin.submit("Get Features", cmd.to_sqe(), None, 0, self.options.command_timeout).await?;
        Ok(check_status("Get Features", c)?.cqe.dw0)
    }

    /// A Keep Alive command, now.
    pub async fn keep_alive(&self) -> Result<(), NvmeError> {
        let c = self
            .admin
            .submit("Keep Alive", AdminCommand::KeepAlive.to_sqe(), None, 0, self.options.command_timeout)
            .await?;
        check_status("Keep Alive", c).map(|_| ())
    }

    /// Reads a property (CAP, VS, CC, CSTS).
    pub async fn property_get(&self, offset: u32) -> Result<u64, NvmeError> {
        let size = if offset == property::CAP { PropertySize::Eight } else { PropertySize::Four };
        property_get(&self.admin, size, offset, self.options.command_timeout).await
    }

    fn io_queue(&self) -> Result<&Arc<Queue>, NvmeError> {
        if self.io.is_empty() {
            return Err(NvmeError::InvalidArgument("this controller has no I/O queues".into()));
        }
        let n = self.io.len();
        let start = self.next_io.fetch_add(1, Ordering::Relaxed);
        // Prefer a live queue.
        (0..n).map(|i| &self.io[(start + i) % n]).find(|q| q.is_alive()).ok_or(NvmeError::Disconnected)
    }

    /// Sends a raw command on an I/O queue (`None`) or the admin queue (`Some(0)`).
    pub async fn submit_raw(
        &self,
        queue: Option<u16>,
        sqe: Sqe,
        data_out: Option<Arc<[u8]>>,
        data_in: u32,
    ) -> Result<Completion, NvmeError> {
        let q = match queue {
            Some(0) => &self.admin,
            Some(qid) => self
                .io
                .iter()
                .find(|q| q.qid() == qid)
                .ok_or_else(|| NvmeError::InvalidArgument(format!("no I/O queue {qid}")))?,
            None => self.io_queue()?,
        };
        q.submit("command", sqe, data_out, data_in, self.options.command_timeout).await
    }

    fn check_range(info: &NamespaceInfo, lba: u64, count: u64) -> Result<(), NvmeError> {
        match lba.checked_add(count) {
            Some(end) if end <= info.blocks => Ok(()),
            _ => Err(NvmeError::OutOfRange { nsid: info.nsid, lba, count: count as u32, blocks: info.blocks }),
        }
    }

    /// Reads `count` logical blocks at `lba` (split into commands of at most the largest
    /// transfer, sent concurrently).
    pub async fn read(&self, nsid: u32, lba: u64, count: u32) -> Result<Vec<u8>, NvmeError> {
        let info = self.namespace(nsid).await?;
        if count == 0 {
            return Ok(Vec::new());
        }
        Self::check_range(&info, lba, u64::from(count))?;
        let per = (self.max_transfer / info.block_size).clamp(1, 65536);
        let mut parts = Vec::new();
        let mut done = 0u32;
        while done < count {
            let n = (count - done).min(per);
            parts.push(self.read_one(info, lba + u64::from(done), n));
            done += n;
        }
        let mut out = Vec::with_capacity(count as usize * info.block_size as usize);
        for part in join_all(parts).await {
            out.extend_from_slice(&part?);
        }
        Ok(out)
    }

    async fn read_one(&self, info: NamespaceInfo, lba: u64, count: u32) -> Result<Vec<u8>, NvmeError> {
        let cmd = IoCommand::Read { nsid: info.nsid, slba: lba, nlb: (count - 1) as u16 };
        let q = self.io_queue()?;
        let c = q.submit("Read", cmd.to_sqe(), None, count * info.block_size, self.options.command_timeout).await?;
        Ok(check_status("Read", c)?.data)
    }

    /// Writes `data` (whole logical blocks) at `lba`.
    pub async fn write(&self, nsid: u32, lba: u64, data: &[u8]) -> Result<(), NvmeError> {
        let info = self.namespace(nsid).await?;
        let bs = info.block_size as usize;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(NvmeError::InvalidArgument(format!(
                "{} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let count = (data.len() / bs) as u64;
        Self::check_range(&info, lba, count)?;
        let per = (self.max_transfer as usize / bs).clamp(1, 65536) * bs;
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(per).enumerate() {
            let at = lba + (i * per / bs) as u64;
            let cmd = IoCommand::Write { nsid, slba: at, nlb: (chunk.len() / bs - 1) as u16 };
            let chunk: Arc<[u8]> = Arc::from(chunk);
            parts.push(async move {
                let q = self.io_queue()?;
                let c = q.submit("Write", cmd.to_sqe(), Some(chunk), 0, self.options.command_timeout).await?;
                check_status("Write", c).map(|_| ())
            });
        }
        for r in join_all(parts).await {
            r?;
        }
        Ok(())
    }

    /// Flushes namespace `nsid` (0xFFFFFFFF: all).
    pub async fn flush(&self, nsid: u32) -> Result<(), NvmeError> {
        let q = self.io_queue()?;
        let c = q.submit("Flush", IoCommand::Flush { nsid }.to_sqe(), None, 0, self.options.command_timeout).await?;
        check_status("Flush", c).map(|_| ())
    }

    /// Ends the association: Disconnect on each I/O queue, a normal shutdown of the controller
    /// (CC.SHN, wait for CSTS.SHST), then the connections close.
    pub async fn disconnect(mut self) -> Result<(), NvmeError> {
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
        let timeout = self.options.command_timeout;
        let mut first_error = None;
        for q in std::mem::take(&mut self.io) {
            let cmd = FabricsCommand::Disconnect { recfmt: 0 };
            let r = q
                .submit("Disconnect", cmd.to_sqe(), None, 0, timeout)
                .await
                .and_then(|c| check_status("Disconnect", c));
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
            q.close();
        }
        let cc = Cc { shn: 1, ..Cc::enabled_nvm() };
        match property_set(&self.admin, property::CC, cc.to_u32(), timeout).await {
            Ok(()) => {
                let deadline = Instant::now() + Duration::from_millis(500 * u64::from(self.cap.to.max(1)));
                loop {
                    let csts = Csts::from_u32(
                        property_get(&self.admin, PropertySize::Four, property::CSTS, timeout).await? as u32,
                    );
                    if csts.shst == Csts::SHST_COMPLETE || Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        self.admin.close();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for NvmeTcpController {
    fn drop(&mut self) {
        if let Some(k) = self.keep_alive.take() {
            k.abort();
        }
        for q in &self.io {
            q.close();
        }
        self.admin.close();
    }
}

/// Waits for all futures, polling them concurrently on the current task.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, r) in futures.iter_mut().zip(results.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *r = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

fn connect_err(addr: SocketAddr, e: NvmeError) -> NvmeError {
    match e {
        NvmeError::Io(reason) => NvmeError::Connect { addr: addr.to_string(), reason },
        other => other,
    }
}

async fn fabrics_connect(
    q: &Queue,
    options: &ConnectOptions,
    subnqn: &str,
    qid: u16,
    sqsize: u16,
    kato_ms: u32,
    cntlid: u16,
) -> Result<u16, NvmeError> {
    let cattr = if options.disable_sq_flow_control { Connect::DISABLE_SQ_FLOW_CONTROL } else { 0 };
    let cmd = FabricsCommand::Connect(Connect { recfmt: 0, qid, sqsize, cattr, kato: kato_ms });
    let data =
        ConnectData { hostid: options.host_id, cntlid, subnqn: subnqn.to_string(), hostnqn: options.host_nqn.clone() };
    let data: Arc<[u8]> = Arc::from(&data.encode()[..]);
    let c = q.submit("Connect", cmd.to_sqe(), Some(data), 0, options.command_timeout).await?;
    if !c.cqe.status.is_success() {
        return Err(NvmeError::ConnectRejected {
            subnqn: subnqn.to_string(),
            status: c.cqe.status,
            detail: connect_failure_detail(c.cqe.status, c.cqe.dw0),
        });
    }
    if connect_response_authreq(c.cqe.dw0) != 0 {
        return Err(NvmeError::AuthenticationRequired);
    }
    q.set_sq_flow_control(c.cqe.sqhd != 0xFFFF);
    Ok(c.cqe.dw0 as u16)
}

/// Names the offending parameter of a Connect Invalid Parameters completion.
fn connect_failure_detail(status: StatusField, dw0: u32) -> String {
    if status.code() != (1, scalio_common::nvme::status::command_specific::CONNECT_INVALID_PARAMETERS) {
        return String::new();
    }
    let in_data = dw0 & (1 << 16) != 0;
    let offset = dw0 as u16;
    let field = match (in_data, offset) {
        (true, ConnectData::OFFSET_HOSTID) => "host identifier",
        (true, ConnectData::OFFSET_CNTLID) => "controller ID",
        (true, ConnectData::OFFSET_SUBNQN) => "subsystem NQN",
        (true, ConnectData::OFFSET_HOSTNQN) => "host NQN",
        (false, Connect::OFFSET_QID) => "queue ID",
        (false, Connect::OFFSET_SQSIZE) => "SQ size",
        (false, Connect::OFFSET_KATO) => "keep alive timeout",
        _ => "unknown field",
    };
    format!(": invalid {field} (byte {offset} of the {})", if in_data { "Connect data" } else { "command" })
}

async fn property_get(q: &Queue, size: PropertySize, offset: u32, timeout: Duration) -> Result<u64, NvmeError> {
    let cmd = FabricsCommand::PropertyGet { size, offset };
    let c = check_status("Property Get", q.submit("Property Get", cmd.to_sqe(), None, 0, timeout).await?)?;
    Ok(match size {
        PropertySize::Eight => c.cqe.result64(),
        PropertySize::Four => u64::from(c.cqe.dw0),
    })
}

async fn property_set(q: &Queue, offset: u32, value: u32, timeout: Duration) -> Result<(), NvmeError> {
    let cmd = FabricsCommand::PropertySet { size: PropertySize::Four, offset, value: u64::from(value) };
    check_status("Property Set", q.submit("Property Set", cmd.to_sqe(), None, 0, timeout).await?).map(|_| ())
}

/// Polls CSTS until RDY, for at most CAP.TO (500 ms units).
async fn wait_ready(q: &Queue, cap: &Cap, timeout: Duration) -> Result<(), NvmeError> {
    let limit = Duration::from_millis(500 * u64::from(cap.to.max(1)));
    let deadline = Instant::now() + limit;
    loop {
        let csts = Csts::from_u32(property_get(q, PropertySize::Four, property::CSTS, timeout).await? as u32);
        if csts.cfs {
            return Err(NvmeError::ControllerFatal);
        }
        if csts.ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NvmeError::NotReady(limit));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn identify(q: &Queue, cns_value: u8, nsid: u32, timeout: Duration) -> Result<Vec<u8>, NvmeError> {
    let cmd = AdminCommand::Identify { cns: cns_value, cntid: 0, nsid, csi: 0 };
    let c = q.submit("Identify", cmd.to_sqe(), None, IDENTIFY_LEN as u32, timeout).await?;
    Ok(check_status("Identify", c)?.data)
}

async fn identify_namespace(q: &Queue, nsid: u32, timeout: Duration) -> Result<NamespaceInfo, NvmeError> {
    let id = IdentifyNamespace::decode(&identify(q, cns::NAMESPACE, nsid, timeout).await?);
    if id.nsze == 0 {
        return Err(NvmeError::NoSuchNamespace(nsid));
    }
    let block_size =
        id.block_size().ok_or_else(|| NvmeError::Protocol(format!("namespace {nsid} has no usable LBA format")))?;
    Ok(NamespaceInfo {
        nsid,
        blocks: id.nsze,
        block_size,
        write_protected: id.nsattr & IdentifyNamespace::NSATTR_WRITE_PROTECTED != 0,
    })
}

async fn keep_alive_loop(admin: std::sync::Weak<Queue>, every: Duration, timeout: Duration) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(q) = admin.upgrade() else { return };
        if !q.is_alive() {
            return;
        }
        if let Err(e) = q.submit("Keep Alive", AdminCommand::KeepAlive.to_sqe(), None, 0, timeout).await {
            tracing::warn!("nvme keep alive failed: {e}");
        }
    }
}

/// Reads the discovery log page of the discovery controller at `addr`.
pub async fn discover(addr: SocketAddr, options: ConnectOptions) -> Result<Vec<DiscoveryEntry>, NvmeError> {
    let ctrl = NvmeTcpController::connect(addr, DISCOVERY_NQN, options).await?;
    let result = read_discovery_log(&ctrl).await;
    let _ = ctrl.disconnect().await;
    result
}

async fn read_discovery_log(ctrl: &NvmeTcpController) -> Result<Vec<DiscoveryEntry>, NvmeError> {
    const MAX_RECORDS: u64 = 1024;
    let rec = DISCOVERY_RECORD_LEN as u32;
    for _ in 0..4 {
        let header = DiscoveryLogHeader::decode(&ctrl.get_log_page(log_page::DISCOVERY, 0, 0, rec).await?);
        let records = header.numrec.min(MAX_RECORDS);
        let mut log = Vec::with_capacity((records as usize + 1) * DISCOVERY_RECORD_LEN);
        let total = (records + 1) * u64::from(rec);
        let chunk = u64::from((ctrl.max_transfer() / rec).max(1) * rec);
        let mut offset = 0u64;
        while offset < total {
            let n = (total - offset).min(chunk) as u32;
            log.extend_from_slice(&ctrl.get_log_page(log_page::DISCOVERY, 0, offset, n).await?);
            offset += u64::from(n);
        }
        let (again, entries) = decode_discovery_log(&log);
        // The log changed while it was read in pieces: read it again.
        if again.genctr == header.genctr {
            return Ok(entries);
        }
    }
    Err(NvmeError::Protocol("the discovery log kept changing while being read".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_has_the_canonical_form() {
        let t = uuid_text(&[0xab; 16]);
        assert_eq!(t.len(), 36);
        assert_eq!(t.matches('-').count(), 4);
    }

    #[test]
    fn connect_failures_name_the_parameter() {
        let st =
            StatusField::command_specific(scalio_common::nvme::status::command_specific::CONNECT_INVALID_PARAMETERS);
        let d = connect_failure_detail(st, (1 << 16) | 256);
        assert!(d.contains("subsystem NQN"), "{d}");
        let d = connect_failure_detail(st, 42);
        assert!(d.contains("queue ID"), "{d}");
        assert_eq!(connect_failure_detail(StatusField::generic(2), 0), "");
    }
}
