//! Micro-benchmarks of the codec's hot paths: masking, UTF-8 validation, frame decode/encode
//! through the connection, and permessage-deflate. `cargo bench -p weft-proto`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weft_proto::deflate::{Deflater, Inflater};
use weft_proto::utf8::Utf8Validator;
use weft_proto::{Config, Connection, Event, Message, Role, mask, utf8};

fn masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in [64usize, 128, 256, 1024, 64 << 10, 1 << 20] {
        let mut buf = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("simd", size), &size, |b, _| {
            b.iter(|| mask::apply_mask(black_box(&mut buf), [1, 2, 3, 4], 0))
        });
        g.bench_with_input(BenchmarkId::new("scalar", size), &size, |b, _| {
            b.iter(|| mask::apply_mask_scalar(black_box(&mut buf), [1, 2, 3, 4]))
        });
    }
    g.finish();
}

fn validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let ascii = "the quick brown fox jumps over the lazy dog ".repeat(1 << 14);
    let mixed = "κόσμε 😀 ünïcödé text, ".repeat(1 << 13);
    for (name, s) in [("ascii", &ascii), ("mixed", &mixed)] {
        g.throughput(Throughput::Bytes(s.len() as u64));
        g.bench_function(BenchmarkId::new("simdutf8", name), |b| b.iter(|| utf8::validate(black_box(s.as_bytes()))));
        g.bench_function(BenchmarkId::new("std", name), |b| {
            b.iter(|| std::str::from_utf8(black_box(s.as_bytes())).is_ok())
        });
        g.bench_function(BenchmarkId::new("incremental-4k-pieces", name), |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                for piece in s.as_bytes().chunks(4096) {
                    v.feed(piece).unwrap();
                }
                v.finish().unwrap()
            })
        });
    }
    g.finish();
}

/// Encode `n` messages on a client, decode them on a server (unmask, validate, hand out).
fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames");
    for size in [16usize, 512, 16 << 10] {
        let now = Instant::now();
        let mut client = Connection::new(Role::Client, Config::default(), now);
        let payload = weft_proto::bytes::Bytes::from(vec![b'x'; size]);
        let mut wire = Vec::new();
        for _ in 0..100 {
            client.send(Message::Binary(payload.clone())).unwrap();
            while let Some(b) = client.poll_transmit() {
                wire.extend_from_slice(&b);
            }
        }
        g.throughput(Throughput::Bytes((size * 100) as u64));
        g.bench_with_input(BenchmarkId::new("server-decode-100", size), &size, |b, _| {
            let mut server = Connection::new(Role::Server, Config::default(), now);
            b.iter(|| {
                server.read_buffer().extend_from_slice(&wire);
                server.handle_input(now);
                let mut n = 0;
                while let Some(Event::Message(m)) = server.poll_event() {
                    black_box(&m);
                    n += 1;
                }
                assert_eq!(n, 100);
            })
        });
        g.bench_with_input(BenchmarkId::new("server-encode-100", size), &size, |b, _| {
            let mut server = Connection::new(Role::Server, Config::default(), now);
            b.iter(|| {
                for _ in 0..100 {
                    server.send(Message::Binary(payload.clone())).unwrap();
                }
                while let Some(b) = server.poll_transmit() {
                    black_box(b);
                }
            })
        });
    }
    g.finish();
}

fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    let json: String = (0..300)
        .map(|i| {
            format!(r#"{{"topic":"prices.btc","offset":{i},"payload":{{"bid":{},"ask":{}}}}},"#, 1000 + i, 1001 + i)
        })
        .collect();
    let data = json.as_bytes();
    g.throughput(Throughput::Bytes(data.len() as u64));
    for level in [1u32, 6] {
        g.bench_function(BenchmarkId::new("compress", format!("level{level}-{}B", data.len())), |b| {
            let mut d = Deflater::new(level, 15, true, 0);
            let mut out = Vec::with_capacity(data.len());
            b.iter(|| {
                out.clear();
                d.compress(black_box(data), &mut out);
            })
        });
    }
    let mut z = Vec::new();
    Deflater::new(1, 15, true, 0).compress(data, &mut z);
    g.bench_function(BenchmarkId::new("inflate", format!("{}B", data.len())), |b| {
        let mut i = Inflater::new(15, true);
        let mut out = Vec::with_capacity(data.len() * 2);
        b.iter(|| {
            out.clear();
            i.inflate(black_box(&z), &mut out, 1 << 20).unwrap();
            i.finish(&mut out, 1 << 20).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, masking, validation, frames, deflate);
criterion_main!(benches);
