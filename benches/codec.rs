//! The envelope codecs alone, for instruction counts: encodes (or decodes) one message `n` times
//! in one format, so that `valgrind --tool=callgrind` of one run per format gives the cost of a
//! format per message, free of the machine's noise and of everything else a publish does.
//!
//! `cargo bench --bench codec -- <json|msgpack|protobuf> <encode|decode> <bytes> <n>`
//! (default: every format, both ways, 1024 bytes, 100,000 times, with wall-clock rates).
//! BENCHMARKS.md, "The envelope formats", has the counts and the command.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use wasmcloud_provider_messaging_websocket::bindings::wasmcloud::messaging::types::BrokerMessage;
use wasmcloud_provider_messaging_websocket::config::Format;
use wasmcloud_provider_messaging_websocket::envelope::Codec;

fn format(name: &str) -> Format {
    match name {
        "json" => Format::Json,
        "msgpack" => Format::Msgpack,
        "protobuf" => Format::Protobuf,
        other => panic!("unknown format {other} (json, msgpack, protobuf)"),
    }
}

fn run(name: &str, way: &str, size: usize, n: usize) -> f64 {
    let codec = Codec::new(format(name), "unused");
    let msg = BrokerMessage {
        subject: "bench.codec.subject".into(),
        body: Bytes::from((0..size).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>()),
        reply_to: None,
    };
    let frame = codec.encode(&msg, None).payload().clone();
    let start = Instant::now();
    for _ in 0..n {
        match way {
            "encode" => {
                black_box(codec.encode(black_box(&msg), None));
            }
            "decode" => {
                let _ = black_box(codec.decode(black_box(frame.clone())));
            }
            other => panic!("unknown way {other} (encode, decode)"),
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let [name, way, size, n] = &args[..] {
        run(name, way, size.parse().unwrap(), n.parse().unwrap());
        return;
    }
    for way in ["encode", "decode"] {
        for name in ["json", "msgpack", "protobuf"] {
            let rate = run(name, way, 1024, 100_000);
            println!("{name} {way} 1024 B: {rate:.0}/s");
        }
    }
}
