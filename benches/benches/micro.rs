//! Micro-benchmarks of the hot paths: probing a cache bucket, hashing keys, the RPC codec, and a
//! READ round trip through the software NIC on loopback.
//!
//! `cargo bench -p scalio-bench --bench micro`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scalio_common::fabric::rendezvous::{self, Rendezvous, StagingConfig};
use scalio_common::fabric::tcp::{AsyncTcpQueuePair, NicConfig, TcpNic, TcpQueuePair};
use scalio_common::fabric::{
    Access, IncomingRpc, LocalSlice, MemoryRegion, QueuePair, RegionTable, RpcService, WorkRequest, MAX_TRANSFER,
};
use scalio_common::key::{route, TableKey};
use scalio_common::rpc::{MetaGetReply, Op, Request, Reservation, Response, Status};
use scalio_common::table::{encode_fill, off, probe_bucket, SLOT_SIZE};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

/// A bucket of `assoc` filled slots; the key of slot `i` is `key{i}`.
fn bucket(assoc: usize) -> Vec<u8> {
    let mut b = vec![0u8; assoc * SLOT_SIZE];
    for i in 0..assoc {
        let k = TableKey::new(format!("key{i}").as_bytes());
        let s = &mut b[i * SLOT_SIZE..(i + 1) * SLOT_SIZE];
        s[off::VISIBILITY] = 1;
        s[off::INTEGRITY] = 1;
        s[off::KEY_LEN] = k.len;
        s[off::GENERATION..off::GENERATION + 4].copy_from_slice(&7u32.to_le_bytes());
        s[off::KEY..off::KEY + 16].copy_from_slice(&k.bytes);
        s[off::FILL..].copy_from_slice(&encode_fill(7, &k, &[0xAB; 64]));
    }
    b
}

fn probe(c: &mut Criterion) {
    let mut g = c.benchmark_group("bucket_probe");
    for assoc in [4usize, 8, 16] {
        let b = bucket(assoc);
        let last = TableKey::new(format!("key{}", assoc - 1).as_bytes());
        let absent = TableKey::new(b"not-there");
        g.bench_with_input(BenchmarkId::new("hit_last_slot", assoc), &assoc, |bench, _| {
            bench.iter(|| black_box(probe_bucket(black_box(&b), black_box(&last))))
        });
        g.bench_with_input(BenchmarkId::new("miss", assoc), &assoc, |bench, _| {
            bench.iter(|| black_box(probe_bucket(black_box(&b), black_box(&absent))))
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_hash");
    let short = *b"0123456789abcdef";
    let long = *b"0123456789abcdefXYZ!";
    g.bench_function("table_key_and_bucket_16B", |b| {
        b.iter(|| black_box(TableKey::new(black_box(&short)).bucket(280_576)))
    });
    g.bench_function("table_key_and_bucket_20B", |b| {
        b.iter(|| black_box(TableKey::new(black_box(&long)).bucket(280_576)))
    });
    g.bench_function("ssd_route_16B", |b| b.iter(|| black_box(route(black_box(&short), 7, 892_857))));
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("rpc_codec");
    let key = [7u8; 16];
    let value = [9u8; 64];
    let mut buf = Vec::with_capacity(128);
    g.bench_function("encode_put", |b| {
        b.iter(|| {
            buf.clear();
            Request::new(Op::Put, black_box(&key), black_box(&value)).encode(&mut buf);
            black_box(buf.len())
        })
    });
    let put = Request::new(Op::Put, &key, &value).to_vec();
    g.bench_function("decode_put", |b| b.iter(|| black_box(Request::decode(black_box(&put)).unwrap())));
    let reply = MetaGetReply {
        ssd: 3,
        chain_len: 1,
        lseq: 123_456,
        reservation: Some(Reservation { slot: 5, generation: 9 }),
        window: None,
    };
    let resp = Response::to_vec(Status::Ok, Op::MetaGet, &reply.encode());
    g.bench_function("decode_meta_get_reply", |b| {
        b.iter(|| {
            let r = Response::decode(black_box(&resp)).unwrap();
            black_box(MetaGetReply::decode(r.body).unwrap())
        })
    });
    g.finish();
}

fn softnic(c: &mut Criterion) {
    let regions = Arc::new(RegionTable::new());
    let region = Arc::new(MemoryRegion::new(1 << 20));
    let desc = regions.register(region, Access::READ_WRITE);
    let service: Arc<dyn RpcService> = Arc::new(|rpc: IncomingRpc| {
        let p = rpc.payload.clone();
        rpc.responder.reply(&p)
    });
    // Requests up to the largest transfer in one message here; the second NIC grants the
    // default largest message and stages larger requests (rendezvous).
    let inline = NicConfig { max_message: MAX_TRANSFER, ..NicConfig::default() };
    let nic = TcpNic::bind("127.0.0.1:0", regions.clone(), service.clone(), inline).expect("bind");
    let qp = TcpQueuePair::connect(nic.local_addr()).expect("connect");
    let staging = StagingConfig { slots: 4, slot_bytes: 1 << 20, lease: Duration::from_secs(5) };
    let staged = Rendezvous::new(service, &*regions, staging).expect("staging region");
    let staging_nic = TcpNic::bind("127.0.0.1:0", regions, staged, NicConfig::default()).expect("bind");
    let staging_qp = TcpQueuePair::connect(staging_nic.local_addr()).expect("connect");
    let mut g = c.benchmark_group("softnic_loopback");
    for len in [64u32, 896] {
        g.throughput(Throughput::Bytes(u64::from(len)));
        g.bench_with_input(BenchmarkId::new("read_round_trip", len), &len, |b, &len| {
            b.iter(|| qp.post(&[WorkRequest::Read { remote: desc.at(4096), len }]).wait().unwrap())
        });
    }
    g.bench_function("rpc_round_trip_64B", |b| b.iter(|| qp.call(&[1u8; 64]).wait().unwrap()));
    // A request over the largest message: in one message, and by rendezvous (STAGE, WRITE,
    // STAGED: two round trips).
    let large = vec![3u8; 256 << 10];
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("rpc_256KiB_one_message", |b| b.iter(|| qp.call(&large).wait().unwrap()));
    g.bench_function("rpc_256KiB_by_rendezvous", |b| {
        b.iter(|| rendezvous::call_blocking(&staging_qp, &large, Duration::from_secs(10)).unwrap())
    });
    // The allocation-free path of a GET hit: a READ into registered memory, posted with a
    // work-request id, its completion polled from the completion queue.
    let lkey = qp.register_local(Arc::new(MemoryRegion::new(4096))).expect("register local");
    let mut cq = Vec::with_capacity(4);
    g.throughput(Throughput::Bytes(896));
    g.bench_function("read_into_896B_poll_cq", |b| {
        b.iter(|| {
            let local = LocalSlice { lkey, offset: 0, len: 896 };
            qp.post_signaled(1, &[WorkRequest::ReadInto { remote: desc.at(4096), local }]).unwrap();
            cq.clear();
            while qp.poll_cq(&mut cq, 4) == 0 {
                std::thread::yield_now();
            }
        })
    });
    // One per queue-pair operation kind the store uses: a signaled WRITE, the fill's chain of
    // three WRITEs, and unsignaled WRITEs (timed with a signaled READ every 64, which is when
    // the queue pair learns they executed).
    g.throughput(Throughput::Elements(1));
    let at = |o: u64| desc.at(8192 + o);
    g.bench_function("write_round_trip_8B", |b| {
        b.iter(|| qp.post(&[WorkRequest::Write { remote: at(0), data: &[7u8; 8] }]).wait().unwrap())
    });
    let fill = [0x5Au8; 80];
    g.bench_function("fill_chain_round_trip", |b| {
        b.iter(|| {
            qp.post(&[
                WorkRequest::Write { remote: at(32), data: &fill },
                WorkRequest::Write { remote: at(24), data: &[1u8; 8] },
                WorkRequest::Write { remote: at(1), data: &[1u8] },
            ])
            .wait()
            .unwrap()
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("unsignaled_write_8B_x64", |b| {
        b.iter(|| {
            for _ in 0..63 {
                qp.post_unsignaled(&[WorkRequest::Write { remote: at(24), data: &[3u8; 8] }]).unwrap();
            }
            qp.post(&[WorkRequest::Read { remote: at(24), len: 8 }]).wait().unwrap()
        })
    });
    // The two drivers side by side: one READ at a time, and 32 in flight (as a benchmark lane
    // set keeps them). The async driver runs on a current-thread runtime, reaping on the thread
    // that awaits; the threaded one hands each completion over from its reader thread.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let async_qp = {
        let _entered = rt.enter();
        AsyncTcpQueuePair::connect(nic.local_addr()).expect("connect")
    };
    let read = [WorkRequest::Read { remote: desc.at(4096), len: 64 }];
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_64B_async_driver", |b| b.iter(|| rt.block_on(async_qp.post(&read)).unwrap()));
    g.throughput(Throughput::Elements(32));
    g.bench_function("read_64B_x32_in_flight_threaded_driver", |b| {
        b.iter(|| {
            let posted: Vec<_> = (0..32).map(|_| qp.post(&read)).collect();
            posted.into_iter().map(|c| c.wait().unwrap().len()).sum::<usize>()
        })
    });
    g.bench_function("read_64B_x32_in_flight_async_driver", |b| {
        b.iter(|| {
            let posted: Vec<_> = (0..32).map(|_| async_qp.post(&read)).collect();
            rt.block_on(async {
                let mut n = 0;
                for c in posted {
                    n += c.await.unwrap().len();
                }
                n
            })
        })
    });
    g.finish();
    drop(async_qp);
    drop(rt);
    drop(qp);
    drop(nic);
}

criterion_group!(benches, probe, hashing, codec, softnic);
criterion_main!(benches);
