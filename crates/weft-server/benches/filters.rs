//! What subscription filters cost per event: one event checked for 10,000 subscribers whose
//! filters are drawn from 1, 100 or 10,000 distinct ones (each evaluated once per event, its
//! verdict kept on the event), against evaluating every subscriber's filter, and against no
//! filter at all. `cargo bench -p weft-server --bench filters`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use weft_server::filter::{Filter, intern};
use weft_server::wire::Event;

const SUBSCRIBERS: usize = 10_000;

fn filter_json(k: usize) -> serde_json::Value {
    json!({"payload.price": {"$gt": k}, "payload.side": {"$in": ["buy", "sell"]}, "payload.sym": {"$startswith": "AA"}})
}

fn event() -> Event {
    Event::new("trades".into(), 1, "e".into(), None, json!({"price": 20_000, "side": "buy", "sym": "AAPL", "qty": 10}))
}

fn filters(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter_per_event_10000_subscribers");
    g.bench_function("no_filter", |b| {
        b.iter(|| {
            let ev = event();
            let mut n = 0;
            for _ in 0..SUBSCRIBERS {
                n += usize::from(black_box(&ev).offset > 0);
            }
            n
        })
    });
    for distinct in [1usize, 100, 10_000] {
        let shared: Vec<Arc<Filter>> = (0..distinct).map(|k| intern(&filter_json(k)).unwrap()).collect();
        g.bench_with_input(BenchmarkId::new("once_per_distinct_filter", distinct), &distinct, |b, &d| {
            b.iter(|| {
                let ev = event();
                (0..SUBSCRIBERS).filter(|i| shared[i % d].matches(black_box(&ev))).count()
            })
        });
        let own: Vec<Filter> = (0..distinct).map(|k| Filter::compile(&filter_json(k)).unwrap()).collect();
        g.bench_with_input(BenchmarkId::new("every_subscriber_evaluated", distinct), &distinct, |b, &d| {
            b.iter(|| {
                let ev = event();
                (0..SUBSCRIBERS).filter(|i| own[i % d].matches(black_box(&ev))).count()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
