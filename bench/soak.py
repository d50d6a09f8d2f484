"""A fleet of simulated CPEs against the gateway over TLS for minutes, as an operator runs it.

    python bench/soak.py [--devices 5000] [--periodic 120] [--duration 300] [--tasks 500]

The gateway runs under twistd with its default limits; the fleet is one process of the
simulator's own command (``python -m cwmpgw.sim``), each device with its own credentials
(imported with ``python -m cwmpgw.credentials import``) and the TR-181 data model of
``../shared/cwmp`` (a real TR-181 dump), booting (BOOTSTRAP, BOOT) and then informing every ``--periodic``
seconds with jitter. While it runs, ``--tasks`` GetParameterValues tasks are queued
through the API for random devices (each runs in the device's next session). Reported:
sessions and failures by reason (target: none), latency percentiles, gateway CPU per
session, gateway memory at start and end, events in the stream, tasks done, and any
error line in the gateway's log.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common import ROOT, Gateway, cpu_seconds, report, rss

DATA_MODEL = ROOT.parent / "shared" / "cwmp" / "device-9CA2F4-EC220_G5_V3-22275K2000315.csv"


def api(gateway: Gateway, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.nbi_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {gateway.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path}: {e.code} {e.read()[:200]!r}") from None


def main(args: argparse.Namespace) -> None:
    import redis as redis_py

    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    redis = RedisServer().start()
    gateway = Gateway(work / "gw", redis.url, acs_extra="").start()
    r = redis_py.Redis.from_url(redis.url, decode_responses=True)
    sim = [sys.executable, "-m", "cwmpgw.sim", "--acs", gateway.url, "--devices"]
    sim += [str(args.devices), "--seed", "5", "--password-template", "pw-{serial}-soak"]
    if DATA_MODEL.exists():
        sim += ["--csv", str(DATA_MODEL)]
    try:
        creds = work / "creds.csv"
        subprocess.run(
            [*sim, "--write-credentials", str(creds), "--write-only"], check=True, cwd=ROOT
        )
        subprocess.run(
            [
                *(sys.executable, "-m", "cwmpgw.credentials", "--redis", redis.url),
                *("--prefix", gateway.prefix, "import", str(creds)),
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        rss0, cpu0 = rss(gateway.pid), cpu_seconds(gateway.pid)
        started = time.monotonic()
        fleet = subprocess.Popen(
            [
                *sim,
                *("--cafile", gateway.cafile, "--periodic", str(args.periodic)),
                *("--duration", str(args.duration), "--concurrency", str(args.concurrency)),
                *("--json", "--quiet"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        queued = 0
        rng = random.Random(7)
        while fleet.poll() is None:
            time.sleep(1.0)
            known = r.zrange(gateway.prefix + "devices", 0, -1)
            elapsed = time.monotonic() - started
            # Spread the tasks over the first two thirds of the run, so each has a session.
            due = min(args.tasks, int(args.tasks * elapsed / (args.duration * 2 / 3)))
            while known and queued < due:
                device = rng.choice(known)
                api(
                    gateway,
                    "POST",
                    f"/devices/{quote(device, safe='')}/tasks",
                    {
                        "type": "GetParameterValues",
                        "args": {"parameter_names": ["Device.DeviceInfo.UpTime"]},
                    },
                )
                queued += 1
        out, _ = fleet.communicate()
        summary = json.loads(out.strip().splitlines()[-1])
        wall = time.monotonic() - started
        cpu = cpu_seconds(gateway.pid) - cpu0
        rss1 = rss(gateway.pid)
        stream = r.xlen(gateway.prefix + "events")
        done = failed = 0
        for device in r.zrange(gateway.prefix + "devices", 0, -1):
            for task in api(gateway, "GET", f"/devices/{quote(device, safe='')}/tasks")["tasks"]:
                done += task["status"] == "done"
                failed += task["status"] in ("failed", "expired")
        errors = gateway.errors()
        lat = summary["latency"]
        report(
            "soak",
            [
                (
                    "devices, periodic, duration",
                    f"{args.devices}, {args.periodic} s, {args.duration} s",
                ),
                ("sessions", f"{summary['completed']}/{summary['sessions']} ok"),
                ("failures", summary["failures"] or "none"),
                ("sessions per second", f"{summary['completed'] / wall:.1f}"),
                (
                    "latency p50 / p90 / p99 / max",
                    f"{lat['p50'] * 1000:.0f} / {lat['p90'] * 1000:.0f} / {lat['p99'] * 1000:.0f} / {lat['max'] * 1000:.0f} ms",
                ),
                ("gateway CPU per session", f"{cpu / max(summary['completed'], 1) * 1000:.2f} ms"),
                ("gateway RSS start / end", f"{rss0 / 2**20:.0f} / {rss1 / 2**20:.0f} MiB"),
                ("devices stored", r.zcard(gateway.prefix + "devices")),
                ("events in the stream", stream),
                ("tasks queued / done / failed", f"{queued} / {done} / {failed}"),
                ("errors in the gateway log", len(errors)),
            ],
            {
                "devices": args.devices,
                "periodic": args.periodic,
                "duration": args.duration,
                "summary": summary,
                "gateway_cpu_s": round(cpu, 2),
                "gateway_rss_mib": [round(rss0 / 2**20, 1), round(rss1 / 2**20, 1)],
                "stream": stream,
                "tasks": {"queued": queued, "done": done, "failed": failed},
                "gateway_errors": errors[:5],
            },
        )
    finally:
        gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--periodic", type=float, default=120)
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=500)
    main(parser.parse_args())
