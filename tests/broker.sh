#!/usr/bin/env bash
# A real, separate Kafka-protocol broker (tansu) for the integration tests.
#
#   tests/broker.sh install          build tansu into the cache once (20-40 min on 2 cores)
#   tests/broker.sh start [DIR]      start it on 127.0.0.1:$CTRFLOW_BROKER_PORT, pid and log in DIR
#   tests/broker.sh stop  [DIR]      stop it
#
# The binary lives outside the clone ($CTRFLOW_CACHE, default ~/.cache/ctrflow) so every
# run on this machine reuses it. Storage is SQLite (a file in DIR): messages survive a broker
# restart, which the reconnect test relies on. CTRFLOW_BROKER_STORAGE=memory keeps messages in
# memory instead (faster; for benchmarks: its high watermarks lag the offsets it hands out).
set -euo pipefail

CACHE="${CTRFLOW_CACHE:-$HOME/.cache/ctrflow}"
TANSU_VERSION=0.6.0
TANSU="$CACHE/tansu-$TANSU_VERSION/bin/tansu"
PORT="${CTRFLOW_BROKER_PORT:-19092}"

install() {
    if [[ -x "$TANSU" ]]; then
        return
    fi
    echo "building tansu $TANSU_VERSION into $CACHE (once per machine; 20-40 min)" >&2
    mkdir -p "$CACHE"
    # Its own target dir: the workspace's target dir is keyed to our lock file.
    CARGO_TARGET_DIR="$CACHE/tansu-build" nice cargo install tansu --version "$TANSU_VERSION" \
        --locked --features dynostore,libsql --root "$CACHE/tansu-$TANSU_VERSION"
    rm -rf "$CACHE/tansu-build"
}

start() {
    local dir="$1"
    install
    mkdir -p "$dir"
    stop "$dir" 2>/dev/null || true
    local storage="sqlite://tansu.db"
    if [[ "${CTRFLOW_BROKER_STORAGE:-sqlite}" == memory ]]; then
        storage="memory://tansu/"
    fi
    (
        cd "$dir"
        # tansu takes the SQLite path relative to its working directory.
        nohup "$TANSU" broker \
            --listener-url "tcp://127.0.0.1:$PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$PORT" \
            --storage-engine "$storage" >>broker.log 2>&1 &
        echo $! >broker.pid
    )
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            echo "tansu listening on 127.0.0.1:$PORT (log: $dir/broker.log)" >&2
            return
        fi
        sleep 0.1
    done
    echo "tansu did not start; its log:" >&2
    cat "$dir/broker.log" >&2
    exit 1
}

stop() {
    local dir="$1"
    if [[ -f "$dir/broker.pid" ]]; then
        local pid
        pid="$(cat "$dir/broker.pid")"
        # tansu shuts down cleanly on SIGINT (it ignores SIGTERM). Give it time: killed hard,
        # its SQLite storage panics on the next produce of an idempotent producer that
        # outlived it (tansu 0.6.0, lite.rs:503), and the restarted broker stops serving.
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -9 "$pid" 2>/dev/null; then
            echo "tansu did not stop on SIGINT within 30 s; killed" >&2
        fi
        rm -f "$dir/broker.pid"
    fi
}

cmd="${1:-}"
dir="${2:-$CACHE/broker}"
case "$cmd" in
    install) install ;;
    start) start "$dir" ;;
    stop) stop "$dir" ;;
    *)
        echo "usage: $0 install|start|stop [DIR]" >&2
        exit 2
        ;;
esac
