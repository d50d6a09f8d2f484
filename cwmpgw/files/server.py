"""The file server: HTTPS GET/HEAD of files (Range, Content-Length, in bounded memory)
and PUT/POST of the files CPEs upload, each allowed only by a grant for the device.

``GET /f/<file id>[/<name>]?d=<device>&e=<expiry>&s=<mac>`` serves a file through
``twisted.web.static.File``: a producer that reads 64 KiB at a time as the socket takes
it (one or several byte ranges, 206/416, ``Accept-Ranges``), so a thousand CPEs at once
cost a thousand buffers, not a thousand images. ``PUT``/``POST /u/<task id>`` stores
the body of an Upload task on disk as it arrives (:class:`~cwmpgw.web.bodies.DiskBody`),
capped by ``files.max_upload_bytes``.

Credentials are HTTP Basic (the CPE gets them in the Download/Upload RPC; the listener
is TLS). With ``require_credentials`` a URL alone is not enough: a URL leaked from one
CPE is useless to another, and a URL presented with another device's credentials is
refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final
from urllib.parse import parse_qsl, unquote

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from cwmpgw.availability import is_backend_failure
from cwmpgw.files.signing import Grant, LinkSigner
from cwmpgw.files.store import FileStore
from cwmpgw.web.bodies import DiskBody, DiskBodyRequest
from cwmpgw.web.site import (
    ConnectionLimits,
    HardenedChannel,
    HardenedSite,
    is_gone,
)

__all__ = ["FileChannel", "FileResource", "FileSite"]

_REALM: Final = b'Basic realm="cwmpgw-files", charset="UTF-8"'


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _is_upload(command: bytes | None, path: bytes | None) -> bool:
    return command in (b"PUT", b"POST") and bool(path) and path.startswith(b"/u/")  # type: ignore[union-attr]


class FileRequest(DiskBodyRequest):
    """An upload's body goes to disk as it arrives; any other body stays small."""

    def disk_body(self) -> DiskBody | None:
        channel: Any = self.channel
        site = getattr(channel, "site", None)
        if isinstance(site, FileSite) and _is_upload(
            getattr(channel, "_command", None), getattr(channel, "_path", None)
        ):
            incoming: DiskBody = site.resource.store.incoming()
            return incoming
        return None


class FileChannel(HardenedChannel):
    """A file-server connection: uploads may be large and slow, so past the read deadline
    a body still arriving at ``files.min_upload_rate`` gets more time."""

    _progress = 0

    def _site(self) -> FileSite | None:
        site = getattr(self, "site", None)
        return site if isinstance(site, FileSite) else None

    def body_limit(self) -> int:
        site = self._site()
        if site is not None and _is_upload(
            getattr(self, "_command", None), getattr(self, "_path", None)
        ):
            return site.max_upload_bytes
        return self.limits.max_body_bytes

    def read_time_left(self) -> float:
        site = self._site()
        request: Any = self.requests[-1] if self.requests else None
        if site is None or request is None:
            return 0.0
        received = int(getattr(request, "_received", 0))
        needed = site.min_upload_rate * self.limits.read_timeout
        grown, self._progress = received - self._progress, received
        return self.limits.read_timeout if grown >= needed else 0.0


class FileSite(HardenedSite):
    protocol = FileChannel
    requestFactory = FileRequest

    def __init__(
        self,
        resource: FileResource,
        *,
        max_upload_bytes: int,
        min_upload_rate: int,
        limits: ConnectionLimits | None = None,
        **kwargs: Any,
    ) -> None:
        if limits is None:
            limits = ConnectionLimits(max_body_bytes=0, idle_timeout=30.0, read_timeout=60.0)
        super().__init__(resource, limits=limits, **kwargs)
        self.resource: FileResource = resource
        self.max_upload_bytes = max_upload_bytes
        self.min_upload_rate = min_upload_rate


class FileResource(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        store: FileStore,
        signer: LinkSigner,
        *,
        clock: IReactorTime,
        require_credentials: bool,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.store = store
        self.signer = signer
        self._clock = clock
        self.require_credentials = require_credentials
        self.served = 0  # files (or ranges) started
        self.refused = 0

    def render(self, request: Request) -> int:
        finished = request.notifyFinish()
        d = Deferred.fromCoroutine(self._handle(request))
        finished.addErrback(lambda _: d.cancel())
        d.addErrback(self._unhandled, request)
        return NOT_DONE_YET

    def _unhandled(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError):
            return
        self._log.failure("unhandled error in the file server", failure)
        self._plain(request, 500, "internal error")

    async def _handle(self, request: Request) -> None:
        try:
            await self._dispatch(request)
        except _Refused as e:
            self.refused += 1
            if e.status in (401, 403):
                self._log.info(
                    "file server refused {method} {path} from {peer}: {reason}",
                    method=request.method.decode("latin-1"),
                    path=request.path.decode("latin-1")[:80],
                    peer=getattr(request.getClientAddress(), "host", "?"),
                    reason=e.reason,
                )
            self._plain(request, e.status, e.reason)
        except CancelledError:
            return
        except Exception as e:
            if not is_backend_failure(e):
                raise
            self._log.warn("file server: storage unavailable: {error!r}", error=e)
            request.setHeader(b"retry-after", b"10")
            self._plain(request, 503, "storage unavailable; retry later")

    async def _dispatch(self, request: Request) -> None:
        parts = request.path.split(b"/")[1:]
        method = request.method
        if len(parts) in (2, 3) and parts[0] == b"f":
            if method not in (b"GET", b"HEAD"):
                request.setHeader(b"allow", b"GET, HEAD")
                raise _Refused(405, "method not allowed")
            await self._get(request, parts[1].decode("ascii", "replace"))
        elif len(parts) == 2 and parts[0] == b"u":
            if method not in (b"PUT", b"POST"):
                request.setHeader(b"allow", b"PUT, POST")
                raise _Refused(405, "method not allowed")
            await self._put(request, unquote(parts[1].decode("ascii", "replace")))
        else:
            raise _Refused(404, "not found")

    def _authorize(self, request: Request, kind: str, file_id: str) -> Grant:
        """The grant this request proves, or refused (401 with a challenge, or 403)."""
        now = self._clock.seconds()
        query = dict(parse_qsl(request.uri.partition(b"?")[2].decode("latin-1")))
        url_grant: Grant | None = None
        if "s" in query:
            try:
                url_grant = Grant(kind, file_id, query.get("d", ""), int(query.get("e", "")))
            except ValueError:
                raise _Refused(403, "malformed signed URL") from None
            if not self.signer.url_valid(url_grant, query["s"], now):
                raise _Refused(403, "URL not valid (changed, or expired)")
        credentials = _basic(request.getHeader(b"authorization"))
        if credentials is not None:
            username, password = credentials
            grant = self.signer.password_grant(kind, file_id, username, password, now)
            if grant is None:
                request.setHeader(b"www-authenticate", _REALM)
                raise _Refused(401, "credentials not valid for this file (or expired)")
            if url_grant is not None and url_grant.device_id != grant.device_id:
                raise _Refused(403, "this URL was given to another device")
            return grant
        if url_grant is not None and not self.require_credentials:
            return url_grant
        request.setHeader(b"www-authenticate", _REALM)
        raise _Refused(401, "credentials required")

    async def _get(self, request: Request, file_id: str) -> None:
        grant = self._authorize(request, "get", file_id)
        info = await self.store.get(file_id)
        if info is None:
            raise _Refused(404, "no such file")
        if is_gone(request):
            return
        self.served += 1
        self._log.debug(
            "serving {file_id} to {device_id}", file_id=file_id, device_id=grant.device_id
        )
        resource = File(self.store.path(file_id), defaultType="application/octet-stream")
        resource.type, resource.encoding = "application/octet-stream", None
        request.setHeader(b"etag", f'"{info.sha256}"'.encode())
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"server", b"cwmpgw")
        answer = resource.render_GET(request)
        if answer is not NOT_DONE_YET:
            if answer and request.method != b"HEAD":
                request.write(answer)
            request.finish()

    async def _put(self, request: Request, task_id: str) -> None:
        grant = self._authorize(request, "put", task_id)
        body = request.content
        if getattr(request, "body_too_large", False) or not isinstance(body, DiskBody):
            raise _Refused(413, "body too large")
        slot = await self.store.index.get_slot(task_id)
        if slot is None or slot.device_id != grant.device_id:
            raise _Refused(404, "no upload expected here (expired?)")
        info = await self.store.add(
            body,
            name=f"upload-{task_id}",
            file_type=slot.file_type,
            origin="cpe",
            device_id=slot.device_id,
            task_id=task_id,
        )
        self._log.info(
            "{device_id} uploaded {size} bytes ({file_type}) as {file_id}",
            device_id=slot.device_id,
            size=info.size,
            file_type=info.file_type,
            file_id=info.id,
        )
        self._plain(request, 200, "stored")

    def _plain(self, request: Request, status: int, text: str) -> None:
        if is_gone(request):
            return
        body = text.encode() + b"\n"
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.setHeader(b"server", b"cwmpgw")
        request.write(body)
        request.finish()


def _basic(header: bytes | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None
