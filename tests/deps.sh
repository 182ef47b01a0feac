#!/usr/bin/env bash
# System packages the build needs (../shared/DEPS.md): Debian's RocksDB (linked
# dynamically; .cargo/config.toml points ROCKSDB_LIB_DIR at it) and libclang (bindgen in
# librocksdb-sys), and Chromium (tests/report.rs renders `ctrflow report` headless).
# Installs them with apt when missing; a no-op otherwise.
set -euo pipefail
missing=()
for pkg in librocksdb-dev libclang-dev chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}" >&2
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
