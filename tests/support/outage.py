"""Shared test support."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request

from cwmpgw.store.embedded import redis_server_binary
from tests.support import cpe_client
from tests.support.redis_server import READY_MARKER

PASSWORD = "correct horse battery staple"


class KillableRedis:
    """A redis-server with AOF (fsync always) that can be SIGKILLed and started again on
    the same port with the same data: a crash, not a shutdown."""

    host = "127.0.0.1"

    def __init__(self, *, password: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="cwmpgw-aof-")
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        """Blocking: run it in a thread. Ready when Redis says it accepts connections."""
        self.port = self.port or _free_port()
        # fmt: off
        args = [
            redis_server_binary(), "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", self.dir, "--daemonize", "no", "--logfile", "",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        # fmt: on
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.process = process
        ready = threading.Event()
        output: list[bytes] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:  # drained to the end: a full pipe would block Redis
                output.append(line)
                if READY_MARKER in line.lower():
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        ready.wait(20)
        if process.poll() is not None or not ready.is_set():
            raise RuntimeError(b"".join(output[-20:]).decode(errors="replace"))

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            self._join(process)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
            self._join(process)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _join(self, process: subprocess.Popen[bytes]) -> None:
        if self._reader is not None:
            self._reader.join(timeout=10)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()


class OpenSession:
    """A CPE that stops after the InformResponse, to go on later (blocking; use a thread)."""

    def __init__(self, url: str, user: str, cafile: str, serial: str) -> None:
        parts = urllib.parse.urlsplit(url)
        context = ssl.create_default_context(cafile=cafile)
        self.conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, context=context, timeout=10
        )
        self.user, self.serial = user, serial
        self.cookie = self.authorization = ""

    def post(self, body: str) -> cpe_client.Exchange:
        headers = {"Content-Type": 'text/xml; charset="utf-8"'} if body else {}
        if self.cookie:
            headers["Cookie"] = self.cookie
        if self.authorization:
            headers["Authorization"] = self.authorization
        self.conn.request("POST", "/", body=body.encode(), headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.getheader("Set-Cookie"):
            self.cookie = r.getheader("Set-Cookie", "").split(";")[0]
        return cpe_client.Exchange(
            r.status,
            data,
            {k.lower(): v for k, v in r.getheaders()},
            [v for k, v in r.getheaders() if k.lower() == "www-authenticate"],
        )

    def inform(self) -> cpe_client.Exchange:
        body = cpe_client.INFORM.format(
            serial=self.serial, event="1 BOOT", cr_url="http://127.0.0.1:7548/cr"
        )
        first = self.post(body)
        assert first.status == 401, first
        challenge = next(c for c in first.challenges if "algorithm=MD5" in c)
        self.authorization = cpe_client._digest(challenge, self.user, PASSWORD, "/", 1)
        return self.post(body)

    @property
    def session_id(self) -> str:
        return self.cookie.partition("=")[2]

    def close(self) -> None:
        self.conn.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
