"""A client that is not ours against `ctrflow run`: confluent-kafka (librdkafka 2.16 from
PyPI) creates the topics, produces events it writes itself, and reads the scores back.

    python tests/clients/confluent_roundtrip.py --brokers 127.0.0.1:19092 --ctrflow target/debug/ctrflow

Exits non-zero unless every impression gets exactly one valid score and the bad message one
dead letter.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--ctrflow", required=True, help="path of the ctrflow binary")
    parser.add_argument("--impressions", type=int, default=2000)
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    events, scores, dead = f"py-events-{tag}", f"py-scores-{tag}", f"py-dead-{tag}"
    admin = AdminClient({"bootstrap.servers": args.brokers})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=2, replication_factor=1) for t in (events, scores, dead)]
    ).values():
        future.result(30)

    config = f"""
[kafka]
brokers = "{args.brokers}"
group_id = "py-{tag}"
[kafka.topics]
events = "{events}"
scores = "{scores}"
dead_letters = "{dead}"
[kafka.consumer]
idle_timeout_ms = 2000
[telemetry]
# Any free port: another worker may hold the default one.
listen = "127.0.0.1:0"
"""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(config)
    worker = subprocess.Popen(
        [args.ctrflow, "run", "--json", "--config", f.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True})
        t0 = 1_763_800_000_000
        for i in range(args.impressions):
            user = f"u{i % 97}"
            imp = {
                "type": "impression", "id": f"py-{i}", "ts": t0 + 40 * i, "user": user,
                "item": f"v{i % 31}",
                "ctx": {"device": ["ios", "android", "web"][i % 3], "position": i % 5, "category": "news"},
            }
            producer.produce(events, json.dumps(imp).encode(), key=user.encode())
            if i % 10 == 0:
                click = {"type": "click", "id": f"py-{i}", "ts": t0 + 40 * i + 900}
                producer.produce(events, json.dumps(click).encode(), key=user.encode())
            producer.poll(0)
        producer.produce(events, b"{not json", key=b"u0")
        assert producer.flush(30) == 0, "undelivered events"

        read_all(args.brokers, scores, args.impressions, quiet=3.0)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        if worker.returncode != 0:
            print(err.decode()[-3000:], file=sys.stderr)
            return 1
        report = json.loads(out)
        got = read_all(args.brokers, scores, args.impressions, quiet=1.0)
        letters = read_all(args.brokers, dead, 1, quiet=1.0)
    finally:
        if worker.poll() is None:
            worker.kill()
        os.unlink(f.name)

    ids = [s["id"] for s in got]
    problems = []
    if sorted(ids) != sorted(f"py-{i}" for i in range(args.impressions)):
        problems.append(f"{len(ids)} scores, {len(set(ids))} distinct, for {args.impressions} impressions")
    if not all(0.0 < s["score"] < 1.0 and isinstance(s["model_version"], int) for s in got):
        problems.append("a score is not a probability with a model version")
    if len(letters) != 1 or letters[0]["payload"] != "{not json":
        problems.append(f"dead letters: {letters}")
    if report["impressions"] != args.impressions:
        problems.append(f"report: {report['impressions']} impressions")
    for p in problems:
        print("FAIL:", p, file=sys.stderr)
    if not problems:
        print(f"confluent-kafka {args.impressions} impressions -> {len(ids)} scores, 1 dead letter: ok")
    return 1 if problems else 0


def read_all(brokers: str, topic: str, expected: int, quiet: float) -> list:
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"reader-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    out, last = [], time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = consumer.poll(0.2)
        if m is not None and m.error() is None:
            out.append(json.loads(m.value()))
            last = time.monotonic()
        elif len(out) >= expected and time.monotonic() - last > quiet:
            break
        elif time.monotonic() - last > max(quiet, 10.0):
            # The last impressions are scored when the worker stops.
            break
    consumer.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
