//! PUT, UPDATE and DELETE: RPCs to the worker that owns the key's SSD, acknowledged once the
//! write is durable and the key's cache slot has been invalidated.

use crate::error::ClientError;
use crate::stats::Counters;
use crate::Inner;
use scalio_common::key;
use scalio_common::rpc::{flags, Op, Request, Status};
use scalio_common::ssd::MAX_VALUE_LEN;

impl Inner {
    /// Sends a write; returns whether the key existed (for UPDATE and DELETE; always true for PUT).
    /// `id`: the request id, the same on each retry of one write (see
    /// [`crate::Client::write_with_id`]).
    pub(crate) async fn write(&self, op: Op, key: &[u8], value: &[u8], id: Option<u64>) -> Result<bool, ClientError> {
        key::validate(key)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(ClientError::ValueTooLarge(value.len()));
        }
        Counters::add(&self.counters.writes, 1);
        let f = if self.cfg.batched_writes { 0 } else { flags::UNBATCHED };
        match self.rpc(Request::new(op, key, value).with_flags(f).with_id(id)).await? {
            (Status::Ok, _) => Ok(true),
            (Status::NotFound, _) if op != Op::Put => Ok(false),
            (Status::ValueTooLarge, _) => Err(ClientError::ValueTooLarge(value.len())),
            (status, body) => Err(ClientError::from_status(status, &body)),
        }
    }
}
