"""The northbound HTTP API: JSON over HTTP for devices, their credentials and tasks.

Routing comes from :data:`cwmpgw.nbi.openapi.ROUTES`, the same table the OpenAPI
document is built from. Every answer is JSON; every error is
``{"error": {"code": "<snake_case>", "message": "..."}}`` with a fitting status, never a
traceback. Handlers are coroutines behind ``NOT_DONE_YET``; when the client goes away
the coroutine is cancelled, and with it whatever it was waiting for.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NoReturn
from urllib.parse import parse_qsl, quote, unquote_to_bytes

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cwmpgw.availability import is_backend_failure
from cwmpgw.connreq.interfaces import IConnectionRequester, WakeResult
from cwmpgw.files.campaigns import CampaignConflict, ICampaigns, parse_spec
from cwmpgw.files.model import FileError, check_download_type, check_name
from cwmpgw.files.store import FileStore
from cwmpgw.fleet.bulk import BulkConflict, BulkError, IBulkService, parse_bulk_request
from cwmpgw.fleet.profiles import IProfileStore, ProfileError, parse_profile
from cwmpgw.fleet.selector import SelectorError, parse_query, valid_tag
from cwmpgw.nbi.auth import CHALLENGE, IAuthorizer
from cwmpgw.nbi.interfaces import IDeviceDirectory, IHealth
from cwmpgw.nbi.openapi import ROUTES, Route, build_document
from cwmpgw.store.interfaces import MAX_TAGS
from cwmpgw.tasks.model import (
    DataModelRefusal,
    IdempotencyConflict,
    ITaskService,
    Task,
    TaskError,
    UnknownDevice,
    replayed,
)
from cwmpgw.web.bodies import DiskBody, DiskBodyRequest
from cwmpgw.web.site import (
    ConnectionLimits,
    HardenedChannel,
    HardenedSite,
    is_gone,
)

__all__ = [
    "ApiError",
    "NbiChannel",
    "NbiResource",
    "NbiSite",
    "TaskRequest",
    "parse_json",
    "parse_tag_change",
    "parse_task_request",
    "task_error_message",
]

_MAX_TEXT: Final = 256
_MAX_DEVICE_ID: Final = 1024
_TASK_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_RFC3339_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_UNIX_RE: Final = re.compile(r"\d{1,12}(\.\d{1,9})?")
_HEALTH_TIMEOUT: Final = 5.0
# Slack on top of a wait before we stop trusting the task service to answer on its own.
_WAIT_SLACK: Final = 5.0


class ApiError(Exception):
    """An answer other than success: status, snake_case code, a message safe to show."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def _bad(message: str, code: str = "invalid_request") -> NoReturn:
    raise ApiError(400, code, message)


# -- body validation (shared with the command stream) ------------------------------------


@dataclass(frozen=True, slots=True)
class TaskRequest:
    device_id: str
    type: str
    args: dict[str, Any]
    expires_in: float | None
    idempotency_key: str | None = None


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _text(value: Any, where: str, *, min_length: int = 1, max_length: int = _MAX_TEXT) -> str:
    if not isinstance(value, str):
        _bad(f"{where}: expected a string")
    if len(value) < min_length:
        _bad(f"{where}: must not be empty" if min_length == 1 else f"{where}: too short")
    if len(value) > max_length:
        _bad(f"{where}: at most {max_length} characters")
    if _has_control(value):
        _bad(f"{where}: control characters are not allowed")
    return value


def _only(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str = "") -> None:
    for key in obj:
        if key not in allowed:
            _bad(f"{where}{key}: unknown field (allowed: {', '.join(allowed)})")


def parse_task_request(obj: Any, *, device_id: str | None = None) -> TaskRequest:
    """Check a task request: the API's body, or a command entry (which names its device).

    Raises ApiError(400) naming the field. The arguments themselves are checked by the
    task service (TaskError), which knows every method.
    """
    if not isinstance(obj, dict):
        _bad("the body must be a JSON object")
    allowed: tuple[str, ...] = ("type", "args", "expires_in", "idempotency_key")
    if device_id is None:
        allowed = ("device_id", *allowed)
        if "device_id" not in obj:
            _bad("device_id: required")
        device_id = _device_id(obj["device_id"], "device_id")
    _only(obj, allowed)
    if "type" not in obj:
        _bad("type: required")
    task_type = _text(obj["type"], "type", max_length=64)
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        _bad("args: expected an object")
    expires_in = obj.get("expires_in")
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            _bad("expires_in: expected a number of seconds")
        if not math.isfinite(expires_in) or expires_in <= 0:
            _bad("expires_in: must be a positive number of seconds")
        expires_in = float(expires_in)
    key = obj.get("idempotency_key")
    if key is not None:
        key = _text(key, "idempotency_key", max_length=128)
    return TaskRequest(device_id, task_type, args, expires_in, key)


def parse_tag_change(obj: Any) -> tuple[list[str], list[str]]:
    """``{"add": [...], "remove": [...]}`` (the API's body, a command entry's ``tags``)."""
    if not isinstance(obj, dict):
        _bad("the body must be a JSON object")
    _only(obj, ("add", "remove", "device_id"))
    out: list[list[str]] = []
    for key in ("add", "remove"):
        tags = obj.get(key) or []
        if not isinstance(tags, list):
            _bad(f"{key}: expected a list of tags")
        if len(tags) > MAX_TAGS:
            _bad(f"{key}: at most {MAX_TAGS} tags")
        for i, tag in enumerate(tags):
            if not valid_tag(tag):
                _bad(f"{key}[{i}]: a tag is 1 to 64 characters of A-Z a-z 0-9 _ . : @ + -")
        out.append(sorted(set(tags)))
    if not out[0] and not out[1]:
        _bad("add or remove: give at least one tag")
    return out[0], out[1]


def _device_id(value: Any, where: str) -> str:
    return _text(value, where, max_length=_MAX_DEVICE_ID)


def task_error_message(e: TaskError) -> str:
    """``args.parameters[0].value: <why>``: the path first, as clients want to see it."""
    message = str(e)
    if e.path and not message.startswith(e.path):
        return f"{e.path}: {message}"
    return message


# -- the request and the site ---------------------------------------------------------------


def _file_upload(channel: Any) -> bool:
    """Is the request being read ``POST /files`` (its body is a file, streamed to disk)?"""
    path = getattr(channel, "_path", b"") or b""
    return getattr(channel, "_command", None) == b"POST" and path.split(b"?")[0] == b"/files"


class NbiRequest(DiskBodyRequest):
    """``POST /files`` bodies go to disk as they arrive; every other body stays small."""

    def disk_body(self) -> DiskBody | None:
        resource = getattr(getattr(self.channel, "site", None), "resource", None)
        files = getattr(resource, "files", None)
        if files is not None and _file_upload(self.channel):
            incoming: DiskBody = files.incoming()
            return incoming
        return None


class NbiChannel(HardenedChannel):
    """An API connection: the hardened base; an oversize body gets the API's JSON 413."""

    refuse_oversize_body = False
    _progress = 0

    def body_limit(self) -> int:
        site = getattr(self, "site", None)
        resource = getattr(site, "resource", None)
        if _file_upload(self) and getattr(resource, "files", None) is not None:
            return int(getattr(resource, "max_file_bytes", 0))
        return int(getattr(resource, "max_body_bytes", self.limits.max_body_bytes))

    def read_time_left(self) -> float:
        """A file upload still arriving at 64 KiB/s or more gets more time."""
        request: Any = self.requests[-1] if self.requests else None
        if request is None or not isinstance(request.content, DiskBody):
            return 0.0
        received = int(getattr(request, "_received", 0))
        grown, self._progress = received - self._progress, received
        return self.limits.read_timeout if grown >= 65536 * self.limits.read_timeout else 0.0


class NbiSite(HardenedSite):
    """The Site for the API: the limits of the ACS port (read deadline, connection caps,
    idle limit), capped bodies, no form parsing, no access log line per request."""

    protocol = NbiChannel
    requestFactory = NbiRequest

    def __init__(
        self,
        resource: NbiResource,
        *,
        limits: ConnectionLimits | None = None,
        max_connections: int = 1000,
        max_connections_per_source: int = 0,
        **kwargs: Any,
    ) -> None:
        if limits is None:
            limits = ConnectionLimits(max_body_bytes=resource.max_body_bytes, idle_timeout=60.0)
        super().__init__(
            resource,
            limits=limits,
            max_connections=max_connections,
            max_connections_per_source=max_connections_per_source,
            **kwargs,
        )


# -- the resource ---------------------------------------------------------------------------


@dataclass
class _Call:
    request: Request
    route: Route
    params: dict[str, str]
    query: dict[str, str]
    principal: str
    body: Any = None


@dataclass
class _Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


_Handler = Callable[[_Call], Coroutine[Any, Any, _Answer]]


class NbiResource(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        *,
        tasks: ITaskService,
        devices: IDeviceDirectory,
        waker: IConnectionRequester | None,
        health: IHealth,
        authorizer: IAuthorizer,
        clock: IReactorTime,
        max_body_bytes: int,
        max_wait: float,
        bulks: IBulkService | None = None,
        profiles: IProfileStore | None = None,
        default_expiry: float = 604800,
        gpv_batch: int = 100,
        files: FileStore | None = None,
        campaigns: ICampaigns | None = None,
        max_file_bytes: int = 1 << 30,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.files = files
        self.campaigns = campaigns
        self.max_file_bytes = max_file_bytes
        self._tasks = tasks
        self._bulks = bulks
        self._profiles = profiles
        self._default_expiry = default_expiry
        self._gpv_batch = gpv_batch
        self._devices = devices
        self._waker = waker
        self._health = health
        self._authorizer = authorizer
        self._clock = clock
        self.max_body_bytes = max_body_bytes
        self.max_wait = float(max_wait)
        self._openapi = json.dumps(build_document(max_wait=self.max_wait)).encode()
        self._handlers: dict[str, _Handler] = {
            route.operation: getattr(self, f"_op_{route.operation}") for route in ROUTES
        }

    # -- plumbing ----------------------------------------------------------------------------

    def render(self, request: Request) -> int:
        finished = request.notifyFinish()
        d = Deferred.fromCoroutine(self._handle(request))
        # The client went away: stop waiting for the task, the CPE, Redis.
        finished.addErrback(lambda _: d.cancel())
        d.addErrback(self._unhandled, request)
        return NOT_DONE_YET

    def _unhandled(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError):
            return
        self._log.failure("unhandled error in the northbound API", failure)
        self._send_error(request, ApiError(500, "internal_error", "internal error"))

    async def _handle(self, request: Request) -> None:
        try:
            answer = await self._dispatch(request)
        except ApiError as e:
            self._send_error(request, e)
            return
        except CancelledError:
            return
        except Exception as e:
            if is_backend_failure(e):
                self._log.warn(
                    "storage unavailable for {method} {path}: {error!r}",
                    method=_str(request.method),
                    path=_str(request.path),
                    error=e,
                )
                self._send_error(
                    request,
                    ApiError(
                        503,
                        "unavailable",
                        "the gateway's storage is not answering; retry later",
                        {"Retry-After": "5"},
                    ),
                )
            else:
                self._log.failure(
                    "error answering {method} {path}",
                    method=_str(request.method),
                    path=_str(request.path),
                )
                self._send_error(request, ApiError(500, "internal_error", "internal error"))
            return
        if answer.status == 0:
            return  # the handler answered itself (a file's bytes)
        self._send(request, answer.status, answer.body, answer.headers)

    async def _dispatch(self, request: Request) -> _Answer:
        method = _str(request.method)
        segments = _segments(request.path)
        matches = (
            [(r, p) for r in ROUTES if (p := r.match(segments)) is not None] if segments else []
        )
        route, params = next(((r, p) for r, p in matches if r.method == method), (None, {}))
        public = route.public if route else bool(matches) and all(r.public for r, _ in matches)
        principal = "anonymous"
        if not public:
            who = self._authorizer.authorize(request.getHeader(b"authorization"))
            if who is None:
                raise ApiError(
                    401,
                    "unauthorized",
                    "a valid bearer token is required",
                    {"WWW-Authenticate": CHALLENGE.decode()},
                )
            principal = who
        if route is None:
            if not matches:
                raise ApiError(404, "not_found", "no such resource")
            allow = ", ".join(sorted({r.method for r, _ in matches}))
            raise ApiError(
                405, "method_not_allowed", f"{method} is not allowed here", {"Allow": allow}
            )
        call = _Call(request, route, params, self._query(request, route), principal)
        if route.body:
            call.body = self._read_json(request)
        return await self._handlers[route.operation](call)

    def _query(self, request: Request, route: Route) -> dict[str, str]:
        raw = request.uri.partition(b"?")[2]
        try:
            pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError):
            _bad("the query string is not valid UTF-8")
        known = {q.name for q in route.query}
        out: dict[str, str] = {}
        for name, value in pairs:
            if name not in known:
                allowed = ", ".join(sorted(known)) or "none"
                _bad(f"unknown query parameter {name[:64]!r} (allowed: {allowed})")
            if name in out:
                _bad(f"query parameter {name!r} given twice")
            if _has_control(value):
                _bad(f"{name}: control characters are not allowed")
            out[name] = value
        return out

    def _read_json(self, request: Request) -> Any:
        length = request.getHeader(b"content-length")
        too_large = ApiError(
            413, "payload_too_large", f"the body must be at most {self.max_body_bytes} bytes"
        )
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            raise too_large
        if getattr(request, "body_too_large", False):
            raise too_large
        assert request.content is not None
        request.content.seek(0)
        body = request.content.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:
            raise too_large
        if not body.strip():
            _bad("a JSON object is required in the body", "invalid_json")
        content_type = _str(request.getHeader(b"content-type") or b"")
        media, _, options = content_type.partition(";")
        media = media.strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise ApiError(
                415, "unsupported_media_type", "send the body as Content-Type: application/json"
            )
        charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", options, re.IGNORECASE)
        if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
            raise ApiError(415, "unsupported_media_type", "the body must be UTF-8")
        try:
            return parse_json(body)
        except ValueError as e:
            _bad(f"the body is not valid JSON: {e}", "invalid_json")

    def _send(self, request: Request, status: int, body: Any, headers: Mapping[str, str]) -> None:
        if is_gone(request):
            return
        # Serialise first: if that fails, nothing of this answer has been set yet.
        data = b"" if status == 204 or body is None else _as_bytes(body)
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode())
        request.setHeader(b"server", b"cwmpgw")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if data:
            request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", str(len(data)).encode())
        if data:
            request.write(data)
        request.finish()

    def _send_error(self, request: Request, e: ApiError) -> None:
        body = {"error": {"code": e.code, "message": e.message}}
        self._send(request, e.status, body, e.headers)

    # -- handlers ------------------------------------------------------------------------------

    def _file_store(self) -> FileStore:
        if self.files is None:
            raise ApiError(404, "files_disabled", "the file server is disabled (files.enabled)")
        return self.files

    def _campaign_service(self) -> ICampaigns:
        if self.campaigns is None:
            raise ApiError(404, "files_disabled", "campaigns need the file server")
        return self.campaigns

    async def _op_list_files(self, call: _Call) -> _Answer:
        store = self._file_store()
        q = call.query
        limit = _limit(q)
        cursor = q.get("cursor", "0") or "0"
        if not cursor.isdigit() or len(cursor) > 16:
            _bad("cursor: the next_cursor of a page")
        origin = q.get("origin")
        if origin is not None and origin not in ("api", "cpe"):
            _bad("origin: api or cpe")
        offset = int(cursor)
        page = await store.list(offset, limit + 1, origin)
        more = len(page) > limit
        body = {
            "files": [f.to_dict() for f in page[:limit]],
            "next_cursor": str(offset + limit) if more else "",
        }
        return _Answer(200, body)

    async def _op_create_file(self, call: _Call) -> _Answer:
        store = self._file_store()
        request = call.request
        body = request.content
        too_large = ApiError(
            413, "payload_too_large", f"the file must be at most {self.max_file_bytes} bytes"
        )
        length = request.getHeader(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_file_bytes:
            raise too_large
        if getattr(request, "body_too_large", False):
            raise too_large
        if not isinstance(body, DiskBody):
            _bad("send the file as the body")
        q = call.query
        try:
            name = check_name(q.get("name", ""))
            file_type = check_download_type(q.get("file_type", ""))
        except FileError as e:
            _bad(str(e))
        version = _query_text(q, "software_version")
        description = _query_text(q, "description")
        info = await store.add(
            body,
            name=name,
            file_type=file_type,
            software_version=version,
            description=description,
        )
        self._log.info(
            "{principal} added file {file_id} ({name}, {size} bytes, sha256 {sha256})",
            principal=call.principal,
            file_id=info.id,
            name=name,
            size=info.size,
            sha256=info.sha256,
        )
        return _Answer(201, info.to_dict(), {"Location": "/files/" + info.id})

    async def _file(self, call: _Call) -> Any:
        file_id = call.params["file_id"]
        info = await self._file_store().get(file_id) if len(file_id) <= 64 else None
        if info is None:
            raise ApiError(404, "file_not_found", f"no file {_show(file_id)}")
        return info

    async def _op_get_file(self, call: _Call) -> _Answer:
        return _Answer(200, (await self._file(call)).to_dict())

    async def _op_delete_file(self, call: _Call) -> _Answer:
        info = await self._file(call)
        await self._file_store().delete(info.id)
        self._log.info(
            "{principal} deleted file {file_id}", principal=call.principal, file_id=info.id
        )
        return _Answer(204)

    async def _op_get_file_content(self, call: _Call) -> _Answer:
        from twisted.web.static import File

        info = await self._file(call)
        request = call.request
        resource = File(self._file_store().path(info.id), defaultType="application/octet-stream")
        resource.type, resource.encoding = "application/octet-stream", None
        request.setHeader(b"content-disposition", f'attachment; filename="{info.id}"'.encode())
        request.setHeader(b"etag", f'"{info.sha256}"'.encode())
        answer = resource.render_GET(request)
        if answer is not NOT_DONE_YET:
            request.finish()
        return _Answer(0)  # answered

    async def _op_list_campaigns(self, call: _Call) -> _Answer:
        views = await self._campaign_service().list()
        return _Answer(200, {"campaigns": views})

    async def _op_create_campaign(self, call: _Call) -> _Answer:
        campaigns = self._campaign_service()
        try:
            spec = parse_spec(call.body)
        except FileError as e:
            _bad(str(e))
        info = await self._file_store().get(spec.file)
        if info is None:
            raise ApiError(404, "file_not_found", f"no file {_show(spec.file)}")
        try:
            view = await campaigns.create(spec, info)
        except FileError as e:
            _bad(str(e))
        self._log.info(
            "{principal} created campaign {campaign_id}",
            principal=call.principal,
            campaign_id=view["id"],
        )
        return _Answer(201, view, {"Location": "/campaigns/" + view["id"]})

    async def _op_get_campaign(self, call: _Call) -> _Answer:
        campaign_id = call.params["campaign_id"]
        view = await self._campaign_service().get(campaign_id) if len(campaign_id) <= 64 else None
        if view is None:
            raise ApiError(404, "campaign_not_found", f"no campaign {_show(campaign_id)}")
        return _Answer(200, view)

    async def _control(self, call: _Call, action: str) -> _Answer:
        campaign_id = call.params["campaign_id"]
        try:
            view = (
                await self._campaign_service().control(campaign_id, action)
                if len(campaign_id) <= 64
                else None
            )
        except CampaignConflict as e:
            raise ApiError(409, "campaign_conflict", str(e)) from None
        if view is None:
            raise ApiError(404, "campaign_not_found", f"no campaign {_show(campaign_id)}")
        self._log.info(
            "{principal}: {action} campaign {campaign_id}",
            principal=call.principal,
            action=action,
            campaign_id=campaign_id,
        )
        return _Answer(200, view)

    async def _op_pause_campaign(self, call: _Call) -> _Answer:
        return await self._control(call, "pause")

    async def _op_resume_campaign(self, call: _Call) -> _Answer:
        return await self._control(call, "resume")

    async def _op_abort_campaign(self, call: _Call) -> _Answer:
        return await self._control(call, "abort")

    async def _op_health(self, call: _Call) -> _Answer:
        try:
            d = self._health.check()
            d.addTimeout(_HEALTH_TIMEOUT, self._clock)
            report = dict(await d)
        except CancelledError:
            raise
        except Exception:
            self._log.failure("the health check failed")
            return _Answer(503, {"ok": False, "detail": "the health check failed"})
        return _Answer(200 if report.get("ok") is True else 503, report)

    async def _op_openapi(self, call: _Call) -> _Answer:
        return _Answer(200, self._openapi)

    async def _op_list_devices(self, call: _Call) -> _Answer:
        q = call.query
        limit = 100
        if "limit" in q:
            if not re.fullmatch(r"\d{1,4}", q["limit"]) or not 1 <= int(q["limit"]) <= 1000:
                _bad("limit: an integer from 1 to 1000")
            limit = int(q["limit"])
        for name in q:
            _query_text(q, name, 1024 if name in ("cursor", "id_prefix", "parameter") else 256)
        try:
            selector = parse_query(q)
        except SelectorError as e:
            _bad(str(e).lstrip(".: "))
        cursor = _query_text(q, "cursor", 1024)
        devices, next_cursor = await self._devices.list_devices(
            selector, cursor=cursor, limit=limit
        )
        return _Answer(200, {"devices": devices, "next_cursor": next_cursor})

    async def _op_list_tags(self, call: _Call) -> _Answer:
        return _Answer(200, {"tags": await self._devices.tag_counts()})

    async def _op_change_tags(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        add, remove = parse_tag_change(call.body)
        try:
            tags = await self._devices.change_tags(device_id, add, remove)
        except ValueError as e:
            raise ApiError(409, "too_many_tags", str(e)) from None
        if tags is None:
            raise _no_device(device_id)
        self._log.info(
            "{principal} tagged {device_id}: +{add} -{remove}",
            principal=call.principal,
            device_id=device_id,
            add=",".join(add),
            remove=",".join(remove),
        )
        return _Answer(200, {"id": device_id, "tags": tags})

    async def _op_get_device(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        device = await self._devices.get_device(device_id)
        if device is None:
            raise _no_device(device_id)
        return _Answer(200, device)

    async def _op_delete_device(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        if not await self._devices.delete_device(device_id):
            raise _no_device(device_id)
        self._log.info(
            "{principal} deleted device {device_id}", principal=call.principal, device_id=device_id
        )
        return _Answer(204)

    async def _op_set_credentials(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        body = call.body
        if not isinstance(body, dict):
            _bad("the body must be a JSON object")
        _only(body, ("username", "password", "connection_request"))
        for key in ("username", "password"):
            if key not in body:
                _bad(f"{key}: required")
        username = _text(body["username"], "username")
        password = _text(body["password"], "password")
        connection_request: tuple[str, str] | None = None
        cr = body.get("connection_request")
        if cr is not None:
            if not isinstance(cr, dict):
                _bad("connection_request: expected an object")
            _only(cr, ("username", "password"), "connection_request.")
            for key in ("username", "password"):
                if key not in cr:
                    _bad(f"connection_request.{key}: required")
            connection_request = (
                _text(cr["username"], "connection_request.username"),
                _text(cr["password"], "connection_request.password", min_length=0),
            )
        try:
            await self._devices.set_credentials(device_id, username, password, connection_request)
        except UnknownDevice:
            raise _no_device(device_id) from None
        except ValueError as e:
            message = _safe_message(e, (password, *(cr or {}).values()))
            raise ApiError(409, "conflict", message) from None
        self._log.info(
            "{principal} set the credentials of {device_id} (username {username}, "
            "connection request: {cr})",
            principal=call.principal,
            device_id=device_id,
            username=username,
            cr="set" if connection_request else "unchanged",
        )
        return _Answer(204)

    async def _op_rotate_credentials(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        if await self._devices.get_device(device_id, ()) is None:
            raise _no_device(device_id)
        await self._devices.rotate_credentials(device_id)
        self._log.info(
            "{principal} asked for new credentials for {device_id}",
            principal=call.principal,
            device_id=device_id,
        )
        return _Answer(202)

    async def _op_list_tasks(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        tasks = await self._tasks.list_for_device(device_id)
        if not tasks and await self._devices.get_device(device_id, ()) is None:
            raise _no_device(device_id)
        return _Answer(200, {"tasks": [t.to_dict() for t in tasks]})

    async def _op_create_task(self, call: _Call) -> _Answer:
        device_id = _path_device(call)
        wake = _query_bool(call.query, "connection_request")
        wait: float | None = None
        if "wait" in call.query:
            raw = call.query["wait"]
            if not re.fullmatch(r"\d{1,6}(\.\d{1,3})?", raw):
                _bad("wait: a number of seconds")
            wait = float(raw)
            if wait > self.max_wait:
                _bad(f"wait: at most {self.max_wait:g} seconds")
        req = parse_task_request(call.body, device_id=device_id)
        key = req.idempotency_key
        header = call.request.getHeader(b"idempotency-key")
        if header is not None:
            header_key = header.decode("latin-1").strip()
            if key is not None and key != header_key:
                _bad("idempotency_key: differs from the Idempotency-Key header")
            key = header_key
        try:
            task = await self._tasks.submit(
                device_id, req.type, req.args, expires_in=req.expires_in, idempotency_key=key
            )
        except IdempotencyConflict as e:
            raise ApiError(422, "idempotency_conflict", task_error_message(e)) from None
        except DataModelRefusal as e:
            raise ApiError(422, "data_model", task_error_message(e)) from None
        except TaskError as e:
            raise ApiError(400, "invalid_task", task_error_message(e)) from None
        except UnknownDevice:
            raise _no_device(device_id) from None
        again = replayed(task)
        self._log.info(
            "{principal} repeated the request of task {task_id} ({task_type}) for {device_id}: "
            "same idempotency key, nothing queued"
            if again
            else "{principal} queued task {task_id} ({task_type}) for {device_id}",
            principal=call.principal,
            task_id=task.id,
            task_type=task.type,
            device_id=device_id,
        )
        # Started together: the task can finish during the session the wake opens.
        woke = self._wake(device_id) if wake else None
        waited = self._wait(task, wait) if wait is not None else None
        try:
            current = await waited if waited is not None else task
            result = await woke if woke is not None else None
        except CancelledError:
            for d in (woke, waited):
                if d is not None:
                    d.cancel()
            raise
        body = current.to_dict()
        if result is not None:
            body["connection_request"] = result.to_dict()
        headers = {"Location": "/tasks/" + quote(task.id, safe="")}
        if again:
            headers["Idempotent-Replayed"] = "true"
        if wait is None:
            return _Answer(200 if again else 201, body, headers)
        return _Answer(200 if current.final else 202, body, headers)

    def _wake(self, device_id: str) -> Deferred[WakeResult]:
        async def wake() -> WakeResult:
            if self._waker is None:
                return WakeResult("refused", detail="connection requests are disabled")
            try:
                return await self._waker.wake(device_id)
            except CancelledError:
                raise
            except Exception:
                self._log.failure("connection request to {device_id} failed", device_id=device_id)
                return WakeResult("error", detail="the connection request failed")

        return Deferred.fromCoroutine(wake())

    def _wait(self, task: Task, seconds: float) -> Deferred[Task]:
        async def wait() -> Task:
            try:
                d = self._tasks.wait(task.id, seconds)
                d.addTimeout(seconds + _WAIT_SLACK, self._clock)
                current = await d
            except CancelledError:
                raise
            except Exception:
                self._log.failure("waiting for task {task_id} failed", task_id=task.id)
                return task
            return current if current is not None else task

        return Deferred.fromCoroutine(wait())

    # -- bulk tasks --------------------------------------------------------------------------

    def _bulk_service(self) -> IBulkService:
        if self._bulks is None:
            raise ApiError(404, "not_found", "bulk tasks are not enabled on this gateway")
        return self._bulks

    async def _op_create_bulk(self, call: _Call) -> _Answer:
        bulks = self._bulk_service()
        body = call.body
        header = call.request.getHeader(b"idempotency-key")
        if header is not None and isinstance(body, dict):
            header_key = header.decode("latin-1").strip()
            if body.get("idempotency_key", header_key) != header_key:
                _bad("idempotency_key: differs from the Idempotency-Key header")
            body = {**body, "idempotency_key": header_key}
        try:
            request = parse_bulk_request(
                body, default_expiry=self._default_expiry, gpv_batch=self._gpv_batch
            )
        except BulkError as e:
            code = "invalid_task" if e.path.startswith("task") else "invalid_request"
            raise ApiError(400, code, str(e)) from None
        try:
            bulk, again = await bulks.create(request)
        except BulkConflict as e:
            raise ApiError(422, "idempotency_conflict", str(e)) from None
        self._log.info(
            "{principal} started bulk {bulk_id} ({task_type})"
            if not again
            else "{principal} repeated the request of bulk {bulk_id} ({task_type})",
            principal=call.principal,
            bulk_id=bulk["id"],
            task_type=request.task["type"],
        )
        headers = {"Location": "/bulk/" + bulk["id"]}
        if again:
            headers["Idempotent-Replayed"] = "true"
        return _Answer(200 if again else 202, bulk, headers)

    async def _op_list_bulk(self, call: _Call) -> _Answer:
        return _Answer(200, {"bulk": await self._bulk_service().recent(100)})

    async def _op_get_bulk(self, call: _Call) -> _Answer:
        bulk_id = _path_bulk(call)
        bulk = await self._bulk_service().get(bulk_id)
        if bulk is None:
            raise _no_bulk(bulk_id)
        return _Answer(200, bulk)

    async def _op_cancel_bulk(self, call: _Call) -> _Answer:
        bulk_id = _path_bulk(call)
        bulk = await self._bulk_service().cancel(bulk_id)
        if bulk is None:
            raise _no_bulk(bulk_id)
        self._log.info(
            "{principal} cancelled bulk {bulk_id}", principal=call.principal, bulk_id=bulk_id
        )
        return _Answer(202 if bulk["status"] == "cancelling" else 200, bulk)

    def _profile_store(self) -> IProfileStore:
        if self._profiles is None:
            raise ApiError(404, "not_found", "profiles are not enabled on this gateway")
        return self._profiles

    async def _op_list_profiles(self, call: _Call) -> _Answer:
        profiles = await self._profile_store().all()
        return _Answer(200, {"profiles": [p.to_dict() for p in profiles]})

    async def _op_get_profile(self, call: _Call) -> _Answer:
        name = call.params["profile_name"]
        profile = await self._profile_store().get(name)
        if profile is None:
            raise _no_profile(name)
        return _Answer(200, profile.to_dict())

    async def _op_put_profile(self, call: _Call) -> _Answer:
        store = self._profile_store()
        try:
            profile = parse_profile(
                call.params["profile_name"], call.body, now=self._clock.seconds()
            )
        except ProfileError as e:
            if e.data_model:
                raise ApiError(422, "data_model", str(e)) from None
            _bad(str(e))
        stored, new = await store.put(profile)
        self._log.info(
            "{principal} {verb} profile {profile} (version {version})",
            principal=call.principal,
            verb="created" if new else "changed",
            profile=stored.name,
            version=stored.version,
        )
        headers = {"Location": "/profiles/" + quote(stored.name, safe="")}
        return _Answer(201 if new else 200, stored.to_dict(), headers)

    async def _op_delete_profile(self, call: _Call) -> _Answer:
        name = call.params["profile_name"]
        if not await self._profile_store().delete(name):
            raise _no_profile(name)
        self._log.info(
            "{principal} deleted profile {profile}", principal=call.principal, profile=name
        )
        return _Answer(204)

    async def _op_get_task(self, call: _Call) -> _Answer:
        task_id = _path_task(call)
        task = await self._tasks.get(task_id)
        if task is None:
            raise _no_task(task_id)
        return _Answer(200, task.to_dict())

    async def _op_cancel_task(self, call: _Call) -> _Answer:
        task_id = _path_task(call)
        task = await self._tasks.cancel(task_id)
        if task is None:
            raise _no_task(task_id)
        if task.status != "cancelled":
            raise ApiError(
                409, "task_not_cancellable", f"task {task_id} is {task.status}, not queued"
            )
        self._log.info(
            "{principal} cancelled task {task_id} of {device_id}",
            principal=call.principal,
            task_id=task_id,
            device_id=task.device_id,
        )
        return _Answer(200, task.to_dict())


# -- helpers --------------------------------------------------------------------------------


def _str(value: bytes | None) -> str:
    return value.decode("latin-1") if value is not None else ""


def _segments(path: bytes) -> list[str] | None:
    """The path's decoded segments, or None if it cannot be a route of ours."""
    if not path.startswith(b"/"):
        return None
    try:
        return [unquote_to_bytes(s).decode("utf-8") for s in path[1:].split(b"/")]
    except UnicodeDecodeError:
        return None


def _as_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:64]!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(data: bytes | str) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, no duplicate keys, no lone surrogate.

    Raises ValueError whose message says what is wrong and where, without echoing the input.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        if _SURROGATE_ESCAPE_RE.search(text):
            # "\ud800" is JSON but not Unicode: a lone surrogate from an escape would be
            # refused at the first write to Redis instead (I-JSON, RFC 7493, refuses it).
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except UnicodeEncodeError:
        raise ValueError("a string escapes a lone surrogate: not Unicode") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _safe_message(e: Exception, secrets: tuple[Any, ...]) -> str:
    """The store's message, unless it quotes a password."""
    message = str(e)[:300]
    if any(isinstance(s, str) and s and s in message for s in secrets):
        return "these credentials conflict with another device's"
    return message


def _query_text(q: Mapping[str, str], name: str, max_length: int = _MAX_TEXT) -> str:
    value = q.get(name, "")
    if len(value) > max_length:
        _bad(f"{name}: at most {max_length} characters")
    return value


def _query_bool(q: Mapping[str, str], name: str) -> bool:
    value = q.get(name, "false").lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    return _bad(f"{name}: true or false")


def _time(q: Mapping[str, str], name: str) -> float | None:
    """RFC 3339 (with an offset) or Unix seconds, as Unix seconds."""
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    if _UNIX_RE.fullmatch(raw):
        return float(raw)
    m = _RFC3339_RE.fullmatch(raw)
    if m:
        date, clock, fraction, offset = m.groups()
        fraction = (fraction or ".0")[:7]  # datetime keeps microseconds
        offset = "+00:00" if offset in ("Z", "z") else offset
        try:
            return datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}").timestamp()
        except ValueError:
            pass
    return _bad(f"{name}: an RFC 3339 time (2025-05-25T22:24:29Z) or Unix seconds")


def _limit(q: Mapping[str, str]) -> int:
    if "limit" not in q:
        return 100
    if not re.fullmatch(r"\d{1,4}", q["limit"]) or not 1 <= int(q["limit"]) <= 1000:
        _bad("limit: an integer from 1 to 1000")
    return int(q["limit"])


def _path_device(call: _Call) -> str:
    device_id = call.params["device_id"]
    if len(device_id) > _MAX_DEVICE_ID or _has_control(device_id):
        raise _no_device(device_id)
    return device_id


def _path_task(call: _Call) -> str:
    task_id = call.params["task_id"]
    if not _TASK_ID_RE.fullmatch(task_id):
        raise _no_task(task_id)
    return task_id


def _path_bulk(call: _Call) -> str:
    bulk_id = call.params["bulk_id"]
    if not _TASK_ID_RE.fullmatch(bulk_id):
        raise _no_bulk(bulk_id)
    return bulk_id


def _no_bulk(bulk_id: str) -> ApiError:
    return ApiError(404, "bulk_not_found", f"no bulk {_show(bulk_id)}")


def _no_profile(name: str) -> ApiError:
    return ApiError(404, "profile_not_found", f"no profile {_show(name)}")


def _no_device(device_id: str) -> ApiError:
    return ApiError(404, "device_not_found", f"no device {_show(device_id)}")


def _no_task(task_id: str) -> ApiError:
    return ApiError(404, "task_not_found", f"no task {_show(task_id)}")


def _show(value: str) -> str:
    """An identifier for a message: bounded, and no control characters."""
    if len(value) > 128 or _has_control(value):
        return repr(value[:128])
    return value
