"""CPU per Redis command: txredisapi's pool alone and through the availability guard.

    python bench/redis_client.py [--commands 20000] [--concurrency 1,3,50] [--rounds 3]

A real redis-server (tests.support.redis_server) and one txredisapi ``ConnectionPool``
(one connection, ``convertNumbers=False``), wrapped as the gateway wraps it
(cwmpgw.app.redis: ``RedisAvailability.for_txredisapi(pool, clock=reactor,
call_timeout=5.0)``, started, and ``GuardedRedis``). Each run sends ``--commands`` EVALSHA
of a trivial script from ``concurrency`` coroutines that each await one command at a time;
raw and guarded runs alternate, ``--rounds`` times each, so that drift on a noisy machine
falls on both. The figure is the CPU (user + sys, ``getrusage``) of this process per
command; redis-server is another process and is not counted. The median of the rounds is
reported, with the lowest and highest.

Then the guard alone, without Redis or sockets, where the noise of a shared machine
hides less: a fake client whose EVALSHA returns a Deferred, fired by the bench in
batches of ``concurrency``, bare and through ``GuardedRedis`` (best of the rounds,
100,000 calls each). It measures ``RedisAvailability``'s own cost per call; the direct
path to a txredisapi connection (``cwmpgw.availability._direct``) is not in it.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from common import report
from twisted.internet import defer, task


class FakeClient:
    """EVALSHA answered when the bench says so."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred[int]] = []

    def evalsha(self, sha: str) -> defer.Deferred[int]:
        d: defer.Deferred[int] = defer.Deferred()
        self.pending.append(d)
        return d


def in_memory(client: Any, fake: FakeClient, calls: int, concurrency: int) -> float:
    """CPU µs per call of ``calls`` EVALSHA, ``concurrency`` under way at a time."""
    start = cpu()
    for _ in range(calls // concurrency):
        sent = [client.evalsha("sha") for _ in range(concurrency)]
        for d in fake.pending:
            d.callback(1)
        fake.pending.clear()
        for d in sent:
            assert d.result == 1
    return (cpu() - start) / calls * 1e6


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(client: Any, sha: str, commands: int, concurrency: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``commands`` EVALSHA at ``concurrency``."""
    left = [commands]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            reply = await client.evalsha(sha)
            assert reply == 1, reply

    start_cpu, start_wall = cpu(), time.perf_counter()
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
        consumeErrors=True,
    )
    return cpu() - start_cpu, time.perf_counter() - start_wall


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import txredisapi

    from cwmpgw.availability import GuardedRedis, RedisAvailability
    from tests.support.redis_server import RedisServer

    redis = RedisServer().start()
    pool: Any = None
    availability: RedisAvailability | None = None
    try:
        pool = await txredisapi.ConnectionPool(
            redis.host, redis.port, poolsize=1, convertNumbers=False
        )
        availability = RedisAvailability.for_txredisapi(pool, clock=reactor, call_timeout=5.0)
        availability.start()
        clients: dict[str, Any] = {"raw": pool, "guarded": GuardedRedis(pool, availability)}
        sha = await pool.script_load("return 1")
        for client in clients.values():  # warm-up: imports, caches, the allocator
            await run(client, sha, min(2000, args.commands), 3)

        concurrencies = [int(c) for c in args.concurrency.split(",")]
        per_command: dict[tuple[int, str], list[float]] = {}
        wall: dict[tuple[int, str], list[float]] = {}
        for concurrency in concurrencies:
            for _ in range(args.rounds):
                for name, client in clients.items():
                    cpu_s, wall_s = await run(client, sha, args.commands, concurrency)
                    key = (concurrency, name)
                    per_command.setdefault(key, []).append(cpu_s / args.commands * 1e6)
                    wall.setdefault(key, []).append(wall_s / args.commands * 1e6)

        def median(key: tuple[int, str], table: dict[tuple[int, str], list[float]]) -> float:
            return statistics.median(table[key])

        def spread(key: tuple[int, str]) -> str:
            values = per_command[key]
            return f"{median(key, per_command):6.1f} ({min(values):.1f}-{max(values):.1f})"

        rows: list[tuple[str, Any]] = [
            (
                "commands per run",
                f"{args.commands} EVALSHA, {args.rounds} rounds, raw and guarded alternating",
            ),
            ("", "CPU µs/command, median (min-max) | extra for the guard"),
        ]
        data_rows: list[dict[str, Any]] = []
        for concurrency in concurrencies:
            raw, guarded = (concurrency, "raw"), (concurrency, "guarded")
            extra = median(guarded, per_command) - median(raw, per_command)
            rows.append(
                (
                    f"concurrency {concurrency}",
                    f"raw {spread(raw)} | guarded {spread(guarded)} | {extra:+.1f}",
                )
            )
            data_rows.append(
                {
                    "concurrency": concurrency,
                    "raw_cpu_us": round(median(raw, per_command), 2),
                    "guarded_cpu_us": round(median(guarded, per_command), 2),
                    "guard_cpu_us": round(extra, 2),
                    "raw_cpu_us_all": [round(v, 2) for v in per_command[raw]],
                    "guarded_cpu_us_all": [round(v, 2) for v in per_command[guarded]],
                    "raw_wall_us": round(median(raw, wall), 2),
                    "guarded_wall_us": round(median(guarded, wall), 2),
                }
            )
        fake = FakeClient()
        alone = RedisAvailability(defer.Deferred, lambda: 1, clock=reactor, call_timeout=5.0)
        alone.start()
        fake_clients = {"raw": fake, "guarded": GuardedRedis(fake, alone)}
        rows.append(("", "guard alone (in memory): CPU µs/call, best of the rounds"))
        memory_rows: list[dict[str, Any]] = []
        try:
            for concurrency in concurrencies:
                best: dict[str, float] = {}
                for _ in range(args.rounds):
                    for name, client in fake_clients.items():
                        us = in_memory(client, fake, 100_000, concurrency)
                        best[name] = min(best.get(name, us), us)
                extra = best["guarded"] - best["raw"]
                rows.append(
                    (
                        f"concurrency {concurrency}",
                        f"bare {best['raw']:.2f} | guarded {best['guarded']:.2f} | {extra:+.2f}",
                    )
                )
                memory_rows.append(
                    {
                        "concurrency": concurrency,
                        "bare_cpu_us": round(best["raw"], 3),
                        "guarded_cpu_us": round(best["guarded"], 3),
                        "guard_cpu_us": round(extra, 3),
                    }
                )
        finally:
            alone.stop()
        report(
            "redis_client",
            rows,
            {
                "commands": args.commands,
                "rounds": args.rounds,
                "results": data_rows,
                "guard_alone": memory_rows,
            },
        )
    finally:
        if availability is not None:
            availability.stop()
        if pool is not None:
            await pool.disconnect()
        redis.stop()


def _react(args: argparse.Namespace) -> Callable[[Any], defer.Deferred[None]]:
    return lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--concurrency", default="1,3,50")
    parser.add_argument("--rounds", type=int, default=3)
    task.react(_react(parser.parse_args()))
