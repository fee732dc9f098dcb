#!/usr/bin/env bash
# The demo: builds the provider and the echo component, starts nats-server, a wasmCloud host and a
# WebSocket server, deploys examples/wadm.yaml and shows messages flowing both ways.
# `scripts/demo.sh --forever` keeps going until Ctrl-C.
# The provider's and the host's log go to target/demo/provider.log, so that only the demo's own
# lines reach the terminal (the demo binary, e2e/src/main.rs, sends its stdout and stderr there
# once the builds are done; the provider inherits both from the host). `--verbose` shows the log
# inline instead.
set -euo pipefail
for arg in "$@"; do
    case "$arg" in
        --forever | --verbose) ;;
        -h | --help)
            echo "usage: scripts/demo.sh [--forever] [--verbose]"
            exit 0
            ;;
        *)
            echo "unknown option $arg; usage: scripts/demo.sh [--forever] [--verbose]" >&2
            exit 2
            ;;
    esac
done
cd "$(dirname "$0")/.."
. scripts/setup.sh

say "building the demo (the first build compiles the wasmCloud host and takes several minutes)"
cargo build --manifest-path e2e/Cargo.toml --bin demo
exec e2e/target/debug/demo "$@"
