#!/usr/bin/env bash
# Throughput and latency through a real broker on loopback (bench/kafka.rs): starts tansu
# (tests/broker.sh; built once into ~/.cache/ctrflow), runs the bench, stops the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ctrflow/target}"
export CTRFLOW_BROKER_PORT="${CTRFLOW_BROKER_PORT:-19292}"
export CTRFLOW_BENCH_BROKER="127.0.0.1:$CTRFLOW_BROKER_PORT"
# Messages in memory: the bench measures ctrflow, not the broker's SQLite writes.
export CTRFLOW_BROKER_STORAGE="${CTRFLOW_BROKER_STORAGE:-memory}"
dir="$(mktemp -d)"
trap 'bash tests/broker.sh stop "$dir"; rm -rf "$dir"' EXIT
bash tests/broker.sh start "$dir"
# Its CPU time is reported beside the worker's.
export CTRFLOW_BENCH_BROKER_PID="$(cat "$dir/broker.pid")"
cargo bench --bench kafka "$@"
