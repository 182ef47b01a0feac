#!/usr/bin/env bash
# Side-by-side: Vowpal Wabbit vs `ctrflow replay` on one events file. See README.md.
# Usage: bench/peers/run.sh [EVENTS.jsonl] [compare.py options, e.g. --alpha 0.2]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ctrflow/target}"

venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
fi
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"

mkdir -p "$here/out"
events="${1:-}"
if [[ -z "$events" ]]; then
    events="$here/out/events.jsonl"
    if [[ ! -s "$events" ]]; then
        (cd "$repo" && cargo run --release -- gen --count 2000000 --seed 1 --out "$events") ||
            { echo "error: 'ctrflow gen' failed; pass an events file as argument 1" >&2; exit 1; }
    fi
fi
shift || true

# PEERS_NO_BUILD=1 uses whatever $CARGO_TARGET_DIR/release/ctrflow already is.
if [[ -z "${PEERS_NO_BUILD:-}" ]]; then
    (cd "$repo" && cargo build --release --bin ctrflow) || echo "warning: could not build ctrflow" >&2
fi
exec "$venv/bin/python" "$here/compare.py" "$events" "$@"
