"""Shared test support."""

from __future__ import annotations

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
from tests.support import cpe_client
from tests.support.cpe_envelopes import typical_response
from tests.support.gateway import import_credentials, nbi_call
from tests.support.redis_server import RedisServer, unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"


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


USER = "multi-cpe"


PASSWORD = "multi-cpe-password"


TOKEN = "test-token-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
