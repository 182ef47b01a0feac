#!/usr/bin/env python3
"""Convert a ctrflow events JSONL file into Vowpal Wabbit text format (not timed).

One VW line per impression, in impression order, labelled with ctrflow's default label
rules (DESIGN.md "Labels"), applied with hindsight:

- the first decisive feedback finalizes the label: a click or like within 30 min
  (1_800_000 ms) of the impression -> 1, a skip with dwell_ms < 2000 -> -1;
- no decisive feedback within the window (silence, slow skips) -> -1.

Features get one namespace per field, with distinct first letters, so that VW's
`-q uc -q id -q pd` crosses match ctrflow's user x category, item x device and
position x device crosses. Every value is categorical (`|p position=3`). ctx fields whose
name starts with `_` are not features: `_p_true` is kept aside in `p_true.npy` (aligned
with the VW lines) for the Bayes-optimal reference logloss; labels go to `labels.npy`.

The input must be in event-time order (as `ctrflow gen` writes it): an impression is
written out once an event more than the window past it has been read.
"""

import argparse
import collections
import json
import sys

import numpy as np

WINDOW_MS = 1_800_000
FAST_SKIP_MS = 2000

# Namespace (first letter is what -q sees) for each known field.
NAMESPACES = {
    "user": "u",
    "item": "i",
    "device": "d",
    "category": "c",
    "position": "p",
    "hour": "h",
    "country": "n",
}
# Any other ctx field goes to this namespace, outside the crosses.
EXTRA_NAMESPACE = "x"

_BAD = str.maketrans({" ": "_", "|": "_", ":": "_", "\t": "_", "\n": "_"})


def _value(v):
    if isinstance(v, bool):
        raise ValueError("boolean ctx value")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).translate(_BAD)


def _features(ev):
    parts = [f"|u user={_value(ev['user'])}", f"|i item={_value(ev['item'])}"]
    extra = []
    for key, val in ev.get("ctx", {}).items():
        if key.startswith("_"):
            continue
        ns = NAMESPACES.get(key)
        feat = f"{key.translate(_BAD)}={_value(val)}"
        if ns is None:
            extra.append(feat)
        else:
            parts.append(f"|{ns} {feat}")
    if extra:
        parts.append(f"|{EXTRA_NAMESPACE} " + " ".join(extra))
    return " ".join(parts)


class _Pending:
    __slots__ = ("ts", "features", "p_true", "label", "decided")

    def __init__(self, ts, features, p_true):
        self.ts = ts
        self.features = features
        self.p_true = p_true
        self.label = -1
        self.decided = False


def convert(events_path, vw_path, labels_path, p_true_path):
    """Writes the VW file and the aligned label / p_true arrays; returns counts."""
    counts = collections.Counter()
    labels = []
    p_true = []
    queue = collections.deque()
    by_id = {}

    with open(events_path, "rb") as src, open(vw_path, "w", buffering=1 << 20) as out:

        def flush(upto_ts):
            while queue and (upto_ts is None or queue[0][1].ts + WINDOW_MS < upto_ts):
                imp_id, p = queue.popleft()
                del by_id[imp_id]
                out.write(f"{p.label} {p.features}\n")
                labels.append(p.label)
                p_true.append(p.p_true)

        for line in src:
            try:
                ev = json.loads(line)
                kind = ev["type"]
                ts = int(ev["ts"])
                imp_id = ev["id"]
                if kind == "impression":
                    features = _features(ev)
                    pt = ev.get("ctx", {}).get("_p_true", float("nan"))
                elif kind not in ("click", "like", "skip"):
                    raise ValueError(kind)
            except (ValueError, KeyError, TypeError, AttributeError):
                counts["bad_events"] += 1
                continue
            flush(ts)
            if kind == "impression":
                if imp_id in by_id:
                    counts["duplicate_impressions"] += 1
                    continue
                p = _Pending(ts, features, float(pt))
                by_id[imp_id] = p
                queue.append((imp_id, p))
                counts["impressions"] += 1
                continue
            p = by_id.get(imp_id)
            if p is None or ts - p.ts > WINDOW_MS:
                counts["late_or_orphan_feedback"] += 1
                continue
            if p.decided:
                counts["feedback_after_decision"] += 1
                continue
            if kind in ("click", "like"):
                p.label, p.decided = 1, True
            elif int(ev.get("dwell_ms", WINDOW_MS)) < FAST_SKIP_MS:
                p.label, p.decided = -1, True
        flush(None)

    np.save(labels_path, np.array(labels, dtype=np.int8))
    np.save(p_true_path, np.array(p_true, dtype=np.float64))
    counts["positives"] = sum(1 for v in labels if v == 1)
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("events")
    ap.add_argument("--vw", required=True, help="output VW text file")
    ap.add_argument("--labels", required=True, help="output labels .npy (1/-1)")
    ap.add_argument("--p-true", required=True, help="output _p_true .npy")
    a = ap.parse_args()
    counts = convert(a.events, a.vw, a.labels, a.p_true)
    json.dump(dict(counts), sys.stdout)
    print()


if __name__ == "__main__":
    main()
