"""Helpers for the fault tests under load (tests/integration/test_faults_under_load.py).

- :class:`Ledger`: what the simulated CPEs saw, from the fleet's trace: each Inform sent
  and whether its InformResponse came back (an event counts as delivered only then, as
  TR-069 says), the ACS requests received and answered (by request ID), each 503 and why,
  each session the ACS ended with 204.
- :func:`start_gateway`: a whole gateway in the test's reactor (ACS over TLS, API, Redis).
- :func:`give_credentials`: the fleet's credentials, stored through the gateway's store
  (the in-process counterpart of ``python -m cwmpgw.credentials import``).
- :class:`GatewayProcess`: a gateway run by ``twistd`` as an operator runs it, with a
  config the test chooses.
- :func:`until`: wait, polling the reactor, for a condition; fail past a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxml import etree
from twisted.internet.task import deferLater

from cwmpgw.service import GatewayService
from cwmpgw.web.digest import ha1
from tests.support import gateway
from tests.support.gateway import nbi_call

__all__ = [
    "GatewayProcess",
    "Ledger",
    "acs_url",
    "free_port",
    "give_credentials",
    "import_csv",
    "start_gateway",
    "stream_events",
    "until",
]

CHALLENGE = "authentication required"  # the text of the gateway's 401
_SOAP_BODY = "{http://schemas.xmlsoap.org/soap/envelope/}Body"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    reactor: Any, predicate: Callable[[], bool], what: str, bound: float = 60.0
) -> None:
    """Poll ``predicate`` every 50 ms; raise AssertionError past ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {bound:g} s")
        await deferLater(reactor, 0.05, lambda: None)


def _parse(body: bytes) -> tuple[str, str, list[str]] | None:
    """(method, request ID, event codes) of a CWMP envelope; None for anything else."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        root = etree.fromstring(body)
    except etree.XMLSyntaxError:
        return None
    soap_body = root.find(_SOAP_BODY)
    if soap_body is None or len(soap_body) == 0:
        return None
    method = etree.QName(soap_body[0]).localname
    request_id = root.findtext(".//{*}ID") or ""
    codes = [e.text or "" for e in soap_body.iter("EventCode")] if method == "Inform" else []
    return method, request_id, codes


class Ledger:
    """The CPEs' side of the story, built from ``Fleet(trace=ledger.trace)``.

    ``acknowledged``: (device id, event codes) of every Inform whose InformResponse the
    CPE received. ``requests``: (device id, request ID, method) of every ACS request the
    CPE received; ``answered``: the request IDs it answered. ``refusals``: the text of
    every answer that is neither an envelope nor the 401 challenge (a 503's reason), ``refused`` how many each
    device got. ``ended``: how many sessions the ACS ended with 204.
    """

    def __init__(self) -> None:
        self._inform: dict[str, tuple[str, ...]] = {}
        self.informs_sent = 0
        self.acknowledged: list[tuple[str, tuple[str, ...]]] = []
        self.requests: list[tuple[str, str, str]] = []
        self.answered: list[tuple[str, str]] = []
        self.refusals: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # by device
        self.ended = 0
        self.in_session: dict[str, bool] = defaultdict(bool)  # InformResponse seen, no 204 yet

    def trace(self, direction: str, device: Any, body: bytes) -> None:
        device_id = device.device_id
        if direction == "cpe":
            parsed = _parse(body) if body else None
            if parsed is None:
                return
            method, request_id, codes = parsed
            if method == "Inform":
                self.informs_sent += 1
                self._inform[device_id] = tuple(codes)
                self.in_session[device_id] = False
            elif method.endswith("Response") or method == "Fault":
                self.answered.append((device_id, request_id))
            return
        if not body:
            self.ended += 1  # the 204 that ends a session
            self.in_session[device_id] = False
            return
        parsed = _parse(body)
        if parsed is None:
            text = body.decode("utf-8", "replace").strip()
            if text != CHALLENGE:  # the trace has no status; the 401's text tells it
                self.refusals[text] += 1
                self.refused[device_id] += 1
            return
        method, request_id, _ = parsed
        if method == "InformResponse":
            self.acknowledged.append((device_id, self._inform[device_id]))
            self.in_session[device_id] = True
        elif not method.endswith("Response"):
            self.requests.append((device_id, request_id, method))

    def delivered(self, code: str) -> Counter[str]:
        """How many times each device's Inform carrying ``code`` was acknowledged."""
        return Counter(d for d, codes in self.acknowledged if code in codes)

    def sent_for_task(self, task_id: str) -> list[str]:
        """The request IDs the CPE received for a task (the runner's IDs start with the
        last 12 characters of the task id)."""
        return [rid for _, rid, _ in self.requests if rid.startswith(task_id[-12:] + ".")]

    def answered_for_task(self, task_id: str) -> list[str]:
        return [rid for _, rid in self.answered if rid.startswith(task_id[-12:] + ".")]


async def start_gateway(
    testcase: Any, reactor: Any, directory: str, redis_url: str, prefix: str, **sections: Any
) -> GatewayService:
    """A whole gateway in this reactor (tests/support/gateway.py), with the API open and metrics
    and connection requests off unless ``sections`` turn them on."""
    quiet = {
        "gateway": {"node": "load"},
        "nbi": {"interface": "127.0.0.1", "auth": "none"},
        "metrics": {"enabled": False},
        "connreq": {"enabled": False},
    }
    return await gateway.start_gateway(
        testcase, directory, redis_url, prefix, **gateway.merge(quiet, sections)
    )


acs_url = gateway.acs_url


async def give_credentials(service: GatewayService, fleet: Any) -> None:
    """Store each simulated device's credential (Digest HA1s only), as the import does."""
    realm = service.config.auth.realm
    for device in fleet.devices:
        c = device.credentials()
        hashes = {a: ha1(a, c.username, realm, c.password) for a in ("MD5", "SHA-256")}
        await service.credentials.set(device.device_id, c.username, hashes)


def stream_events(client: Any, prefix: str) -> list[dict[str, Any]]:
    """Every event of the ``<prefix>events`` stream, in order (redis-py client)."""
    return [json.loads(f["event"]) for _, f in client.xrange(prefix + "events")]


def import_csv(csv_text: str, directory: Path, redis_url: str, prefix: str) -> None:
    """``python -m cwmpgw.credentials import`` (blocking), as the operator runs it."""
    path = directory / "creds.csv"
    path.write_text(csv_text)
    args = ["--redis", redis_url, "--prefix", prefix, "import", str(path)]
    result = subprocess.run(
        [sys.executable, "-m", "cwmpgw.credentials", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


class GatewayProcess:
    """``twistd -n cwmpgw`` with a config of the test's choosing (blocking calls: run
    them in a thread from a reactor test). ``acs``/``extra`` add TOML to the config."""

    def __init__(
        self,
        name: str,
        root: Path,
        redis_url: str,
        prefix: str,
        *,
        acs: str = "",
        extra: str = "",
        acs_port: int = 0,
    ) -> None:
        self.name = name
        self.acs_port = acs_port or free_port()
        self.nbi_port = free_port()
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "gw.toml"
        self.config.write_text(
            f"""
[gateway]
data_dir = "{root / (name + "-data")}"
node = "{name}"
[acs]
port = {self.acs_port}
interface = "127.0.0.1"
hostname = "localhost"
{acs}
[redis]
url = "{redis_url}"
prefix = "{prefix}"
[nbi]
port = {self.nbi_port}
auth = "none"
[metrics]
enabled = false
port = 0
[files]
port = 0
interface = "127.0.0.1"
[connreq]
enabled = false
stun = false
stun_port = 0
[provision]
credentials = false
periodic_inform = false
{extra}
"""
        )
        self.data_dir = root / (name + "-data")
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> GatewayProcess:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.lines = []
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "cwmpgw", "--config", str(self.config)],
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if "northbound API listening" in line:
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        ready.wait(60)
        if not any("northbound API listening" in x for x in self.lines):
            self.kill()
            raise RuntimeError("the gateway did not start:\n" + "".join(self.lines))
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.acs_port}/"

    @property
    def cafile(self) -> str:
        return str(self.data_dir / "tls" / "acs-cert.pem")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        return nbi_call(self.nbi_port, method, path, body, timeout=timeout)

    def terminate(self, timeout: float = 60) -> float:
        """SIGTERM; wait for the exit; the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)
        took = time.monotonic() - started
        if self._reader is not None:
            self._reader.join(timeout=10)
        return took

    def kill(self) -> None:
        """Cleanup: stop the process if it is still running (SIGTERM, then SIGKILL)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
