"""The data-model check: is this a parameter the ACS may set, and is the value right for it?

The gateway checks every SetParameterValues — a task at submission, a profile when it is
stored — against a description of the Broadband Forum data models, TR-181 (``Device.``,
Device:2) and TR-098 (``InternetGatewayDevice.``, InternetGatewayDevice:1), before
anything is sent: a CPE answers an unknown name (9005), a read-only parameter (9008) or a
wrongly typed value (9006/9007) with a fault for the whole request.

The description (``datamodel.tsv``, beside this module) is DERIVED, not vendored from the
BBF's XML, which was not available where it was made: see ``tools/derive_datamodel.py``.
It covers ManagementServer, DeviceInfo, Time, UserInterface, Users/User, Wi-Fi
(``WiFi``/``WLANConfiguration``), IP, Ethernet, LAN/WAN devices, Hosts, DHCPv4, NAT
port mappings, DNS, Routing and PPP, as two real CPEs and the simulator have them plus a
table of standard parameters; "closed" objects have every standard child listed.

What is refused, because it is known to be wrong (:class:`DataModelError`):

- a parameter the model has, but read-only;
- a type given that is not the parameter's, or a value that is not valid for its type,
  range or size;
- an object path where a parameter is expected;
- a segment that is not an instance number (``3``) or alias (``[cpe-1]``) where the
  model has a multi-instance table;
- a name that a *closed* object does not have.

What passes unchecked, because it may well be right (:attr:`Checked.unchecked` says why):
vendor extensions (any segment starting with ``X_``), roots other than the two, and names
under an object whose children are not all known (newer data-model versions add
parameters every year). A parameter given without a type gets the model's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from cwmpgw.cwmp import values

__all__ = [
    "ROOTS",
    "Checked",
    "DataModel",
    "DataModelError",
    "ParameterSpec",
    "standard_model",
]

#: The roots the description covers.
ROOTS: Final = ("Device", "InternetGatewayDevice")

_INSTANCE_RE: Final = re.compile(r"[1-9][0-9]*|\[[^\[\]]{1,64}\]")
_TYPE_RE: Final = re.compile(
    r"(?P<type>[A-Za-z]+(?:\([0-9]+\))?)(?:\[(?P<low>-?[0-9]*):(?P<high>-?[0-9]*)\])?"
)


class DataModelError(ValueError):
    """A SetParameterValues entry the data model says is wrong; the message says why."""


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """A parameter of the model: its generic path (``{i}`` for instances) and rules."""

    path: str
    type: str  # canonical, "xsd:unsignedInt"
    writable: bool
    max_length: int | None = None
    low: int | None = None
    high: int | None = None
    # False for a name only a CPE reported ("seen"): known to exist, nothing enforced.
    enforced: bool = True

    def describe(self) -> str:
        text = self.type
        if self.max_length is not None:
            text += f"({self.max_length})"
        if self.low is not None or self.high is not None:
            low = "" if self.low is None else str(self.low)
            high = "" if self.high is None else str(self.high)
            text += f"[{low}:{high}]"
        return text


@dataclass(frozen=True, slots=True)
class Checked:
    """A value that may be sent: its type, its wire text, and why it was not checked
    against the model (empty when it was)."""

    type: str
    value: str
    unchecked: str = ""
    spec: ParameterSpec | None = None


class DataModel:
    """Objects (``Device.WiFi.SSID.{i}.`` → closed or not) and parameters."""

    def __init__(self, objects: dict[str, bool], parameters: dict[str, ParameterSpec]) -> None:
        self._objects = objects
        self._parameters = parameters

    @classmethod
    def parse(cls, text: str) -> DataModel:
        objects: dict[str, bool] = {}
        parameters: dict[str, ParameterSpec] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            path, kind, access = line.split("\t")
            if kind == "object":
                objects[path] = access == "closed"
                continue
            match = _TYPE_RE.fullmatch(kind)
            if match is None:
                raise ValueError(f"line {number}: bad type {kind!r}")
            canonical, length = values.normalise_type(match.group("type"))
            low, high = match.group("low"), match.group("high")
            if access not in ("rw", "ro", "seen"):
                raise ValueError(f"line {number}: bad access {access!r}")
            parameters[path] = ParameterSpec(
                path,
                canonical,
                access != "ro",
                length,
                int(low) if low else None,
                int(high) if high else None,
                enforced=access != "seen",
            )
        return cls(objects, parameters)

    def __len__(self) -> int:
        return len(self._parameters)

    def parameter(self, name: str) -> ParameterSpec | None:
        """The spec of a concrete parameter name, or None if the model does not have it."""
        try:
            found = self._resolve(name)
        except DataModelError:
            return None
        return found if isinstance(found, ParameterSpec) else None

    def _resolve(self, name: str) -> ParameterSpec | str:
        """The parameter's spec, or why it is not checked (raises DataModelError)."""
        segments = name.split(".")
        if segments[0] not in ROOTS or len(segments) < 2:
            return "outside the TR-181 and TR-098 roots"
        current = segments[0] + "."
        for i, segment in enumerate(segments[1:], 1):
            last = i == len(segments) - 1
            if segment.startswith("X_"):
                return "a vendor extension"
            table = current + "{i}."
            if table in self._objects:
                if last and _INSTANCE_RE.fullmatch(segment):
                    raise DataModelError(f"{name}: an instance of {current}, not a parameter")
                if last or not _INSTANCE_RE.fullmatch(segment):
                    raise DataModelError(
                        f"{name}: {current} is a multi-instance object;"
                        f" {segment!r} is not an instance number"
                    )
                current = table
                continue
            if last:
                spec = self._parameters.get(current + segment)
                if spec is not None:
                    return spec
                if current + segment + "." in self._objects:
                    raise DataModelError(f"{name}: an object, not a parameter")
            elif current + segment + "." in self._objects:
                current += segment + "."
                continue
            if self._objects.get(current, False):
                raise DataModelError(f"{name}: {current} has no {segment}")
            return f"{current}{segment} is not in the gateway's data model"
        return "not in the gateway's data model"  # pragma: no cover (a name ends)

    def table(self, path: str) -> str | None:
        """The generic path (``Device.NAT.PortMapping.``) of a concrete multi-instance object
        path, or None when the model does not know it (a vendor extension, an open object's
        unknown child, another root). Raises DataModelError when the model knows that
        ``path`` is not a multi-instance object."""
        if not path.endswith("."):
            raise DataModelError(f"{path}: an object path ends with '.'")
        segments = path[:-1].split(".")
        if segments[0] not in ROOTS or len(segments) < 2:
            return None
        current = segments[0] + "."
        for i, segment in enumerate(segments[1:], 1):
            last = i == len(segments) - 1
            if segment.startswith("X_"):
                return None
            if current + "{i}." in self._objects:
                if not _INSTANCE_RE.fullmatch(segment):
                    raise DataModelError(
                        f"{path}: {current} is a multi-instance object;"
                        f" {segment!r} is not an instance number"
                    )
                if last:
                    raise DataModelError(f"{path}: an instance of {current}, not a table")
                current += "{i}."
                continue
            if current + segment + "." in self._objects:
                current += segment + "."
                continue
            if current + segment in self._parameters:
                raise DataModelError(f"{path}: a parameter, not an object")
            if self._objects.get(current, False):
                raise DataModelError(f"{path}: {current} has no {segment}")
            return None
        if current + "{i}." in self._objects:
            return current
        raise DataModelError(f"{path}: not a multi-instance object")

    def instance_parameters(self, table: str) -> list[ParameterSpec]:
        """The parameters of an instance of the generic ``table`` (``Device.NAT.PortMapping.``),
        without those of tables below it."""
        prefix = table + "{i}."
        return [
            spec
            for path, spec in self._parameters.items()
            if path.startswith(prefix) and "{i}" not in path[len(prefix) :]
        ]

    def check(self, name: str, value: Any, type_: str | None = None) -> Checked:
        """Check one SetParameterValues entry. Raises DataModelError, or ValueError for a
        value or type that is wrong whatever the model says."""
        found = self._resolve(name)
        if isinstance(found, str):
            given = type_ if type_ is not None else "xsd:string"
            canonical, _ = values.normalise_type(given)
            return Checked(canonical, values.check_value(given, value), found)
        spec = found
        if not spec.enforced:
            given = type_ if type_ is not None else "xsd:string"
            canonical, _ = values.normalise_type(given)
            reason = f"{spec.path} is known from a CPE's report, not the standard table"
            return Checked(canonical, values.check_value(given, value), reason)
        if not spec.writable:
            raise DataModelError(f"{name}: read-only")
        if type_ is not None:
            canonical, _ = values.normalise_type(type_)
            if canonical != spec.type:
                raise DataModelError(f"{name}: is {spec.type}, not {canonical}")
        try:
            text = values.check_value(spec.type, value, max_length=spec.max_length)
        except ValueError as e:
            raise DataModelError(f"{name}: {e} (the data model: {spec.describe()})") from None
        if spec.low is not None or spec.high is not None:
            number = int(text)
            if (spec.low is not None and number < spec.low) or (
                spec.high is not None and number > spec.high
            ):
                raise DataModelError(f"{name}: {number} is out of range {spec.describe()}")
        return Checked(spec.type, text, "", spec)


@cache
def standard_model() -> DataModel:
    """The description shipped with the package (parsed once per process)."""
    text = resources.files("cwmpgw.cwmp").joinpath("datamodel.tsv").read_text("utf-8")
    return DataModel.parse(text)
