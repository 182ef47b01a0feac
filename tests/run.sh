#!/usr/bin/env bash
# The test command (README § Tests): the whole suite — unit, integration, doc tests and
# benches in test mode — with a real, separate Kafka-protocol broker (tansu) started on
# 127.0.0.1 for the `kafka-it` tests and stopped afterwards.
#
# The broker binary is built once into ~/.cache/ctrflow (20-40 min on a fresh machine;
# tests/broker.sh) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ctrflow/target}"
export CTRFLOW_BROKER_PORT="${CTRFLOW_BROKER_PORT:-19092}"
export CTRFLOW_TEST_BROKER="127.0.0.1:$CTRFLOW_BROKER_PORT"
export CTRFLOW_TEST_RESTART_PORT="${CTRFLOW_TEST_RESTART_PORT:-19192}"

bash tests/deps.sh

broker_dir="$(mktemp -d)"
cleanup() {
    bash tests/broker.sh stop "$broker_dir" || true
    rm -rf "$broker_dir"
}
trap cleanup EXIT

# Build the broker (once) while nothing else competes for the cores, then start it.
bash tests/broker.sh install
# SQLite storage (tests/broker.sh). Not tansu 0.6.0's in-memory storage: its high
# watermarks fall behind the offsets it hands out (a consumer committed 56,879 of a
# partition whose high watermark it reported as 56,527), and the kill -9 tests wait for
# committed offsets to reach the high watermark.
bash tests/broker.sh start "$broker_dir"

cargo test --workspace --all-targets --features ctrflow/kafka-it --no-fail-fast
cargo test --workspace --doc

# A client that is not ours: confluent-kafka from PyPI (librdkafka 2.16) produces events
# to and reads scores from `ctrflow run`. Its venv is cached beside the broker.
venv="${CTRFLOW_CACHE:-$HOME/.cache/ctrflow}/venv-confluent-2.16.1"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import confluent_kafka" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "confluent-kafka==2.16.1"
fi
"$venv/bin/python" tests/clients/confluent_roundtrip.py \
    --brokers "$CTRFLOW_TEST_BROKER" --ctrflow "$CARGO_TARGET_DIR/debug/ctrflow"
