"""A real gateway (twistd) killed right after a task's state change is stored: its event
is in the stream all the same (issue 12, "an event lost after a crash").

The gateway reaches Redis through a proxy that passes its commands on, one whole command
at a time, until the one that stores the task as done; from then on nothing the gateway
sends arrives, and the gateway is killed with SIGKILL. That is a process dying after that
command, with the timing made certain: whatever it would have written next is lost.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.nodes import DEVICE_ID, Cpe, Node, fleet_with_one_device
from tests.support.redis_server import RedisServer


def split_commands(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The whole RESP commands (arrays of bulk strings) at the start of ``buffer``, and
    what is left of it."""
    commands = []
    pos = 0
    while True:
        start = pos
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            break
        assert buffer[pos : pos + 1] == b"*", buffer[pos : pos + 20]
        pos = end + 2
        complete = True
        for _ in range(int(buffer[start + 1 : end])):
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                complete = False
                break
            pos = end + 2 + int(buffer[pos + 1 : end]) + 2
            if pos > len(buffer):
                complete = False
                break
        if not complete:
            pos = start
            break
        commands.append(buffer[start:pos])
    return commands, buffer[pos:]


class CuttingProxy:
    """A TCP proxy to Redis that stops passing commands on for good after the first one
    ``cut_after`` accepts (that one is passed on whole), on every connection, and then
    calls ``on_cut``. Replies still come back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cut_after: Callable[[bytes], bool] = lambda command: False
        self.on_cut: Callable[[], None] = lambda: None
        self.cut = threading.Event()
        self.dropped = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self._server.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._commands, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    def _commands(self, client: socket.socket, upstream: socket.socket) -> None:
        pending = b""
        while chunk := _recv(client):
            commands, pending = split_commands(pending + chunk)
            for command in commands:
                with self._lock:
                    if self.cut.is_set():
                        self.dropped += 1
                        continue
                    upstream.sendall(command)
                    if self.cut_after(command):
                        self.cut.set()
                        self.on_cut()
        # The gateway is gone; the connection to Redis stays open until close().

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        while chunk := _recv(upstream):
            try:
                client.sendall(chunk)
            except OSError:
                return

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for s in self._sockets:
                s.close()


def _recv(s: socket.socket) -> bytes:
    try:
        return s.recv(65536)
    except OSError:
        return b""


def test_gateway_killed_right_after_a_task_is_done_leaves_its_event_in_the_stream(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = fleet_with_one_device(redis_server, tmp_path)
    proxy = CuttingProxy((redis_server.host, redis_server.port))
    direct = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    node = Node("crash", tmp_path, proxy, prefix)  # type: ignore[arg-type]
    try:
        assert Cpe().session(node)[-1].status == 204
        status, task = node.api(
            "POST",
            f"/devices/{DEVICE_ID}/tasks",
            {"type": "GetParameterValues", "args": {"parameter_names": ["Device.DeviceInfo."]}},
        )
        assert status == 201, task
        done_marker = b'"status":"done"'
        proxy.cut_after = lambda command: (
            task["id"].encode() in command and (done_marker in command)
        )
        proxy.on_cut = node.process.kill  # the gateway dies after storing the change
        try:
            Cpe().session(node)
        except OSError:  # the gateway is gone
            pass
        node.process.wait(timeout=30)
        assert proxy.cut.is_set()
    finally:
        logs = node.stop()
        proxy.close()
    assert node.process.returncode == -signal.SIGKILL, logs
    try:
        deadline = time.monotonic() + 10
        stored = None
        while time.monotonic() < deadline:  # Redis runs the last command it was passed
            stored = direct.get(f"{prefix}task:{task['id']}")
            if stored is not None and json.loads(stored)["status"] == "done":
                break
            time.sleep(0.02)
        assert stored is not None and json.loads(stored)["status"] == "done", stored
        events = [
            json.loads(fields["event"])
            for _, fields in direct.xrange(f"{prefix}events")
            if fields["type"].startswith("task.")
        ]
        mine = [(e["type"], e["data"]) for e in events if e["data"]["id"] == task["id"]]
        assert mine == [("task.queued", task), ("task.done", json.loads(stored))], mine
    finally:
        direct.close()
    # And nothing waits in the spool to be replayed as a second copy.
    for spool in (node.dir / "data" / "spool").glob("*.jsonl"):
        assert task["id"] not in spool.read_text()
