#!/usr/bin/env bash
# Installs what the tests and the demo need when it is missing: nats-server (Debian's package),
# the wasm32-wasip2 Rust target (for the example component) and Python websockets (for the
# compression tests). Sourced by test.sh and demo.sh. `setup_browser` (defined at the end, not run
# here) adds Chromium, chromedriver and Selenium for the browser test.

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

# The compression tests talk to a server of another implementation: Python websockets; the
# protobuf tests read and write the envelope with Google's protobuf runtime and code that
# grpcio-tools' protoc generates from proto/envelope.proto. Both in a virtualenv of its own under
# target/.
if ! target/pyws-venv/bin/python -c 'import websockets, grpc_tools, google.protobuf' >/dev/null 2>&1; then
    say "installing Python websockets 17.4 and grpcio-tools 1.76.0 into target/pyws-venv (the compression and protobuf tests)"
    [ -x target/pyws-venv/bin/pip ] || python3 -m venv target/pyws-venv
    target/pyws-venv/bin/pip install -q websockets==17.4 grpcio-tools==1.76.0 protobuf==6.33.6
fi

# The browser test (tests/browser/chat.py, run by the end-to-end test of the listener) drives
# headless Chromium through Selenium. Only the e2e step needs it, so it is a function that
# test.sh calls before that step, not something every sourcing script pays for. Debian's chromium
# and chromedriver come from the same source package, so their versions always match, and
# Selenium is pointed at both explicitly: it never downloads a browser or a driver.
setup_chromium() {
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        say "installing chromium and chromium-driver (Debian packages, for the browser test)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
}

setup_selenium() {
    if ! target/browser-venv/bin/python -c 'import selenium' >/dev/null 2>&1; then
        say "installing Python selenium 4.51.0 into target/browser-venv (the browser test's driver)"
        python3 -m venv target/browser-venv
        target/browser-venv/bin/pip install -q selenium==4.51.0
    fi
}

setup_browser() {
    setup_chromium
    setup_selenium
}
