//! Data movement and its memory budget: commands waiting for buffer space, R2T/H2CData for
//! data the host sends, and C2HData for data it receives.

use super::*;

impl QueueSession {
    /// Queues a command that needs `bytes` of buffer for its data.
    pub(super) fn enqueue(&mut self, cid: u16, op: Op, bytes: usize) {
        self.commands.insert(cid, Cmd { op, stage: Stage::Waiting { bytes }, charged: 0 });
        self.waiting.push_back(cid);
    }

    /// Starts waiting commands while the connection's memory budget allows.
    pub(super) fn pump(&mut self) {
        while let Some(&cid) = self.waiting.front() {
            if self.close != Close::No {
                return;
            }
            let bytes = match self.commands.get(&cid) {
                Some(Cmd { stage: Stage::Waiting { bytes }, .. }) => *bytes,
                _ => {
                    self.waiting.pop_front();
                    continue;
                }
            };
            let s = &self.shared.settings;
            let fits = self.inflight_bytes == 0 || self.inflight_bytes + bytes <= s.max_inflight_bytes;
            if !fits || self.output().len() > s.output_high_water {
                return;
            }
            self.waiting.pop_front();
            self.inflight_bytes += bytes;
            let maxh2cdata = s.maxh2cdata;
            let read = match self.commands.get(&cid).map(|c| &c.op) {
                Some(Op::Read { ns, lba, blocks }) => Some((ns.clone(), *lba, *blocks)),
                _ => None,
            };
            if let Some((ns, lba, count)) = read {
                let token = self.issue(NsOp::Read { lba, count }, ns);
                self.tokens.insert(token, cid);
                if let Some(c) = self.commands.get_mut(&cid) {
                    c.stage = Stage::Executing;
                    c.charged = bytes;
                }
                continue;
            }
            // Data to fetch from the host: a buffer, a transfer tag, and the first R2T.
            let ttag = self.alloc_ttag();
            self.ttags.insert(ttag, cid);
            let r2t_len = (bytes as u32).min(maxh2cdata);
            if let Some(c) = self.commands.get_mut(&cid) {
                c.charged = bytes;
                c.stage =
                    Stage::Receiving { buf: vec![0u8; bytes], r2t_offset: 0, r2t_len, r2t_got: 0, digest_error: false };
            }
            pdu::encode_r2t(&R2t { cccid: cid, ttag, r2to: 0, r2tl: r2t_len }, &self.tx, &mut self.out);
        }
    }

    pub(super) fn alloc_ttag(&mut self) -> u16 {
        loop {
            let t = self.next_ttag;
            self.next_ttag = self.next_ttag.wrapping_add(1);
            if t != 0xFFFF && !self.ttags.contains_key(&t) {
                return t;
            }
        }
    }

    pub(super) fn h2c_fatal(&mut self, d: &H2CData, fes: Fes, fei: u32, reason: &'static str) {
        let mut header = Vec::new();
        let link = TxParams { digests: self.rx_digests, pda: self.shared.settings.cpda };
        pdu::encode_h2c_data(d.cccid, d.ttag, d.datao, &d.data, d.last, &link, &mut header);
        header.truncate(pdu::DATA_HLEN);
        self.fatal(FatalError::new(fes, fei, reason, &header));
    }

    pub(super) fn on_h2c_data(&mut self, d: H2CData, digest_ok: bool, now: Instant) {
        TargetCounters::add(&self.shared.counters.bytes_from_host, d.data.len() as u64);
        let Some(&cid) = self.ttags.get(&d.ttag) else {
            return self.h2c_fatal(&d, Fes::InvalidHeaderField, 10, "H2CData with a transfer tag of no R2T");
        };
        if cid != d.cccid {
            return self.h2c_fatal(&d, Fes::InvalidHeaderField, 8, "H2CData CCCID does not match its R2T");
        }
        let maxh2cdata = self.shared.settings.maxh2cdata;
        let len = d.data.len() as u64;
        let outcome = {
            let Some(Cmd { stage: Stage::Receiving { buf, r2t_offset, r2t_len, r2t_got, digest_error, .. }, .. }) =
                self.commands.get_mut(&cid)
            else {
                return self.h2c_fatal(&d, Fes::PduSequenceError, 0, "H2CData for a command not receiving data");
            };
            let start = u64::from(*r2t_offset);
            let end = start + u64::from(*r2t_len);
            let at = u64::from(d.datao);
            if at < start || at + len > end {
                Err((Fes::DataTransferOutOfRange, "H2CData outside the range of its R2T"))
            } else if at != start + u64::from(*r2t_got) {
                Err((Fes::PduSequenceError, "H2CData out of order"))
            } else if (u64::from(*r2t_got) + len == u64::from(*r2t_len)) != d.last {
                Err((Fes::PduSequenceError, "LAST_PDU flag does not match the end of the R2T's data"))
            } else {
                buf[at as usize..(at + len) as usize].copy_from_slice(&d.data);
                *r2t_got += len as u32;
                *digest_error |= !digest_ok;
                if r2t_got != r2t_len {
                    Ok(None)
                } else if (end as usize) < buf.len() {
                    // Next R2T for the rest.
                    *r2t_offset = end as u32;
                    *r2t_len = ((buf.len() as u64 - end) as u32).min(maxh2cdata);
                    *r2t_got = 0;
                    Ok(Some((false, *r2t_offset, *r2t_len)))
                } else {
                    Ok(Some((true, 0, 0)))
                }
            }
        };
        match outcome {
            Err((fes, reason)) => self.h2c_fatal(&d, fes, 0, reason),
            Ok(None) => {}
            Ok(Some((false, r2to, r2tl))) => {
                pdu::encode_r2t(&R2t { cccid: cid, ttag: d.ttag, r2to, r2tl }, &self.tx, &mut self.out);
            }
            Ok(Some((true, _, _))) => {
                self.ttags.remove(&d.ttag);
                self.data_received(cid, now);
            }
        }
    }

    /// All of a command's data arrived through R2Ts: run it.
    pub(super) fn data_received(&mut self, cid: u16, now: Instant) {
        let Some(cmd) = self.commands.get_mut(&cid) else { return };
        let (buf, digest_error) = match std::mem::replace(&mut cmd.stage, Stage::Executing) {
            Stage::Receiving { buf, digest_error, .. } => (buf, digest_error),
            other => {
                cmd.stage = other;
                return;
            }
        };
        if digest_error {
            return self.complete(cid, StatusField::generic(generic::TRANSIENT_TRANSPORT_ERROR), 0, 0);
        }
        match &cmd.op {
            Op::Connect(c) => {
                let c = *c;
                self.release(cid);
                self.commands.remove(&cid);
                self.connect(cid, c, &buf, now);
            }
            Op::Write { ns, lba, .. } => {
                let (ns, lba) = (ns.clone(), *lba);
                let token = self.issue(NsOp::Write { lba, data: buf }, ns);
                self.tokens.insert(token, cid);
            }
            _ => self.complete(cid, status(generic::INTERNAL_ERROR), 0, 0),
        }
    }

    pub(super) fn release(&mut self, cid: u16) {
        if let Some(c) = self.commands.get_mut(&cid) {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(c.charged);
            c.charged = 0;
        }
    }

    /// Completes a command with data for the host: C2HData PDUs, then a response capsule, or
    /// the SUCCESS flag on the last C2HData when the host disabled SQ flow control.
    pub(super) fn complete_with_data(&mut self, cid: u16, data: &[u8]) {
        TargetCounters::add(&self.shared.counters.bytes_to_host, data.len() as u64);
        let s = &self.shared.settings;
        let success_flag = s.c2h_success && self.binding.as_ref().is_some_and(|b| b.sq_flow_disabled);
        let chunk = s.c2h_chunk.max(1) as usize;
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            let last = end == data.len();
            pdu::encode_c2h_data(cid, off as u32, &data[off..end], last, last && success_flag, &self.tx, &mut self.out);
            off = end;
        }
        if success_flag && !data.is_empty() {
            self.release(cid);
            self.commands.remove(&cid);
        } else {
            self.complete(cid, StatusField::SUCCESS, 0, 0);
        }
    }
}
