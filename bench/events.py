"""Inform → Redis subscriber latency at about half of the gateway's capacity.

    python bench/events.py [--rate 60] [--duration 20]

Simulated CPEs inform at a steady rate; an outside subscriber (redis-py, another thread)
receives every ``inform`` event and records how long after the gateway stamped it (``ts``,
the moment the Inform was being stored) it arrived. Same host, same clock. Pick ``--rate``
at about half of what bench/sessions.py measured. Target (issue): p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common import Gateway, report
from twisted.internet import defer, task


def subscribe(
    redis_url: str,
    prefix: str,
    latencies: list[float],
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    p = r.pubsub()
    p.subscribe(prefix + "events:inform")
    ready.set()
    while not stop.is_set():
        message = p.get_message(timeout=0.2)
        if message and message["type"] == "message":
            now = time.time()
            ts = datetime.fromisoformat(
                json.loads(message["data"])["ts"].replace("Z", "+00:00")
            ).timestamp()
            latencies.append(now - ts)
    p.close()
    r.close()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from cwmpgw.sim.fleet import Rate
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    redis = RedisServer().start()
    gateway = Gateway(work / "gw", redis.url).start()
    stop, ready = threading.Event(), threading.Event()
    latencies: list[float] = []
    thread = threading.Thread(
        target=subscribe, args=(redis.url, gateway.prefix, latencies, stop, ready)
    )
    try:
        fleet = gateway.fleet(reactor, devices=args.devices, concurrency=100, seed=2)
        gateway.import_credentials(fleet)
        await fleet.start()
        await fleet.run_sessions(count=args.devices, arrival=Rate(None))  # warm-up
        thread.start()
        ready.wait(10)
        latencies.clear()
        stats = await fleet.run_sessions(duration=args.duration, arrival=Rate(args.rate))
        await fleet.stop()
        await task.deferLater(reactor, 0.5, lambda: None)
        stop.set()
        thread.join(10)
        ordered = sorted(latencies)

        def q(p: float) -> float:
            return (
                ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000
                if ordered
                else float("nan")
            )

        report(
            "events",
            [
                (
                    "informs at",
                    f"{args.rate:g}/s for {args.duration:g} s ({stats.completed} sessions, {sum(stats.failures.values())} failed)",
                ),
                ("inform events received", len(ordered)),
                (
                    "latency p50 / p90 / p99 / max",
                    f"{q(50):.2f} / {q(90):.2f} / {q(99):.2f} / {ordered[-1] * 1000 if ordered else float('nan'):.2f} ms (target p99 <= 5 ms)",
                ),
            ],
            {
                "rate": args.rate,
                "duration": args.duration,
                "sessions": stats.completed,
                "events": len(ordered),
                "p50_ms": round(q(50), 3),
                "p90_ms": round(q(90), 3),
                "p99_ms": round(q(99), 3),
            },
        )
    finally:
        stop.set()
        gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--devices", type=int, default=500)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, parser.parse_args())))
