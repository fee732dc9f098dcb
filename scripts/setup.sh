#!/usr/bin/env bash
# Installs what the tests and the demo need when it is missing: nats-server (Debian's package),
# the wasm32-wasip2 Rust target (for the example component) and Python websockets (for the
# compression tests). Sourced by test.sh and demo.sh.

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ -z "${NATS_SERVER_BIN:-}" ] && ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    say "installing nats-server (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
fi
# The Debian package may also start a system nats-server on 4222; the tests and the demo start
# their own on free ports.

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    say "adding the wasm32-wasip2 Rust target"
    rustup target add wasm32-wasip2
fi

# The compression tests talk to a server of another implementation: Python websockets, in a
# virtualenv of its own under target/.
if ! target/pyws-venv/bin/python -c 'import websockets' >/dev/null 2>&1; then
    say "installing Python websockets 17.4 into target/pyws-venv (the compression tests' server)"
    python3 -m venv target/pyws-venv
    target/pyws-venv/bin/pip install -q websockets==17.4
fi
