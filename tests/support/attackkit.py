"""Shared test support."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import tempfile
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from cwmpgw.web.digest import ha1
from tests.support import cpe_client, digest_client
from tests.support.gateway import cafile, start_gateway
from tests.support.memhttp import Response, parse_responses
from tests.support.redis_server import unique_prefix


@pytest.mark.usefixtures("redis_for_class")
class GatewayBase(TestCase):
    """Starts a gateway (TLS on 127.0.0.1, the test Redis, a prefix of its own)."""

    redis_server: Any

    async def start(self, **sections: dict[str, Any]) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-attack-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        service = await start_gateway(
            self, self.dir, self.redis_server.url, self.prefix, **sections
        )
        self.service = service
        assert service.acs_port is not None
        self.port = service.acs_port.getHost().port
        self.url = f"https://127.0.0.1:{self.port}/"
        self.cafile = cafile(self.dir)
        self.redis = redis.Redis(self.redis_server.host, self.redis_server.port)
        self.addCleanup(self.redis.close)
        return service

    async def add_device(self, serial: str, username: str, password: str) -> str:
        realm = self.service.config.auth.realm
        device_id = _device_id(serial)
        hashes = {a: ha1(a, username, realm, password) for a in ("MD5", "SHA-256")}
        await self.service.credentials.set(device_id, username, hashes)
        return device_id

    def session(self, user: str, password: str, **kw: Any) -> Deferred[list[cpe_client.Exchange]]:
        d: Deferred[list[cpe_client.Exchange]] = deferToThread(
            cpe_client.run_session, self.url, user, password, cafile=self.cafile, **kw
        )
        return d

    def tls(self, timeout: float = 10) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=self.cafile)
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    def exchange(
        self,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        send_body: bool = True,
        sock: ssl.SSLSocket | None = None,
    ) -> Response:
        """One raw POST (a new TLS connection unless ``sock``); its parsed answer."""
        hdrs = {"Host": "127.0.0.1", "Content-Length": str(len(body))}
        hdrs.update({"Content-Type": "text/xml"} if body else {})
        hdrs.update(headers or {})
        own = sock is None
        sock = sock or self.tls()
        try:
            head = (
                "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
            )
            sock.sendall(head.encode() + (body if send_body else b""))
            return _read_response(sock)
        finally:
            if own:
                sock.close()


class RawCpe:
    """A CPE on one TLS connection with hand-made requests (cookie and credentials chosen
    by the test, unlike tests/support/cpe_client.py which plays by the rules)."""

    def __init__(self, test: GatewayBase, serial: str) -> None:
        self.test = test
        self.sock = test.tls()
        self.serial = serial
        self.cookie: str | None = None
        self.challenge: dict[str, str] | None = None
        self.nc = 0
        self.last_authorization = ""

    def inform(self) -> bytes:
        return cpe_client.INFORM.format(serial=self.serial, event="1 BOOT", cr_url="").encode()

    def post(
        self, body: bytes, *, user: str | None = None, password: str = "", raw_auth: str = ""
    ) -> Response:
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if user is not None and self.challenge is not None:
            self.nc += 1
            raw_auth = digest_client.authorization(self.challenge, user, password, nc=self.nc)
        if raw_auth:
            headers["Authorization"] = self.last_authorization = raw_auth
        response = self.test.exchange(body, headers, sock=self.sock)
        if response.status == 401:
            self.challenge = digest_client.pick(response.headers["www-authenticate"])
            self.nc = 0
        cookie = response.header("set-cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        return response

    def login(self, user: str, password: str, body: bytes | None = None) -> Response:
        body = self.inform() if body is None else body
        first = self.post(body)
        if first.status != 401:
            return first
        return self.post(body, user=user, password=password)

    def close(self) -> None:
        self.sock.close()


def _device_id(serial: str) -> str:
    return f"9CA2F4-EC220_G5_V3-{serial}"  # cpe_client's OUI and ProductClass


def _read_response(sock: ssl.SSLSocket, data: bytes = b"") -> Response:
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed before an answer: {data!r}")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    length = int(match.group(1)) if match else 0  # a 204 has none
    while len(rest) < length:
        more = sock.recv(65536)
        if not more:
            break
        rest += more
    (response,) = parse_responses(head + b"\r\n\r\n" + rest[:length])
    return response


def _serial(i: int | str) -> str:
    return f"ATK{i}"
