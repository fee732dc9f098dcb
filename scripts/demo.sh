#!/usr/bin/env bash
# The demo: builds the provider and the echo component, starts nats-server, a wasmCloud host and a
# WebSocket server, deploys examples/wadm.yaml and shows messages flowing both ways.
# `scripts/demo.sh --forever` keeps going until Ctrl-C.
# `scripts/demo.sh chat` runs the browser chat example instead: builds the provider and the chat
# component, starts nats-server and a host, deploys examples/chat/wadm.yaml (the provider listens
# on ws://127.0.0.1:8766/chat), serves examples/chat/ on http://127.0.0.1:8080 (a free port if
# 8080 is taken), prints the page's URL to open, and runs until Ctrl-C.
# The provider's and the host's log go to target/demo/provider.log, so that only the demo's own
# lines reach the terminal (the demo binary, e2e/src/main.rs, sends its stdout and stderr there
# once the builds are done; the provider inherits both from the host). `--verbose` shows the log
# inline instead.
set -euo pipefail
usage="usage: scripts/demo.sh [--forever] [--verbose]
       scripts/demo.sh chat [--verbose]"
chat=no
forever=no
for arg in "$@"; do
    case "$arg" in
        chat) chat=yes ;;
        --forever) forever=yes ;;
        --verbose) ;;
        -h | --help)
            echo "$usage"
            exit 0
            ;;
        *)
            echo "unknown option $arg; $usage" >&2
            exit 2
            ;;
    esac
done
if [ "$chat" = yes ] && [ "$forever" = yes ]; then
    echo "the chat demo always runs until Ctrl-C (no --forever); $usage" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
. scripts/setup.sh

say "building the demo (the first build compiles the wasmCloud host and takes several minutes)"
cargo build --manifest-path e2e/Cargo.toml --bin demo
exec e2e/target/debug/demo "$@"
