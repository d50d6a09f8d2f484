"""Two real gateway processes (twistd) on one Redis: one fleet, every task run once.

Back-office work arrives through both nodes' APIs and through the Redis command stream;
the CPE reaches one node, then the other; a caller waiting on node A gets the result of
a session that ran on node B, through Redis.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lxml import etree

from tests.support.nodes import DEVICE_ID, PASSWORD, TOKEN, Cpe, Node, fleet_with_one_device
from tests.support.redis_server import RedisServer


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
        closed: list[dict[str, Any]] = []
        for _ in range(100):  # session.closed is stored within 50 ms of the last answer
            closed = [
                json.loads(f["event"])
                for _, f in r.xrange(prefix + "events")
                if f["type"] == "session.closed"
            ]
            if len(closed) >= 24:
                break
            time.sleep(0.02)
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
