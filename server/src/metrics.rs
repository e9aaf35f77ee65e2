//! `--metrics ADDR`: the server's counters in the Prometheus text format, over HTTP.
//!
//! [`render`] turns STATS (and, in a cluster, the map) into the exposition text with no I/O;
//! [`MetricsServer`] answers every HTTP request on its listener with it, on one thread.
//! Every STATS counter `x` becomes `scalio_x` (untyped: STATS mixes counters and gauges). In a
//! cluster, `scalio_cluster_owned_range{first,last,role}` lists the runs of consecutive
//! partitions this server is the head or tail of (partition `p` holds the keys whose partition
//! hash has `p` in its top `partition_bits` bits). The moves into this server are counted in
//! total (`scalio_move_keys_copied`, `scalio_move_bytes_copied`, `scalio_move_copy_ms`, ...)
//! and per partition received (`scalio_move_partition_keys{partition}`,
//! `scalio_move_partition_bytes{partition}`).

use scalio_common::cluster::{ClusterMap, NodeId};
use scalio_common::rpc::Stats;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a scrape shows: the counters, and the cluster map with this server's id (if in one).
pub type MetricsSource = dyn Fn() -> (Stats, Option<(Arc<ClusterMap>, NodeId)>) + Send + Sync;

fn metric_name(counter: &str) -> String {
    let clean: String = counter.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("scalio_{clean}")
}

/// Runs of consecutive partitions whose chain has `id` in `role` (head or tail).
fn owned_runs(map: &ClusterMap, id: &NodeId, tail: bool) -> Vec<(usize, usize)> {
    let Some(me) = map.node_index(id) else { return Vec::new() };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (p, chain) in map.chains.iter().enumerate() {
        let holder = if tail { chain.last() } else { chain.first() };
        if holder == Some(&me) {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == p => *last = p,
                _ => runs.push((p, p)),
            }
        }
    }
    runs
}

/// The exposition text.
pub fn render(stats: &Stats, cluster: Option<(&ClusterMap, &NodeId)>) -> String {
    let mut out = String::new();
    for (name, v) in &stats.counters {
        // `name/P` is counter `name` of partition P (the moves' per-partition counters).
        match name.split_once('/') {
            Some((base, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let _ = writeln!(out, "{}{{partition=\"{p}\"}} {v}", metric_name(base));
            }
            _ => {
                let _ = writeln!(out, "{} {v}", metric_name(name));
            }
        }
    }
    if let Some((map, id)) = cluster {
        let _ = writeln!(out, "scalio_cluster_members {}", map.nodes.len());
        let _ = writeln!(out, "scalio_cluster_partition_bits {}", map.params.partition_bits);
        let _ = writeln!(out, "scalio_cluster_replication {}", map.params.replication);
        for (role, tail) in [("head", false), ("tail", true)] {
            for (first, last) in owned_runs(map, id, tail) {
                let _ =
                    writeln!(out, "scalio_cluster_owned_range{{role=\"{role}\",first=\"{first}\",last=\"{last}\"}} 1");
            }
        }
    }
    out
}

/// The HTTP endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    pub fn start(addr: &str, source: Arc<MetricsSource>) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("metrics".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Err(e) = answer(conn, &*source) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener failed");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })?;
        Ok(MetricsServer { addr: local, stop, thread: Some(thread) })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Reads the request head (bounded, with a timeout) and answers with the metrics.
fn answer(mut conn: TcpStream, source: &MetricsSource) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (stats, cluster) = source();
    let body = render(&stats, cluster.as_ref().map(|(m, id)| (&**m, id)));
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes())
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalio_common::cluster::{compute, MapParams, Member};

    fn member(i: usize) -> Member {
        Member {
            id: NodeId(format!("s{i}")),
            fabric: String::new(),
            target: None,
            subsystems: vec![],
            capacity_bytes: 0,
        }
    }

    #[test]
    fn renders_counters_and_owned_ranges() {
        let stats = Stats {
            counters: vec![
                ("rpc_put".into(), 7),
                ("cluster_epoch".into(), 3),
                ("odd-name".into(), 1),
                ("move_partition_keys/12".into(), 5),
                ("bad/x".into(), 2),
            ],
        };
        let params = MapParams { replication: 1, vnodes: 8, partition_bits: 4 };
        let map = compute(None, &[member(0), member(1)], params).unwrap().unwrap();
        let me = NodeId("s0".into());
        let text = render(&stats, Some((&map, &me)));
        assert!(text.contains("scalio_rpc_put 7\n"));
        assert!(text.contains("scalio_cluster_epoch 3\n"));
        assert!(text.contains("scalio_odd_name 1\n"));
        assert!(text.contains("scalio_move_partition_keys{partition=\"12\"} 5\n"));
        assert!(text.contains("scalio_bad_x 2\n"));
        assert!(text.contains("scalio_cluster_members 2\n"));
        // The tail runs cover exactly the partitions s0 is the tail of.
        let covered: usize = owned_runs(&map, &me, true).iter().map(|(a, b)| b - a + 1).sum();
        assert_eq!(covered, map.partitions_of(&me).1);
        assert_eq!(text.matches("role=\"tail\"").count(), owned_runs(&map, &me, true).len());
        assert!(!render(&stats, None).contains("cluster_members"));
    }

    #[test]
    fn serves_the_text_over_http() {
        let source: Arc<MetricsSource> = Arc::new(|| (Stats { counters: vec![("gets".into(), 42)] }, None));
        let m = MetricsServer::start("127.0.0.1:0", source).unwrap();
        let mut c = TcpStream::connect(m.local_addr()).unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("scalio_gets 42\n"), "{resp}");
    }
}
