"""A boot storm: every device boots within a window; admission control sheds the excess.

    python bench/storm.py [--devices 2000] [--window 10] [--admit 60]

All devices send BOOT within ``--window`` seconds; the gateway admits ``--admit`` new
sessions per second (acs.max_new_sessions_per_second) and answers the rest 503 with a
Retry-After in [5, 15] s; the simulated CPEs honour it (TR-069 retry back-off). Reported:
the drain time (storm start to every device stored) against the ideal devices / admitted
rate, how many sessions were shed, latency of the accepted sessions, and whether every
BOOT was recorded exactly once. Target (issue, at 20,000 devices): no failure other than
shedding, drain within 10% of devices / capacity, every BOOT once.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import Gateway, report
from twisted.internet import defer, task


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import redis as redis_py

    from cwmpgw.sim.fleet import Storm
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-storm-"))
    redis = RedisServer().start()
    gateway = Gateway(
        work / "gw",
        redis.url,
        acs_extra=f"max_new_sessions_per_second = {args.admit}\nretry_after_min = 5\nretry_after_max = 15",
    ).start()
    r = redis_py.Redis.from_url(redis.url, decode_responses=True)
    try:
        fleet = gateway.fleet(reactor, devices=args.devices, concurrency=200, seed=3)
        gateway.import_credentials(fleet)
        await fleet.start()
        start = time.monotonic()
        # One run for the whole storm: a run that ends drops the boots it had not started.
        run = defer.Deferred.fromCoroutine(
            fleet.run_sessions(duration=args.limit, arrival=Storm(window=args.window))
        )
        stored = 0
        while time.monotonic() - start < args.limit:
            await task.deferLater(reactor, 0.25, lambda: None)
            stored = r.zcard(gateway.prefix + "devices")
            if stored >= args.devices:
                break
        drain = time.monotonic() - start
        fleet.interrupt()
        stats = await run
        await fleet.stop()
        boots: Counter[str] = Counter()
        for _, fields in r.xrange(gateway.prefix + "events"):
            event = json.loads(fields["event"])
            if event["type"] == "inform" and any(
                e["code"] == "1 BOOT" for e in event["data"]["events"]
            ):
                boots[event["device"]["id"]] += 1
        shed = stats.failures.get("http 503", 0)
        other = {k: v for k, v in stats.failures.items() if k != "http 503"}
        # The priority reserve is a token level, not a share of the rate: once the first
        # burst is spent, BOOTs are admitted at nearly the full rate.
        ideal = args.devices / args.admit
        report(
            "storm",
            [
                ("devices booting within", f"{args.devices} in {args.window:g} s"),
                (
                    "admitted new sessions",
                    f"{args.admit}/s (shed: 503 + a scheduled Retry-After, 5-15 s)",
                ),
                ("devices stored", f"{stored}/{args.devices}"),
                (
                    "drain time",
                    f"{drain:.1f} s (ideal devices/capacity {ideal:.1f} s, {drain / ideal:.2f}x)",
                ),
                ("sessions shed (503)", shed),
                ("other failures", other or "none"),
                (
                    "accepted latency p50 / p99",
                    f"{stats.percentile(50) * 1000:.0f} / {stats.percentile(99) * 1000:.0f} ms",
                ),
                (
                    "BOOT recorded exactly once",
                    f"{sum(1 for n in boots.values() if n == 1)}/{args.devices} (more than once: {sum(1 for n in boots.values() if n > 1)})",
                ),
            ],
            {
                "devices": args.devices,
                "window": args.window,
                "admit": args.admit,
                "stored": stored,
                "drain_s": round(drain, 2),
                "ideal_s": round(ideal, 2),
                "shed": shed,
                "other_failures": other,
                "p50_ms": round(stats.percentile(50) * 1000, 1),
                "p99_ms": round(stats.percentile(99) * 1000, 1),
                "boot_once": sum(1 for n in boots.values() if n == 1),
                "boot_more": sum(1 for n in boots.values() if n > 1),
            },
        )
    finally:
        r.close()
        gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--admit", type=int, default=60)
    parser.add_argument(
        "--limit", type=float, default=300.0, help="give up after this many seconds"
    )
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, parser.parse_args())))
