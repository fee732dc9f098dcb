# Sourced by scripts/autobahn.sh and benches/ws-libs/throughput.sh: builds one ws-libs binary
# per agent, each holding only the library it tests, so that the library gets the flate2
# backend it would get alone (built together, soketto's and ratchet_rs's C zlib would also
# serve yawc, whose zlib feature asks for zlib-rs).
#
# Agents: tokio-tungstenite, yawc, soketto, ratchet_rs, and soketto-flate2-1.1.10 (soketto with
# flate2 1.1.10 in the lock file: its deflate decoder fails on every message with 1.1.11), and
# all (every library, for the echo servers).

WS_LIBS_CRATE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WS_LIBS_TARGET=$(cd "$WS_LIBS_CRATE/../.." && pwd)/target/ws-libs
WS_LIBS_BIN=$WS_LIBS_TARGET/bin

# build_agent AGENT: builds $WS_LIBS_BIN/ws-libs-AGENT.
build_agent() {
    local agent=$1 crate=$WS_LIBS_CRATE features
    case $agent in
        all) features=() ;;
        tokio-tungstenite) features=(--no-default-features) ;;
        yawc | soketto | ratchet_rs) features=(--no-default-features --features "$agent") ;;
        soketto-flate2-1.1.10)
            crate=$WS_LIBS_TARGET/flate2-1.1.10
            rm -rf "$crate" && mkdir -p "$crate"
            cp -r "$WS_LIBS_CRATE/Cargo.toml" "$WS_LIBS_CRATE/Cargo.lock" "$WS_LIBS_CRATE/src" "$crate/"
            cargo update --quiet --manifest-path "$crate/Cargo.toml" -p flate2 --precise 1.1.10
            features=(--no-default-features --features soketto) ;;
        *) echo "unknown agent $agent" >&2; return 1 ;;
    esac
    echo "== building ws-libs for $agent"
    cargo build --quiet --release --manifest-path "$crate/Cargo.toml" \
        --target-dir "$WS_LIBS_TARGET" "${features[@]}"
    mkdir -p "$WS_LIBS_BIN"
    cp "$WS_LIBS_TARGET/release/ws-libs" "$WS_LIBS_BIN/ws-libs-$agent"
}

# agent_lib AGENT: the library an agent tests.
agent_lib() {
    case $1 in
        soketto-*) echo soketto ;;
        *) echo "$1" ;;
    esac
}
