#!/usr/bin/env bash
# Runs the Autobahn|Testsuite client cases (all of them) with each WebSocket client library that
# benches/ws-libs compares, then prints a summary of the reports.
#
#   scripts/autobahn.sh [agent...]   run these agents (default: all below), then summarise
#   scripts/autobahn.sh --summary    only summarise the reports of earlier runs
#   scripts/autobahn.sh --servers [agent...]
#                                    the server cases: an echo server of each library (default:
#                                    tokio-tungstenite, yawc, ratchet_rs) under the fuzzingclient,
#                                    reports in target/autobahn/reports/servers
#   scripts/autobahn.sh --provider [case...]
#                                    the server cases against the provider's own listener: the
#                                    echo setup of `cargo bench --bench listener -- --autobahn-echo`
#                                    (nats-server, the release provider with a `format = raw`,
#                                    `compression = deflate` listener, a played component that
#                                    publishes each body back to its reply-to); cases default to
#                                    all ("*"), AUTOBAHN_EXCLUDE (comma-separated, e.g. "9.*")
#                                    leaves some out; reports in target/autobahn/reports/provider
#
# Agents: tokio-tungstenite, yawc, soketto, ratchet_rs, and soketto-flate2-1.1.10 (soketto
# built against flate2 1.1.10: its deflate decoder fails on every message with flate2 1.1.11).
# Each agent is its own binary holding that library only (see benches/ws-libs/build-agents.sh).
# Everything goes under target/: the Python 2.7 virtualenv in target/autobahn-venv, the
# binaries in target/ws-libs/bin, the logs and reports in target/autobahn. A run of all agents
# takes about an hour on two cores (yawc, soketto-flate2-1.1.10 and ratchet_rs about 15-20
# minutes each, mostly in the 12.* and 13.* cases; the others about a minute).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=$ROOT/target
VENV=$TARGET/autobahn-venv
TOOLS=$TARGET/autobahn-tools
OUT=$TARGET/autobahn
REPORTS=$OUT/reports/clients
CRATE=$ROOT/benches/ws-libs
# build_agent AGENT builds $WS_LIBS_BIN/ws-libs-AGENT; agent_lib AGENT names its library.
source "$CRATE/build-agents.sh"
PORT=9001
PYTHON27=${PYTHON27:-/root/.pyenv/versions/2.7.18/bin/python2.7}
ALL_AGENTS=(tokio-tungstenite yawc soketto soketto-flate2-1.1.10 ratchet_rs)

# autobahntestsuite 0.8.2 is the last release and runs on CPython 2.7 only. These are the
# versions pip resolves for it on 2.7 (each the newest that still supports 2.7), with which
# `wstest -m fuzzingserver` starts and runs all 517 cases.
PINS=(
    autobahntestsuite==0.8.2 autobahn==0.10.9 txaio==2.1.0 Twisted==20.3.0
    zope.interface==5.5.2 Automat==22.10.0 attrs==21.4.0 constantly==15.1.0
    hyperlink==21.0.0 idna==2.10 incremental==22.10.0 PyHamcrest==1.10.1 six==1.17.0
    typing==3.10.0.0 klein==20.6.0 Tubes==0.2.1 Werkzeug==1.0.1 enum34==1.1.10
    Jinja2==2.11.3 MarkupSafe==1.1.1 pyOpenSSL==21.0.0 cryptography==3.3.2 cffi==1.15.1
    pycparser==2.21 ipaddress==1.0.23 service-identity==21.1.0 pyasn1==0.5.1
    pyasn1-modules==0.3.0 unittest2==1.1.0 argparse==1.4.0 linecache2==1.0.0
    traceback2==1.4.0 wsaccel==0.6.6 ujson==2.0.3
)
# The last virtualenv that can still create Python 2.7 environments.
VIRTUALENV=virtualenv==20.21.1

export RUST_BACKTRACE=0

install_fuzzingserver() {
    if "$VENV/bin/wstest" --help >/dev/null 2>&1; then
        return
    fi
    echo "== installing autobahntestsuite into $VENV"
    [ -x "$PYTHON27" ] || { echo "no Python 2.7 at $PYTHON27 (set PYTHON27)" >&2; exit 1; }
    rm -rf "$VENV"
    python3 -m pip install --quiet --target "$TOOLS/virtualenv" "$VIRTUALENV"
    VIRTUALENV_OVERRIDE_APP_DATA=$TOOLS/app-data PYTHONPATH=$TOOLS/virtualenv \
        python3 -m virtualenv --quiet -p "$PYTHON27" "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
}

summarise() {
    python3 "$CRATE/autobahn_summary.py" "$REPORTS/index.json" "$@" | tee "$OUT/summary.txt"
}

if [ "${1:-}" = --servers ]; then
    shift
    servers=("$@")
    [ ${#servers[@]} -gt 0 ] || servers=(tokio-tungstenite yawc ratchet_rs)
    install_fuzzingserver
    SERVER_REPORTS=$OUT/reports/servers
    mkdir -p "$SERVER_REPORTS"
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
    entries=()
    port=$((PORT + 1))
    for agent in "${servers[@]}"; do
        build_agent "$agent"
        "$WS_LIBS_BIN/ws-libs-$agent" serve-lib "$(agent_lib "$agent")" "127.0.0.1:$port" \
            >"$OUT/server-$agent.log" 2>&1 &
        pids+=($!)
        for _ in $(seq 60); do
            (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
            sleep 0.5
        done
        entries+=("{\"agent\": \"$agent\", \"url\": \"ws://127.0.0.1:$port\"}")
        port=$((port + 1))
    done
    list=$(IFS=,; echo "${entries[*]}")
    cat >"$OUT/fuzzingclient.json" <<EOF
{
    "outdir": "$SERVER_REPORTS",
    "servers": [$list],
    "cases": ["*"],
    "exclude-cases": [],
    "exclude-agent-cases": {}
}
EOF
    echo "== running the fuzzingclient against ${servers[*]} (log: $OUT/fuzzingclient.log)"
    (cd "$OUT" && timeout 4h "$VENV/bin/wstest" -m fuzzingclient -s "$OUT/fuzzingclient.json") \
        >"$OUT/fuzzingclient.log" 2>&1 || echo "   the fuzzingclient exited with $?" >&2
    python3 "$CRATE/autobahn_summary.py" "$SERVER_REPORTS/index.json" "${servers[@]}" \
        | tee "$OUT/summary-servers.txt"
    exit
fi

if [ "${1:-}" = --provider ]; then
    shift
    cases=("$@")
    [ ${#cases[@]} -gt 0 ] || cases=("*")
    install_fuzzingserver
    PROVIDER_REPORTS=$OUT/reports/provider
    mkdir -p "$PROVIDER_REPORTS"
    port=$((PORT + 100))
    # AUTOBAHN_ECHO_BIN: an already built benches/listener.rs executable (no build).
    echo_bin=${AUTOBAHN_ECHO_BIN:-}
    [ -n "$echo_bin" ] || echo "== building the echo setup (cargo bench --bench listener --no-run)"
    [ -n "$echo_bin" ] || echo_bin=$(cd "$ROOT" && cargo bench --bench listener --no-run --message-format=json \
        | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and t.get("name") == "listener" and m.get("executable"):
        print(m["executable"])')
    [ -x "$echo_bin" ] || { echo "no benches/listener.rs executable" >&2; exit 1; }
    # Run directly, not under cargo: SIGTERM reaches it, and it kills its nats-server and provider.
    # TEST_PROVIDER_OUTPUT: the provider's log lines go to that log too. The lattice's
    # nats-server runs at its default max_payload (1 MiB): larger calls are streamed, which the
    # provider's exports take whole since they are served on wrpc-transport-nats 0.31.
    TEST_PROVIDER_OUTPUT=1 "$echo_bin" --autobahn-echo "$port" \
        >"$OUT/provider-echo.log" 2>&1 &
    echo_pid=$!
    trap 'kill $echo_pid 2>/dev/null || true; wait $echo_pid 2>/dev/null || true' EXIT
    for _ in $(seq 240); do
        grep -q "autobahn-echo: ready" "$OUT/provider-echo.log" && break
        kill -0 $echo_pid 2>/dev/null || { cat "$OUT/provider-echo.log" >&2; exit 1; }
        sleep 0.5
    done
    grep -q "autobahn-echo: ready" "$OUT/provider-echo.log" \
        || { echo "the echo setup did not get ready" >&2; exit 1; }
    case_list=$(printf '"%s",' "${cases[@]}")
    exclude_list=""
    if [ -n "${AUTOBAHN_EXCLUDE:-}" ]; then
        IFS=, read -ra excluded <<<"$AUTOBAHN_EXCLUDE"
        exclude_list=$(printf '"%s",' "${excluded[@]}")
    fi
    cat >"$OUT/fuzzingclient-provider.json" <<EOF
{
    "outdir": "$PROVIDER_REPORTS",
    "servers": [{"agent": "provider", "url": "ws://127.0.0.1:$port/"}],
    "cases": [${case_list%,}],
    "exclude-cases": [${exclude_list%,}],
    "exclude-agent-cases": {}
}
EOF
    echo "== running the fuzzingclient against the provider's listener (log: $OUT/fuzzingclient-provider.log)"
    started=$(date +%s)
    (cd "$OUT" && timeout 4h "$VENV/bin/wstest" -m fuzzingclient -s "$OUT/fuzzingclient-provider.json") \
        >"$OUT/fuzzingclient-provider.log" 2>&1 || echo "   the fuzzingclient exited with $?" >&2
    echo "   took $(($(date +%s) - started)) s"
    python3 "$CRATE/autobahn_summary.py" "$PROVIDER_REPORTS/index.json" provider \
        | tee "$OUT/summary-provider.txt"
    exit
fi

if [ "${1:-}" = --summary ]; then
    shift
    summarise "$@"
    exit
fi

agents=("$@")
[ ${#agents[@]} -gt 0 ] || agents=("${ALL_AGENTS[@]}")

install_fuzzingserver
for agent in "${agents[@]}"; do
    build_agent "$agent"
done

mkdir -p "$REPORTS"
cat >"$OUT/fuzzingserver.json" <<EOF
{
    "url": "ws://127.0.0.1:$PORT",
    "outdir": "$REPORTS",
    "cases": ["*"],
    "exclude-cases": [],
    "exclude-agent-cases": {}
}
EOF

if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
    echo "port $PORT is already in use" >&2
    exit 1
fi
echo "== starting the fuzzingserver (log: $OUT/fuzzingserver.log)"
(cd "$OUT" && exec "$VENV/bin/wstest" -m fuzzingserver -s "$OUT/fuzzingserver.json") \
    >"$OUT/fuzzingserver.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 60); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    kill -0 $server 2>/dev/null || { cat "$OUT/fuzzingserver.log" >&2; exit 1; }
    sleep 0.5
done

for agent in "${agents[@]}"; do
    echo "== $agent (log: $OUT/$agent.log)"
    # The per-case timeout is the harness's; this one only stops a run that is stuck as a whole.
    timeout 3h "$WS_LIBS_BIN/ws-libs-$agent" autobahn "$(agent_lib "$agent")" "ws://127.0.0.1:$PORT" "$agent" \
        >"$OUT/$agent.log" 2>&1 || echo "   $agent: ws-libs exited with $?" >&2
    echo "   cases timed out: $(grep -c "TIMED OUT" "$OUT/$agent.log" || true)"
done

echo
summarise "${agents[@]}"
