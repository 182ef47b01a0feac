#!/usr/bin/env bash
# The test command (README § Tests): the whole suite — unit, integration, doc tests and
# benches in test mode. Later a real Kafka-protocol broker is started here for the
# `kafka-it` tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ctrflow/target}"

cargo test --workspace --all-targets --no-fail-fast
cargo test --workspace --doc
