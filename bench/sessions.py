"""Full CWMP sessions per gateway core-second, against the stack's own limit.

    python bench/sessions.py [--devices 200] [--rounds 5] [--concurrency 50] [--workers 1]

Each session is what a CPE does: a new TLS connection, the Digest 401 round trip, Inform,
one GetParameterValues task, 204 — with the device write and the events in Redis. The
same simulated CPEs (cwmpgw.sim, in this process) run the same exchanges against a bare
Twisted TLS server answering canned bytes (bench/baseline_server.py), round for round in
turn with the gateway's, so that both are measured on the same machine speed.

``--rate R``: R sessions started per second against both servers (the same offered load;
by default each runs as fast as the concurrency allows, so the faster one also handles
more sessions per reactor turn). ``--redis-socket unix``: Redis over its unix socket.

``--reuse-nonce``: returning CPEs open each session with their last Digest nonce and the
next nonce count, so neither server sends a 401. ``--tls-resume``: they offer their last
TLS session (a ticket); the table says how many handshakes were resumed.

The figure that matters is CPU-seconds of the gateway processes per session (user+sys,
workers included, Redis excluded): the simulator shares the machine and may cap the wall
rate, but it cannot hide what a session costs the gateway. Targets (issue): >= 0.7 of the
baseline, and >= 450 sessions per gateway core-second with the default certificate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import ROOT, Gateway, cpu_seconds, free_port, report
from twisted.internet import defer, task

DEV_PARAM = "Device.DeviceInfo.SoftwareVersion"


def redis_commands(redis_url: str) -> dict[str, int]:
    """Commands Redis has run so far, by name (INFO commandstats): a round's delta divided
    by its sessions is what one session costs in round trips."""
    import redis as redis_py

    stats = redis_py.Redis.from_url(redis_url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def redis_bytes(redis_url: str) -> tuple[int, int]:
    """Bytes Redis has read and written so far (INFO stats): to and from its clients."""
    import redis as redis_py

    stats = redis_py.Redis.from_url(redis_url).info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def redis_cpu(redis: Any) -> float:
    """user+sys seconds of the redis-server process so far."""
    import psutil

    times = psutil.Process(redis._process.pid).cpu_times()
    return float(times.user + times.system)


def redis_memory(redis_url: str, prefix: str, device_id: str) -> dict[str, int]:
    """What Redis holds, for sizing: bytes of one device's keys (MEMORY USAGE, its task
    keys excluded: they are gone once done), of the live nonce records, and in all."""
    import redis as redis_py

    r = redis_py.Redis.from_url(redis_url)
    try:
        device = 0
        for key in r.scan_iter(match=f"{prefix}*{device_id}*", count=1000):
            device += int(r.memory_usage(key) or 0)
        nonces = count = 0
        for key in r.scan_iter(match=f"{prefix}nonce:*", count=1000):
            nonces += int(r.memory_usage(key) or 0)
            count += 1
        return {
            "device_bytes": device,
            "nonce_records": count,
            "nonce_bytes": nonces,
            "stream_bytes": int(r.memory_usage(prefix + "events") or 0),
            "used_memory": int(r.info("memory")["used_memory"]),
        }
    finally:
        r.close()


def count_round_trips(redis_url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """MONITOR Redis until ``stop``: commands the gateway sent (not those its scripts ran)."""
    import redis as redis_py

    with redis_py.Redis.from_url(redis_url).monitor() as monitor:
        while not stop.is_set():
            command = monitor.next_command()
            if command.get("client_type") != "lua":
                name = command["command"].split(" ", 1)[0].lower()
                counts[name] = counts.get(name, 0) + 1


def queue_tasks(gateway: Gateway, device_ids: list[str], per_device: int) -> int:
    """One GetParameterValues task per session to come, through the API."""
    queued = 0
    for device_id in device_ids:
        for _ in range(per_device):
            body = json.dumps(
                {"type": "GetParameterValues", "args": {"parameter_names": [DEV_PARAM]}}
            ).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{gateway.nbi_port}/devices/{device_id}/tasks",
                data=body,
                method="POST",
                headers={
                    "Authorization": f"Bearer {gateway.token}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=30) as r:
                assert r.status == 201, r.status
            queued += 1
    return queued


def merge(total: Any, round_stats: Any) -> Any:
    """Add one round's fleet statistics to the run's."""
    if total is None:
        return round_stats
    total.completed += round_stats.completed
    total.sessions += round_stats.sessions
    total.failures.update(round_stats.failures)
    total.latencies += round_stats.latencies
    total.rpcs.update(round_stats.rpcs)
    return total


class Spy:
    """py-spy on one server during its measured rounds only: raw stacks, for flame graphs.

    Blocking (py-spy pauses the process for each sample), at 250 Hz, only samples holding
    the GIL (``--gil``: a server waiting in ``epoll`` is not working, and py-spy cannot
    tell idle from busy in blocking mode). ``--nonblocking`` read a running process and
    left stale stacks of 100+ samples at odd lines while the server idled.

    One py-spy per round, started before and stopped after it: the API calls that queue
    the next round's tasks (outside the CPU figure) and the other server's rounds stay out
    of the profile. The rounds' raw stacks are summed into ``output``.
    """

    def __init__(self, pid: int, output: str | None) -> None:
        self._pid, self._output = pid, output
        self._running: subprocess.Popen[bytes] | None = None
        self._stacks: dict[str, int] = {}

    def start(self) -> None:
        if not self._output:
            return
        self._running = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                *("record", "-p", str(self._pid), "-o", self._output + ".round"),
                *("--format", "raw", "--rate", "250", "--gil"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # attached before the round starts (a bench, not a test: it may wait)

    def stop(self) -> None:
        if self._running is None or not self._output:
            return
        self._running.send_signal(signal.SIGINT)
        self._running.wait(timeout=30)
        self._running = None
        round_file = Path(self._output + ".round")
        for line in round_file.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                self._stacks[stack] = self._stacks.get(stack, 0) + int(count)
        round_file.unlink()
        Path(self._output).write_text("".join(f"{k} {v}\n" for k, v in self._stacks.items()))


RATE: float | None = None  # --rate: sessions started per second (None: as fast as it goes)


async def run_fleet(reactor: Any, fleet: Any, count: int) -> Any:
    from cwmpgw.sim.fleet import Rate

    return await fleet.run_sessions(count=count, arrival=Rate(RATE))


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    redis = RedisServer().start()
    gateway = Gateway(
        work / "gw",
        redis.unix_url if args.redis_socket == "unix" else redis.url,
        workers=args.workers,
        redis_extra=f"connections = {args.redis_connections}" if args.redis_connections else "",
    ).start()
    baseline: subprocess.Popen[str] | None = None
    try:

        def fleet_for(url: str) -> Any:
            return gateway.fleet(
                reactor,
                devices=args.devices,
                concurrency=args.concurrency,
                seed=1,
                url=url,
                reuse_nonce=args.reuse_nonce,
                tls_resume=args.tls_resume,
            )

        fleet = fleet_for(gateway.url)
        gateway.import_credentials(fleet)
        await fleet.start()
        warm = await run_fleet(reactor, fleet, args.devices)  # every device known, TLS warm
        assert warm.completed == args.devices, warm.summary(reactor.seconds())
        device_ids = [d.device_id for d in fleet.devices]
        sessions = args.devices * args.rounds

        # The baseline: the same CPEs, the same exchanges, canned answers; its rounds
        # alternate with the gateway's, so both see the same machine (this VM's speed
        # drifts by 10-20% within minutes).
        port = free_port()
        key = str(Path(gateway.cafile).with_name("acs-key.pem"))
        baseline = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "baseline_server.py"),
                str(port),
                gateway.cafile,
                key,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert baseline.stdout is not None and baseline.stdout.readline().startswith("listening")
        base_fleet = fleet_for(f"https://127.0.0.1:{port}/")
        await base_fleet.start()
        await run_fleet(reactor, base_fleet, args.devices)

        spy = Spy(gateway.pid, args.py_spy)
        base_spy = Spy(baseline.pid, args.py_spy_baseline)
        cpu = wall = bcpu = bwall = 0.0
        stats = base = None
        handshakes_before = dict(getattr(fleet, "tls_handshakes", {}))
        commands: dict[str, int] = {}
        bytes_in = bytes_out = 0
        redis_cpu_s = 0.0
        for _ in range(args.rounds):
            # One task per device per round, queued outside the measured window: a session
            # runs everything queued for its device, and each must run exactly one.
            queue_tasks(gateway, device_ids, 1)
            before = redis_commands(redis.url)
            in0, out0 = redis_bytes(redis.url)
            rcpu0 = redis_cpu(redis)
            spy.start()
            cpu0, wall0 = cpu_seconds(gateway.pid), time.monotonic()
            round_stats = await run_fleet(reactor, fleet, args.devices)
            wall += time.monotonic() - wall0
            cpu += cpu_seconds(gateway.pid) - cpu0
            spy.stop()
            in1, out1 = redis_bytes(redis.url)
            redis_cpu_s += redis_cpu(redis) - rcpu0
            bytes_in, bytes_out = bytes_in + in1 - in0, bytes_out + out1 - out0
            for name, calls in redis_commands(redis.url).items():
                commands[name] = commands.get(name, 0) + calls - before.get(name, 0)
            stats = merge(stats, round_stats)

            base_spy.start()
            bcpu0, bwall0 = cpu_seconds(baseline.pid), time.monotonic()
            base_round = await run_fleet(reactor, base_fleet, args.devices)
            bwall += time.monotonic() - bwall0
            bcpu += cpu_seconds(baseline.pid) - bcpu0
            base_spy.stop()
            base = merge(base, base_round)
        assert stats is not None and base is not None
        await base_fleet.stop()
        memory = redis_memory(redis.url, gateway.prefix, device_ids[0])
        handshakes = {
            k: v - handshakes_before.get(k, 0)
            for k, v in getattr(fleet, "tls_handshakes", {}).items()
        }
        round_trips: dict[str, int] = {}
        if args.round_trips:
            # One more round, not measured, with MONITOR on: what one session sends to Redis.
            queue_tasks(gateway, device_ids, 1)
            stop = threading.Event()
            monitor = threading.Thread(
                target=count_round_trips, args=(redis.url, stop, round_trips), daemon=True
            )
            monitor.start()
            await task.deferLater(reactor, 0.5, lambda: None)
            extra = await run_fleet(reactor, fleet, args.devices)
            await task.deferLater(reactor, 1.0, lambda: None)
            stop.set()
            redis_commands(redis.url)  # wakes the monitor up to see ``stop``
            monitor.join(timeout=10)
            for name in ("ping", "info", "xreadgroup", "monitor"):
                round_trips.pop(name, None)
            round_trips = {
                name: round(n / max(extra.completed, 1), 2)
                for name, n in sorted(round_trips.items(), key=lambda kv: -kv[1])
            }
        await fleet.stop()
        gpv = stats.rpcs.get("GetParameterValues", 0)

        per_core = stats.completed / cpu if cpu else 0.0
        base_per_core = base.completed / bcpu if bcpu else 0.0
        ratio = per_core / base_per_core if base_per_core else 0.0
        ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
        commands.pop("info", None)  # the bench's own
        per_session = {
            name: round(calls / max(stats.completed, 1), 2)
            for name, calls in sorted(commands.items(), key=lambda kv: -kv[1])
            if calls
        }
        report(
            "sessions",
            [
                (
                    "sessions (devices x rounds)",
                    f"{stats.completed}/{sessions} ok ({args.devices} x {args.rounds}), failures {dict(stats.failures)}",
                ),
                ("GetParameterValues answered", gpv),
                (
                    "redis round trips per session",
                    f"{sum(round_trips.values()):.1f}: "
                    + ", ".join(f"{n} {c:g}" for n, c in round_trips.items())
                    if round_trips
                    else "(--round-trips)",
                ),
                (
                    "redis commands per session (incl. in scripts)",
                    f"{sum(per_session.values()):.1f}: "
                    + ", ".join(f"{n} {c:g}" for n, c in per_session.items()),
                ),
                (
                    "bytes per session to / from Redis",
                    f"{bytes_in / max(stats.completed, 1):.0f} / "
                    f"{bytes_out / max(stats.completed, 1):.0f}",
                ),
                (
                    "Redis CPU per session",
                    f"{redis_cpu_s / max(stats.completed, 1) * 1e6:.0f} µs",
                ),
                (
                    "Redis memory",
                    f"one device {memory['device_bytes']} B; {memory['nonce_records']} live "
                    f"nonce records {memory['nonce_bytes']} B; event stream "
                    f"{memory['stream_bytes']} B; used {memory['used_memory']} B",
                ),
                ("gateway workers", args.workers),
                (
                    "CPE behaviour",
                    f"nonce re-use {'on' if args.reuse_nonce else 'off'}, TLS resumption "
                    + (f"on ({handshakes})" if args.tls_resume else "off"),
                ),
                ("redis connections", args.redis_connections or "default"),
                ("gateway CPU per session", f"{cpu / max(stats.completed, 1) * 1000:.2f} ms"),
                ("gateway sessions per core-second", f"{per_core:.0f} (target >= 450)"),
                ("baseline sessions per core-second", f"{base_per_core:.0f}"),
                ("gateway / baseline", f"{ratio:.2f} (target >= 0.7)"),
                (
                    "wall rate gateway / baseline",
                    f"{stats.completed / wall:.0f}/s / {base.completed / bwall:.0f}/s (capped by the simulator's core)",
                ),
                (
                    "latency gateway p50 / p99",
                    f"{ms(stats.percentile(50))} / {ms(stats.percentile(99))}",
                ),
                (
                    "latency baseline p50 / p99",
                    f"{ms(base.percentile(50))} / {ms(base.percentile(99))}",
                ),
            ],
            {
                "devices": args.devices,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "workers": args.workers,
                "rate": RATE,
                "reuse_nonce": args.reuse_nonce,
                "tls_resume": args.tls_resume,
                "tls_handshakes": handshakes,
                "redis_connections": args.redis_connections or None,
                "sessions": stats.completed,
                "failures": dict(stats.failures),
                "redis_commands_per_session": per_session,
                "redis_round_trips_per_session": round_trips,
                "redis_bytes_in_per_session": round(bytes_in / max(stats.completed, 1)),
                "redis_bytes_out_per_session": round(bytes_out / max(stats.completed, 1)),
                "redis_memory": memory,
                "redis_cpu_us_per_session": round(redis_cpu_s / max(stats.completed, 1) * 1e6),
                "gateway_cpu_s": round(cpu, 3),
                "gateway_sessions_per_core_s": round(per_core, 1),
                "gateway_wall_rate": round(stats.completed / wall, 1),
                "baseline_cpu_s": round(bcpu, 3),
                "baseline_sessions_per_core_s": round(base_per_core, 1),
                "ratio": round(ratio, 3),
                "gateway_p50_ms": round(stats.percentile(50) * 1000, 2),
                "gateway_p99_ms": round(stats.percentile(99) * 1000, 2),
                "baseline_p50_ms": round(base.percentile(50) * 1000, 2),
                "baseline_p99_ms": round(base.percentile(99) * 1000, 2),
            },
        )
        errors = gateway.errors()
        if errors:
            print("gateway errors:", *errors[:5], sep="\n  ")
    finally:
        if baseline is not None:
            baseline.terminate()
            baseline.wait(timeout=10)
        gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--redis-connections", type=int, default=0, help="redis.connections (default: its own)"
    )
    parser.add_argument(
        "--redis-socket",
        choices=("unix", "tcp"),
        default="tcp",
        help="reach Redis over its unix socket (as the embedded default does) or TCP loopback",
    )
    parser.add_argument(
        "--round-trips",
        action="store_true",
        help="count what a session sends to Redis (one more round, with MONITOR)",
    )
    parser.add_argument(
        "--reuse-nonce",
        action="store_true",
        help="returning CPEs re-use their last Digest nonce (no 401; both servers)",
    )
    parser.add_argument(
        "--tls-resume",
        action="store_true",
        help="CPEs offer their last TLS session for resumption (both servers)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="sessions started per second, the same for both servers (default: as fast as"
        " the concurrency allows, so the faster server also batches more per reactor turn)",
    )
    parser.add_argument(
        "--py-spy", metavar="FILE", help="profile the gateway during the measured rounds"
    )
    parser.add_argument(
        "--py-spy-baseline", metavar="FILE", help="profile the baseline server likewise"
    )
    arguments = parser.parse_args()
    RATE = arguments.rate
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
