#!/usr/bin/env python3
"""Side-by-side: Vowpal Wabbit (FTRL-Proximal) vs `ctrflow replay` on one events file.

Converts the events to VW text format (not timed, see to_vw.py), runs VW's own C++ driver
over the whole file in one call, runs `ctrflow replay --input FILE --json`, and prints one
table. Both processes are measured the same way: wall time around the child process, peak
RSS from GNU time (`/usr/bin/time -f %M`), or os.wait4's rusage without it.
"""

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

import to_vw

HERE = os.path.dirname(os.path.abspath(__file__))
CROSSES = ["uc", "id", "pd"]


TIME = "/usr/bin/time"


def steal_secs():
    """CPU time the hypervisor took from this VM's vCPUs so far (all of them, seconds; the
    `steal` column of /proc/stat), or None where there is no such file."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def steal_since(before):
    after = steal_secs()
    return None if before is None or after is None else after - before


def run_measured(cmd, stdout_path, stderr_path):
    """Runs cmd; returns (exit code, wall seconds, peak RSS in MiB, seconds stolen from the
    vCPUs meanwhile or None).

    Peak RSS comes from GNU time when present: the rusage of a child forked straight from
    this (large) Python process can report the parent's RSS at fork time instead of the
    child's own. Otherwise, from os.wait4's rusage of the child.
    """
    rss_file = stdout_path + ".maxrss"
    wrapped = [TIME, "-f", "%M", "-o", rss_file] + cmd if os.access(TIME, os.X_OK) else cmd
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        steal = steal_secs()
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        steal = steal_since(steal)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss
    if wrapped is not cmd:
        with open(rss_file) as f:
            # GNU time writes "Command exited with non-zero status N" first on failure.
            rss_kib = int(f.read().split()[-1])
        os.remove(rss_file)
    return proc.returncode, wall, rss_kib / 1024.0, steal


def auc(scores, positive):
    """Exact ROC AUC (Mann-Whitney with average ranks for ties)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = avg_rank[inverse][positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(p, y):
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def metrics(p, y):
    base = float(y.mean())
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    ll = logloss(p, y)
    return {
        "logloss": ll,
        "normalized_entropy": ll / entropy,
        "auc": auc(p, y),
        "calibration": float(p.mean() / base),
    }


def source_stamp(events):
    """What the VW examples were converted from: the events file (path, size, modification
    time) and the converter's own text. A conversion is reused only for the same stamp."""
    st = os.stat(events)
    with open(os.path.join(HERE, "to_vw.py"), "rb") as f:
        converter = hashlib.sha256(f.read()).hexdigest()
    return {"events": os.path.abspath(events), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "converter": converter}


def convert(events, out_dir):
    paths = {k: os.path.join(out_dir, f) for k, f in
             [("vw", "events.vw"), ("labels", "labels.npy"), ("p_true", "p_true.npy")]}
    stamp_path = os.path.join(out_dir, "events.vw.source.json")
    stamp = source_stamp(events)
    try:
        with open(stamp_path) as f:
            fresh = json.load(f) == stamp and all(os.path.exists(p) for p in paths.values())
    except (OSError, ValueError):
        fresh = False
    if fresh:
        print(f"reusing {paths['vw']} (converted from this {events})", file=sys.stderr)
        return paths, None
    # Removed first, written last: an interrupted conversion is never taken for a whole one.
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    print(f"converting {events} -> {paths['vw']} (not timed) ...", file=sys.stderr)
    t = time.perf_counter()
    counts = to_vw.convert(events, paths["vw"], paths["labels"], paths["p_true"])
    print(f"  {dict(counts)} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return paths, counts


def vw_command(a, vw_file, preds=None):
    cmd = [sys.executable, "-m", "vowpalwabbit", "--data", vw_file,
           "--ftrl", "--ftrl_alpha", str(a.alpha), "--ftrl_beta", str(a.beta),
           "--l1", str(a.l1), "--l2", str(a.l2), "-b", str(a.bits),
           "--loss_function", "logistic", "--link", "logistic"]
    for q in CROSSES:
        cmd += ["-q", q]
    if preds:
        cmd += ["-p", preds]
    return cmd


def time_vw(a, paths, out_dir):
    """One timed VW run without -p: (wall seconds, peak RSS MiB, VW's own average loss,
    seconds stolen from the vCPUs)."""
    cmd = vw_command(a, paths["vw"])
    print("running VW:", " ".join(cmd[1:]), file=sys.stderr)
    log = os.path.join(out_dir, "vw.log")
    code, wall, rss, steal = run_measured(cmd, os.path.join(out_dir, "vw.out"), log)
    if code != 0:
        sys.exit(f"VW failed with exit code {code}; see {log}")
    with open(log) as f:
        m = re.search(r"average loss = ([0-9.eE+-]+)", f.read())
    return wall, rss, float(m.group(1)) if m else float("nan"), steal


def run_vw(a, paths, out_dir):
    # Interpreter start + pylibvw import + an empty workspace: the Python-wrapper overhead
    # that the `vw` binary would not have. Reported, not subtracted.
    _, startup, _, _ = run_measured(
        [sys.executable, "-c", "import vowpalwabbit; vowpalwabbit.Workspace('--quiet').finish()"],
        os.path.join(out_dir, "startup.out"), os.devnull)
    # VW's driver writes each prediction with its own write(2) call, which costs more than
    # the learning itself here; so the timed run has no -p, and an otherwise identical run
    # (single pass, deterministic: same predictions) writes them for AUC and logloss.
    wall, rss, vw_avg_loss, steal = time_vw(a, paths, out_dir)

    preds = os.path.join(out_dir, "vw_preds.txt")
    print("running VW again with -p", preds, file=sys.stderr)
    log_p = os.path.join(out_dir, "vw_p.log")
    code, wall_p, _, _ = run_measured(vw_command(a, paths["vw"], preds),
                                      os.path.join(out_dir, "vw_p.out"), log_p)
    if code != 0:
        sys.exit(f"VW failed with exit code {code}; see {log_p}")
    p = np.fromfile(preds, sep=" ")
    y = np.load(paths["labels"]) == 1
    if len(p) != len(y):
        sys.exit(f"VW wrote {len(p)} predictions for {len(y)} examples")
    row = {"examples": len(y), "wall_secs": wall, "examples_per_sec": len(y) / wall,
           "peak_rss_mib": rss, "startup_secs": startup, "wall_secs_with_p": wall_p,
           "vw_average_loss": vw_avg_loss, "steal_secs": steal, **metrics(p, y)}
    pt = np.load(paths["p_true"])
    if not np.isnan(pt).any():
        row["reference_logloss"] = logloss(pt, y)
        row["reference_auc"] = auc(pt, y)
    row["positives"] = int(y.sum())
    return row


def replay_command(a, events, out_dir, workers, drift):
    """`ctrflow replay` of `events` with `workers` workers and the config `run_ctrflow`
    writes for `drift` (with or without the detectors); returns (command, config path)."""
    config = os.path.join(out_dir, "ctrflow-same-features.toml" if drift else "ctrflow-no-drift.toml")
    cmd = [a.ctrflow, "replay", "--input", events, "--json", "--workers", str(workers),
           "--config", config]
    return cmd, config


def run_ctrflow(a, events, out_dir, workers, drift=True):
    binary = a.ctrflow
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        return None, f"no ctrflow binary at {binary} (build it: cargo build --release)"
    probe = subprocess.run([binary, "replay", "--help"], capture_output=True)
    if probe.returncode != 0 or b"--input" not in probe.stdout:
        return None, f"{binary} has no `replay` subcommand yet"
    # The same features as VW's examples: entity features (ctrflow's incremental per-user,
    # per-item counters, which VW's text examples do not carry) off. Without `drift`, the
    # drift detectors (work VW does not do) off too: the core pipeline alone.
    cmd, config = replay_command(a, events, out_dir, workers, drift)
    with open(config, "w") as f:
        f.write("[features.entity]\nenabled = false\n")
        if not drift:
            f.write("[drift]\nenabled = false\n")
    print("running ctrflow:", " ".join(cmd), file=sys.stderr)
    tag = f"ctrflow-{workers}w" + ("" if drift else "-no-drift")
    stdout = os.path.join(out_dir, f"{tag}.json")
    log = os.path.join(out_dir, f"{tag}.log")
    code, wall, rss, steal = run_measured(cmd, stdout, log)
    if code != 0:
        return None, f"ctrflow replay failed with exit code {code}; see {log}"
    with open(stdout) as f:
        text = f.read()
    try:
        report = json.loads(text)
    except ValueError:
        lines = [line for line in text.splitlines() if line.lstrip().startswith("{")]
        if not lines:
            return None, f"ctrflow replay printed no JSON object; see {stdout}"
        report = json.loads(lines[-1])
    row = dict(report)
    row["examples"] = report.get("impressions")
    row["self_examples_per_sec"] = report.get("examples_per_sec")
    row["wall_secs"] = wall
    row["examples_per_sec"] = (report.get("impressions") or 0) / wall
    row["peak_rss_mib"] = rss
    row["steal_secs"] = steal
    return row, None


def run_pair(a, events, out_dir):
    """Two `ctrflow replay --workers 1` at once, each a whole replay of the events, with the
    drift detectors (as `run_ctrflow`'s 1-worker run); returns the wall seconds until both
    are done and the seconds stolen from the vCPUs meanwhile, or None. Two processes that
    share only the cores, caches and memory: about the most 2 workers can expect of this
    machine."""
    cmd, config = replay_command(a, events, out_dir, 1, drift=True)
    if not os.path.isfile(config):
        return None
    procs = []
    steal = steal_secs()
    start = time.perf_counter()
    for i in range(2):
        with open(os.path.join(out_dir, f"ctrflow-pair-{i}.json"), "wb") as out, \
                open(os.path.join(out_dir, f"ctrflow-pair-{i}.log"), "wb") as err:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=err))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    return (wall, steal_since(steal)) if codes == [0, 0] else None


ROWS = [
    ("examples", "examples", "{:,.0f}"),
    ("examples/s (wall, median)", "examples_per_sec", "{:,.0f}"),
    ("examples/s (wall, best round)", "best_examples_per_sec", "{:,.0f}"),
    ("wall seconds (median)", "wall_secs", "{:.2f}"),
    ("  VW again, with -p preds", "wall_secs_with_p", "{:.2f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:,.0f}"),
    ("progressive logloss", "logloss", "{:.5f}"),
    ("normalized entropy", "normalized_entropy", "{:.4f}"),
    ("AUC", "auc", "{:.4f}"),
    ("calibration (mean p / CTR)", "calibration", "{:.3f}"),
    ("reference logloss (p_true)", "reference_logloss", "{:.5f}"),
    ("self-reported examples/s", "self_examples_per_sec", "{:,.0f}"),
    ("bad events", "bad_events", "{:,.0f}"),
]


def fmt(spec, v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)


def table(vw, runs, a):
    """One VW column, then for each ctrflow run its column and its ratio to VW."""
    head = f"{'':28} {'VW ' + a.vw_version:>16}"
    for name, _ in runs:
        head += f" {name:>16} {'/VW':>7}"
    lines = [head]
    for label, key, spec in ROWS:
        v = vw.get(key)
        line = f"{label:28} {fmt(spec, v):>16}"
        for _, cf in runs:
            c = (cf or {}).get(key)
            ratio = "-"
            if isinstance(v, (int, float)) and isinstance(c, (int, float)) and v:
                ratio = f"{c / v:.3f}x"
            line += f" {fmt(spec, c):>16} {ratio:>7}"
        lines.append(line)
    return "\n".join(lines)


PAIR = "2 x 1w at once"


def print_scaling(walls):
    """2 workers against 1, by the median wall times, beside the machine's own ceiling: two
    1-worker replays at once against one alone (each replays every event, so their
    throughput is twice the events over the time both took)."""
    med = {name: statistics.median(w) for name, w in walls.items()}
    lines = []
    for one, two in [("ctrflow 1w", "ctrflow 2w"), ("1w, no drift", "2w, no drift")]:
        if one in med and two in med:
            lines.append(f"  {two} / {one}: {med[one] / med[two]:.2f}x")
    if PAIR in med and "ctrflow 1w" in med:
        ceiling = 2 * med["ctrflow 1w"] / med[PAIR]
        line = f"  two 1-worker replays at once / one alone: {ceiling:.2f}x (this machine's ceiling for 2 workers"
        if "ctrflow 2w" in med:
            line += f"; 2 workers reach {med['ctrflow 1w'] / med['ctrflow 2w'] / ceiling:.0%} of it"
        lines.append(line + ")")
    if lines:
        print("Scaling, by the median wall times of the rounds:")
        print("\n".join(lines))
        print()


def print_steal(steals, rounds):
    """Per round, the CPU seconds the hypervisor took from the vCPUs while each program ran
    (summed over the vCPUs): a round where a program lost seconds to it says so."""
    if all(x is None for v in steals.values() for x in v):
        return
    print("CPU seconds stolen from the vCPUs by the hypervisor while each ran (/proc/stat):")
    for i in range(rounds):
        parts = [f"{name} {v[i]:.2f}" for name, v in steals.items()
                 if i < len(v) and v[i] is not None]
        print(f"  round {i + 1}: " + ", ".join(parts))
    print()


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "..", "target"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events", help="events JSONL file (as `ctrflow gen` writes it)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--ctrflow", default=os.path.join(target, "release", "ctrflow"))
    ap.add_argument("--alpha", type=float, default=0.1, help="FTRL alpha")
    ap.add_argument("--beta", type=float, default=1.0, help="FTRL beta")
    ap.add_argument("--l1", type=float, default=1.0, help="McMahan lambda1 (= VW --l1 with --ftrl)")
    ap.add_argument("--l2", type=float, default=1.0, help="McMahan lambda2 (= VW --l2 with --ftrl)")
    ap.add_argument("--bits", type=int, default=22)
    ap.add_argument("--skip-ctrflow", action="store_true")
    ap.add_argument("--workers", default="1,2", help="ctrflow worker counts to run, comma-separated")
    ap.add_argument("--no-drift-workers", default="1,2",
                    help="worker counts also run with the drift detectors off (VW has none), "
                         "comma-separated; empty for none")
    ap.add_argument("--no-pair", action="store_true",
                    help="do not time two 1-worker replays at once (the machine's ceiling for "
                         "2 workers)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="times each program is timed, in turn; the table shows the median")
    a = ap.parse_args()
    a.rounds = max(1, a.rounds)
    from importlib.metadata import version
    a.vw_version = version("vowpalwabbit")
    os.makedirs(a.out_dir, exist_ok=True)

    paths, _ = convert(a.events, a.out_dir)
    # Round 1 also measures quality (VW's run with -p); every round times each program once,
    # in turn, so that the machine's slow and fast spells fall on all of them alike.
    vw = run_vw(a, paths, a.out_dir)
    walls = {"VW": [vw["wall_secs"]]}
    steals = {"VW": [vw["steal_secs"]]}
    runs, why = [], "skipped (--skip-ctrflow)"
    variants = [] if a.skip_ctrflow else (
        [(f"ctrflow {w}w", int(w), True) for w in a.workers.split(",") if w]
        + [(f"{w}w, no drift", int(w), False) for w in a.no_drift_workers.split(",") if w])
    for round_ in range(a.rounds):
        if round_ > 0:
            wall, _, _, steal = time_vw(a, paths, a.out_dir)
            walls["VW"].append(wall)
            steals["VW"].append(steal)
        for name, workers, drift in variants:
            cf, why = run_ctrflow(a, a.events, a.out_dir, workers, drift)
            if cf is None:
                continue
            walls.setdefault(name, []).append(cf["wall_secs"])
            steals.setdefault(name, []).append(cf["steal_secs"])
            if round_ == 0:
                # Both sides must have seen the same impressions, or the ratios compare
                # different streams.
                if cf["examples"] != vw["examples"]:
                    sys.exit(f"{name} scored {cf['examples']:,} impressions of {a.events}, VW "
                             f"learned from {vw['examples']:,} examples of {paths['vw']}: "
                             f"not the same stream")
                runs.append((name, cf))
        # The pair is read against the 1-worker run with the detectors: only beside it.
        if not a.no_pair and ("ctrflow 1w", 1, True) in variants:
            pair = run_pair(a, a.events, a.out_dir)
            if pair is not None:
                walls.setdefault(PAIR, []).append(pair[0])
                steals.setdefault(PAIR, []).append(pair[1])
    # The table shows each program's median wall time over the rounds, and its best round:
    # VW runs a parser thread beside its learner, and on 2 vCPUs their handoff has a slow
    # mode (3x the wall time, ~170k context switches) that can take most rounds; its best
    # round is what VW can do, and the fair comparison.
    for row, name in [(vw, "VW")] + [(cf, name) for name, cf in runs]:
        row["wall_secs"] = statistics.median(walls[name])
        row["examples_per_sec"] = row["examples"] / row["wall_secs"]
        row["best_examples_per_sec"] = row["examples"] / min(walls[name])
        row["walls"] = walls[name]
    cf = runs[0][1] if runs else None

    print()
    print(table(vw, runs, a))
    print()
    if a.rounds > 1:
        print(f"examples/s per round (the table: the median of {a.rounds}), ratio to VW's in the same round:")
        for i in range(a.rounds):
            line = f"  round {i + 1}: VW {vw['examples'] / walls['VW'][i]:>10,.0f}"
            for name, row in runs:
                if i < len(walls[name]):
                    rate = row["examples"] / walls[name][i]
                    line += f"   {name} {rate:>10,.0f} ({walls['VW'][i] / walls[name][i]:.2f}x)"
            print(line)
        print()
    print_steal(steals, a.rounds)
    print_scaling(walls)
    print(f"VW: {' '.join(vw_command(a, 'events.vw')[3:])} (python -m vowpalwabbit: VW's C++ driver)")
    print(f"    FTRL alpha={a.alpha} beta={a.beta} lambda1={a.l1} lambda2={a.l2}, 2^{a.bits} weights; "
          f"{vw['positives']:,} positives ({vw['positives'] / vw['examples']:.2%})")
    print(f"VW time is the VW call only (conversion to VW text excluded), without -p; it includes "
          f"{vw['startup_secs']:.2f}s of Python start + pylibvw import, measured separately.")
    print(f"VW metrics come from an identical run with -p (VW's own average loss: "
          f"{vw['vw_average_loss']:.6f}); -p costs one write(2) per prediction.")
    print("VW learns from pre-joined labels with no delay; ctrflow learns under real label delay "
          "from the raw events (and parses JSON).")
    if cf is None:
        print(f"ctrflow: {why}")
    else:
        print("ctrflow: `replay --input FILE --json`, its default model settings and drift "
              "detectors (\"no drift\": `[drift] enabled = false`); wall time includes reading "
              "and decoding the JSONL.")
    with open(os.path.join(a.out_dir, "compare.json"), "w") as f:
        json.dump({"vw": vw, "ctrflow": dict(runs), "ctrflow_note": why, "walls": walls,
                   "steal_secs": steals}, f, indent=2)


if __name__ == "__main__":
    main()
