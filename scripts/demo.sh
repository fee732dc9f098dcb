#!/usr/bin/env bash
# The demo: builds the provider and the echo component, starts nats-server, a wasmCloud host and a
# WebSocket server, deploys examples/wadm.yaml and shows messages flowing both ways.
# `scripts/demo.sh --forever` keeps going until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

say "building the demo (the first build compiles the wasmCloud host and takes several minutes)"
cargo build --manifest-path e2e/Cargo.toml --bin demo
exec e2e/target/debug/demo "$@"
