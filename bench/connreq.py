"""HTTP Digest connection requests to 10,000 simulated CPEs, per sender core-second.

    python bench/connreq.py [--devices 10000] [--concurrency 100] [--path http,wake]

The simulated CPEs are the simulator's one connection-request listener for a whole fleet
(cwmpgw.sim.connreq: a URL ``/cr/<token>`` per device, HTTP Digest with per-device
credentials, fresh nonces and replay checks), run by bench/connreq_cpes.py in a process of
its own so that its CPU is not counted. A valid request is answered 204 and nothing
follows: the CPE does not open the "6 CONNECTION REQUEST" session, because what is
measured here is the sender of connection requests (bench/sessions.py measures sessions).

Two paths are measured, each sending one connection request to every device:

- ``http``: the HTTP client alone (cwmpgw.connreq.http.HttpConnectionRequester, as the
  gateway builds it): GET, 401 with a Digest challenge, authenticated GET on a new
  connection, 204.
- ``wake``: the gateway's ``wake(device)`` (cwmpgw.connreq.waker), wired by the gateway's
  own composition root (cwmpgw.service.GatewayService, in this process) against a real
  redis-server: device record and sealed credential read from Redis, STUN binding lookup,
  per-device interval claim (one script), the guard, rate and concurrency limits, the HTTP
  exchange, and the ``connreq.succeeded`` event (XADD + PUBLISH, and received back by the
  gateway's own event listener; ``--sent-events`` adds ``connreq.sent`` before each
  attempt). ``connreq.session_wait`` is 0: the simulated CPEs open no session to wait for.

The bench keeps ``--concurrency`` requests (or wake-ups) in flight. The figure is CPU
seconds (user+sys) of this process, the sender, per request; Redis and the simulated
CPEs run in other processes and are not counted. Log events of info and above are written
to a file, as ``twistd --logger=cwmpgw.logs.text`` does; ``--debug-log`` writes debug
events too, as twistd's default observer does (the client's one debug line per request
then costs about a tenth of its CPU). Target (issue): >= 800 connection requests per
core-second.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from common import ROOT, report
from twisted.internet import defer, task

WARMUP = 300  # extra devices, used once before measuring (imports, caches, allocator)


class Device:
    __slots__ = ("device_id", "password", "url", "username")

    def __init__(self, row: dict[str, str]) -> None:
        self.device_id = row["device_id"]
        self.url = row["url"]
        self.username = row["cr_username"]
        self.password = row["cr_password"]


class Result:
    """What one measured pass did."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latencies: list[float] = []
        self.outcomes: Counter[str] = Counter()
        self.cpu = 0.0
        self.sys = 0.0  # of which in the kernel (sockets)
        self.wall = 0.0

    @property
    def ok(self) -> int:
        return self.outcomes.get("ok", 0)

    @property
    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes.items() if k != "ok"}

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def per_core(self) -> float:
        return self.ok / self.cpu if self.cpu else 0.0


def own_cpu() -> tuple[float, float]:
    """user+sys and sys seconds of this process (the sender)."""
    times = os.times()
    return times.user + times.system, times.system


async def drive(
    reactor: Any,
    devices: Sequence[Device],
    concurrency: int,
    one: Callable[[Device], Awaitable[tuple[str, str]]],
    result: Result,
) -> None:
    """``one(device)`` for every device, ``concurrency`` at a time; (outcome, detail) each."""
    queue = iter(devices)

    async def worker() -> None:
        for device in queue:
            start = reactor.seconds()
            outcome, detail = await one(device)
            result.latencies.append(reactor.seconds() - start)
            result.outcomes[outcome if outcome == "ok" else f"{outcome}: {detail}"] += 1

    (cpu0, sys0), wall0 = own_cpu(), time.monotonic()
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
        consumeErrors=True,
    )
    result.wall += time.monotonic() - wall0
    cpu1, sys1 = own_cpu()
    result.cpu += cpu1 - cpu0
    result.sys += sys1 - sys0


async def http_path(
    reactor: Any, devices: Sequence[Device], warm: Sequence[Device], concurrency: int
) -> Result:
    from cwmpgw.connreq.http import HttpConnectionRequester

    # The gateway's defaults (connreq.connect_timeout, connreq.timeout).
    requester = HttpConnectionRequester(reactor, connect_timeout=2.0, total_timeout=5.0)

    async def one(device: Device) -> tuple[str, str]:
        attempt = await requester.request(device.url, device.username, device.password)
        return attempt.outcome, attempt.detail

    try:
        await drive(reactor, warm, concurrency, one, Result("warm-up"))
        result = Result("http")
        await drive(reactor, devices, concurrency, one, result)
        return result
    finally:
        await requester.close()


async def start_gateway(
    reactor: Any, work: Path, redis_url: str, concurrency: int, sent_events: bool = False
) -> Any:
    from cwmpgw.config import parse_config
    from cwmpgw.service import GatewayService

    config = parse_config(
        {
            "gateway": {"data_dir": str(work / "data"), "node": "bench"},
            "acs": {"port": 0, "interface": "127.0.0.1", "hostname": "localhost"},
            "redis": {"url": redis_url, "prefix": "bench:"},
            "nbi": {"enabled": False},
            "metrics": {"enabled": False},
            "connreq": {
                # The guard refuses loopback targets by default (a CPE could otherwise
                # aim our requests at the gateway's own host). The simulated CPEs listen
                # on 127.0.0.1, so the bench allows 127.0.0.0/8 explicitly, as a lab
                # would; every request still goes through the guard's checks.
                "allowed_networks": ["127.0.0.0/8"],
                # STUN on as by default (each wake-up then looks up a STUN binding in
                # Redis), on loopback and a free port.
                "stun_interface": "127.0.0.1",
                "stun_port": 0,
                # The simulated CPEs open no session: waiting for one is not the cost of
                # sending (and would only time out).
                "session_wait": 0,
                # No rate cap (the default 100/s is a deployment choice, not a cost), and
                # the bench's own bound on requests in flight. Every simulated CPE shares
                # one address, so the per-destination bound must allow them all.
                "rate": 100000,
                "max_concurrent": concurrency,
                "per_destination": min(concurrency, 1000),
                "sent_events": sent_events,
                # Defaults kept: min_interval 10 s (each device is woken once: one SET NX
                # per wake-up), retries 2 (network errors only), timeouts 2 s / 5 s.
            },
            "provision": {"credentials": False, "periodic_inform": False},
        }
    )
    service = GatewayService(config, reactor)
    service.startService()
    await service.whenStarted()
    return service


async def load_devices(service: Any, devices: Sequence[Device]) -> None:
    """Each device as the gateway knows it after an Inform from 127.0.0.1, and its
    connection-request credential (sealed in Redis), through the gateway's stores."""
    from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
    from cwmpgw.sim.device import parse_device_id
    from cwmpgw.store.interfaces import ConnReqCredential, InformRecord

    ms = "Device.ManagementServer."
    batch: list[defer.Deferred[Any]] = []
    for device in devices:
        oui, product_class, serial = parse_device_id(device.device_id)
        record = InformRecord(
            device_id=device.device_id,
            device=DeviceId("Bench", oui, product_class, serial),
            ts=time.time(),
            source="127.0.0.1",
            cwmp_version="1.4",
            namespace="urn:dslforum-org:cwmp-1-4",
            events=(EventStruct("1 BOOT"),),
            parameters=(
                ParameterValue(ms + "ConnectionRequestURL", device.url),
                ParameterValue(ms + "PeriodicInformEnable", "1", "xsd:boolean"),
            ),
        )
        batch.append(service.devices.record_inform(record))
        batch.append(
            service.connreq_credentials.set(
                device.device_id, ConnReqCredential(device.username, device.password)
            )
        )
        if len(batch) >= 1000:
            await defer.gatherResults(batch, consumeErrors=True)
            batch = []
    await defer.gatherResults(batch, consumeErrors=True)


async def wake_path(
    reactor: Any,
    devices: Sequence[Device],
    warm: Sequence[Device],
    concurrency: int,
    work: Path,
    sent_events: bool = False,
) -> tuple[Result, dict[str, Any]]:
    from tests.support.redis_server import RedisServer

    redis = RedisServer().start()
    service = None
    try:
        service = await start_gateway(reactor, work / "gw", redis.url, concurrency, sent_events)
        await load_devices(service, [*warm, *devices])

        async def one(device: Device) -> tuple[str, str]:
            wake = await service.connreq.wake(device.device_id)
            return wake.outcome, wake.detail

        await drive(reactor, warm, concurrency, one, Result("warm-up"))
        before = stream_length(redis.url)
        result = Result("wake")
        await drive(reactor, devices, concurrency, one, result)
        events = stream_length(redis.url) - before
        return result, {"events": events}
    finally:
        if service is not None:
            await service.stopService()
        redis.stop()


def stream_length(redis_url: str) -> int:
    import redis as redis_py

    r = redis_py.Redis.from_url(redis_url)
    try:
        return int(r.xlen("bench:events"))
    finally:
        r.close()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from cwmpgw import logs

    work = Path(tempfile.mkdtemp(prefix="bench-connreq-"))
    # As the gateway runs (twistd --logger=cwmpgw.logs.text): info and above to a file.
    # --debug-log: every event, debug included, as twistd's default observer writes them.
    log = open(work / "gateway.log", "w")
    observer = textFileLogObserver(log) if args.debug_log else logs.text(log)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    cpes = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "connreq_cpes.py"),
            "--devices",
            str(args.devices + WARMUP),
            "--out",
            str(work / "cpes.csv"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert cpes.stdout is not None and cpes.stdin is not None
        line = cpes.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"the simulated CPEs did not start: {line!r}")
        with open(work / "cpes.csv", newline="") as f:
            rows = [Device(row) for row in csv.DictReader(f)]
        devices, warm = rows[: args.devices], rows[args.devices :]

        def cpe_stats() -> dict[str, Any]:
            assert cpes.stdin is not None and cpes.stdout is not None
            cpes.stdin.write("stats\n")
            cpes.stdin.flush()
            return dict(json.loads(cpes.stdout.readline()))

        paths = [p.strip() for p in args.path.split(",") if p.strip()]
        results: list[Result] = []
        extra: dict[str, Any] = {}
        cpe_cpu: dict[str, float] = {}
        for name in paths:
            before = cpe_stats()
            if name == "http":
                results.append(await http_path(reactor, devices, warm, args.concurrency))
            elif name == "wake":
                result, extra = await wake_path(
                    reactor, devices, warm, args.concurrency, work / "wake", args.sent_events
                )
                results.append(result)
            else:
                raise SystemExit(f"unknown path {name!r}: http or wake")
            cpe_cpu[name] = cpe_stats()["cpu_s"] - before["cpu_s"]
        cpe_total = cpe_stats()
    finally:
        if cpes.stdin is not None:
            cpes.stdin.close()
        try:
            cpes.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cpes.kill()
            cpes.wait()

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    rows_out: list[tuple[str, Any]] = [
        ("devices, requests in flight", f"{args.devices}, {args.concurrency}"),
    ]
    data: dict[str, Any] = {
        "devices": args.devices,
        "concurrency": args.concurrency,
        "cpe_accepted": cpe_total["accepted"],
        "cpe_refused": cpe_total["refused"],
    }
    for r in results:
        rows_out += [
            (
                f"{r.name}: requests",
                f"{r.ok}/{len(r.latencies)} ok, failures {r.failures or 'none'}",
            ),
            (
                f"{r.name}: sender CPU per request",
                f"{r.cpu / max(r.ok, 1) * 1000:.3f} ms ({r.cpu:.2f} s, {r.sys:.2f} s of it sys)",
            ),
            (f"{r.name}: requests per core-second", f"{r.per_core:.0f} (target >= 800)"),
            (
                f"{r.name}: wall rate",
                f"{r.ok / r.wall:.0f}/s (simulated CPEs used {cpe_cpu[r.name]:.1f} s CPU)",
            ),
            (
                f"{r.name}: latency p50 / p99",
                f"{ms(r.percentile(50))} / {ms(r.percentile(99))}",
            ),
        ]
        data[r.name] = {
            "ok": r.ok,
            "failures": r.failures,
            "cpu_s": round(r.cpu, 3),
            "sys_s": round(r.sys, 3),
            "per_core_s": round(r.per_core, 1),
            "wall_s": round(r.wall, 3),
            "p50_ms": round(r.percentile(50) * 1000, 2),
            "p99_ms": round(r.percentile(99) * 1000, 2),
            "cpe_cpu_s": round(cpe_cpu[r.name], 3),
        }
    if "events" in extra:
        rows_out.append(("wake: events written", extra["events"]))
        data["wake"]["events"] = extra["events"]
    report("connreq", rows_out, data)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--path", default="http,wake", help="http, wake or both (http,wake)")
    parser.add_argument(
        "--sent-events", action="store_true", help="connreq.sent_events on (wake path)"
    )
    parser.add_argument(
        "--debug-log", action="store_true", help="log debug events too (twistd's default)"
    )
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, parser.parse_args())))
