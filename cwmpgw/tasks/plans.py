"""Tasks as plans: small sans-IO state machines that emit RPC calls and consume results.

A session carries one ACS request per HTTP response, so a task that needs several RPCs
(a GetParameterValues split into batches, a refresh that first discovers names) cannot
be one request. A plan says what to send next (:meth:`Plan.next_call`) and learns what
came back (:meth:`Plan.on_result` with :func:`cwmpgw.cwmp.rpc.result`'s JSON, or
:meth:`Plan.on_fault` with :func:`cwmpgw.cwmp.rpc.fault`'s); the task layer does the I/O.

A transfer (Download, Upload, ScheduleDownload) that the CPE has accepted but not finished
leaves its plan ``waiting_transfer``; the TransferComplete of its CommandKey, usually in a
later session, ends it through :meth:`TransferPlan.on_transfer_complete`. Since that
session may run on another node, a plan can be saved with ``snapshot()`` (plain JSON) and
rebuilt with :func:`restore`.

A ``diagnostic`` (:class:`DiagnosticPlan`) sets a diagnostic's inputs and
``DiagnosticsState = Requested``, then waits the same way, for an Inform with
``8 DIAGNOSTICS COMPLETE``; the task layer then starts it again, ``reported``, and it
reads the diagnostic's object and ends with the typed results.

Plans never invent CommandKeys or ParameterKeys: the caller passes them in the arguments.

A Download or ScheduleDownload may name a ``file`` of the gateway's file server instead of
a ``url``, and an Upload may leave ``url`` out to upload to the gateway: those arguments
are completed for the device when the task is sent (:func:`needs_link`, the task runner's
``ITransferLinks``); until then they are checked with a stand-in URL.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from cwmpgw.cwmp import diagnostics, rpc
from cwmpgw.cwmp.faults import cpe_fault_string

__all__ = [
    "DIAGNOSTIC_TIMEOUT",
    "TASK_TYPES",
    "Call",
    "DiagnosticPlan",
    "GetValuesPlan",
    "Outcome",
    "ParameterUpdate",
    "Plan",
    "RefreshPlan",
    "SingleCallPlan",
    "TransferPlan",
    "args_schema",
    "needs_link",
    "plan_for",
    "restore",
]

Outcome = Literal["running", "done", "failed", "waiting_transfer"]
#: (name, value, type) for the device's parameter cache, as the CPE reports them.
ParameterUpdate = tuple[str, str, str]

#: Every task type: each ACS→CPE RPC, "refresh" (re-read a subtree) and "diagnostic".
TASK_TYPES: Final = (*rpc.METHODS, "refresh", "diagnostic")
#: How long a diagnostic waits for its 8 DIAGNOSTICS COMPLETE by default, and at most.
DIAGNOSTIC_TIMEOUT: Final = 600
_MAX_DIAGNOSTIC_TIMEOUT: Final = 86400

# Requests whose work the CPE reports later under their CommandKey: a TransferComplete, or
# for ChangeDUState a DUStateChangeComplete.
_TRANSFER_METHODS: Final = frozenset({"Download", "Upload", "ScheduleDownload", "ChangeDUState"})


#: A file id of the gateway's file server (cwmpgw.files).
FILE_ID_RE: Final = re.compile(r"f[0-9a-z]{8,40}")
_FILE_TRANSFERS: Final = frozenset({"Download", "ScheduleDownload"})
# What stands in for the URL the gateway fills in when the task is sent.
_STAND_IN_URL: Final = "https://files.invalid/"


def needs_link(task_type: str, args: Mapping[str, Any]) -> bool:
    """True if the gateway completes these arguments (URL, credentials) when sending."""
    if task_type in _FILE_TRANSFERS:
        return "file" in args
    return task_type == "Upload" and not args.get("url")


def _with_stand_in(task_type: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments to validate for a task the gateway completes when it is sent."""
    out = dict(args)
    if task_type in _FILE_TRANSFERS:
        file_id = out.pop("file")
        if not isinstance(file_id, str) or not FILE_ID_RE.fullmatch(file_id):
            raise rpc.ArgumentError("file", "not a file id of the gateway (f…)")
        if out.get("url") is not None:
            raise rpc.ArgumentError("url", "give either url or file, not both")
    out["url"] = _STAND_IN_URL
    return out


@dataclass(frozen=True, slots=True)
class Call:
    """One RPC to send: ``args`` are validated (``rpc.build`` accepts them as they are)."""

    method: str
    args: dict[str, Any]


class Plan(Protocol):
    """What the task layer drives; see the module docs."""

    @property
    def task_type(self) -> str: ...

    @property
    def outcome(self) -> Outcome: ...

    @property
    def result(self) -> dict[str, Any] | None: ...

    @property
    def fault(self) -> dict[str, Any] | None: ...

    @property
    def parameter_updates(self) -> list[ParameterUpdate]:
        """Values for the parameter cache, appended as results come; the caller may clear it."""

    def next_call(self) -> Call | None:
        """The call to send now, or None when the plan is not running.

        Until its answer is fed back, the same call is returned again, so a session that
        ended before the answer lets the next session send it again.
        """

    def on_result(self, result: dict[str, Any]) -> None:
        """The CPE's answer to the outstanding call, as ``rpc.result`` returns it."""

    def on_fault(self, fault: dict[str, Any]) -> None:
        """The CPE's fault (``rpc.fault``) or the caller's reason: the plan fails."""

    def snapshot(self) -> dict[str, Any]:
        """The plan's state as JSON, for :func:`restore` (``parameter_updates`` excluded)."""


class _BasePlan:
    """The common machinery: one outstanding call at a time, final states are final."""

    kind: str = ""

    def __init__(self, task_type: str, args: dict[str, Any]) -> None:
        self.task_type = task_type
        self.args = args
        self.outcome: Outcome = "running"
        self.result: dict[str, Any] | None = None
        self.fault: dict[str, Any] | None = None
        self.parameter_updates: list[ParameterUpdate] = []
        self._pending: Call | None = None

    # --- what subclasses provide

    def _next(self) -> Call:
        """The next call while running (only asked when none is outstanding)."""
        raise NotImplementedError

    def _handle(self, call: Call, result: dict[str, Any]) -> None:
        """Consume the answer to ``call``; set ``outcome`` when the plan is over."""
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        pass

    # --- the Plan protocol

    def next_call(self) -> Call | None:
        if self.outcome != "running":
            return None
        if self._pending is None:
            self._pending = self._next()
        return self._pending

    def on_result(self, result: dict[str, Any]) -> None:
        call = self._pending
        if call is None or self.outcome != "running":
            raise RuntimeError("no call of this plan is outstanding")
        self._pending = None
        self._handle(call, result)

    def on_fault(self, fault: dict[str, Any]) -> None:
        if self.outcome in ("done", "failed"):
            raise RuntimeError(f"the plan is already {self.outcome}")
        self._fail(dict(fault))

    def snapshot(self) -> dict[str, Any]:
        pending = self._pending
        return copy.deepcopy(
            {
                "kind": self.kind,
                "task_type": self.task_type,
                "args": self.args,
                "outcome": self.outcome,
                "result": self.result,
                "fault": self.fault,
                "pending": None if pending is None else [pending.method, pending.args],
                "state": self._state(),
            }
        )

    # --- helpers

    def _fail(self, fault: dict[str, Any]) -> None:
        self._pending = None
        self.outcome = "failed"
        self.fault = fault
        self.result = None

    def _done(self, result: dict[str, Any]) -> None:
        self.outcome = "done"
        self.result = result

    def _add_values(self, parameters: list[dict[str, Any]]) -> None:
        self.parameter_updates.extend((p["name"], p["value"], p["type"]) for p in parameters)


class SingleCallPlan(_BasePlan):
    """One RPC, its result is the task's result (SetParameterValues feeds the cache)."""

    kind = "single"

    def _next(self) -> Call:
        return Call(self.task_type, self.args)

    def _handle(self, call: Call, result: dict[str, Any]) -> None:
        if self.task_type == "SetParameterValues":
            # All-or-nothing (A.3.2.1): a response means every value was accepted.
            self._add_values(self.args["parameters"])
        self._done(result)


def _batches(names: list[str], size: int) -> list[list[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]


class GetValuesPlan(_BasePlan):
    """GetParameterValues in batches of names, results merged in order.

    Big responses are what CPEs choke on (timeouts, truncated envelopes), so a long name
    list is sent as several requests.
    """

    kind = "get_values"

    def __init__(self, task_type: str, args: dict[str, Any], batch: int) -> None:
        super().__init__(task_type, args)
        self._batches = _batches(args["parameter_names"], batch)
        self._index = 0
        self._parameters: list[dict[str, Any]] = []

    def _next(self) -> Call:
        return Call("GetParameterValues", {"parameter_names": self._batches[self._index]})

    def _handle(self, call: Call, result: dict[str, Any]) -> None:
        parameters = result["parameters"]
        self._parameters.extend(parameters)
        self._add_values(parameters)
        self._index += 1
        if self._index >= len(self._batches):
            self._done({"parameters": self._parameters})

    def _state(self) -> dict[str, Any]:
        return {"batches": self._batches, "index": self._index, "parameters": self._parameters}

    def _load(self, state: dict[str, Any]) -> None:
        self._batches = state["batches"]
        self._index = state["index"]
        self._parameters = state["parameters"]


class RefreshPlan(_BasePlan):
    """Re-read a subtree: GetParameterNames (NextLevel false), then its values in batches.

    Only parameters are read (names not ending in "."); the result is the values, as a
    GetParameterValues task would give them.
    """

    kind = "refresh"

    def __init__(self, task_type: str, args: dict[str, Any], batch: int) -> None:
        super().__init__(task_type, args)
        self._batch = batch
        self._batches: list[list[str]] | None = None  # None until the names are known
        self._index = 0
        self._parameters: list[dict[str, Any]] = []

    def _next(self) -> Call:
        if self._batches is None:
            return Call(
                "GetParameterNames", {"parameter_path": self.args["path"], "next_level": False}
            )
        return Call("GetParameterValues", {"parameter_names": self._batches[self._index]})

    def _handle(self, call: Call, result: dict[str, Any]) -> None:
        if call.method == "GetParameterNames":
            names = [p["name"] for p in result["parameters"] if not p["name"].endswith(".")]
            batches = _batches(names, self._batch)
            for batch in batches:
                try:  # a name too long to ask for would fail every later session
                    rpc.validate("GetParameterValues", {"parameter_names": batch})
                except rpc.ArgumentError as e:
                    self._fail({"reason": f"unusable parameter name from the CPE: {e.message}"})
                    return
            self._batches = batches
            if not names:
                self._done({"parameters": []})
            return
        parameters = result["parameters"]
        self._parameters.extend(parameters)
        self._add_values(parameters)
        self._index += 1
        assert self._batches is not None
        if self._index >= len(self._batches):
            self._done({"parameters": self._parameters})

    def _state(self) -> dict[str, Any]:
        return {
            "batch": self._batch,
            "batches": self._batches,
            "index": self._index,
            "parameters": self._parameters,
        }

    def _load(self, state: dict[str, Any]) -> None:
        self._batch = state["batch"]
        self._batches = state["batches"]
        self._index = state["index"]
        self._parameters = state["parameters"]


class TransferPlan(_BasePlan):
    """Download, Upload, ScheduleDownload or ChangeDUState: the RPC, then maybe a wait.

    A Download/Upload answered with Status 0 is done at once; Status 1, or the (empty)
    ScheduleDownloadResponse or ChangeDUStateResponse, leaves the plan
    ``waiting_transfer`` until the TransferComplete (DUStateChangeComplete) carrying
    :attr:`command_key` arrives.
    """

    kind = "transfer"

    @property
    def command_key(self) -> str:
        key: str = self.args["command_key"]
        return key

    def _next(self) -> Call:
        return Call(self.task_type, self.args)

    def _handle(self, call: Call, result: dict[str, Any]) -> None:
        if result.get("status") == 0:
            self._done(result)
            return
        self.result = result
        self.outcome = "waiting_transfer"

    def on_transfer_complete(
        self, fault_code: int, fault_string: str, start_time: str, complete_time: str
    ) -> None:
        """The CPE's TransferComplete for :attr:`command_key`: fault_code 0 is success."""
        if self.outcome != "waiting_transfer":
            raise RuntimeError(f"the plan is {self.outcome}, not waiting for a transfer")
        if fault_code:
            self._fail(
                {
                    "code": fault_code,
                    "string": fault_string or cpe_fault_string(fault_code),
                    "parameters": [],
                }
            )
            return
        times = {"start_time": start_time, "complete_time": complete_time}
        self._done({**(self.result or {}), **times})


class DiagnosticPlan(_BasePlan):
    """A diagnostic (TR-098/TR-181, TR-143): request it, wait, read the results.

    Started fresh it sends one SetParameterValues (the inputs, then ``DiagnosticsState =
    Requested``) and then waits (``waiting_transfer``) for the CPE's
    ``8 DIAGNOSTICS COMPLETE``. Started ``reported`` it reads the object with one
    GetParameterValues: ``Complete`` ends it done with the typed results, an ``Error_…``
    (or ``None``: the test was stopped on the CPE) ends it failed, and ``Requested`` (the
    report was of another diagnostic) leaves it waiting again.

    ``root`` is the device's data model (``Device`` or ``InternetGatewayDevice``);
    ``url`` fills DownloadURL/UploadURL when the arguments gave none (the gateway's
    throughput endpoint).
    """

    kind = "diagnostic"

    def __init__(
        self,
        task_type: str,
        args: dict[str, Any],
        *,
        root: str = "Device",
        reported: bool = False,
        url: str | None = None,
    ) -> None:
        super().__init__(task_type, args)
        self._kind = diagnostics.KINDS[args["kind"]]
        self._object = diagnostics.object_path(self._kind.name, root)
        self._reported = reported
        self._url = url

    @property
    def object(self) -> str:
        return self._object

    def _next(self) -> Call:
        if self._reported:
            return Call("GetParameterValues", {"parameter_names": [self._object]})
        inputs = dict(self.args["parameters"])
        if self._kind.url and not inputs.get(self._kind.url):
            if not self._url:
                # Checked before sending: the task fails at once, nothing is set.
                raise _NoUrl(self._kind.url)
            inputs[self._kind.url] = self._url
        parameters = [
            {"name": self._object + name, "value": value, "type": self._kind.inputs[name].type}
            for name, value in inputs.items()
        ]
        parameters.append(
            {"name": self._object + diagnostics.STATE, "value": "Requested", "type": "xsd:string"}
        )
        return Call(
            "SetParameterValues",
            {"parameters": parameters, "parameter_key": self.args.get("parameter_key", "")},
        )

    def next_call(self) -> Call | None:
        try:
            return super().next_call()
        except _NoUrl as e:
            self._fail(
                {
                    "reason": f"no {e.args[0]} given and the gateway's throughput endpoint "
                    "is not enabled (diagnostics.throughput_enabled)"
                }
            )
            return None

    def _handle(self, call: Call, result: dict[str, Any]) -> None:
        if call.method == "SetParameterValues":
            self._add_values(call.args["parameters"])
            self.outcome = "waiting_transfer"
            return
        parameters = result["parameters"]
        self._add_values(parameters)
        state = next(
            (p["value"] for p in parameters if p["name"] == self._object + diagnostics.STATE),
            None,
        )
        if state == "Complete":
            self._done(self._results(parameters))
        elif state == "Requested":
            self.outcome = "waiting_transfer"  # another diagnostic's report: still running
        elif state is None:
            self._fail({"reason": f"the CPE did not report {self._object}{diagnostics.STATE}"})
        else:
            why = (
                "the diagnostic was stopped on the CPE"
                if state == "None"
                else "the diagnostic failed"
            )
            self._fail({"reason": f"{why}: DiagnosticsState {state}", "diagnostics_state": state})

    def _results(self, parameters: list[dict[str, Any]]) -> dict[str, Any]:
        results = diagnostics.typed_results(self._kind.name, self._object, parameters)
        out: dict[str, Any] = {
            "kind": self._kind.name,
            "object": self._object,
            "diagnostics_state": "Complete",
            "results": results,
        }
        throughput = _throughput(self._kind.name, results)
        if throughput is not None:
            out["throughput_bps"] = throughput
        return out


class _NoUrl(Exception):
    pass


def _throughput(kind: str, results: dict[str, Any]) -> float | None:
    """TR-143's throughput, bits per second: test bytes over EOMTime - BOMTime."""
    if kind == "DownloadDiagnostics":
        names = ("TestBytesReceived", "TotalBytesReceived")
    elif kind == "UploadDiagnostics":
        names = ("TestBytesSent", "TotalBytesSent")
    else:
        return None
    size = next((results[n] for n in names if isinstance(results.get(n), int)), None)
    begin = diagnostics.parse_time(str(results.get("BOMTime", "")))
    end = diagnostics.parse_time(str(results.get("EOMTime", "")))
    if size is None or begin is None or end is None or end <= begin:
        return None
    rate: float = round(size * 8 / (end - begin), 3)
    return rate


_KINDS: Final = {
    cls.kind: cls for cls in (SingleCallPlan, GetValuesPlan, RefreshPlan, TransferPlan)
}


def _refresh_args(args: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(args, Mapping):
        raise rpc.ArgumentError("", "arguments must be an object")
    for key in args:
        if key != "path":
            raise rpc.ArgumentError(str(key), "unknown argument of refresh")
    try:
        checked = rpc.validate("GetParameterNames", {"parameter_path": args.get("path")})
    except rpc.ArgumentError as e:
        raise rpc.ArgumentError("path", e.message) from None
    return {"path": checked["parameter_path"]}


_DIAGNOSTIC_KEYS: Final = frozenset(
    {"kind", "parameters", "timeout", "throughput_bytes", "parameter_key"}
)


def _diagnostic_args(args: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(args, Mapping):
        raise rpc.ArgumentError("", "arguments must be an object")
    for key in args:
        if key not in _DIAGNOSTIC_KEYS:
            raise rpc.ArgumentError(str(key), "unknown argument of diagnostic")
    kind = args.get("kind")
    if not isinstance(kind, str) or kind not in diagnostics.KINDS:
        raise rpc.ArgumentError("kind", f"expected one of {', '.join(diagnostics.KINDS)}")
    try:
        parameters = diagnostics.check_inputs(kind, args.get("parameters") or {})
    except ValueError as e:
        path, _, message = str(e).partition(": ")
        raise rpc.ArgumentError(path, message) from None
    timeout = args.get("timeout", DIAGNOSTIC_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 1 <= timeout <= _MAX_DIAGNOSTIC_TIMEOUT
    ):
        raise rpc.ArgumentError("timeout", f"expected seconds, 1 to {_MAX_DIAGNOSTIC_TIMEOUT}")
    out: dict[str, Any] = {"kind": kind, "parameters": parameters, "timeout": timeout}
    size = args.get("throughput_bytes")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise rpc.ArgumentError("throughput_bytes", "expected a positive integer")
        if not diagnostics.KINDS[kind].url:
            raise rpc.ArgumentError("throughput_bytes", f"not an argument of {kind}")
        out["throughput_bytes"] = size
    key = args.get("parameter_key", "")
    try:
        out["parameter_key"] = rpc.validate(
            "SetParameterValues", {"parameters": [], "parameter_key": key}
        )["parameter_key"]
    except rpc.ArgumentError as e:
        raise rpc.ArgumentError("parameter_key", e.message) from None
    return out


def _diagnostic_schema() -> dict[str, Any]:
    def input_schema(spec: diagnostics.Input) -> dict[str, Any]:
        if spec.listed:
            return {
                "type": "array",
                "minItems": 1,
                "maxItems": spec.listed,
                "items": {"type": "string", "maxLength": spec.max_length, "pattern": "^[^,]+$"},
            }
        if spec.type == "xsd:boolean":
            return {"type": "boolean"}
        if spec.type == "xsd:unsignedInt":
            schema: dict[str, Any] = {"type": "integer", "minimum": spec.low or 0}
            if spec.high is not None:
                schema["maximum"] = spec.high
            return schema
        if spec.enum:
            return {"type": "string", "enum": list(spec.enum)}
        return {"type": "string", "maxLength": spec.max_length}

    variants = []
    for kind in diagnostics.KINDS.values():
        variants.append(
            {
                "title": kind.name,
                "properties": {
                    "kind": {"const": kind.name},
                    "parameters": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": list(kind.required),
                        "properties": {n: input_schema(s) for n, s in kind.inputs.items()},
                    },
                },
                **({"required": ["parameters"]} if kind.required else {}),
            }
        )
    return {
        "type": "object",
        "required": ["kind"],
        "additionalProperties": False,
        "properties": {
            "kind": {
                "type": "string",
                "enum": list(diagnostics.KINDS),
                "description": (
                    "The diagnostic; its object is under Device. (TR-181) or "
                    "InternetGatewayDevice. (TR-098), whichever the device informs with."
                ),
            },
            "parameters": {
                "type": "object",
                "description": (
                    "The test parameters, by their names in the diagnostic's object "
                    "(Host, NumberOfRepetitions…); DiagnosticsState is set by the gateway."
                ),
            },
            "timeout": {
                "type": "number",
                "minimum": 1,
                "maximum": _MAX_DIAGNOSTIC_TIMEOUT,
                "default": DIAGNOSTIC_TIMEOUT,
                "description": (
                    "Seconds the task waits for 8 DIAGNOSTICS COMPLETE after the CPE "
                    "accepted the request; then it fails."
                ),
            },
            "throughput_bytes": {
                "type": ["integer", "null"],
                "minimum": 1,
                "description": (
                    "Download/UploadDiagnostics without a URL: the size of the test the "
                    "gateway's throughput endpoint serves or accepts (default "
                    "diagnostics.download_bytes, or TestFileLength)."
                ),
            },
            "parameter_key": {
                "type": "string",
                "maxLength": 32,
                "description": "The ParameterKey of the SetParameterValues (generated if empty).",
            },
        },
        "oneOf": variants,
    }


def _refresh_path() -> rpc.Argument:
    """refresh's ``path`` is checked as GetParameterNames' ``parameter_path``."""
    (path,) = (a for a in rpc.METHODS["GetParameterNames"].arguments if a.key == "parameter_path")
    return path


def args_schema(task_type: str) -> dict[str, Any]:
    """The JSON Schema of a task type's ``args``: what :func:`plan_for` accepts.

    Raises KeyError for a type that is not in :data:`TASK_TYPES`.
    """
    if task_type == "refresh":
        return {
            "type": "object",
            "required": ["path"],
            "additionalProperties": False,
            "properties": {
                "path": {
                    **rpc.argument_schema(_refresh_path()),
                    "description": (
                        "What to re-read: a partial path ending with '.' (the subtree), "
                        "a parameter name, or '' (everything)."
                    ),
                }
            },
        }
    if task_type == "diagnostic":
        return _diagnostic_schema()
    if task_type not in rpc.METHODS:
        raise KeyError(task_type)
    schema = rpc.arguments_schema(task_type)
    if task_type in _FILE_TRANSFERS:
        schema["required"] = [k for k in schema["required"] if k != "url"]
        schema["properties"]["file"] = {
            "type": "string",
            "pattern": "^" + FILE_ID_RE.pattern + "$",
            "description": (
                "A file of the gateway (`/files`), instead of `url`: the gateway fills in a "
                "URL and credentials signed for this device, the size and the file name."
            ),
        }
        schema["oneOf"] = [{"required": ["url"]}, {"required": ["file"]}]
    elif task_type == "Upload":
        schema["required"] = [k for k in schema["required"] if k != "url"]
        url = schema["properties"]["url"]
        schema["properties"]["url"] = {
            **url,
            "description": "Left out: upload to the gateway (a URL signed for this device).",
        }
    return schema


def plan_for(
    task_type: str,
    args: Mapping[str, Any],
    *,
    gpv_batch: int = 100,
    root: str = "Device",
    reported: bool = False,
    url: str | None = None,
) -> Plan:
    """A fresh plan for a task; the arguments are validated (raises rpc.ArgumentError).

    ``gpv_batch`` is the most names one GetParameterValues asks for (a partial path
    counts as one name). ``root``, ``reported`` and ``url`` are a diagnostic's: the
    device's data model, whether the CPE reported it complete, the throughput URL.
    """
    if isinstance(gpv_batch, bool) or not isinstance(gpv_batch, int) or gpv_batch < 1:
        raise ValueError("gpv_batch must be a positive integer")
    if task_type == "diagnostic":
        checked_args = _diagnostic_args(args)
        return DiagnosticPlan(task_type, checked_args, root=root, reported=reported, url=url)
    if task_type == "refresh":
        return RefreshPlan(task_type, _refresh_args(args), gpv_batch)
    if needs_link(task_type, args):
        return TransferPlan(task_type, rpc.validate(task_type, _with_stand_in(task_type, args)))
    checked = rpc.validate(task_type, args)
    if task_type == "GetParameterValues":
        return GetValuesPlan(task_type, checked, gpv_batch)
    if task_type in _TRANSFER_METHODS:
        return TransferPlan(task_type, checked)
    return SingleCallPlan(task_type, checked)


def restore(snapshot: Mapping[str, Any]) -> Plan:
    """The plan a ``snapshot()`` was taken of (e.g. one waiting for its TransferComplete)."""
    state = copy.deepcopy(dict(snapshot))
    cls = _KINDS.get(state.get("kind", ""))
    if cls is None:
        raise ValueError(f"not a plan snapshot: kind {state.get('kind')!r}")
    plan = cls.__new__(cls)
    _BasePlan.__init__(plan, state["task_type"], state["args"])
    plan.outcome = state["outcome"]
    plan.result = state["result"]
    plan.fault = state["fault"]
    pending = state["pending"]
    plan._pending = None if pending is None else Call(pending[0], pending[1])
    plan._load(state["state"])
    return plan
