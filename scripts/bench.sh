#!/usr/bin/env bash
# The benchmark, from a fresh clone: builds the peer (wasmCloud's NATS messaging provider from
# crates.io, benches/nats-peer) and runs `cargo bench --bench throughput`, which drives both
# providers and the lattice's ceiling through the same phases, prints a table and writes
# target/bench/throughput.json. Arguments are passed to nothing; tune with the BENCH_* variables
# described at the top of benches/throughput.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

say "building the peer: wasmCloud's NATS messaging provider (benches/nats-peer, release)"
# The root's target dir: the crates both builds share are compiled once.
cargo build --release --manifest-path benches/nats-peer/Cargo.toml --target-dir target
export BENCH_NATS_PEER="$PWD/target/release/nats-peer"

say "cargo bench --bench throughput"
exec cargo bench --bench throughput
