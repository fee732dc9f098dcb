#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: installs what the tests need when it
# is missing (nats-server from Debian's packages), then runs the format check, clippy and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ -z "${NATS_SERVER_BIN:-}" ] && ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    say "installing nats-server (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi
# The Debian package may start a system nats-server on 4222; the tests start their own on free ports.
say "nats-server: $({ command -v nats-server || echo /usr/sbin/nats-server; } | head -n1)"

say "cargo fmt --check"
cargo fmt --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

say "cargo test"
cargo test
