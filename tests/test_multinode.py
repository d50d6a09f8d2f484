"""Two real gateway processes (twistd) on one Redis: one fleet, every task run once.

Back-office work arrives through both nodes' APIs and through the Redis command stream;
the CPE reaches one node, then the other; a caller waiting on node A gets the result of
a session that ran on node B, through Redis.
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
from collections import Counter
from pathlib import Path
from typing import Any

from lxml import etree

from cwmpgw.nbi.tokens import token_sha256
from tests import cpe_client
from tests.cpe_envelopes import typical_response
from tests.gateway import nbi_call
from tests.redis_server import RedisServer, unique_prefix
from tests.test_integration import import_credentials

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = "multi-cpe", "multi-cpe-password"
TOKEN = "test-token-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(
        self, name: str, root: Path, redis: RedisServer, prefix: str, workers: int = 1
    ) -> None:
        self.name = name
        self.acs_port, self.nbi_port = free_port(), free_port()
        self.dir = root / name
        self.dir.mkdir()
        config = self.dir / "gw.toml"
        config.write_text(
            f"""
[gateway]
data_dir = "{self.dir / "data"}"
node = "{name}"
workers = {workers}
[acs]
port = {self.acs_port}
interface = "127.0.0.1"
hostname = "localhost"
[redis]
url = "{redis.url}"
prefix = "{prefix}"
[nbi]
port = {self.nbi_port}
token_sha256 = ["{token_sha256(TOKEN)}"]
[metrics]
port = 0
[files]
port = 0
interface = "127.0.0.1"
[connreq]
stun = false
[provision]
credentials = false
periodic_inform = false
"""
        )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "cwmpgw", "--config", str(config)],
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "northbound API listening" in line:
                break
        assert any("northbound API listening" in x for x in self.lines), "".join(self.lines)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def acs_url(self) -> str:
        return f"https://127.0.0.1:{self.acs_port}/"

    @property
    def cafile(self) -> str:
        return str(self.dir / "data" / "tls" / "acs-cert.pem")

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        return nbi_call(self.nbi_port, method, path, body, token=TOKEN, timeout=timeout)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        self._reader.join(timeout=5)
        return "".join(self.lines)


class Cpe:
    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()

    def __call__(self, envelope: bytes) -> str:
        root = etree.fromstring(envelope)
        method = etree.QName(
            root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")[0]
        ).localname
        self.asked[method] += 1
        request_id = root.find(".//{urn:dslforum-org:cwmp-1-2}ID").text
        return typical_response(method, request_id).decode()

    def session(self, node: Node, event: str = "1 BOOT") -> list[cpe_client.Exchange]:
        return cpe_client.run_session(
            node.acs_url, USER, PASSWORD, cafile=node.cafile, answer=self, event=event
        )


def fleet_with_one_device(redis_server: RedisServer, tmp_path: Path) -> str:
    """A fresh key prefix holding the test CPE's credential (as the operator imports it)."""
    prefix = unique_prefix()
    result = import_credentials(
        f"device_id,username,password\n{DEVICE_ID},{USER},{PASSWORD}\n",
        str(tmp_path),
        "--redis",
        redis_server.url,
        "--prefix",
        prefix,
    )
    assert result.returncode == 0, result.stderr
    return prefix


def test_two_nodes_share_one_fleet(redis_server: RedisServer, tmp_path: Path) -> None:
    import redis

    prefix = fleet_with_one_device(redis_server, tmp_path)
    a = Node("a", tmp_path, redis_server, prefix)
    try:
        b = Node("b", tmp_path, redis_server, prefix)
    except BaseException:
        a.stop()
        raise
    logs = ""
    try:
        cpe = Cpe()
        assert cpe.session(a)[-1].status == 204  # the device is known from here on
        ids = []
        for node, name in (
            (a, "Device.DeviceInfo.SoftwareVersion"),
            (b, "Device.DeviceInfo.UpTime"),
        ):
            status, task = node.api(
                "POST",
                f"/devices/{DEVICE_ID}/tasks",
                {"type": "GetParameterValues", "args": {"parameter_names": [name]}},
            )
            assert status == 201, task
            ids.append(task["id"])
        # Either node's API knows the other's tasks.
        assert a.api("GET", f"/tasks/{ids[1]}")[1]["status"] == "queued"
        assert b.api("GET", f"/tasks/{ids[0]}")[1]["status"] == "queued"

        # The command stream: whichever node consumes it stores the task once.
        r = redis.Redis(redis_server.host, redis_server.port, decode_responses=True)
        command = {"device_id": DEVICE_ID, "type": "Reboot", "args": {}}
        r.xadd(prefix + "commands", {"task": json.dumps(command)})
        for _ in range(200):
            if any(
                e["type"] == "Reboot"
                for e in a.api("GET", f"/devices/{DEVICE_ID}/tasks")[1]["tasks"]
            ):
                break
            time.sleep(0.05)
        tasks = a.api("GET", f"/devices/{DEVICE_ID}/tasks")[1]["tasks"]
        assert [t["type"] for t in tasks].count("Reboot") == 1
        ids.append(next(t["id"] for t in tasks if t["type"] == "Reboot"))

        # A caller waits on node A while the CPE's session runs on node B.
        waited: dict[str, Any] = {}

        def wait_on_a() -> None:
            waited["answer"] = a.api(
                "POST",
                f"/devices/{DEVICE_ID}/tasks?wait=20",
                {"type": "GetRPCMethods", "args": {}},
            )

        waiter = threading.Thread(target=wait_on_a)
        waiter.start()
        for _ in range(200):  # until the waiting caller's task is queued
            if any(
                t["type"] == "GetRPCMethods"
                for t in b.api("GET", f"/devices/{DEVICE_ID}/tasks")[1]["tasks"]
            ):
                break
            time.sleep(0.05)
        assert cpe.session(b)[-1].status == 204
        waiter.join(timeout=30)
        status, task = waited["answer"]
        assert (status, task["status"]) == (200, "done"), task
        assert task["result"]["methods"]

        for task_id in ids:
            assert b.api("GET", f"/tasks/{task_id}")[1]["status"] == "done"
        assert cpe.asked == Counter({"GetParameterValues": 2, "Reboot": 1, "GetRPCMethods": 1})
        # A CPE that comes back to node A finds nothing left to run.
        assert cpe.session(a)[-1].status == 204
        assert sum(cpe.asked.values()) == 4
        assert r.xpending(prefix + "commands", "cwmpgw")["pending"] == 0
        r.close()
    finally:
        logs = a.stop() + b.stop()
    assert "Traceback" not in logs, logs
    assert TOKEN not in logs and PASSWORD not in logs


def test_workers_share_one_port(redis_server: RedisServer, tmp_path: Path) -> None:
    """--workers 2: two processes accept on one port; the sessions land on both."""
    import redis

    prefix = fleet_with_one_device(redis_server, tmp_path)
    node = Node("w", tmp_path, redis_server, prefix, workers=2)
    try:
        r = redis.Redis(redis_server.host, redis_server.port, decode_responses=True)
        for _ in range(200):  # the second worker logs when it listens
            if any("worker 1:" in line and "ACS endpoint listening" in line for line in node.lines):
                break
            time.sleep(0.05)
        cpe = Cpe()
        for _ in range(24):
            assert cpe.session(node)[-1].status == 204
        closed = [
            json.loads(f["event"])
            for _, f in r.xrange(prefix + "events")
            if f["type"] == "session.closed"
        ]
        nodes = Counter(e["node"] for e in closed)
        assert sum(nodes.values()) == 24
        # The kernel spreads connections by hash: all 24 on one worker has odds of 2^-23.
        assert set(nodes) == {"w", "w-w1"}, nodes
        r.close()
    finally:
        logs = node.stop()
    assert "Traceback" not in logs, logs
    assert "worker 1" in logs


def test_gateway_killed_mid_request_completes_the_task_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGKILL after the gateway sent SetParameterValues, before the CPE's answer: after a
    restart the same request (same ParameterKey) is sent again and the task is done once."""
    prefix = fleet_with_one_device(redis_server, tmp_path)
    node = Node("k", tmp_path, redis_server, prefix)
    keys: list[str] = []
    try:
        assert Cpe().session(node)[-1].status == 204
        status, task = node.api(
            "POST",
            f"/devices/{DEVICE_ID}/tasks",
            {
                "type": "SetParameterValues",
                "args": {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "home"}]},
            },
        )
        assert status == 201, task

        class Crash(Cpe):
            def __call__(self, envelope: bytes) -> str:
                keys.append(etree.fromstring(envelope).findtext(".//ParameterKey") or "")
                node.process.kill()  # the gateway dies holding the request
                node.process.wait(timeout=30)
                raise ConnectionAbortedError("the gateway is gone")

        try:
            Crash().session(node)
        except (ConnectionAbortedError, OSError):
            pass
        assert node.process.returncode == -signal.SIGKILL
    finally:
        node.stop()
    restarted = Node("k2", tmp_path, redis_server, prefix)
    try:

        class Applies(Cpe):
            def __call__(self, envelope: bytes) -> str:
                keys.append(etree.fromstring(envelope).findtext(".//ParameterKey") or "")
                return super().__call__(envelope)

        cpe = Applies()
        assert cpe.session(restarted)[-1].status == 204
        assert cpe.asked == Counter({"SetParameterValues": 1})
        assert len(keys) == 2 and keys[0] == keys[1] != ""  # the same request, resent once
        final = restarted.api("GET", f"/tasks/{task['id']}")[1]
        assert (final["status"], final["attempts"]) == ("done", 2), final
        # Nothing more runs in later sessions.
        again = Cpe()
        assert again.session(restarted)[-1].status == 204
        assert not again.asked
    finally:
        logs = restarted.stop()
    assert "Traceback" not in logs, logs
