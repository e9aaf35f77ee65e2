//! A server that stops answering gives the client a timeout, not a hang.

use scalio_client::{Client, ClientConfig, ClientError};
use scalio_common::fabric::tcp::wire;
use scalio_common::fabric::FabricError;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A peer that completes the software NIC's handshake and then never answers anything.
fn silent_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut theirs = [0u8; wire::HELLO_LEN];
        stream.read_exact(&mut theirs).unwrap();
        let mut hello = Vec::new();
        let grant = wire::Grant { rpc_credits: 64, max_message: 1 << 20 };
        wire::encode_hello(&mut hello, wire::VERSION, &grant.encode());
        stream.write_all(&hello).unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink); // until the client goes away
    });
    (addr, t)
}

#[tokio::test]
async fn a_server_that_stops_answering_times_out() {
    let (addr, server) = silent_server();
    let cfg = ClientConfig { op_timeout: Some(Duration::from_millis(300)), ..ClientConfig::default() };
    let started = Instant::now();
    let r = Client::connect(&addr.to_string(), cfg).await;
    assert_eq!(r.err(), Some(ClientError::Fabric(FabricError::Timeout)));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "gave up early: {waited:?}");
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    server.join().unwrap();
}
