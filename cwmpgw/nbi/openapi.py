"""The northbound API's route table and the OpenAPI 3.1 document built from it.

:data:`ROUTES` is the one place that says which method and path the API answers, which
query parameters it takes, what body it reads and which statuses it returns. The
dispatcher in :mod:`cwmpgw.nbi.api` routes from it and :func:`build_document` describes
it, so the document cannot drift from the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cwmpgw.connreq.interfaces import OUTCOMES
from cwmpgw.fleet.profiles import MAX_OBJECTS, MAX_PARAMETERS, WHEN
from cwmpgw.fleet.selector import QUERY_TERMS, SELECTOR_SCHEMA
from cwmpgw.store.interfaces import DEVICE_FIELDS
from cwmpgw.tasks.model import STATUSES
from cwmpgw.tasks.plans import TASK_TYPES, args_schema

__all__ = [
    "ROUTES",
    "SCHEMAS",
    "Answer",
    "HeaderParam",
    "QueryParam",
    "Route",
    "build_document",
]

_PARAM_RE: Final = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    schema: Mapping[str, Any]
    description: str


@dataclass(frozen=True, slots=True)
class HeaderParam:
    name: str
    description: str


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented response: its description, body schema (by name) and headers."""

    description: str
    schema: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # name -> description
    optional_headers: frozenset[str] = frozenset()  # sent only sometimes
    media: str = "application/json"  # or "application/octet-stream" (a file's bytes)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # "/devices/{device_id}/tasks"
    operation: str  # operationId; NbiResource's handler is ``_op_<operation>``
    summary: str
    replies: Mapping[int, Answer]  # the route's own statuses; common errors are added
    description: str = ""
    public: bool = False  # no token needed
    query: tuple[QueryParam, ...] = ()
    headers: tuple[HeaderParam, ...] = ()  # optional request headers
    body: str | None = None  # request body schema name (JSON, required)
    raw_body: bool = False  # the body is a file's bytes (streamed to disk)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:])

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(_PARAM_RE.findall(self.path))

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The path parameters if these (decoded) segments fit the template, else None."""
        mine = self.segments
        if len(mine) != len(segments):
            return None
        params: dict[str, str] = {}
        for template, actual in zip(mine, segments, strict=True):
            name = _PARAM_RE.fullmatch(template)
            if name is not None:
                if not actual:
                    return None
                params[name.group(1)] = actual
            elif template != actual:
                return None
        return params

    def statuses(self) -> dict[int, Answer]:
        """Every status this route may answer: its own plus the common errors."""
        out = dict(self.replies)
        if self.query or self.body:
            out.setdefault(400, Answer("Invalid request: query or body.", "Error"))
        if self.body:
            out.setdefault(413, Answer("The body is larger than nbi.max_body_bytes.", "Error"))
            out.setdefault(415, Answer("The body is not application/json.", "Error"))
        if not self.public:
            out.setdefault(
                401,
                Answer(
                    "Missing or invalid bearer token.",
                    "Error",
                    {"WWW-Authenticate": 'Always `Bearer realm="cwmpgw"`.'},
                ),
            )
            out.setdefault(
                503,
                Answer(
                    "The gateway's storage (Redis) is not answering; retry later.",
                    "Error",
                    {"Retry-After": "Seconds to wait before retrying."},
                ),
            )
        out.setdefault(
            500, Answer("An unexpected error; details are in the gateway's log.", "Error")
        )
        return dict(sorted(out.items()))


_QUERY_SCHEMAS: Final[Mapping[str, Mapping[str, Any]]] = {
    "informed_after": {"type": "string", "examples": ["2025-05-25T22:24:29Z", "1748211869"]},
    "informed_before": {"type": "string", "examples": ["2025-05-26T00:00:00+02:00"]},
    "informed_within": {"type": "number", "minimum": 0},
    "not_informed_within": {"type": "number", "minimum": 0},
    "online": {"type": "boolean"},
    "parameter": {"type": "string", "examples": ["Device.DeviceInfo.ProvisioningCode=ABC"]},
    "tags": {"type": "string", "examples": ["pilot,north"]},
    "not_tags": {"type": "string", "examples": ["lab"]},
    "source": {"type": "string", "examples": ["203.0.113.0/24", "2001:db8::/32"]},
}
_BULK_COUNTS: Final = (
    "matched",
    "queued",
    "pending",
    "done",
    "failed",
    "expired",
    "cancelled",
    "skipped",
)
_TASK_HEADERS: Final = {"Location": "`/tasks/{task_id}`: where to poll the task."}
_FILE_NOT_FOUND: Final = Answer("No such file.", "Error")
_CAMPAIGN_NOT_FOUND: Final = Answer("No such campaign.", "Error")
_LIMIT: Final = QueryParam(
    "limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "Page size."
)


def _campaign_action(action: str, summary: str) -> Route:
    return Route(
        "POST",
        f"/campaigns/{{campaign_id}}/{action}",
        f"{action}_campaign",
        summary,
        {
            200: Answer("The campaign, as it is now.", "Campaign"),
            404: _CAMPAIGN_NOT_FOUND,
            409: Answer("The action does not apply to the campaign's status.", "Error"),
        },
    )


_DEVICE_NOT_FOUND: Final = Answer("No such device.", "Error")
_TASK_NOT_FOUND: Final = Answer("No such task.", "Error")
_PROFILE_NOT_FOUND: Final = Answer("`profile_not_found`: no such profile.", "Error")
_PROFILE_HEADERS: Final = {"Location": "`/profiles/{profile_name}`."}

_CORE_ROUTES: Final[tuple[Route, ...]] = (
    Route(
        "GET",
        "/healthz",
        "health",
        "Is this gateway node able to serve?",
        {
            200: Answer("Healthy.", "Health"),
            503: Answer("Not healthy (e.g. Redis unreachable).", "Health"),
        },
        public=True,
    ),
    Route(
        "GET",
        "/openapi.json",
        "openapi",
        "This document.",
        {200: Answer("The OpenAPI 3.1 document.", "OpenApiDocument")},
        public=True,
    ),
    Route(
        "GET",
        "/devices",
        "list_devices",
        "List devices, a page at a time.",
        {200: Answer("A page of devices (without their parameters).", "DeviceList")},
        description=(
            "Devices selected by the query's terms (all must hold), ordered by id. Pass "
            "`next_cursor` back as `cursor` for the next page; an empty `next_cursor` means "
            "there is none. A selective query may answer a short page, even an empty one, "
            "with a `next_cursor`: keep following it. Devices informing while you page "
            "are neither skipped nor repeated."
        ),
        query=(
            *(
                QueryParam(name, _QUERY_SCHEMAS.get(name, {"type": "string"}), text)
                for name, text in QUERY_TERMS.items()
            ),
            QueryParam(
                "cursor",
                {"type": "string", "maxLength": 1024},
                "The `next_cursor` of the previous page.",
            ),
            QueryParam(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                "Page size.",
            ),
        ),
    ),
    Route(
        "GET",
        "/tags",
        "list_tags",
        "Every tag in use and how many devices carry it.",
        {200: Answer("Tag → number of devices.", "TagCounts")},
    ),
    Route(
        "POST",
        "/devices/{device_id}/tags",
        "change_tags",
        "Add and remove tags of a device.",
        {
            200: Answer("The device's tags now.", "DeviceTags"),
            404: _DEVICE_NOT_FOUND,
            409: Answer("`too_many_tags`: the device would have more than 64 tags.", "Error"),
        },
        description="Removals first, then additions; adding a tag it has is no change.",
        body="TagChange",
    ),
    Route(
        "GET",
        "/devices/{device_id}",
        "get_device",
        "A device's record and its cached parameters.",
        {200: Answer("The device.", "Device"), 404: _DEVICE_NOT_FOUND},
    ),
    Route(
        "DELETE",
        "/devices/{device_id}",
        "delete_device",
        "Forget a device: record, parameters, credentials and tasks.",
        {204: Answer("Deleted."), 404: _DEVICE_NOT_FOUND},
    ),
    Route(
        "PUT",
        "/devices/{device_id}/credentials",
        "set_credentials",
        "Set the device's ACS credential and, optionally, its connection-request credential.",
        {
            204: Answer("Stored. Passwords are never returned."),
            404: Answer("The directory does not accept credentials for this device.", "Error"),
            409: Answer("The username already belongs to another device.", "Error"),
        },
        description=(
            "Works before the device's first contact (pre-provisioning) and replaces any "
            "earlier credential. The ACS password is stored only as Digest HA1 hashes; the "
            "connection-request password is stored encrypted (the gateway must present it "
            "to the CPE)."
        ),
        body="Credentials",
    ),
    Route(
        "POST",
        "/devices/{device_id}/credentials/rotate",
        "rotate_credentials",
        "Give the device new unique credentials (ACS and connection request) in its next session.",
        {
            202: Answer("Requested; wake the device with a connection request to apply it now."),
            404: _DEVICE_NOT_FOUND,
        },
        description=(
            "The gateway generates a random password and sets it on the CPE with "
            "SetParameterValues; the old credential keeps working until the CPE has "
            "confirmed the change and authenticated with the new one. Nothing is "
            "returned: the passwords never leave the gateway."
        ),
    ),
    Route(
        "GET",
        "/devices/{device_id}/tasks",
        "list_tasks",
        "The device's tasks: queued and running ones, then recent final ones.",
        {200: Answer("The tasks, oldest first.", "TaskList"), 404: _DEVICE_NOT_FOUND},
    ),
    Route(
        "POST",
        "/devices/{device_id}/tasks",
        "create_task",
        "Queue a task for the device's next session.",
        {
            200: Answer(
                "With `wait`: the task became final in time. Without: the task an earlier "
                "request with the same idempotency key queued, as it is now "
                "(`Idempotent-Replayed: true`); nothing new was queued.",
                "TaskCreated",
                {**_TASK_HEADERS, "Idempotent-Replayed": "`true` when answered by a key."},
                frozenset({"Idempotent-Replayed"}),
            ),
            201: Answer("Queued (no `wait`).", "TaskCreated", _TASK_HEADERS),
            202: Answer(
                "With `wait`: not final yet; the task as it is now.", "TaskCreated", _TASK_HEADERS
            ),
            404: _DEVICE_NOT_FOUND,
            422: Answer(
                "`idempotency_conflict`: the idempotency key was used in the last 24 hours "
                "for another request (device, type, args or expires_in). `data_model`: the "
                "data model refuses a SetParameterValues entry (an unknown parameter of a "
                "fully known object, a read-only one, a wrong type or value); the message "
                "names it (`args.parameters[0]: Device.DeviceInfo.SoftwareVersion: read-only`).",
                "Error",
            ),
        },
        description=(
            "The arguments are checked before the task is stored: a 400 names the culprit "
            "(`args.parameters[0].value: ...`), and SetParameterValues entries are checked "
            "against the data model (422 `data_model`; an entry without a type gets the "
            "model's). With `connection_request=true` the gateway "
            "asks the CPE to connect now and reports how that went in `connection_request`; "
            "a failed connection request does not undo the task. With `wait=SECONDS` the "
            "answer comes when the task is final or when the time is up. An idempotency key "
            "(the `Idempotency-Key` header or `idempotency_key`) makes a retried request "
            "safe: for 24 hours the same key and request answer with the same task."
        ),
        query=(
            QueryParam(
                "connection_request",
                {"type": "boolean", "default": False},
                "Ask the CPE to open a session now (`true`/`false`).",
            ),
            QueryParam(
                "wait",
                {"type": "number", "minimum": 0},
                "Wait up to this many seconds (at most nbi.max_wait) for the task to end.",
            ),
        ),
        headers=(
            HeaderParam(
                "Idempotency-Key",
                "1 to 128 printable ASCII characters: the same as `idempotency_key`.",
            ),
        ),
        body="TaskRequest",
    ),
    Route(
        "POST",
        "/bulk",
        "create_bulk",
        "Queue one task for every device a selector (or a list of ids) names.",
        {
            202: Answer(
                "Started; follow it at `Location`.", "Bulk", {"Location": "`/bulk/{bulk_id}`."}
            ),
            200: Answer(
                "The bulk an earlier request with the same idempotency key started, as it "
                "is now (`Idempotent-Replayed: true`).",
                "Bulk",
                {"Location": "`/bulk/{bulk_id}`.", "Idempotent-Replayed": "`true`."},
            ),
            422: Answer(
                "`idempotency_conflict`: the key was used for another bulk request.", "Error"
            ),
        },
        description=(
            "The gateway fans the task out as ordinary queued tasks (each in its device's "
            "queue, with its own `task.*` events and the bulk's id in `bulk`), at most "
            "`fleet.bulk_rate` devices per second (or `rate`, if lower); with "
            "`connection_request`, each device is also woken, at `connreq.rate`. The "
            "task's arguments are checked first: a 400 `invalid_task` names the culprit."
        ),
        headers=(
            HeaderParam(
                "Idempotency-Key",
                "1 to 128 printable ASCII characters: the same as `idempotency_key`.",
            ),
        ),
        body="BulkRequest",
    ),
    Route(
        "GET",
        "/bulk",
        "list_bulk",
        "The 100 most recent bulk tasks, newest first.",
        {200: Answer("The bulks.", "BulkList")},
    ),
    Route(
        "GET",
        "/bulk/{bulk_id}",
        "get_bulk",
        "A bulk task and its counts.",
        {200: Answer("The bulk.", "Bulk"), 404: Answer("No such bulk.", "Error")},
    ),
    Route(
        "DELETE",
        "/bulk/{bulk_id}",
        "cancel_bulk",
        "Cancel a bulk task: no more devices, and its queued tasks are cancelled.",
        {
            202: Answer("Cancelling: its queued tasks are being cancelled.", "Bulk"),
            200: Answer("It was already over (complete or cancelled).", "Bulk"),
            404: Answer("No such bulk.", "Error"),
        },
        description="Running tasks finish; they are counted as they end.",
    ),
    Route(
        "GET",
        "/profiles",
        "list_profiles",
        "Every profile (desired state), by name.",
        {200: Answer("The profiles.", "ProfileList")},
    ),
    Route(
        "GET",
        "/profiles/{profile_name}",
        "get_profile",
        "One profile.",
        {200: Answer("The profile.", "Profile"), 404: _PROFILE_NOT_FOUND},
    ),
    Route(
        "PUT",
        "/profiles/{profile_name}",
        "put_profile",
        "Create or replace a profile: values the gateway sets on the devices it selects.",
        {
            200: Answer("Replaced; its version is new.", "Profile", _PROFILE_HEADERS),
            201: Answer("Created.", "Profile", _PROFILE_HEADERS),
            422: Answer(
                "`data_model`: the data model refuses a value (the message names it).", "Error"
            ),
        },
        description=(
            "Values are typed and checked against the data model before anything is "
            "stored. The profile is applied in the sessions of the devices its selector "
            "matches, when its `when` says (`bootstrap`, `boot`, `every` session, `once` per "
            "version), with `profile.applied`/`profile.failed` events; a device's factory "
            "reset (`0 BOOTSTRAP`) makes every profile apply again. An object to exist is "
            "looked for (GetParameterValues) and added (AddObject) only when missing."
        ),
        body="ProfileRequest",
    ),
    Route(
        "DELETE",
        "/profiles/{profile_name}",
        "delete_profile",
        "Delete a profile (what devices were given stays on them).",
        {204: Answer("Deleted."), 404: _PROFILE_NOT_FOUND},
    ),
    Route(
        "GET",
        "/tasks/{task_id}",
        "get_task",
        "A task, whatever its status.",
        {200: Answer("The task.", "Task"), 404: _TASK_NOT_FOUND},
    ),
    Route(
        "DELETE",
        "/tasks/{task_id}",
        "cancel_task",
        "Cancel a queued task.",
        {
            200: Answer("Cancelled (or it already was).", "Task"),
            404: _TASK_NOT_FOUND,
            409: Answer("The task is running or already over; it was not cancelled.", "Error"),
        },
    ),
)

ROUTES: Final[tuple[Route, ...]] = (
    *_CORE_ROUTES,
    Route(
        "GET",
        "/files",
        "list_files",
        "Files: firmware images and configuration files, and what CPEs uploaded.",
        {200: Answer("A page of files, oldest first.", "FileList")},
        query=(
            QueryParam(
                "origin", {"type": "string", "enum": ["api", "cpe"]}, "Only files from there."
            ),
            QueryParam(
                "cursor", {"type": "string", "maxLength": 16}, "The `next_cursor` of a page."
            ),
            _LIMIT,
        ),
    ),
    Route(
        "POST",
        "/files",
        "create_file",
        "Upload a file (its bytes are the body; any size up to files.max_file_bytes).",
        {
            201: Answer("Stored.", "File", {"Location": "`/files/{file_id}`."}),
            400: Answer("Invalid query (name, file_type).", "Error"),
            413: Answer("The body is larger than files.max_file_bytes.", "Error"),
        },
        description=(
            "The body is streamed to disk and hashed as it arrives (send Content-Length). "
            "`file_type` is a TR-069 Download FileType; `software_version` is the "
            "SoftwareVersion a firmware image installs: what a campaign checks."
        ),
        query=(
            QueryParam("name", {"type": "string", "minLength": 1, "maxLength": 200}, "File name."),
            QueryParam(
                "file_type",
                {"type": "string", "examples": ["1 Firmware Upgrade Image"]},
                "TR-069 FileType (A.3.2.8), e.g. `1 Firmware Upgrade Image`.",
            ),
            QueryParam(
                "software_version", {"type": "string", "maxLength": 256}, "Firmware: its version."
            ),
            QueryParam("description", {"type": "string", "maxLength": 256}, "Free text."),
        ),
        raw_body=True,
    ),
    Route(
        "GET",
        "/files/{file_id}",
        "get_file",
        "A file's record.",
        {200: Answer("The file.", "File"), 404: _FILE_NOT_FOUND},
    ),
    Route(
        "DELETE",
        "/files/{file_id}",
        "delete_file",
        "Delete a file: its record and its bytes.",
        {204: Answer("Deleted."), 404: _FILE_NOT_FOUND},
    ),
    Route(
        "GET",
        "/files/{file_id}/content",
        "get_file_content",
        "A file's bytes (Range requests work).",
        {
            200: Answer("The bytes.", "Binary", media="application/octet-stream"),
            404: _FILE_NOT_FOUND,
        },
    ),
    Route(
        "GET",
        "/campaigns",
        "list_campaigns",
        "Campaigns, newest first, with their progress.",
        {200: Answer("The campaigns.", "CampaignList")},
    ),
    Route(
        "POST",
        "/campaigns",
        "create_campaign",
        "Roll a file out to devices, in waves.",
        {
            201: Answer("Created and running.", "Campaign", {"Location": "`/campaigns/{id}`."}),
            404: Answer("`file_not_found`: no such file.", "Error"),
        },
        description=(
            "Targets are `devices` (ids) or a `selector` (equality on `oui`, "
            "`product_class`, `software_version`), fixed when the campaign is created. "
            "A device counts as `upgraded` once its TransferComplete succeeded and an "
            "Inform after the Download reports `target_version` (default: the file's "
            "`software_version`)."
        ),
        body="CampaignRequest",
    ),
    Route(
        "GET",
        "/campaigns/{campaign_id}",
        "get_campaign",
        "A campaign and its progress.",
        {200: Answer("The campaign.", "Campaign"), 404: _CAMPAIGN_NOT_FOUND},
    ),
    _campaign_action("pause", "Pause: no new devices; those in flight are still followed."),
    _campaign_action("resume", "Resume a paused or stopped campaign."),
    _campaign_action("abort", "Abort: no new devices; queued Downloads are cancelled."),
)

_PATH_PARAMS: Final[Mapping[str, tuple[Mapping[str, Any], str]]] = {
    "file_id": ({"type": "string", "minLength": 1, "maxLength": 64}, "The file id."),
    "campaign_id": ({"type": "string", "minLength": 1, "maxLength": 64}, "The campaign id."),
    "device_id": (
        {"type": "string", "minLength": 1, "maxLength": 1024},
        "The device id (`OUI-ProductClass-SerialNumber`), URL-encoded: each `%` in it as `%25`.",
    ),
    "task_id": ({"type": "string", "minLength": 1, "maxLength": 128}, "The task id."),
    "bulk_id": ({"type": "string", "minLength": 1, "maxLength": 128}, "The bulk id."),
    "profile_name": (
        {"type": "string", "pattern": "^[A-Za-z0-9_.:@+-]{1,64}$"},
        "The profile's name: 1 to 64 characters of `A-Z a-z 0-9 _ . : @ + -`.",
    ),
}

_TIME: Final = {"type": "number", "description": "Unix seconds."}
_TAG: Final = {"type": "string", "pattern": "^[A-Za-z0-9_.:@+-]{1,64}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _name(task_type: str, suffix: str) -> str:
    """``RebootArgs``, ``RefreshTaskRequest``: a schema of one task type."""
    return task_type[:1].upper() + task_type[1:] + suffix


def _task_request(task_type: str) -> dict[str, Any]:
    """The body that queues a task of this type."""
    args = args_schema(task_type)
    return {
        "type": "object",
        "title": task_type,
        "required": ["type", "args"] if args.get("required") else ["type"],
        "additionalProperties": False,
        "properties": {
            "type": {"const": task_type},
            "args": {**_ref(_name(task_type, "Args")), "description": "Default: `{}`."},
            "idempotency_key": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "pattern": "^[!-~]+$",
                "description": (
                    "Chosen by the caller: a request repeated with the same key within 24 "
                    "hours (a retry after a lost answer) queues nothing new and answers with "
                    "the first request's task; used for another request, it is a 422."
                ),
            },
            "expires_in": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": (
                    "Seconds until a still-queued task expires (default tasks.default_expiry)."
                ),
            },
        },
    }


def _task_of_type(task_type: str) -> dict[str, Any]:
    """What a Task of this type adds to the Task schema: its ``args``."""
    return {
        "type": "object",
        "title": task_type,
        "required": ["type", "args"],
        "properties": {"type": {"const": task_type}, "args": _ref(_name(task_type, "Args"))},
    }


_FILE: Final = {
    "type": "object",
    "required": ["id", "name", "file_type", "size", "sha256", "created", "origin"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "file_type": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "created": {"type": "number", "description": "Unix seconds."},
        "origin": {"type": "string", "enum": ["api", "cpe"]},
        "software_version": {"type": "string"},
        "description": {"type": "string"},
        "device_id": {"type": "string", "description": "origin `cpe`: who uploaded it."},
        "task_id": {"type": "string", "description": "origin `cpe`: the Upload task."},
    },
}
_COUNTS: Final = {
    "type": "object",
    "required": ["pending", "queued", "transferred", "upgraded", "failed", "skipped"],
    "additionalProperties": False,
    "properties": {
        k: {"type": "integer", "minimum": 0}
        for k in ("pending", "queued", "transferred", "upgraded", "failed", "skipped")
    },
}
_WAVE: Final = {
    "type": "array",
    "minItems": 1,
    "maxItems": 20,
    "items": {"type": ["string", "integer"], "examples": ["1%", 50]},
    "description": "Cumulative sizes: shares ('10%') or counts. Default ['100%'].",
}

SCHEMAS: Final[Mapping[str, Mapping[str, Any]]] = {
    "File": _FILE,
    "FileList": {
        "type": "object",
        "required": ["files", "next_cursor"],
        "properties": {
            "files": {"type": "array", "items": {"$ref": "#/components/schemas/File"}},
            "next_cursor": {"type": "string", "description": "Empty on the last page."},
        },
    },
    "Binary": {"type": "string", "format": "binary"},
    "CampaignRequest": {
        "type": "object",
        "required": ["file"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 128},
            "file": {"type": "string", "minLength": 1, "maxLength": 64},
            "devices": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "selector": {**_ref("Selector"), "description": "At least one term."},
            "waves": _WAVE,
            "max_in_flight": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 100},
            "stop_rule": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "failed_percent": {"type": "number", "minimum": 0, "maximum": 100},
                    "min_failed": {"type": "integer", "minimum": 1},
                },
                "description": "Stop when more than failed_percent of a wave failed "
                "(and at least min_failed). Default 5 %, 1.",
            },
            "window": {
                "type": ["object", "null"],
                "required": ["start", "end"],
                "additionalProperties": False,
                "properties": {
                    "start": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    "end": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                    "utc_offset": {
                        "type": "string",
                        "description": "'+HH:MM' (default '+00:00') or 'device' (its "
                        "Device.Time.LocalTimeZone).",
                    },
                },
            },
            "connection_request": {"type": "boolean", "default": True},
            "task_expiry": {"type": "integer", "minimum": 60, "default": 86400},
            "verify_timeout": {"type": "integer", "minimum": 10, "default": 3600},
            "wave_delay": {"type": "integer", "minimum": 0, "default": 0},
            "target_version": {"type": "string", "maxLength": 256},
        },
        "oneOf": [{"required": ["devices"]}, {"required": ["selector"]}],
    },
    "Campaign": {
        "type": "object",
        "required": ["id", "name", "file", "status", "wave", "total", "counts"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "file": {"type": "string"},
            "file_type": {"type": "string"},
            "target_version": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["running", "paused", "stopped", "aborted", "completed"],
            },
            "reason": {"type": "string"},
            "wave": {"type": "integer", "minimum": 0, "description": "0-based."},
            "waves": _WAVE,
            "total": {"type": "integer", "minimum": 0},
            "dispatched": {"type": "integer", "minimum": 0},
            "counts": _COUNTS,
            "wave_progress": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "size": {"type": "integer"},
                        "failed": {"type": "integer"},
                    },
                },
            },
            "created": {"type": "number"},
            "updated": {"type": "number"},
        },
    },
    "CampaignList": {
        "type": "object",
        "required": ["campaigns"],
        "properties": {
            "campaigns": {"type": "array", "items": {"$ref": "#/components/schemas/Campaign"}}
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {
                        "type": "string",
                        "pattern": "^[a-z][a-z0-9_]*$",
                        "examples": ["invalid_task", "device_not_found", "unauthorized"],
                    },
                    "message": {"type": "string"},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok"],
        "additionalProperties": False,
        "properties": {
            "ok": {"type": "boolean"},
            "node": {"type": "string"},
            "redis": {"type": "boolean"},
            "redis_latency_ms": {"type": "number", "minimum": 0},
            "events_subscribed": {"type": "boolean"},
            "events_spooled": {
                "type": "integer",
                "minimum": 0,
                "description": "Events waiting on this node's disk for Redis.",
            },
            "detail": {"type": "string", "description": "Why, when the check itself failed."},
        },
    },
    "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
    "DeviceSummary": {
        "type": "object",
        "required": list(DEVICE_FIELDS),
        "additionalProperties": False,
        "properties": {name: dict(schema) for name, schema in DEVICE_FIELDS.items()},
    },
    "Device": {
        "type": "object",
        "required": [*DEVICE_FIELDS, "parameters"],
        "additionalProperties": False,
        "properties": {
            **{name: dict(schema) for name, schema in DEVICE_FIELDS.items()},
            "parameters": {
                "type": "object",
                "description": "Parameter name → cached value and xsi type.",
                "additionalProperties": {
                    "type": "object",
                    "required": ["value", "type"],
                    "additionalProperties": False,
                    "properties": {
                        "value": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
    },
    "DeviceList": {
        "type": "object",
        "required": ["devices", "next_cursor"],
        "properties": {
            "devices": {"type": "array", "items": {"$ref": "#/components/schemas/DeviceSummary"}},
            "next_cursor": {"type": "string", "description": "Empty when this is the last page."},
        },
    },
    "Selector": dict(SELECTOR_SCHEMA),
    "TagCounts": {
        "type": "object",
        "required": ["tags"],
        "additionalProperties": False,
        "properties": {
            "tags": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}}
        },
    },
    "TagChange": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "add": {"type": "array", "maxItems": 64, "items": _TAG},
            "remove": {"type": "array", "maxItems": 64, "items": _TAG},
        },
        "examples": [{"add": ["pilot"], "remove": ["staging"]}],
    },
    "DeviceTags": {
        "type": "object",
        "required": ["id", "tags"],
        "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "tags": {"type": "array", "items": _TAG}},
    },
    "BulkRequest": {
        "type": "object",
        "required": ["task"],
        "additionalProperties": False,
        "properties": {
            "selector": _ref("Selector"),
            "device_ids": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100000,
                "items": {"type": "string", "minLength": 1, "maxLength": 1024},
            },
            "task": {
                "type": "object",
                "required": ["type"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string", "enum": list(TASK_TYPES)},
                    "args": {"type": "object"},
                    "expires_in": {"type": "number", "exclusiveMinimum": 0},
                },
                "description": "As the body of `POST /devices/{device_id}/tasks`.",
            },
            "connection_request": {"type": "boolean", "default": False},
            "rate": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Devices per second (at most fleet.bulk_rate).",
            },
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 128},
        },
        "description": "Exactly one of `selector` and `device_ids`.",
        "examples": [
            {
                "selector": {"oui": "9CA2F4", "tags": ["pilot"]},
                "task": {"type": "Reboot"},
                "connection_request": True,
            }
        ],
    },
    "Bulk": {
        "type": "object",
        "required": [
            "id",
            "status",
            "created",
            "updated",
            "task",
            "connection_request",
            "fanned_out",
            "counts",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["running", "cancelling", "complete", "cancelled"],
            },
            "created": _TIME,
            "updated": _TIME,
            "selector": {"type": "object"},
            "device_ids": {"type": "integer", "description": "How many ids were given."},
            "task": {"type": "object"},
            "connection_request": {"type": "boolean"},
            "fanned_out": {
                "type": "boolean",
                "description": "Every selected device has its task.",
            },
            "counts": {
                "type": "object",
                "required": list(_BULK_COUNTS),
                "additionalProperties": False,
                "properties": {name: {"type": "integer", "minimum": 0} for name in _BULK_COUNTS},
                "description": (
                    "`matched` devices so far = `queued` (tasks created) + `skipped` "
                    "(gone before their turn); `pending` = queued minus the final ones."
                ),
            },
        },
    },
    "ProfileRequest": {
        "type": "object",
        "description": "At least one of `parameters` and `objects` is not empty.",
        "additionalProperties": False,
        "examples": [
            {
                "selector": {"tags": ["pilot"]},
                "when": "bootstrap",
                "parameters": [
                    {"name": "ManagementServer.PeriodicInformInterval", "value": 3600},
                    {"name": "Device.WiFi.SSID.1.SSID", "value": "home"},
                ],
                "objects": [
                    {
                        "path": "NAT.PortMapping.",
                        "match": {"ExternalPort": 8080, "Protocol": "TCP"},
                        "values": {"InternalPort": 80, "InternalClient": "192.168.1.10"},
                    }
                ],
            }
        ],
        "properties": {
            "selector": {**_ref("Selector"), "description": "Default: every device."},
            "when": {"enum": list(WHEN), "default": "bootstrap"},
            "parameters": {
                "type": "array",
                "maxItems": MAX_PARAMETERS,
                "items": {
                    "type": "object",
                    "required": ["name", "value"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 256,
                            "description": (
                                "Absolute (`Device.…`, `InternetGatewayDevice.…`: only "
                                "devices with that root) or relative to the device's root."
                            ),
                        },
                        "value": {"type": ["string", "number", "boolean"]},
                        "type": {
                            "type": "string",
                            "description": "Default: the data model's type (else xsd:string).",
                        },
                    },
                },
            },
            "objects": {
                "type": "array",
                "maxItems": MAX_OBJECTS,
                "description": (
                    "Instances to exist: the first instance of `path` whose parameters have "
                    "the `match` values gets `values`; with none, the gateway adds one "
                    "(AddObject) and sets `match` and `values` on it."
                ),
                "items": {
                    "type": "object",
                    "required": ["path", "match"],
                    "additionalProperties": False,
                    "properties": {
                        "path": {
                            "type": "string",
                            "minLength": 2,
                            "maxLength": 256,
                            "pattern": "\\.$",
                            "description": (
                                "A multi-instance object (`NAT.PortMapping.`), absolute or "
                                "relative to the device's root."
                            ),
                        },
                        "match": {
                            **_ref("ProfileValues"),
                            "description": "Identify the instance (at least one).",
                        },
                        "values": _ref("ProfileValues"),
                    },
                },
            },
            "enabled": {"type": "boolean", "default": True},
            "description": {"type": "string", "maxLength": 1024},
        },
    },
    "ProfileValues": {
        "description": (
            "Names relative to the instance: a map of name to value, or a list of "
            "`{name, value, type?}`; a value without a type gets the data model's."
        ),
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "value"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 256},
                        "value": {"type": ["string", "number", "boolean"]},
                        "type": {"type": "string"},
                    },
                },
            },
        ],
    },
    "TypedValues": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "value", "type"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "value": {"type": "string", "description": "As sent on the wire."},
                "type": {"type": "string"},
            },
        },
    },
    "Profile": {
        "type": "object",
        "required": [
            "name",
            "selector",
            "when",
            "parameters",
            "objects",
            "enabled",
            "description",
            "version",
            "updated",
        ],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "selector": _ref("Selector"),
            "when": {"enum": list(WHEN)},
            "parameters": _ref("TypedValues"),
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "match", "values"],
                    "additionalProperties": False,
                    "properties": {
                        "path": {"type": "string"},
                        "match": _ref("TypedValues"),
                        "values": _ref("TypedValues"),
                    },
                },
            },
            "enabled": {"type": "boolean"},
            "description": {"type": "string"},
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "Increases with every change of any profile.",
            },
            "updated": _TIME,
        },
    },
    "ProfileList": {
        "type": "object",
        "required": ["profiles"],
        "properties": {"profiles": {"type": "array", "items": _ref("Profile")}},
    },
    "BulkList": {
        "type": "object",
        "required": ["bulk"],
        "properties": {"bulk": {"type": "array", "items": _ref("Bulk")}},
    },
    "Credentials": {
        "type": "object",
        "required": ["username", "password"],
        "additionalProperties": False,
        "properties": {
            "username": {"type": "string", "minLength": 1, "maxLength": 256},
            "password": {"type": "string", "minLength": 1, "maxLength": 256, "writeOnly": True},
            "connection_request": {
                "type": ["object", "null"],
                "required": ["username", "password"],
                "additionalProperties": False,
                "properties": {
                    "username": {"type": "string", "minLength": 1, "maxLength": 256},
                    "password": {"type": "string", "maxLength": 256, "writeOnly": True},
                },
            },
        },
        "description": "No control characters in any of the strings.",
        "examples": [
            {
                "username": "9CA2F4-EC220_G5_V3-22275K2000315",
                "password": "correct horse battery staple",
                "connection_request": {"username": "cr-user", "password": "cr-secret"},
            }
        ],
    },
    "TaskRequest": {
        "oneOf": [_ref(_name(t, "TaskRequest")) for t in TASK_TYPES],
        "discriminator": {
            "propertyName": "type",
            "mapping": {t: _ref(_name(t, "TaskRequest"))["$ref"] for t in TASK_TYPES},
        },
        "description": (
            "`type` is a CWMP method or `refresh`; `args` are that type's arguments "
            "(schema element names in snake_case), as the matching schema says."
        ),
        "examples": [
            {
                "type": "GetParameterValues",
                "args": {"parameter_names": ["Device.DeviceInfo.SoftwareVersion"]},
                "expires_in": 3600,
            }
        ],
    },
    **{_name(t, "TaskRequest"): _task_request(t) for t in TASK_TYPES},
    **{_name(t, "Args"): args_schema(t) for t in TASK_TYPES},
    **{_name(t, "Task"): _task_of_type(t) for t in TASK_TYPES},
    "Task": {
        "type": "object",
        "required": ["id", "device_id", "type", "args", "created", "expires", "status"],
        "properties": {
            "id": {"type": "string"},
            "device_id": {"type": "string"},
            "type": {"type": "string", "enum": list(TASK_TYPES)},
            "args": {
                "type": "object",
                "description": (
                    "As the request gave them, with a generated `command_key` or "
                    "`parameter_key` where it had none; their schema is the type's."
                ),
            },
            "created": _TIME,
            "expires": _TIME,
            "status": {"type": "string", "enum": list(STATUSES)},
            "attempts": {"type": "integer", "minimum": 0},
            "updated": _TIME,
            "result": {"type": ["object", "null"]},
            "fault": {
                "type": ["object", "null"],
                "description": "{code, string, parameters?} from the CPE, or {reason}.",
            },
            "command_key": {"type": "string"},
            "bulk": {"type": "string", "description": "The bulk task it is part of, or empty."},
        },
        "oneOf": [_ref(_name(t, "Task")) for t in TASK_TYPES],
        "discriminator": {
            "propertyName": "type",
            "mapping": {t: _ref(_name(t, "Task"))["$ref"] for t in TASK_TYPES},
        },
    },
    "WakeResult": {
        "type": "object",
        "required": ["outcome", "session_started", "method", "detail"],
        "properties": {
            "outcome": {"type": "string", "enum": list(OUTCOMES)},
            "session_started": {"type": "boolean"},
            "method": {"type": ["string", "null"], "enum": ["http", "udp", None]},
            "detail": {"type": "string"},
        },
    },
    "TaskCreated": {
        "allOf": [
            {"$ref": "#/components/schemas/Task"},
            {
                "type": "object",
                "properties": {
                    "connection_request": {
                        "$ref": "#/components/schemas/WakeResult",
                        "description": "Only with `connection_request=true`.",
                    }
                },
            },
        ]
    },
    "TaskList": {
        "type": "object",
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}},
    },
}


def _operation(route: Route, max_wait: float) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation, "summary": route.summary}
    if route.description:
        op["description"] = route.description
    if route.public:
        op["security"] = []
    parameters: list[dict[str, Any]] = []
    for name in route.path_params:
        schema, description = _PATH_PARAMS[name]
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": description,
                "schema": dict(schema),
            }
        )
    for q in route.query:
        schema = dict(q.schema)
        if q.name == "wait":
            schema["maximum"] = max_wait
        parameters.append(
            {"name": q.name, "in": "query", "description": q.description, "schema": schema}
        )
    for h in route.headers:
        parameters.append(
            {
                "name": h.name,
                "in": "header",
                "description": h.description,
                "schema": {"type": "string", "minLength": 1, "maxLength": 128},
            }
        )
    if parameters:
        op["parameters"] = parameters
    if route.raw_body:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    if route.body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    responses: dict[str, Any] = {}
    for status, reply in route.statuses().items():
        r: dict[str, Any] = {"description": reply.description}
        if reply.schema and reply.media != "application/json":
            r["content"] = {reply.media: {"schema": {"type": "string", "format": "binary"}}}
        elif reply.schema:
            r["content"] = {"application/json": {"schema": _ref(reply.schema)}}
        if reply.headers:
            r["headers"] = {
                name: {
                    "description": text,
                    "required": name not in reply.optional_headers,
                    "schema": {"type": "string"},
                }
                for name, text in reply.headers.items()
            }
        responses[str(status)] = r
    op["responses"] = responses
    return op


def build_document(*, max_wait: float, version: str = "1") -> dict[str, Any]:
    """The OpenAPI 3.1 description of :data:`ROUTES` (``max_wait`` bounds ``wait``)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, max_wait)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cwmpgw northbound API",
            "version": version,
            "description": (
                "Devices, their credentials and tasks on a cwmpgw TR-069 gateway. Every "
                'error is `{"error": {"code", "message"}}`; unknown paths answer 404 and '
                "unsupported methods 405 with `Allow`."
            ),
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A token made with `python -m cwmpgw.nbi.tokens new`; the gateway "
                        "keeps only its SHA-256 (nbi.token_sha256)."
                    ),
                }
            },
            "schemas": {name: dict(schema) for name, schema in SCHEMAS.items()},
        },
    }
