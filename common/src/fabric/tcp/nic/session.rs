//! One connection's protocol engine on the NIC, sans-IO: fed the bytes received so far, it
//! executes every complete request against the [`RegionTable`], hands RPCs to the service, and
//! appends the responses to an output buffer. The event loop around it only moves bytes.

use super::super::wire::{self, ChainStatus, ClientFrame, WireError, WrFlags};
use super::NicConfig;
use crate::fabric::CloseReason;
use crate::fabric::{Access, IncomingRpc, PeerId, RegionTable, RemoteAccessError, ReplySink, Responder, RpcService};
use crate::fabric::{RemoteAddr, MAX_TRANSFER};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Why the NIC closes a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("malformed HELLO: {0}")]
    BadHandshake(WireError),
    #[error("client speaks protocol version {0}, the NIC speaks {ours}", ours = wire::VERSION)]
    UnsupportedVersion(u16),
    #[error("malformed frame: {0}")]
    Malformed(#[from] WireError),
    #[error("chain {open} is still open but a request of chain {got} (or with other flags) arrived")]
    ChainMismatch { open: u32, got: u32 },
    #[error("READ in an unsignaled chain")]
    UnsignaledRead,
    #[error("RPC inside chain {0}")]
    RpcInsideChain(u32),
    /// An RPC beyond the credits granted in the HELLO.
    #[error("an RPC beyond the {credits} credits granted")]
    NoCredit { credits: u32 },
    /// An RPC larger than the largest message granted in the HELLO.
    #[error("an RPC of {len} bytes, over the {max} granted")]
    MessageTooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The HELLO did not carry the NIC's shared secret.
    #[error("the HELLO did not carry the shared secret")]
    Unauthenticated,
    /// Not the client's fault: request `index` of chain `chain` failed, which puts the queue
    /// pair into the error state (as on RC): nothing after it executes, and the connection ends
    /// after the chain's completion.
    #[error("request {index} of chain {chain} failed ({error}): the queue pair is in the error state")]
    QueuePairError { chain: u32, index: u32, error: RemoteAccessError },
}

impl Violation {
    /// Whether the client broke the protocol (as opposed to a request failing on the NIC).
    pub fn is_protocol_error(&self) -> bool {
        !matches!(self, Violation::QueuePairError { .. } | Violation::Unauthenticated)
    }

    fn code(&self) -> CloseReason {
        match self {
            Violation::BadHandshake(_) => CloseReason::BadHandshake,
            Violation::UnsupportedVersion(_) => CloseReason::UnsupportedVersion,
            Violation::QueuePairError { .. } => CloseReason::QueuePairError,
            Violation::Unauthenticated => CloseReason::Unauthenticated,
            _ => CloseReason::ProtocolViolation,
        }
    }
}

/// What the session did, counted locally and added to the NIC's counters in batches.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub rpcs: u64,
    pub remote_errors: u64,
}

/// What a session needs from its NIC.
pub struct Env<'a> {
    pub regions: &'a RegionTable,
    /// Admission: the shared secret and the per-connection limits.
    pub config: &'a NicConfig,
    pub service: &'a dyn RpcService,
    /// Where this connection's RPC responses go.
    pub sink: &'a Arc<dyn ReplySink>,
    /// This connection, as the RPC service knows it.
    pub peer: PeerId,
    /// RPCs of this connection answered so far (read before `process`: a client can only have
    /// seen fewer replies, so credits are never counted short).
    pub answered: u64,
    pub tally: &'a mut Tally,
}

/// The chain being executed.
struct OpenChain {
    id: u32,
    unsignaled: bool,
    /// Where its CHAIN_DONE header is reserved in the output (signaled chains only).
    header_at: usize,
    /// Index of the next request.
    next: u32,
    read_bytes: usize,
    failed: Option<(u32, RemoteAccessError)>,
}

/// The protocol state of one connection.
#[derive(Default)]
pub struct Session {
    handshaken: bool,
    chain: Option<OpenChain>,
    /// A chain failed: the queue pair is in the error state.
    errored: Option<Violation>,
    /// RPCs received so far (with `Env::answered`: the RPCs holding credits).
    rpcs_received: u64,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Executes the complete frames at the start of `input`, appending responses to `out`, and
    /// returns how many bytes it consumed. It stops early, between requests, once the sendable
    /// part of `out` reaches `out_limit` bytes (backpressure: the rest waits until the output
    /// drains; a chain's own output is bounded by [`wire::MAX_CHAIN_READ`] instead). On a violation it appends an
    /// ERROR frame to `out` and returns the violation: the connection must then be closed.
    pub fn process(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        out_limit: usize,
        env: &mut Env<'_>,
    ) -> Result<usize, Violation> {
        let r = self.process_frames(input, out, out_limit, env);
        if let Err(v) = &r {
            self.abort(out, v);
        }
        r
    }

    fn process_frames(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        out_limit: usize,
        env: &mut Env<'_>,
    ) -> Result<usize, Violation> {
        let mut at = 0;
        if !self.handshaken {
            match wire::decode_hello(input).map_err(Violation::BadHandshake)? {
                None => return Ok(0),
                Some((hello, n)) if hello.version == wire::VERSION => {
                    if let Some(secret) = &env.config.secret {
                        if !secret.matches(hello.body) {
                            return Err(Violation::Unauthenticated);
                        }
                    }
                    wire::encode_hello(out, wire::VERSION, &env.config.grant().encode());
                    self.handshaken = true;
                    at = n;
                }
                Some((hello, _)) => return Err(Violation::UnsupportedVersion(hello.version)),
            }
        }
        // The limit counts only output that can be sent: an open chain's must wait for its end.
        while self.flush_limit(out.len()) < out_limit {
            let Some((frame, n)) = wire::decode_client_frame(&input[at..])? else { break };
            self.execute(frame, out, env)?;
            at += n;
            if let Some(v) = self.errored.take() {
                return Err(v);
            }
        }
        Ok(at)
    }

    /// The connection ended; `leftover` bytes of an incomplete frame were never executed.
    /// Returns the violation if the peer left in the middle of a frame or a chain.
    pub fn finish(&mut self, leftover: usize) -> Result<(), Violation> {
        if leftover > 0 || self.chain.is_some() {
            return Err(Violation::Truncated);
        }
        Ok(())
    }

    /// Where the flushable output ends: the reserved header of an open signaled chain must not
    /// go out before the chain completes.
    pub fn flush_limit(&self, out_len: usize) -> usize {
        match &self.chain {
            Some(c) if !c.unsignaled => c.header_at,
            _ => out_len,
        }
    }

    /// Whether a chain is open: RPC responses must not be appended in the middle of it.
    pub fn in_chain(&self) -> bool {
        self.chain.is_some()
    }

    /// The output buffer dropped its first `n` (already sent) bytes.
    pub fn shift_output(&mut self, n: usize) {
        if let Some(c) = &mut self.chain {
            c.header_at -= n;
        }
    }

    fn abort(&mut self, out: &mut Vec<u8>, v: &Violation) {
        self.end(out, v.code(), &v.to_string());
    }

    /// Appends an ERROR frame saying the NIC shuts down.
    pub fn shutdown(&mut self, out: &mut Vec<u8>) {
        self.end(out, CloseReason::Shutdown, "the NIC is shutting down");
    }

    /// Drops the open chain's output and appends an ERROR frame: the connection ends here.
    fn end(&mut self, out: &mut Vec<u8>, code: CloseReason, message: &str) {
        if let Some(c) = self.chain.take() {
            if !c.unsignaled {
                out.truncate(c.header_at);
            }
        }
        wire::encode_error(out, code, message);
    }

    fn execute(&mut self, frame: ClientFrame<'_>, out: &mut Vec<u8>, env: &mut Env<'_>) -> Result<(), Violation> {
        match frame {
            ClientFrame::Read { chain, flags, remote, len } => {
                let c = self.chain_for(chain, flags, out)?;
                if c.unsignaled {
                    return Err(Violation::UnsignaledRead);
                }
                if c.failed.is_none() {
                    let limit = env.config.max_chain_read;
                    match read_into(env.regions, env.peer, remote, len as usize, c.read_bytes, limit, out) {
                        Ok(()) => {
                            c.read_bytes += len as usize;
                            env.tally.reads += 1;
                            env.tally.bytes_read += u64::from(len);
                        }
                        Err(e) => c.fail(e, out, env.tally),
                    }
                }
                self.step(flags, out);
            }
            ClientFrame::Write { chain, flags, remote, data } => {
                let c = self.chain_for(chain, flags, out)?;
                if c.failed.is_none() {
                    match env.regions.write_for(Some(env.peer), remote, data) {
                        Ok(()) => {
                            env.tally.writes += 1;
                            env.tally.bytes_written += data.len() as u64;
                        }
                        Err(e) => c.fail(e, out, env.tally),
                    }
                }
                self.step(flags, out);
            }
            ClientFrame::Rpc { id, payload } => {
                if let Some(c) = &self.chain {
                    return Err(Violation::RpcInsideChain(c.id));
                }
                if payload.len() > env.config.max_message {
                    return Err(Violation::MessageTooLarge { len: payload.len(), max: env.config.max_message });
                }
                let credits = env.config.rpc_credits;
                if self.rpcs_received.saturating_sub(env.answered) >= u64::from(credits) {
                    return Err(Violation::NoCredit { credits });
                }
                self.rpcs_received += 1;
                env.tally.rpcs += 1;
                let responder = Responder::new(env.sink.clone(), id);
                let rpc = IncomingRpc { payload: payload.to_vec(), peer: env.peer, responder };
                // A panicking service must not take the NIC thread (and its other connections)
                // down; the dropped responder answers the client with an empty response.
                let service = env.service;
                if std::panic::catch_unwind(AssertUnwindSafe(|| service.handle(rpc))).is_err() {
                    tracing::error!("the RPC service panicked");
                }
            }
        }
        Ok(())
    }

    /// The open chain, opened by this request if none is; a request that does not belong to
    /// the open chain is a violation.
    fn chain_for(&mut self, id: u32, flags: WrFlags, out: &mut Vec<u8>) -> Result<&mut OpenChain, Violation> {
        let unsignaled = flags.is_unsignaled();
        match &self.chain {
            Some(c) if c.id != id || c.unsignaled != unsignaled => {
                return Err(Violation::ChainMismatch { open: c.id, got: id })
            }
            Some(_) => {}
            None => {
                let header_at = out.len();
                if !unsignaled {
                    out.resize(header_at + wire::CHAIN_DONE_HEADER_LEN, 0);
                }
                self.chain = Some(OpenChain { id, unsignaled, header_at, next: 0, read_bytes: 0, failed: None });
            }
        }
        Ok(self.chain.as_mut().expect("chain opened above"))
    }

    /// Counts the request just handled, and completes the chain if it was the last one.
    fn step(&mut self, flags: WrFlags, out: &mut Vec<u8>) {
        let c = self.chain.as_mut().expect("a request runs inside a chain");
        c.next = c.next.saturating_add(1);
        if !flags.is_last() {
            return;
        }
        let c = self.chain.take().expect("checked above");
        let status = match c.failed {
            None => ChainStatus::Ok,
            Some((index, error)) => {
                self.errored = Some(Violation::QueuePairError { chain: c.id, index, error });
                ChainStatus::Failed { index, error }
            }
        };
        if !c.unsignaled {
            let data_len = out.len() - c.header_at - wire::CHAIN_DONE_HEADER_LEN;
            let header = &mut out[c.header_at..c.header_at + wire::CHAIN_DONE_HEADER_LEN];
            wire::write_chain_done_header(header, c.id, false, status, data_len as u32);
        } else if c.failed.is_some() {
            wire::encode_chain_done(out, c.id, true, status, &[]);
        }
    }
}

impl OpenChain {
    /// The current request failed: drop the chain's READ data and skip the rest of it.
    fn fail(&mut self, e: RemoteAccessError, out: &mut Vec<u8>, tally: &mut Tally) {
        self.failed = Some((self.next, e));
        if !self.unsignaled {
            out.truncate(self.header_at + wire::CHAIN_DONE_HEADER_LEN);
        }
        tally.remote_errors += 1;
    }
}

/// Serves a READ: checks it and copies the region's bytes straight onto the end of `out`. A
/// chain's READ data waits in `out` until the chain ends, so it is bounded by `chain_limit`
/// (`NicConfig::max_chain_read`, which `TcpNic::bind` holds to the wire's `MAX_CHAIN_READ`).
fn read_into(
    regions: &RegionTable,
    peer: PeerId,
    remote: RemoteAddr,
    len: usize,
    chain_read: usize,
    chain_limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), RemoteAccessError> {
    if len > MAX_TRANSFER || chain_read + len > chain_limit {
        return Err(RemoteAccessError::TooLarge);
    }
    let (region, offset) = regions.resolve_for(Some(peer), remote, len, Access::READ)?;
    let at = out.len();
    out.resize(at + len, 0);
    let r = region.read(offset, &mut out[at..]);
    if r.is_err() {
        out.truncate(at);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::tcp::wire::ServerFrame;
    use crate::fabric::MemoryRegion;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Recorder {
        replies: Mutex<Vec<(u64, Vec<u8>)>>,
    }
    impl ReplySink for Recorder {
        fn reply(&self, id: u64, payload: &[u8]) {
            self.replies.lock().push((id, payload.to_vec()));
        }
    }

    struct Fixture {
        regions: RegionTable,
        region: Arc<MemoryRegion>,
        desc: crate::fabric::RegionDesc,
        sink: Arc<Recorder>,
        tally: Tally,
        session: Session,
        out: Vec<u8>,
        config: NicConfig,
    }

    impl Fixture {
        fn new() -> Fixture {
            let regions = RegionTable::new();
            let region = Arc::new(MemoryRegion::new(64));
            let desc = regions.register(region.clone(), Access::READ_WRITE);
            Fixture {
                regions,
                region,
                desc,
                sink: Arc::default(),
                tally: Tally::default(),
                session: Session::new(),
                out: Vec::new(),
                config: NicConfig::default(),
            }
        }

        fn feed(&mut self, input: &[u8]) -> Result<usize, Violation> {
            let sink: Arc<dyn ReplySink> = self.sink.clone();
            let service = |rpc: IncomingRpc| rpc.responder.reply(&rpc.payload);
            let mut env = Env {
                regions: &self.regions,
                config: &self.config,
                service: &service,
                sink: &sink,
                peer: PeerId(1),
                answered: self.sink.replies.lock().len() as u64,
                tally: &mut self.tally,
            };
            self.session.process(input, &mut self.out, usize::MAX, &mut env)
        }

        fn output_frames(&self) -> Vec<String> {
            let mut at = wire::SERVER_HELLO_LEN;
            let mut frames = Vec::new();
            while let Some((f, n)) = wire::decode_server_frame(&self.out[at..]).unwrap() {
                frames.push(format!("{f:?}"));
                at += n;
            }
            assert_eq!(at, self.out.len());
            frames
        }
    }

    proptest::proptest! {
        /// Whatever a client sends after its HELLO, cut into whatever pieces, the session consumes
        /// it or ends with a violation, and never panics. Frames start with a client opcode
        /// (READ 1, WRITE 2, RPC 3) followed by arbitrary bytes; the fuzz target
        /// `softnic_session` (`fuzz/`) runs the same harness on unstructured input.
        #[test]
        fn arbitrary_frames_after_hello_never_panic(
            frames in proptest::collection::vec((1u8..=3, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48)), 0..10),
            cut in 1usize..32,
        ) {
            let mut f = Fixture::new();
            let mut input = Vec::new();
            wire::encode_hello(&mut input, wire::VERSION, &[]);
            let mut stream = Vec::new();
            for (op, rest) in frames {
                stream.push(op);
                stream.extend(rest);
            }
            let mut consumed = 0;
            for piece in stream.chunks(cut) {
                input.extend_from_slice(piece);
                match f.feed(&input[consumed..]) {
                    Ok(n) => consumed += n,
                    Err(_) => break,
                }
                proptest::prop_assert!(consumed <= input.len());
            }
        }
    }

    fn hello() -> Vec<u8> {
        let mut b = Vec::new();
        wire::encode_hello(&mut b, wire::VERSION, &[]);
        b
    }

    fn server_hello(config: &NicConfig) -> Vec<u8> {
        let mut b = Vec::new();
        wire::encode_hello(&mut b, wire::VERSION, &config.grant().encode());
        b
    }

    #[test]
    fn chain_reads_follow_writes_and_complete_once() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        wire::encode_write(&mut input, 7, WrFlags::new(false, false), d.at(0), b"abcd");
        wire::encode_read(&mut input, 7, WrFlags::new(false, false), d.at(1), 2);
        wire::encode_read(&mut input, 7, WrFlags::new(true, false), d.at(0), 1);
        // An unsignaled chain that succeeds says nothing.
        wire::encode_write(&mut input, 0, WrFlags::new(true, true), d.at(8), b"z");
        assert_eq!(f.feed(&input), Ok(input.len()));
        assert_eq!(&f.out[..wire::SERVER_HELLO_LEN], &server_hello(&f.config)[..]);
        let want = ServerFrame::ChainDone { chain: 7, unsignaled: false, status: ChainStatus::Ok, data: b"bca" };
        assert_eq!(f.output_frames(), vec![format!("{want:?}")]);
        assert_eq!(f.region.load_u8(8), b'z');
        assert_eq!(f.tally, Tally { reads: 2, writes: 2, bytes_read: 3, bytes_written: 5, ..Tally::default() });
    }

    #[test]
    fn a_failure_drops_the_chain_data_skips_the_rest_and_ends_the_queue_pair() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        wire::encode_read(&mut input, 3, WrFlags::new(false, false), d.at(0), 8);
        wire::encode_read(&mut input, 3, WrFlags::new(false, false), d.at(60), 8);
        wire::encode_write(&mut input, 3, WrFlags::new(true, false), d.at(0), b"x");
        // Posted behind the failed chain: never executed (the RC error state).
        wire::encode_write(&mut input, 0, WrFlags::new(true, true), d.at(8), b"y");
        let v = Violation::QueuePairError { chain: 3, index: 1, error: RemoteAccessError::OutOfBounds };
        assert_eq!(f.feed(&input), Err(v.clone()));
        assert!(!v.is_protocol_error());
        let failed = ServerFrame::ChainDone {
            chain: 3,
            unsignaled: false,
            status: ChainStatus::Failed { index: 1, error: RemoteAccessError::OutOfBounds },
            data: &[],
        };
        let end = ServerFrame::Error { code: CloseReason::QueuePairError, message: &v.to_string() };
        assert_eq!(f.output_frames(), vec![format!("{failed:?}"), format!("{end:?}")]);
        assert_eq!(f.region.load_u8(0), 0, "the WRITE after the failure in its chain did not execute");
        assert_eq!(f.region.load_u8(8), 0, "the chain posted after the failed one did not execute");
        assert_eq!(f.tally.remote_errors, 1);
    }

    #[test]
    fn a_failed_unsignaled_chain_reports_and_ends_the_queue_pair() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        wire::encode_write(&mut input, 0, WrFlags::new(true, true), d.at(64), b"x");
        wire::encode_write(&mut input, 0, WrFlags::new(true, true), d.at(8), b"y");
        let v = Violation::QueuePairError { chain: 0, index: 0, error: RemoteAccessError::OutOfBounds };
        assert_eq!(f.feed(&input), Err(v.clone()));
        let failed = ServerFrame::ChainDone {
            chain: 0,
            unsignaled: true,
            status: ChainStatus::Failed { index: 0, error: RemoteAccessError::OutOfBounds },
            data: &[],
        };
        let end = ServerFrame::Error { code: CloseReason::QueuePairError, message: &v.to_string() };
        assert_eq!(f.output_frames(), vec![format!("{failed:?}"), format!("{end:?}")]);
        assert_eq!(f.region.load_u8(8), 0);
    }

    #[test]
    fn input_fed_a_byte_at_a_time_gives_the_same_output() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        for i in 0..5u32 {
            wire::encode_write(&mut input, i, WrFlags::new(false, false), d.at(u64::from(i)), &[i as u8 + 1; 3]);
            wire::encode_read(&mut input, i, WrFlags::new(true, false), d.at(0), 8);
            wire::encode_rpc(&mut input, u64::from(i), &[i as u8]);
        }
        assert_eq!(f.feed(&input), Ok(input.len()));
        let whole_out = std::mem::take(&mut f.out);
        let whole_replies = std::mem::take(&mut *f.sink.replies.lock());
        assert_eq!(whole_replies.len(), 5);

        // Again on a fresh session over zeroed memory, as a socket delivering one byte per read.
        f.region.write(0, &[0; 64]).unwrap();
        f.session = Session::new();
        let mut buf = Vec::new();
        for b in &input {
            buf.push(*b);
            let n = f.feed(&buf).unwrap();
            buf.drain(..n);
        }
        assert!(buf.is_empty());
        assert_eq!(f.out, whole_out);
        assert_eq!(*f.sink.replies.lock(), whole_replies);
    }

    #[test]
    fn processing_stops_at_the_output_limit_and_resumes() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        for i in 0..10 {
            wire::encode_read(&mut input, i, WrFlags::LAST, d.at(0), 64);
        }
        let sink: Arc<dyn ReplySink> = f.sink.clone();
        let service = |rpc: IncomingRpc| drop(rpc);
        let mut env = Env {
            regions: &f.regions,
            config: &f.config,
            service: &service,
            sink: &sink,
            peer: PeerId(1),
            answered: 0,
            tally: &mut f.tally,
        };
        // Room for about three completions: the rest stays unconsumed.
        let limit = wire::SERVER_HELLO_LEN + 3 * (wire::CHAIN_DONE_HEADER_LEN + 64);
        let n = f.session.process(&input, &mut f.out, limit, &mut env).unwrap();
        assert_eq!(n, wire::HELLO_LEN + 3 * wire::WR_HEADER_LEN);
        assert_eq!(env.tally.reads, 3);
        // The client took the output: the rest runs.
        f.out.clear();
        let m = f.session.process(&input[n..], &mut f.out, usize::MAX, &mut env).unwrap();
        assert_eq!(n + m, input.len());
        assert_eq!(env.tally.reads, 10);
    }

    #[test]
    fn a_chain_is_never_held_back_by_the_output_limit() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        f.feed(&input).unwrap();
        f.out.clear();
        input.clear();
        wire::encode_read(&mut input, 1, WrFlags::new(false, false), d.at(0), 64);
        wire::encode_read(&mut input, 1, WrFlags::new(false, false), d.at(0), 64);
        wire::encode_read(&mut input, 1, WrFlags::new(true, false), d.at(0), 64);
        wire::encode_read(&mut input, 2, WrFlags::new(true, false), d.at(0), 64);
        let sink: Arc<dyn ReplySink> = f.sink.clone();
        let service = |rpc: IncomingRpc| drop(rpc);
        let mut env = Env {
            regions: &f.regions,
            config: &f.config,
            service: &service,
            sink: &sink,
            peer: PeerId(1),
            answered: 0,
            tally: &mut f.tally,
        };
        // Its own READ data does not count: the chain runs to its end, then processing stops.
        let n = f.session.process(&input, &mut f.out, 1, &mut env).unwrap();
        assert_eq!(n, 3 * wire::WR_HEADER_LEN);
        assert!(!f.session.in_chain());
    }

    #[test]
    fn violations_append_an_error_frame() {
        let cases: Vec<(Vec<u8>, CloseReason)> = vec![
            (b"GET / HTTP/1.1\r\n".to_vec(), CloseReason::BadHandshake),
            (
                {
                    let mut b = Vec::new();
                    wire::encode_hello(&mut b, wire::VERSION + 1, &[]);
                    b
                },
                CloseReason::UnsupportedVersion,
            ),
            ([hello(), vec![0x55; 30]].concat(), CloseReason::ProtocolViolation),
        ];
        for (input, code) in cases {
            let mut f = Fixture::new();
            assert!(f.feed(&input).is_err());
            let at = if code == CloseReason::ProtocolViolation { wire::SERVER_HELLO_LEN } else { 0 };
            let (frame, _) = wire::decode_server_frame(&f.out[at..]).unwrap().unwrap();
            assert!(matches!(frame, ServerFrame::Error { code: c, .. } if c == code), "{frame:?}");
        }
    }

    #[test]
    fn a_request_outside_the_open_chain_is_a_violation() {
        let mut f = Fixture::new();
        let mut input = hello();
        let d = f.desc;
        wire::encode_read(&mut input, 1, WrFlags::new(false, false), d.at(0), 8);
        wire::encode_rpc(&mut input, 9, b"hi");
        assert_eq!(f.feed(&input), Err(Violation::RpcInsideChain(1)));
        // The open chain's reserved header and data were dropped before the ERROR frame.
        let (frame, n) = wire::decode_server_frame(&f.out[wire::SERVER_HELLO_LEN..]).unwrap().unwrap();
        assert!(matches!(frame, ServerFrame::Error { code: CloseReason::ProtocolViolation, .. }));
        assert_eq!(wire::SERVER_HELLO_LEN + n, f.out.len());
        assert!(f.sink.replies.lock().is_empty(), "the RPC never reached the service");
    }
    #[test]
    fn a_nic_with_a_secret_serves_only_clients_that_send_it() {
        let hello_with = |secret: &[u8]| {
            let mut b = Vec::new();
            wire::encode_hello(&mut b, wire::VERSION, secret);
            b
        };
        for (sent, served) in [
            (&b""[..], false),
            (b"wrong-secret", false),
            (b"the-secret", true),
            (b"the-secret!", false),
            (b"the-secre", false),
        ] {
            let mut f = Fixture::new();
            f.config.secret = Some(crate::fabric::Secret::new(b"the-secret".to_vec()).unwrap());
            let mut input = hello_with(sent);
            // A WRITE right behind the HELLO: it must not execute unless the HELLO was accepted.
            wire::encode_write(&mut input, 0, WrFlags::new(true, true), f.desc.at(0), b"w");
            let r = f.feed(&input);
            assert_eq!(r.is_ok(), served, "secret {sent:?}");
            assert_eq!(f.region.load_u8(0), if served { b'w' } else { 0 }, "secret {sent:?}");
            if !served {
                assert_eq!(r, Err(Violation::Unauthenticated));
                assert!(!Violation::Unauthenticated.is_protocol_error());
                let (frame, _) = wire::decode_server_frame(&f.out).unwrap().unwrap();
                assert!(matches!(frame, ServerFrame::Error { code: CloseReason::Unauthenticated, .. }), "{frame:?}");
            }
        }
        // Without a secret configured, whatever the client sends is accepted.
        let mut f = Fixture::new();
        assert!(f.feed(&hello_with(b"anything")).is_ok());
    }

    #[test]
    fn a_chains_read_data_is_bounded_even_if_it_never_ends() {
        let mut f = Fixture::new();
        f.config.max_chain_read = 256;
        let mut input = hello();
        let d = f.desc;
        // 100 READs of 64 bytes in one chain that is not terminated: only the first four fit.
        for _ in 0..100 {
            wire::encode_read(&mut input, 9, WrFlags::new(false, false), d.at(0), 64);
        }
        assert_eq!(f.feed(&input), Ok(input.len()));
        assert!(f.session.in_chain());
        assert!(f.out.len() <= wire::SERVER_HELLO_LEN + wire::CHAIN_DONE_HEADER_LEN, "the failed chain holds no data");
        let mut end = Vec::new();
        wire::encode_read(&mut end, 9, WrFlags::new(true, false), d.at(0), 64);
        let v = Violation::QueuePairError { chain: 9, index: 4, error: RemoteAccessError::TooLarge };
        assert_eq!(f.feed(&end), Err(v));
        assert_eq!(f.tally.reads, 4);
    }

    #[test]
    fn an_rpc_over_the_granted_message_size_is_a_violation() {
        let mut f = Fixture::new();
        f.config.max_message = 4;
        let mut input = hello();
        wire::encode_rpc(&mut input, 1, b"four");
        wire::encode_rpc(&mut input, 2, b"five!");
        assert_eq!(f.feed(&input), Err(Violation::MessageTooLarge { len: 5, max: 4 }));
        assert_eq!(f.sink.replies.lock().len(), 1, "the RPC within the limit was served");
    }
}
