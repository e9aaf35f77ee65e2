//! A synchronous client for simple programs: the async [`crate::Client`] driven by a private
//! runtime.

use crate::{ClientConfig, ClientError, ClientStats};
use scalio_common::fabric::QueuePair;
use scalio_common::rpc::{ServerInfo, Stats};
use std::sync::Arc;

/// A blocking connection to a scalio server.
pub struct Client {
    rt: tokio::runtime::Runtime,
    inner: crate::Client,
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ClientError::Config(format!("cannot start a runtime: {e}")))
}

impl Client {
    /// Connects over the software NIC (TCP).
    pub fn connect(addr: &str, cfg: ClientConfig) -> Result<Client, ClientError> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::connect(addr, cfg))?;
        Ok(Client { rt, inner })
    }

    /// A client that opens (and replaces failed) queue pairs with `connector`.
    pub fn with_connector(connector: crate::Connector, cfg: ClientConfig) -> Result<Client, ClientError> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::with_connector(connector, cfg))?;
        Ok(Client { rt, inner })
    }

    /// A client over queue pairs of any fabric backend.
    pub fn with_queue_pairs(qps: Vec<Arc<dyn QueuePair>>, cfg: ClientConfig) -> Result<Client, ClientError> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::Client::with_queue_pairs(qps, cfg))?;
        Ok(Client { rt, inner })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.rt.block_on(self.inner.get(key))
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.rt.block_on(self.inner.put(key, value))
    }

    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<bool, ClientError> {
        self.rt.block_on(self.inner.update(key, value))
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        self.rt.block_on(self.inner.delete(key))
    }

    pub fn server_stats(&self) -> Result<Stats, ClientError> {
        self.rt.block_on(self.inner.server_stats())
    }

    pub fn stats(&self) -> ClientStats {
        self.inner.stats()
    }

    pub fn info(&self) -> &ServerInfo {
        self.inner.info()
    }

    /// The async client underneath (cheap to clone).
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }
}
