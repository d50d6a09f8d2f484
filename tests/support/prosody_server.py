"""A throwaway Prosody XMPP server on a free loopback port, for the Annex K tests.

It runs Debian's ``prosody`` (``apt-get install prosody``; ``.ci/run`` installs it) with a
config written into a temporary directory: one VirtualHost (``localhost``), client
connections on 127.0.0.1 only, STARTTLS required with a certificate from the test CA, no
server-to-server, plain-text account storage so accounts are added by writing a file
(Prosody reads them at each login). Usable without pytest::

    server = ProsodyServer(CertAuthority())
    server.start()
    try:
        server.add_account("acs", "secret")
        ...  # connect to server.host, server.port; trust server.cafile; domain server.domain
    finally:
        server.stop()
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading

from tests.support.certfactory import CertAuthority
from tests.support.redis_server import stop_child

__all__ = ["ProsodyServer", "prosody_binary"]

_READY = re.compile(rb"Activated service 'c2s' on \[127\.0\.0\.1\]:(\d+)")


def prosody_binary() -> str | None:
    return shutil.which("prosody")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class ProsodyServer:
    host = "127.0.0.1"
    domain = "localhost"

    def __init__(self, ca: CertAuthority, *, start_timeout: float = 20.0) -> None:
        self.ca = ca
        self.start_timeout = start_timeout
        self.port = 0
        self.cafile = ""
        self._dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: collections.deque[bytes] = collections.deque(maxlen=300)
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return b"\n".join(self._output).decode("utf-8", "replace")

    def start(self) -> ProsodyServer:
        binary = prosody_binary()
        if binary is None:
            raise RuntimeError("prosody is not installed (apt-get install prosody)")
        self._dir = tempfile.mkdtemp(prefix="cwmpgw-prosody-")
        os.makedirs(os.path.join(self._dir, "data", self.domain, "accounts"))
        self.cafile = self.ca.write(self._dir, "ca")
        cert, key = self.ca.issue_server(self.domain).write(self._dir, "xmpp")
        for _ in range(3):
            self.port = _free_port(self.host)
            config = os.path.join(self._dir, "prosody.cfg.lua")
            with open(config, "w") as f:
                f.write(self._config(cert, key))
            if self._try_start(binary, config):
                return self
            error = self.output
            self._stop_process()
            if "in use" not in error:
                break
        output = self.output
        self.stop()
        raise RuntimeError(f"prosody did not start on {self.host}:{self.port}:\n{output}")

    def _config(self, cert: str, key: str) -> str:
        assert self._dir is not None
        d = self._dir
        return f"""
run_as_root = true
pidfile = {_lua_string(os.path.join(d, "prosody.pid"))}
data_path = {_lua_string(os.path.join(d, "data"))}
certificates = {_lua_string(d)}
admin_socket = {_lua_string(os.path.join(d, "admin.sock"))}
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
plugin_paths = {{}}
modules_enabled = {{ "tls", "saslauth", "disco", "ping" }}
modules_disabled = {{ "s2s", "offline" }}
c2s_ports = {{ {self.port} }}
c2s_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
http_ports = {{}}
https_ports = {{}}
component_ports = {{}}
c2s_require_encryption = true
allow_unencrypted_plain_auth = false
authentication = "internal_plain"
storage = "internal"
limits = {{ c2s = {{ rate = "1000mb/s" }} }}
VirtualHost "{self.domain}"
  ssl = {{ certificate = {_lua_string(cert)}; key = {_lua_string(key)}; }}
"""

    def _try_start(self, binary: str, config: str) -> bool:
        self._output.clear()
        self._process = subprocess.Popen(
            [binary, "--config", config, "-F"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
        )
        ready = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(self._process, ready), name="prosody-output", daemon=True
        )
        self._reader.start()
        ready.wait(self.start_timeout)
        return self._process.poll() is None and bool(_READY.search(b"\n".join(self._output)))

    def _read(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._output.append(line.rstrip(b"\r\n"))
            if _READY.search(line):
                ready.set()
        ready.set()

    def add_account(self, user: str, password: str) -> str:
        """Create (or reset) ``user@localhost``; returns the bare JID."""
        assert self._dir is not None
        if not re.fullmatch(r"[a-z0-9_-]+", user):
            raise ValueError("test accounts are lower-case letters, digits, - and _")
        # Prosody's datamanager writes every non-alphanumeric byte of a name as %xx.
        encoded = re.sub(r"[^A-Za-z0-9]", lambda m: f"%{ord(m.group()):02x}", user)
        path = os.path.join(self._dir, "data", self.domain, "accounts", f"{encoded}.dat")
        with open(path + ".tmp", "w") as f:
            f.write(f'return {{\n\t["password"] = {_lua_string(password)};\n}};\n')
        os.replace(path + ".tmp", path)
        return f"{user}@{self.domain}"

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        reader, self._reader = self._reader, None
        stop_child(process, reader)

    def stop(self) -> None:
        self._stop_process()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> ProsodyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
