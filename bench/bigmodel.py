"""`refresh Device.` of one CPE with a full data model: time and the gateway's peak RSS.

    python bench/bigmodel.py [--parameters 10000 50000]

For each size: a gateway (twistd, external redis-server) and one simulated CPE whose data
model is the generated TR-181 tree of that many parameters (cwmpgw.sim.tr181). A refresh
task of "Device." is queued through the API, the CPE opens a session, and the session is
timed from its Inform to the 204: GetParameterNames of the whole tree (one large answer),
then GetParameterValues in batches of tasks.gpv_batch. Printed: the session's wall time,
the gateway's CPU, the largest answer, and the gateway's peak RSS (VmHWM) before and after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common import Gateway, cpu_seconds, report, rss
from twisted.internet import defer, task


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return rss(pid)


def api(gateway: Gateway, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.nbi_port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {gateway.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read() or b"null")


async def one(reactor: Any, parameters: int) -> dict[str, Any]:
    from cwmpgw.sim import Fleet, credential_templates
    from cwmpgw.sim.tr181 import large_tr181
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-bigmodel-"))
    redis = RedisServer().start()
    gateway = Gateway(work, redis.url).start()
    try:
        template = large_tr181(parameters)
        sizes: list[int] = []
        fleet = Fleet(
            reactor,
            gateway.url,
            devices=1,
            template=template,
            credentials=credential_templates("{device_id}", "pw-{serial}-bench"),
            cafile=gateway.cafile,
            bootstrap=False,
            request_timeout=600,
            trace=lambda d, _dev, body: sizes.append(len(body)) if d == "cpe" else None,
        )
        gateway.import_credentials(fleet)
        await fleet.start()
        device = fleet.devices[0]
        first = await fleet.inform(device, "1 BOOT")
        assert first.ok, first.reason
        path = f"/devices/{quote(device.device_id, safe='')}/tasks"
        created = api(gateway, "POST", path, {"type": "refresh", "args": {"path": "Device."}})
        await task.deferLater(reactor, 1.0, lambda: None)
        peak0, rss0, cpu0 = peak_rss(gateway.pid), rss(gateway.pid), cpu_seconds(gateway.pid)
        sizes.clear()
        started = time.monotonic()
        result = await fleet.inform(device, "6 CONNECTION REQUEST")
        wall = time.monotonic() - started
        await task.deferLater(reactor, 1.0, lambda: None)
        cpu = cpu_seconds(gateway.pid) - cpu0
        peak1, rss1 = peak_rss(gateway.pid), rss(gateway.pid)
        await fleet.stop()
        tasks = api(gateway, "GET", path)["tasks"]
        mine = next(t for t in tasks if t["id"] == created["id"])
        import redis as redis_py

        client = redis_py.Redis(redis.host, redis.port)
        cached = client.hlen(gateway.prefix + "device:" + device.device_id + ":params")
        client.close()
        errors = gateway.errors()
        assert result.ok, result.reason
        assert mine["status"] == "done", mine
        return {
            "parameters": len(template.params),
            "session_seconds": round(wall, 2),
            "gateway_cpu_seconds": round(cpu, 2),
            "rpcs": len(result.rpcs),
            "largest_answer_bytes": max(sizes),
            "cached_parameters": cached,
            "rss_before": rss0,
            "rss_after": rss1,
            "peak_rss_before": peak0,
            "peak_rss_after": peak1,
            "errors_in_log": len(errors),
        }
    finally:
        gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


async def main(reactor: Any, sizes: list[int]) -> None:
    runs = [await one(reactor, n) for n in sizes]
    rows: list[tuple[str, Any]] = []
    for r in runs:
        mib = 2**20
        rows.append(
            (
                f"{r['parameters']} parameters",
                f"{r['session_seconds']} s session, {r['gateway_cpu_seconds']} s gateway CPU, "
                f"{r['rpcs']} RPCs, largest answer {r['largest_answer_bytes'] / 1e6:.1f} MB, "
                f"{r['cached_parameters']} cached; gateway peak RSS "
                f"{r['peak_rss_before'] / mib:.0f} -> {r['peak_rss_after'] / mib:.0f} MiB "
                f"(RSS after {r['rss_after'] / mib:.0f} MiB); errors in log {r['errors_in_log']}",
            )
        )
    report("bigmodel", rows, {"runs": runs})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=int, nargs="+", default=[10_000, 50_000])
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args.parameters)))
