"""Legitimate CPEs while the gateway is attacked: the event loop's longest stall, and the
good sessions' success rate and p99, per attack, against a baseline in the same run.

    python bench/attack.py [--duration 10] [--rate 20] [--only flood,slowloris]

Starts a gateway (twistd, its default defences: connection caps, deadlines, brute-force
throttle, the unauthenticated-bytes budget), a simulated fleet on 127.0.0.1 starting
``--rate`` sessions a second, and in turn, for ``--duration`` seconds each, one attack from
its own loopback address (127.0.0.2…, so per-address defences see an attacker, not the
fleet) in a separate process (``--attacker KIND``, threads with blocking sockets):

  bodies       worst-case unauthenticated bodies (each with a wrong credential: one with
               none is challenged unread): many elements, many attributes, deep
               nesting, huge attribute values, a UTF-16 body (415), invalid UTF-8,
               256 KiB of junk — 4 threads, back to back
  flood        TLS connections over the per-source cap (1000 per address), held, the
               refused ones retried at once
  slowloris    200 heads trickled a byte a second, reopened when cut
  idle         500 connections that send one unauthenticated Inform and then hold the slot
  streaming    bodies announced at 100 MiB, streamed after the 413 until cut
  guessing     Digest answers with wrong passwords, 4 threads

The stall is measured inside the gateway (``cwmpgw_reactor_lag_max_seconds`` on
/metrics: a timer due every 20 ms, its worst lateness over the last 10 to 20 s, scraped every
second; phases are ``--settle`` seconds apart so a phase never sees its predecessor's).
The flood phase also reports the gateway's RSS before, at the peak and after. Loopback only,
bounded in connections and time; never asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import Gateway, free_port, report, rss

ATTACKS = ("bodies", "flood", "slowloris", "idle", "streaming", "guessing")
SOURCE = {name: f"127.0.0.{i + 2}" for i, name in enumerate(ATTACKS)}
MiB = 1024 * 1024

INFORM = """<?xml version="1.0" encoding="UTF-8"?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:cwmp="urn:dslforum-org:cwmp-1-2">
  <soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">1</cwmp:ID></soap-env:Header>
  <soap-env:Body><cwmp:Inform>
    <DeviceId><Manufacturer>X</Manufacturer><OUI>000000</OUI>
      <ProductClass>P</ProductClass><SerialNumber>ATTACK{n}</SerialNumber></DeviceId>
    <Event><EventStruct><EventCode>1 BOOT</EventCode><CommandKey></CommandKey></EventStruct></Event>
    <MaxEnvelopes>1</MaxEnvelopes><CurrentTime>2025-01-01T00:00:00Z</CurrentTime>
    <RetryCount>0</RetryCount>
    <ParameterList>{params}</ParameterList>
  </cwmp:Inform></soap-env:Body>
</soap-env:Envelope>"""


def worst_bodies(cap: int = 262_144) -> list[tuple[str, bytes, dict[str, str]]]:
    """(name, body, extra headers) of the bodies dearest to refuse or parse, within the cap."""
    plain = INFORM.format(n=0, params="").encode()
    room = cap - len(plain) - 64
    pv = b"<ParameterValueStruct><Name>A.B</Name><Value>x</Value></ParameterValueStruct>"
    many = plain.replace(b"<ParameterList>", b"<ParameterList>" + pv * (room // len(pv)))
    attrs = b" ".join(b'a%d=""' % i for i in range(room // 10))[:room]
    attrs = attrs[: attrs.rfind(b'""') + 2]
    many_attributes = plain.replace(b"<cwmp:Inform>", b"<cwmp:Inform " + attrs + b">")
    deep = plain.replace(b"<DeviceId>", b"<DeviceId>" + b"<a>" * 30 + b"</a>" * 30)
    deep_past = plain.replace(
        b"<DeviceId>", b"<DeviceId>" + b"<a>" * (room // 8) + b"</a>" * (room // 8)
    )
    huge_value = plain.replace(b"<cwmp:Inform>", b'<cwmp:Inform v="' + b"v" * room + b'">')
    utf16 = plain.replace(b'encoding="UTF-8"', b'encoding="UTF-16"').decode().encode("utf-16")
    bad_utf8 = plain.replace(b"ATTACK0", b"\xff\xfe" * (room // 2))
    junk = os.urandom(cap)
    # A body that proves nothing is challenged unread: offer a (wrong) credential, so that
    # every one of them is parsed, as an attacker of the parser would.
    claim = {
        "Authorization": 'Digest username="x", realm="cwmpgw", nonce="n", uri="/", response="0"'
    }
    return [
        ("many_elements", many, claim),
        ("many_attributes", many_attributes, claim),
        ("deep_nesting", deep, claim),
        ("deep_past_the_limit", deep_past, claim),
        ("huge_attribute", huge_value, claim),
        ("utf16", utf16, {"Content-Type": 'text/xml; charset="utf-16"'} | claim),
        ("invalid_utf8", bad_utf8, claim),
        ("junk_at_the_cap", junk, claim),
    ]


# ---------------------------------------------------------------------------------------
# The attacker process: threads with blocking sockets, from one loopback address


class Attacker:
    def __init__(self, port: int, cafile: str, source: str, until: float) -> None:
        self.port, self.source, self.until = port, source, until
        self.context = ssl.create_default_context(cafile=cafile)
        self.context.check_hostname = False
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def running(self) -> bool:
        return time.monotonic() < self.until

    def raw(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(
            ("127.0.0.1", self.port), timeout=timeout, source_address=(self.source, 0)
        )

    def tls(self, timeout: float = 10) -> ssl.SSLSocket:
        return self.context.wrap_socket(self.raw(timeout), server_hostname="localhost")

    def post(self, sock: socket.socket, body: bytes, headers: dict[str, str]) -> int:
        hdrs = {"Host": "acs", "Content-Type": "text/xml", "Content-Length": str(len(body))}
        hdrs.update(headers)
        head = "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
        sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return 0
            data += more
        return int(data.split(b" ", 2)[1])

    def threads(self, target: Any, n: int) -> None:
        workers = [threading.Thread(target=target, daemon=True) for _ in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=max(0.0, self.until - time.monotonic()) + 15)

    # -- the attacks --

    def bodies(self) -> None:
        cases = worst_bodies()

        def loop() -> None:
            while self.running():
                for name, body, headers in cases:
                    try:
                        with self.tls() as s:
                            self.count(f"{name} {self.post(s, body, headers)}")
                    except OSError:
                        self.count(f"{name} cut")

        self.threads(loop, 4)

    def flood(self) -> None:
        held: list[socket.socket] = []

        def loop() -> None:
            while self.running() and len(held) < 1500:
                try:
                    s = self.tls(timeout=5)
                    held.append(s)
                    self.count("held")
                except OSError:
                    self.count("refused")

        self.threads(loop, 4)
        for s in held:
            s.close()

    def slowloris(self) -> None:
        socks: list[socket.socket] = []
        while self.running():
            while len(socks) < 200:
                try:
                    s = self.tls(timeout=5)
                    s.sendall(b"POST / HTTP/1.1\r\nHost: acs\r\n")
                    socks.append(s)
                    self.count("opened")
                except OSError:
                    self.count("refused")
                    break
            for s in list(socks):
                try:
                    s.sendall(b"X")
                except OSError:
                    socks.remove(s)
                    s.close()
                    self.count("cut")
            time.sleep(1)
        for s in socks:
            s.close()

    def idle(self) -> None:
        socks: list[socket.socket] = []
        body = INFORM.format(n=1, params="").encode()
        while self.running():
            while len(socks) < 500 and self.running():
                try:
                    s = self.tls(timeout=5)
                    self.post(s, body, {})
                    socks.append(s)
                    self.count("holding")
                except OSError:
                    self.count("refused")
                    break
            readable, _, _ = select.select(socks, [], [], 1.0) if socks else ([], [], [])
            for s in readable:
                try:
                    s.setblocking(False)
                    gone = not s.recv(4096)
                except ssl.SSLWantReadError:
                    gone = False
                except OSError:
                    gone = True
                finally:
                    s.setblocking(True)
                if gone:
                    socks.remove(s)
                    s.close()
                    self.count("closed by the server")
        for s in socks:
            s.close()

    def streaming(self) -> None:
        piece = b"<" * (64 * 1024)

        def loop() -> None:
            while self.running():
                sent = 0
                try:
                    with self.tls(timeout=10) as s:
                        s.sendall(
                            b"POST / HTTP/1.1\r\nHost: acs\r\nContent-Length: %d\r\n\r\n"
                            % (100 * MiB)
                        )
                        while sent < 100 * MiB:
                            s.sendall(piece)
                            sent += len(piece)
                    self.count("never cut")
                except OSError:
                    self.count("cut")
                self.count("MiB sent", sent // MiB)

        self.threads(loop, 4)

    def guessing(self) -> None:
        body = INFORM.format(n=2, params="").encode()

        def loop() -> None:
            while self.running():
                try:
                    with self.tls() as s:
                        first = self.post(s, body, {})
                        if first != 401:
                            self.count(f"first {first}")
                            continue
                        auth = (
                            'Digest username="000000-P-ATTACK2", realm="cwmpgw", nonce="x", '
                            'uri="/", qop=auth, nc=00000001, cnonce="c", '
                            f'response="{os.urandom(16).hex()}"'
                        )
                        self.count(f"guess {self.post(s, body, {'Authorization': auth})}")
                except OSError:
                    self.count("cut")

        self.threads(loop, 4)


def attacker_main(args: argparse.Namespace) -> None:
    attacker = Attacker(args.port, args.cafile, args.source, time.monotonic() + args.duration)
    getattr(attacker, args.attacker)()
    print(json.dumps(attacker.counts, sort_keys=True))


# ---------------------------------------------------------------------------------------
# The bench: the gateway, the fleet, the phases


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(cwmpgw_[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m and "{" not in line:
            out[m.group(1)] = float(m.group(2))
    return out


async def phase(
    reactor: Any, gateway: Gateway, fleet: Any, name: str, args: argparse.Namespace, port: int
) -> dict[str, Any]:
    from twisted.internet import task, threads

    from cwmpgw.sim.fleet import Rate

    attacker: subprocess.Popen[str] | None = None
    if name != "baseline":
        attacker = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--attacker",
                name,
                "--port",
                str(gateway.acs_port),
                "--cafile",
                gateway.cafile,
                "--source",
                SOURCE[name],
                "--duration",
                str(args.duration),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    worst, peak_rss, before = 0.0, 0, rss(gateway.pid)
    stop = [False]

    def sample() -> None:
        nonlocal worst, peak_rss
        while not stop[0]:
            worst = max(worst, scrape(port).get("cwmpgw_reactor_lag_max_seconds", 0.0))
            peak_rss = max(peak_rss, rss(gateway.pid))
            time.sleep(1.0)

    sampler = threads.deferToThread(sample)
    await task.deferLater(reactor, 1.0, lambda: None)  # the attack is under way
    stats = await fleet.run_sessions(duration=args.duration, arrival=Rate(args.rate))
    attack_counts: dict[str, Any] = {}
    if attacker is not None:
        out, _ = await threads.deferToThread(attacker.communicate)
        attack_counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    stop[0] = True
    await sampler
    worst = max(worst, scrape(port).get("cwmpgw_reactor_lag_max_seconds", 0.0))
    summary = stats.summary(reactor.seconds())
    await task.deferLater(reactor, args.settle, lambda: None)
    return {
        "attack": name,
        "stall_max_s": round(worst, 3),
        "sessions": summary["sessions"],
        "success_rate": round(summary["completed"] / max(1, summary["sessions"]), 4),
        "p99_s": summary["latency"]["p99"],
        "p50_s": summary["latency"]["p50"],
        "failures": summary["failures"],
        "rss_mib": [
            round(before / MiB, 1),
            round(peak_rss / MiB, 1),
            round(rss(gateway.pid) / MiB, 1),
        ],
        "attacker": attack_counts,
    }


async def main(reactor: Any, args: argparse.Namespace) -> None:
    from tests.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-attack-"))
    redis = RedisServer().start()
    metrics_port = free_port()
    gateway = Gateway(
        work / "gw",
        redis.url,
        acs_extra="",  # the default defences, admission control included
        auth_extra="",
        metrics_extra=f'port = {metrics_port}\ninterface = "127.0.0.1"',
    ).start()
    fleet = gateway.fleet(reactor, devices=args.devices, concurrency=50, seed=12)
    results = []
    try:
        gateway.import_credentials(fleet)
        await fleet.start()
        from cwmpgw.sim.fleet import Rate

        await fleet.run_sessions(count=args.devices, arrival=Rate(None))  # warm: all known
        from twisted.internet import task

        await task.deferLater(reactor, args.settle, lambda: None)
        wanted = [a for a in ATTACKS if not args.only or a in args.only.split(",")]
        for name in ["baseline", *wanted]:
            results.append(await phase(reactor, gateway, fleet, name, args, metrics_port))
            print(json.dumps(results[-1]), flush=True)
        await fleet.stop()
    finally:
        log = gateway.stop()
        redis.stop()
        errors = [line for line in log.splitlines() if re.search(r"Traceback|#critical", line)]
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (
            r["attack"],
            f"stall {r['stall_max_s'] * 1000:.0f} ms, {r['sessions']} sessions, "
            f"success {r['success_rate']:.1%}, p50/p99 {r['p50_s']:.3f}/{r['p99_s']:.3f} s, "
            f"RSS {r['rss_mib'][0]}/{r['rss_mib'][1]}/{r['rss_mib'][2]} MiB",
        )
        for r in results
    ]
    rows.append(("gateway log", f"{len(errors)} tracebacks or critical lines"))
    report("attack", rows, {"phases": results, "log_errors": len(errors), "args": vars(args)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--only", default="")
    parser.add_argument("--attacker", choices=ATTACKS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--cafile")
    parser.add_argument("--source")
    arguments = parser.parse_args()
    if arguments.attacker:
        attacker_main(arguments)
    else:
        from twisted.internet import defer, task

        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, arguments)))
