//! Initialization and Connect: the ICReq/ICResp exchange that sets digests and limits, and
//! binding the connection to a new controller (admin queue) or an existing one (I/O queue).

use super::*;

impl QueueSession {
    pub(super) fn on_ic_req(&mut self, req: IcReq) {
        let s = &self.shared.settings;
        let digests = Digests {
            header: req.digests.header && s.digests_allowed.header,
            data: req.digests.data && s.digests_allowed.data,
        };
        let resp = IcResp { pfv: 0, cpda: s.cpda, digests, maxh2cdata: s.maxh2cdata };
        Pdu::IcResp(resp).encode(&TxParams::default(), &mut self.out);
        self.tx = TxParams { digests, pda: req.hpda };
        self.rx_digests = digests;
        self.decoder.establish(RxParams {
            digests,
            pda: s.cpda,
            max_capsule_data: s.admin_in_capsule.max(s.io_in_capsule),
            max_h2c_data: s.maxh2cdata,
            max_c2h_data: 0,
        });
    }

    /// Runs a Connect and answers it: binds this connection to a new controller (admin queue)
    /// or to an existing one (I/O queue).
    pub(super) fn connect(&mut self, cid: u16, c: Connect, data: &[u8], now: Instant) {
        let invalid = |in_data: bool, offset: u16| {
            (
                StatusField::command_specific(command_specific::CONNECT_INVALID_PARAMETERS).dnr(),
                invalid_parameter_info(in_data, offset),
            )
        };
        let result = self.try_connect(c, data, now, invalid);
        match result {
            Ok((cntlid, binding)) => {
                self.sqhd = (1 % (u32::from(binding.sqsize) + 1)) as u16;
                self.binding = Some(binding);
                self.respond(cid, StatusField::SUCCESS, u32::from(cntlid), 0);
            }
            Err((st, dw0)) => self.respond(cid, st, dw0, 0),
        }
    }

    pub(super) fn try_connect(
        &mut self,
        c: Connect,
        data: &[u8],
        now: Instant,
        invalid: impl Fn(bool, u16) -> (StatusField, u32),
    ) -> Result<(u16, Binding), (StatusField, u32)> {
        if c.recfmt != 0 {
            return Err((StatusField::command_specific(command_specific::CONNECT_INCOMPATIBLE_FORMAT).dnr(), 0));
        }
        let d = ConnectData::decode(data).map_err(|e| invalid(true, e.offset))?;
        if c.sqsize == 0 || c.sqsize > self.shared.settings.mqes {
            return Err(invalid(false, Connect::OFFSET_SQSIZE));
        }
        let sq_flow_disabled = c.cattr & Connect::DISABLE_SQ_FLOW_CONTROL != 0;
        if c.qid == 0 {
            let kind = if d.subnqn == DISCOVERY_NQN {
                ControllerKind::Discovery
            } else {
                ControllerKind::Io(
                    self.shared.subsystem_index(&d.subnqn).ok_or_else(|| invalid(true, ConnectData::OFFSET_SUBNQN))?,
                )
            };
            // Dynamic controller model: the host must let the subsystem pick the ID.
            if d.cntlid != 0xFFFF && d.cntlid != 0xFFFE {
                return Err(invalid(true, ConnectData::OFFSET_CNTLID));
            }
            let kato_ms = if kind == ControllerKind::Discovery && c.kato == 0 {
                self.shared.settings.discovery_kato_ms
            } else {
                c.kato
            };
            let new = NewController { kind, subnqn: d.subnqn, hostnqn: d.hostnqn, hostid: d.hostid, kato_ms };
            let ctrl = self
                .shared
                .create_controller(new, now)
                .ok_or((StatusField::command_specific(command_specific::CONNECT_CONTROLLER_BUSY), 0))?;
            let cntlid = ctrl.cntlid;
            return Ok((cntlid, Binding { ctrl, qid: 0, sqsize: c.sqsize, sq_flow_disabled, epoch: 0 }));
        }
        let ctrl = self
            .shared
            .find_controller(d.cntlid)
            .filter(|x| x.subnqn == d.subnqn && x.hostnqn == d.hostnqn && x.hostid == d.hostid && !x.is_dead())
            .ok_or_else(|| invalid(true, ConnectData::OFFSET_CNTLID))?;
        if ctrl.is_discovery() {
            return Err(invalid(false, Connect::OFFSET_QID));
        }
        let epoch = {
            let mut st = ctrl.state.lock();
            if !st.csts.ready {
                return Err((status(generic::COMMAND_SEQUENCE_ERROR), 0));
            }
            if c.qid > st.io_queues_allowed {
                return Err(invalid(false, Connect::OFFSET_QID));
            }
            if !st.io_queues.insert(c.qid) {
                return Err((status(generic::COMMAND_SEQUENCE_ERROR), 0));
            }
            st.reset_epoch
        };
        let cntlid = ctrl.cntlid;
        Ok((cntlid, Binding { ctrl, qid: c.qid, sqsize: c.sqsize, sq_flow_disabled, epoch }))
    }
}
