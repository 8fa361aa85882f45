//! Frame codec: encode + decode of one V2 frame for 0 B, 64 B, 4 KiB and
//! 1 MiB payloads, reported as bytes/s of wire frame.
//!
//! Each iteration does what one request costs a connection: append the
//! frame to a reused write buffer (`encode_parts`), then split it off the
//! read buffer (`try_decode`, zero-copy) and drop it. The trace id has
//! the length of the client's trace ids (`xxxxxxxx-NNNN`).
//!
//! Run: `cargo bench --bench frame_codec` (or `scripts/bench.sh`).

use std::hint::black_box;

use arcbox_agent_core::protocol::{
    DEFAULT_MAX_FRAME_BYTES, MessageType, encode_parts, encoded_len, try_decode,
};
use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const TRACE_ID: &[u8] = b"5f3a9c1e-1042";

const SIZES: [(&str, usize); 4] = [("0B", 0), ("64B", 64), ("4KiB", 4 * 1024), ("1MiB", 1024 * 1024)];

fn encode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_codec/encode_decode");
    for (label, size) in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let wire = encoded_len(TRACE_ID.len(), size);
        group.throughput(Throughput::Bytes(wire as u64));
        let mut buf = BytesMut::with_capacity(wire);
        group.bench_with_input(BenchmarkId::from_parameter(label), &payload, |b, payload| {
            b.iter(|| {
                encode_parts(MessageType::PingRequest.code(), TRACE_ID, payload, &mut buf).expect("encode");
                let frame = try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).expect("valid").expect("complete");
                black_box(&frame);
                debug_assert_eq!(frame.payload.len(), payload.len());
            });
        });
    }
    group.finish();
}

fn decode_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_codec/decode");
    for (label, size) in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        encode_parts(MessageType::PingRequest.code(), TRACE_ID, &payload, &mut wire).expect("encode");
        let wire = wire.freeze();
        group.throughput(Throughput::Bytes(wire.len() as u64));
        let batch = if size > 64 * 1024 { BatchSize::LargeInput } else { BatchSize::SmallInput };
        group.bench_with_input(BenchmarkId::from_parameter(label), &wire, |b, wire| {
            // Decoding consumes its input: hand each iteration a fresh
            // buffer (the setup copy is not timed).
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| black_box(try_decode(buf, DEFAULT_MAX_FRAME_BYTES).expect("valid").expect("complete")),
                batch,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, encode_decode, decode_only);
criterion_main!(benches);
