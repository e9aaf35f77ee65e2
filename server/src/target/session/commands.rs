//! Command dispatch: a capsule's checks (command ID, queue depth, SGL), then Fabrics, admin
//! and I/O commands, and the namespace operations they start.

use super::*;

impl QueueSession {
    pub(super) fn max_outstanding(&self) -> usize {
        match &self.binding {
            // Room for a whole SQ whose head the host saw advance before the commands
            // completed, plus the held Asynchronous Event Requests.
            Some(b) => 2 * (usize::from(b.sqsize) + 1) + usize::from(admin::AERL) + 1,
            None => 4,
        }
    }

    pub(super) fn on_capsule(&mut self, sqe: Sqe, data: Vec<u8>, digest_ok: bool, now: Instant) {
        TargetCounters::add(&self.shared.counters.bytes_from_host, data.len() as u64);
        if let Some(b) = &self.binding {
            if b.ctrl.is_dead() || (b.qid > 0 && b.ctrl.reset_epoch() != b.epoch) {
                // The association is over: no more commands on its queues.
                let reason = format!("controller {} gone or reset", b.ctrl.cntlid);
                return self.close_with(Close::Now, reason);
            }
            self.sqhd = ((u32::from(self.sqhd) + 1) % (u32::from(b.sqsize) + 1)) as u16;
        }
        let cid = sqe.cid();
        if self.commands.contains_key(&cid) {
            return self.respond(cid, status(generic::COMMAND_ID_CONFLICT), 0, 0);
        }
        if self.commands.len() >= self.max_outstanding() {
            let header = Pdu::CapsuleCmd(pdu::CapsuleCmd { sqe, data: Vec::new() }).to_vec(&self.tx);
            return self.fatal(FatalError::new(
                Fes::PduSequenceError,
                0,
                "more commands outstanding than the submission queue holds",
                &header[..pdu::CAPSULE_CMD_HLEN],
            ));
        }
        let queue = match &self.binding {
            Some(b) if b.qid > 0 => QueueKind::Io,
            _ => QueueKind::Admin,
        };
        let cmd = Command::parse(&sqe, queue);
        self.shared.counters.command(command_kind(&cmd));
        if !digest_ok {
            // A data digest error fails the command; the connection is still in sync.
            return self.respond(cid, StatusField::generic(generic::TRANSIENT_TRANSPORT_ERROR), 0, 0);
        }
        if sqe.fuse() != 0 || !matches!(sqe.psdt(), 1 | 2) {
            return self.respond(cid, status(generic::INVALID_FIELD), 0, 0);
        }
        let cmd = match cmd {
            Ok(c) => c,
            Err(e) => return self.respond(cid, e.status, 0, 0),
        };
        let transfer = match transfer_of(&sqe, &data) {
            Ok(t) => t,
            Err(st) => return self.respond(cid, st, 0, 0),
        };
        if let Err(st) = self.start(cid, cmd, transfer, data, now) {
            self.respond(cid, st, 0, 0);
        }
    }

    /// Starts a parsed command. An error is the status to complete it with at once.
    pub(super) fn start(
        &mut self,
        cid: u16,
        cmd: Command,
        transfer: Transfer,
        data: Vec<u8>,
        now: Instant,
    ) -> Result<(), StatusField> {
        let expect = |t: Transfer, want: Transfer| {
            if t == want {
                Ok(())
            } else {
                Err(status(generic::DATA_SGL_LENGTH_INVALID))
            }
        };
        let (ctrl, qid) = match (&cmd, &self.binding) {
            (Command::Fabrics(FabricsCommand::Connect(c)), None) => {
                let c = *c;
                return match transfer {
                    Transfer::InCapsule(n) if n as usize == CONNECT_DATA_LEN => {
                        self.connect(cid, c, &data, now);
                        Ok(())
                    }
                    Transfer::FromHost(n) if n as usize == CONNECT_DATA_LEN => {
                        self.enqueue(cid, Op::Connect(c), CONNECT_DATA_LEN);
                        Ok(())
                    }
                    _ => Err(status(generic::DATA_SGL_LENGTH_INVALID)),
                };
            }
            (_, None) => return Err(status(generic::COMMAND_SEQUENCE_ERROR)),
            (_, Some(b)) => (b.ctrl.clone(), b.qid),
        };
        let shared = self.shared.clone();
        match cmd {
            // A queue connects once.
            Command::Fabrics(FabricsCommand::Connect(_)) => return Err(status(generic::COMMAND_SEQUENCE_ERROR)),
            Command::Fabrics(FabricsCommand::PropertyGet { size, offset }) => {
                if qid != 0 {
                    return Err(status(generic::INVALID_OPCODE));
                }
                expect(transfer, Transfer::None)?;
                let v = admin::property_get(&shared, &ctrl, size, offset)?;
                self.respond(cid, StatusField::SUCCESS, v as u32, (v >> 32) as u32);
            }
            Command::Fabrics(FabricsCommand::PropertySet { size, offset, value }) => {
                if qid != 0 {
                    return Err(status(generic::INVALID_OPCODE));
                }
                expect(transfer, Transfer::None)?;
                admin::property_set(&ctrl, size, offset, value)?;
                self.respond(cid, StatusField::SUCCESS, 0, 0);
            }
            Command::Fabrics(FabricsCommand::Disconnect { .. }) => {
                if qid == 0 {
                    return Err(StatusField::command_specific(command_specific::INVALID_QUEUE_TYPE).dnr());
                }
                self.respond(cid, StatusField::SUCCESS, 0, 0);
                self.close_with(Close::AfterFlush, format!("queue {qid} disconnected"));
            }
            Command::Admin(a) => {
                if !ctrl.ready() {
                    return Err(status(generic::COMMAND_SEQUENCE_ERROR));
                }
                self.admin(cid, &ctrl, a, transfer, now)?;
            }
            Command::Io(io) => self.io(cid, &ctrl, io, transfer, data)?,
        }
        Ok(())
    }

    pub(super) fn admin(
        &mut self,
        cid: u16,
        ctrl: &Arc<Controller>,
        a: AdminCommand,
        transfer: Transfer,
        now: Instant,
    ) -> Result<(), StatusField> {
        let shared = self.shared.clone();
        let sgl_len = || status(generic::DATA_SGL_LENGTH_INVALID);
        match a {
            AdminCommand::Identify { cns, nsid, csi, .. } => {
                if transfer != Transfer::ToHost(scalio_common::nvme::identify::IDENTIFY_LEN as u32) {
                    return Err(sgl_len());
                }
                let data = admin::identify(&shared, ctrl, cns, nsid, csi)?;
                self.complete_with_data(cid, &data);
            }
            AdminCommand::GetLogPage { lid, numd, offset, .. } => {
                let len = (u64::from(numd) + 1) * 4;
                if len > u64::from(shared.settings.max_transfer) {
                    return Err(status(generic::INVALID_FIELD));
                }
                if transfer != Transfer::ToHost(len as u32) {
                    return Err(sgl_len());
                }
                let data = admin::get_log_page(&shared, ctrl, self.local, lid, offset, len as u32)?;
                self.complete_with_data(cid, &data);
            }
            AdminCommand::SetFeatures { fid, save, cdw11, .. } => {
                if transfer != Transfer::None {
                    return Err(sgl_len());
                }
                let dw0 = admin::set_features(&shared, ctrl, fid, save, cdw11, now)?;
                self.respond(cid, StatusField::SUCCESS, dw0, 0);
            }
            AdminCommand::GetFeatures { fid, sel, .. } => {
                if transfer != Transfer::None {
                    return Err(sgl_len());
                }
                let dw0 = admin::get_features(ctrl, fid, sel)?;
                self.respond(cid, StatusField::SUCCESS, dw0, 0);
            }
            AdminCommand::KeepAlive => {
                ctrl.keep_alive(now);
                self.respond(cid, StatusField::SUCCESS, 0, 0);
            }
            AdminCommand::AsyncEventRequest => {
                let held = self.commands.values().filter(|c| matches!(c.stage, Stage::Held)).count();
                if held > usize::from(admin::AERL) {
                    return Err(
                        StatusField::command_specific(command_specific::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED).dnr()
                    );
                }
                self.commands.insert(cid, Cmd { op: Op::AsyncEvent, stage: Stage::Held, charged: 0 });
            }
            AdminCommand::Abort { .. } => {
                // Dword 0 bit 0 set: the command was not aborted (commands here finish on their own).
                self.respond(cid, StatusField::SUCCESS, 1, 0);
            }
        }
        Ok(())
    }

    pub(super) fn io(
        &mut self,
        cid: u16,
        ctrl: &Arc<Controller>,
        io: IoCommand,
        transfer: Transfer,
        data: Vec<u8>,
    ) -> Result<(), StatusField> {
        let ControllerKind::Io(index) = ctrl.kind else { return Err(status(generic::INVALID_OPCODE)) };
        let Some(subsystem) = self.shared.subsystems.get(index) else { return Err(status(generic::INTERNAL_ERROR)) };
        let ns = subsystem.namespace.clone();
        let allow_writes = subsystem.allow_writes;
        let max_transfer = self.shared.settings.max_transfer;
        let io_in_capsule = self.shared.settings.io_in_capsule;
        match io {
            IoCommand::Read { nsid, slba, .. } | IoCommand::Write { nsid, slba, .. } => {
                if nsid != 1 {
                    return Err(status(generic::INVALID_NAMESPACE_OR_FORMAT));
                }
                let blocks = io.blocks();
                let bytes = u64::from(blocks) * u64::from(LBA_SIZE);
                if bytes > u64::from(max_transfer) {
                    return Err(status(generic::INVALID_FIELD));
                }
                match slba.checked_add(u64::from(blocks)) {
                    Some(end) if end <= ns.blocks() => {}
                    _ => return Err(status(generic::LBA_OUT_OF_RANGE)),
                }
                let bytes = bytes as u32;
                if let IoCommand::Read { .. } = io {
                    if transfer != Transfer::ToHost(bytes) {
                        return Err(status(generic::DATA_SGL_LENGTH_INVALID));
                    }
                    self.enqueue(cid, Op::Read { ns, lba: slba, blocks }, bytes as usize);
                    return Ok(());
                }
                // A write to a read-only subsystem: the namespace is write protected (NSATTR
                // says so in Identify Namespace too).
                if !allow_writes {
                    return Err(status(generic::NAMESPACE_WRITE_PROTECTED));
                }
                match transfer {
                    Transfer::InCapsule(n) if n == bytes && n <= io_in_capsule => {
                        let token = self.issue(NsOp::Write { lba: slba, data }, ns.clone());
                        self.tokens.insert(token, cid);
                        self.inflight_bytes += bytes as usize;
                        let op = Op::Write { ns, lba: slba, blocks };
                        self.commands.insert(cid, Cmd { op, stage: Stage::Executing, charged: bytes as usize });
                    }
                    Transfer::FromHost(n) if n == bytes => {
                        self.enqueue(cid, Op::Write { ns, lba: slba, blocks }, bytes as usize);
                    }
                    _ => return Err(status(generic::DATA_SGL_LENGTH_INVALID)),
                }
            }
            IoCommand::Flush { nsid } => {
                if nsid != 1 && nsid != NSID_ALL {
                    return Err(status(generic::INVALID_NAMESPACE_OR_FORMAT));
                }
                if transfer != Transfer::None {
                    return Err(status(generic::DATA_SGL_LENGTH_INVALID));
                }
                let token = self.issue(NsOp::Flush, ns);
                self.tokens.insert(token, cid);
                self.commands.insert(cid, Cmd { op: Op::Flush, stage: Stage::Executing, charged: 0 });
            }
        }
        Ok(())
    }

    pub(super) fn issue(&mut self, op: NsOp, namespace: Arc<dyn TargetNamespace>) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.requests.push(NsRequest { token, namespace, op });
        token
    }
}

/// How the SGL and in-capsule data of a command move its data.
pub(super) fn transfer_of(sqe: &Sqe, data: &[u8]) -> Result<Transfer, StatusField> {
    let sgl = sqe.sgl();
    let dir = DataDirection::of(sqe);
    if !data.is_empty() {
        if dir != DataDirection::HostToController {
            return Err(status(generic::INVALID_FIELD));
        }
        if sgl.sgl_type != Sgl::IN_CAPSULE {
            return Err(status(generic::DATA_SGL_LENGTH_INVALID));
        }
        if sgl.address != 0 {
            return Err(status(generic::SGL_OFFSET_INVALID));
        }
        if sgl.length as usize != data.len() {
            return Err(status(generic::DATA_SGL_LENGTH_INVALID));
        }
        return Ok(Transfer::InCapsule(sgl.length));
    }
    match sgl.sgl_type {
        Sgl::IN_CAPSULE | Sgl::TRANSPORT if sgl.length == 0 => Ok(Transfer::None),
        Sgl::IN_CAPSULE => Err(status(generic::DATA_SGL_LENGTH_INVALID)),
        Sgl::TRANSPORT => match dir {
            DataDirection::HostToController => Ok(Transfer::FromHost(sgl.length)),
            DataDirection::ControllerToHost => Ok(Transfer::ToHost(sgl.length)),
            _ => Err(status(generic::INVALID_FIELD)),
        },
        _ => Err(status(generic::SGL_DESCRIPTOR_TYPE_INVALID)),
    }
}

pub(super) fn command_kind(cmd: &Result<Command, scalio_common::nvme::CommandError>) -> CommandKind {
    match cmd {
        Ok(Command::Fabrics(f)) => match f {
            FabricsCommand::Connect(_) => CommandKind::Connect,
            FabricsCommand::PropertyGet { .. } => CommandKind::PropertyGet,
            FabricsCommand::PropertySet { .. } => CommandKind::PropertySet,
            FabricsCommand::Disconnect { .. } => CommandKind::Disconnect,
        },
        Ok(Command::Admin(a)) => match a {
            AdminCommand::Identify { .. } => CommandKind::Identify,
            AdminCommand::GetLogPage { .. } => CommandKind::GetLogPage,
            AdminCommand::SetFeatures { .. } => CommandKind::SetFeatures,
            AdminCommand::GetFeatures { .. } => CommandKind::GetFeatures,
            AdminCommand::KeepAlive => CommandKind::KeepAlive,
            AdminCommand::AsyncEventRequest => CommandKind::AsyncEventRequest,
            AdminCommand::Abort { .. } => CommandKind::Abort,
        },
        Ok(Command::Io(io)) => match io {
            IoCommand::Read { .. } => CommandKind::Read,
            IoCommand::Write { .. } => CommandKind::Write,
            IoCommand::Flush { .. } => CommandKind::Flush,
        },
        Err(_) => CommandKind::Unsupported,
    }
}
