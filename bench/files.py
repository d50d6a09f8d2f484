"""The file server: throughput of one download and of hundreds at once, and its memory.

    python bench/files.py [--size-mb 8] [--concurrent 300]

A gateway process (twistd, the shipped config with an external Redis) gets a file
through the API (``POST /files``, streamed to disk). Then clients on this host fetch it
over HTTPS with per-device grants (signed URL + Basic credentials, as a CPE gets them
in the Download RPC): one alone, then ``--concurrent`` at once. The gateway's resident
memory is sampled throughout: it must not grow with the number of downloads times the
file size (a producer sends 64 KiB at a time as each socket takes it).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import Gateway, cpu_seconds, report, rss
from twisted.internet import defer, task


async def fetch(agent: Any, url: str, auth: str) -> int:
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.web.http_headers import Headers

    response = await agent.request(
        b"GET", url.encode(), Headers({b"authorization": [b"Basic " + auth.encode()]})
    )
    done: Deferred[int] = Deferred()

    class Count(Protocol):
        size = 0

        def dataReceived(self, data: bytes) -> None:
            self.size += len(data)

        def connectionLost(self, reason: Any = None) -> None:
            done.callback(self.size)

    response.deliverBody(Count())
    size = await done
    if response.code != 200:
        raise RuntimeError(f"HTTP {response.code}")
    return size


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import redis as redis_py
    from tests.redis_server import RedisServer
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    from cwmpgw.files.signing import Grant, LinkSigner

    work = Path(tempfile.mkdtemp(prefix="bench-files-"))
    redis = RedisServer().start()
    gateway = Gateway(work / "gw", redis.url, extra="").start()
    try:
        size = args.size_mb * 1024 * 1024
        data = os.urandom(size)
        request = urllib.request.Request(
            f"http://127.0.0.1:{gateway.nbi_port}/files?name=fw.bin&file_type="
            "1%20Firmware%20Upgrade%20Image&software_version=2.0",
            data=data,
            method="POST",
            headers={
                "Authorization": f"Bearer {gateway.token}",
                "Content-Type": "application/octet-stream",
            },
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as r:
            import json

            info = json.loads(r.read())
        upload_s = time.monotonic() - started
        r = redis_py.Redis.from_url(redis.url, decode_responses=True)
        signer = LinkSigner(bytes.fromhex(r.get(gateway.prefix + "secret:file-links")))
        r.close()

        def grant(i: int) -> tuple[str, str]:
            device = f"BENCH-DEV-{i:06d}"
            g = Grant("get", info["id"], device, int(time.time()) + 3600)
            url = f"https://localhost:{gateway.files_port}/f/{info['id']}?{signer.query(g)}"
            auth = base64.b64encode(f"{device}:{signer.password(g)}".encode()).decode()
            return url, auth

        ca = Certificate.loadPEM(Path(gateway.cafile).read_bytes())

        class Policy(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return optionsForClientTLS(hostname.decode(), trustRoot=ca)

        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, contextFactory=Policy(), pool=pool)
        base_rss, base_cpu = rss(gateway.pid), cpu_seconds(gateway.pid)
        peak = [base_rss]
        sampler = task.LoopingCall(lambda: peak.append(rss(gateway.pid)))
        sampler.start(0.1)

        url, auth = grant(0)
        started = time.monotonic()
        got = await fetch(agent, url, auth)
        single_s = time.monotonic() - started
        assert got == size, got

        grants = [grant(i) for i in range(args.concurrent)]
        cpu0 = cpu_seconds(gateway.pid)
        started = time.monotonic()
        sizes = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(fetch(agent, u, a)) for u, a in grants],
            consumeErrors=True,
        )
        many_s = time.monotonic() - started
        cpu_many = cpu_seconds(gateway.pid) - cpu0
        sampler.stop()
        await pool.closeCachedConnections()
        assert all(s == size for s in sizes)
        total_mb = size * len(sizes) / 1e6
        rows = [
            ("file size", f"{args.size_mb} MiB"),
            ("API upload (POST /files, plain HTTP)", f"{size / 1e6 / upload_s:.0f} MB/s"),
            ("one download over TLS", f"{size / 1e6 / single_s:.0f} MB/s"),
            (f"{args.concurrent} downloads at once", f"{total_mb:.0f} MB in {many_s:.1f} s"),
            ("aggregate", f"{total_mb / many_s:.0f} MB/s"),
            ("gateway CPU during them", f"{cpu_many:.1f} s ({cpu_many / many_s:.0%} of a core)"),
            ("gateway RSS before", f"{base_rss / 1e6:.0f} MB"),
            ("gateway RSS peak", f"{max(peak) / 1e6:.0f} MB"),
            ("bytes in flight if buffered whole", f"{total_mb:.0f} MB"),
        ]
        report(
            "file server",
            rows,
            {
                "size": size,
                "concurrent": args.concurrent,
                "single_mb_s": size / 1e6 / single_s,
                "aggregate_mb_s": total_mb / many_s,
                "rss_before": base_rss,
                "rss_peak": max(peak),
                "cpu_s": cpu_many + (cpu0 - base_cpu),
            },
        )
    finally:
        log = gateway.stop()
        redis.stop()
        if "Traceback" in log:
            print(log[-3000:])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=300)
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
