#!/usr/bin/env bash
# Memory of a long replay against a short one: peak RSS and anonymous memory (sampled
# from /proc/PID/smaps_rollup every 0.2 s) of `ctrflow replay` on a stream of N1 and of
# N2 impressions from the same generator, and their ratio.
#
#   bash bench/memory.sh [N1] [N2] [extra replay args, e.g. --config FILE]
#
# Defaults: 633000 and 6330000 impressions (about 1M and 10M events). The event files go
# to $CTRFLOW_BENCH_DIR (default /tmp/ctrflow-bench-memory), made once and reused.
# CTRFLOW_BIN=PATH measures that binary instead of building this tree's (to alternate
# builds on a noisy machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ctrflow/target}"
n1="${1:-633000}"
n2="${2:-6330000}"
shift $(($# < 2 ? $# : 2))
dir="${CTRFLOW_BENCH_DIR:-/tmp/ctrflow-bench-memory}"
mkdir -p "$dir"
bin="${CTRFLOW_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build --release --quiet
    bin="$CARGO_TARGET_DIR/release/ctrflow"
fi

# Prints "peak_rss_kB peak_anon_kB examples_per_sec entities_in_memory entities_spilled
# entity_cache_kB rocksdb_kB logloss" (the last three at the end of the run).
measure() {
    local out="$dir/report.json"
    "$bin" replay --input "$1" --json "${@:2}" >"$out" 2>/dev/null &
    local pid=$! rss=0 anon=0 r a
    while kill -0 "$pid" 2>/dev/null; do
        read -r a r < <(awk '/^Anonymous/{a=$2} /^Rss/{r=$2} END{print a+0, r+0}' \
            "/proc/$pid/smaps_rollup" 2>/dev/null || echo "0 0")
        ((a > anon)) && anon=$a
        ((r > rss)) && rss=$r
        sleep 0.2
    done
    wait "$pid"
    python3 -c "import json,sys; r=json.load(open('$out')); \
e=r['entities']; \
print($rss, $anon, round(r['examples_per_sec']), e['in_memory'], e['spilled'], \
e.get('cache_bytes', 0) >> 10, e.get('store_memory_bytes', 0) >> 10, repr(r['logloss']))"
}

declare -A row
for n in "$n1" "$n2"; do
    file="$dir/events-$n.jsonl"
    [[ -s "$file" ]] || "$bin" gen --count "$n" --seed 1 --out "$file" >/dev/null 2>&1
    row[$n]="$(measure "$file" "$@")"
done
read -r r1 a1 x1 e1 s1 c1 k1 l1 <<<"${row[$n1]}"
read -r r2 a2 x2 e2 s2 c2 k2 l2 <<<"${row[$n2]}"
printf '%-28s %14s %14s %8s\n' "" "$n1 imp" "$n2 imp" "ratio"
printf '%-28s %14d %14d %8.2f\n' "peak RSS MiB" $((r1 / 1024)) $((r2 / 1024)) "$(echo "$r2 / $r1" | bc -l)"
printf '%-28s %14d %14d %8.2f\n' "peak anonymous MiB" $((a1 / 1024)) $((a2 / 1024)) "$(echo "$a2 / $a1" | bc -l)"
printf '%-28s %14d %14d %8.2f\n' "examples/s" "$x1" "$x2" "$(echo "$x2 / $x1" | bc -l)"
printf '%-28s %14d %14d\n' "entities in memory at end" "$e1" "$e2"
printf '%-28s %14d %14d\n' "entity writes (evictions)" "$s1" "$s2"
printf '%-28s %14d %14d\n' "entity maps MiB at end" $((c1 / 1024)) $((c2 / 1024))
printf '%-28s %14d %14d\n' "RocksDB in memory MiB at end" $((k1 / 1024)) $((k2 / 1024))
printf '%-28s %14s %14s\n' "logloss" "$l1" "$l2"
