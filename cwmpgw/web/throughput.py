"""The TR-143 test server: the far end of a CPE's DownloadDiagnostics and UploadDiagnostics.

``GET /download/<bytes>/<expires>/<tag>/<sig>`` streams that many bytes (with a
Content-Length, from a pull producer: nothing is buffered); ``PUT`` or ``POST
/upload/<bytes>/<expires>/<tag>/<sig>`` reads at most that many bytes, counts and
discards them, and answers 204. The HTTP transaction is all TR-143 measures (ROMTime,
BOMTime, EOMTime, byte counts), so the answers are as plain as they can be.

An open endpoint that sends or swallows gigabytes for anyone would be a bandwidth
reflector. Every URL is therefore signed: ``sig`` is an HMAC-SHA256 (base64url, 128 bits)
of the direction, size, expiry and tag under a secret all gateway nodes share, made by
:meth:`ThroughputSigner.url` for one diagnostic task (the tag is its id) and good until
its expiry. An upload is checked when its headers arrive, before any of its body is read.
Concurrent transfers are capped; over the cap a request gets 503.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from twisted.internet.interfaces import IPullProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from cwmpgw.web.site import CappedRequest, ConnectionLimits, HardenedChannel, HardenedSite

__all__ = ["ThroughputResource", "ThroughputSigner", "ThroughputSite"]

_PATH = re.compile(
    rb"^/(download|upload)/(\d{1,15})/(\d{1,12})/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9_-]{22})$"
)
_CHUNK = 65536
_ZEROS = bytes(_CHUNK)


class ThroughputSigner:
    """Makes and checks the endpoint's URLs (see the module docs)."""

    def __init__(
        self,
        secret: bytes,
        base_url: str,
        clock: IReactorTime,
        *,
        download_bytes: int,
        max_download_bytes: int,
        max_upload_bytes: int,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the throughput secret must be at least 16 bytes")
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        self.download_bytes = download_bytes
        self.max_download_bytes = max_download_bytes
        self.max_upload_bytes = max_upload_bytes

    def _sig(self, direction: str, size: int, expires: int, tag: str) -> str:
        message = f"{direction}|{size}|{expires}|{tag}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url(self, direction: str, tag: str, size: int | None, lifetime: float) -> str:
        """A URL for one test, good for ``lifetime`` seconds; ``size`` is capped (None:
        the default download size, or the largest upload)."""
        if direction == "download":
            size = min(size or self.download_bytes, self.max_download_bytes)
        elif direction == "upload":
            size = min(size or self.max_upload_bytes, self.max_upload_bytes)
        else:
            raise ValueError(direction)
        expires = int(self._clock.seconds() + lifetime)
        sig = self._sig(direction, size, expires, tag)
        return f"{self.base_url}/{direction}/{size}/{expires}/{tag}/{sig}"

    def check(self, method: bytes, path: bytes) -> tuple[str, int] | str:
        """(direction, size) of a valid, unexpired URL for ``method``; else why not."""
        m = _PATH.match(path.split(b"?", 1)[0])
        if m is None:
            return "not a throughput URL"
        direction = m.group(1).decode()
        if (direction == "download") != (method in (b"GET", b"HEAD")) or (
            direction == "upload" and method not in (b"PUT", b"POST")
        ):
            return "wrong method"
        size, expires = int(m.group(2)), int(m.group(3))
        expected = self._sig(direction, size, expires, m.group(4).decode())
        if not hmac.compare_digest(expected.encode(), m.group(5)):
            return "bad signature"
        if self._clock.seconds() > expires:
            return "expired"
        cap = self.max_download_bytes if direction == "download" else self.max_upload_bytes
        if size > cap:
            return "too large"
        return direction, size


class _Counter:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0


class _UploadRequest(CappedRequest):
    """Checks the URL when the headers are in, then counts the body and drops it."""

    received = 0
    checked: tuple[str, int] | None = None

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        channel = self.channel
        site = getattr(channel, "site", None)
        if not isinstance(channel, HardenedChannel) or not isinstance(site, ThroughputSite):
            return
        verdict = site.signer.check(channel._command, channel._path)
        if isinstance(verdict, str):
            site.refused += 1
            channel.refuse(403, verdict)
            return
        direction, size = verdict
        if direction == "upload":
            if length is not None and length > size:
                channel.refuse(413, "body too large")
                return
            if site.transfers.active >= site.transfers.limit:
                channel.refuse(503, "too many transfers")
                return
            site.transfers.active += 1
            _release_when_done(self, site.transfers)
        self.checked = verdict

    def handleContentChunk(self, data: bytes) -> None:
        self.received += len(data)
        if self.checked is not None and self.received > self.checked[1]:
            channel = self.channel
            if isinstance(channel, HardenedChannel):
                channel.refuse(413, "body too large")


def _release_when_done(request: Request, counter: _Counter) -> None:
    def release(_: object) -> None:
        counter.active -= 1

    request.notifyFinish().addBoth(release)


@implementer(IPullProducer)
class _Zeros:
    def __init__(self, request: Request, size: int) -> None:
        self._request = request
        self._left = size

    def resumeProducing(self) -> None:
        n = min(self._left, _CHUNK)
        if n:
            self._left -= n
            self._request.write(_ZEROS if n == _CHUNK else _ZEROS[:n])
        if not self._left:
            self._request.unregisterProducer()
            self._request.finish()

    def stopProducing(self) -> None:
        self._left = 0


class ThroughputResource(Resource):
    isLeaf = True
    _log = Logger()

    def render_GET(self, request: Request) -> Any:
        site = request.channel.site  # type: ignore[attr-defined]
        verdict = site.signer.check(b"GET", request.path)
        if isinstance(verdict, str) or verdict[0] != "download":
            return _plain(request, 403, "forbidden")
        if site.transfers.active >= site.transfers.limit:
            return _plain(request, 503, "too many transfers")
        size = verdict[1]
        site.transfers.active += 1
        _release_when_done(request, site.transfers)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        request.setHeader(b"cache-control", b"no-store")
        site.downloads += 1
        request.registerProducer(_Zeros(request, size), False)
        return NOT_DONE_YET

    def render_PUT(self, request: Request) -> bytes:
        site = request.channel.site  # type: ignore[attr-defined]
        if not isinstance(request, _UploadRequest) or request.checked is None:
            return _plain(request, 403, "forbidden")
        if request.checked[0] != "upload":
            return _plain(request, 403, "forbidden")
        site.uploads += 1
        site.uploaded_bytes += request.received
        request.setResponseCode(204)
        return b""

    render_POST = render_PUT


def _plain(request: Request, status: int, text: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"connection", b"close")
    return text.encode() + b"\n"


class ThroughputSite(HardenedSite):
    """The endpoint's site: the hardened base with the upload cap as its body cap, a read
    deadline long enough for a slow line, and a cap on concurrent transfers."""

    requestFactory = _UploadRequest

    def __init__(
        self,
        signer: ThroughputSigner,
        *,
        max_transfers: int,
        read_timeout: float,
        max_connections: int = 1000,
        **kwargs: Any,
    ) -> None:
        limits = ConnectionLimits(
            max_body_bytes=signer.max_upload_bytes,
            max_requests=10,
            read_timeout=read_timeout,
            idle_timeout=30.0,
        )
        super().__init__(
            ThroughputResource(),  # type: ignore[no-untyped-call]
            limits=limits,
            max_connections=max_connections,
            **kwargs,
        )
        self.signer = signer
        self.transfers = _Counter(max_transfers)
        self.downloads = 0
        self.uploads = 0
        self.uploaded_bytes = 0
        self.refused = 0
