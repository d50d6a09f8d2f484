"""Simulated data models: one shared, immutable template, a small overlay per device.

A real CPE's tree has about a thousand parameters; holding a copy per simulated device
would cost megabytes each. The :class:`Template` is loaded once from a CSV dump and
shared; a :class:`DeviceModel` stores only what differs on its device (values set by the
ACS or given per device, objects added or deleted, attribute changes), so a device that
the ACS never touched costs a few hundred bytes.

Two CSV formats are read (columns by name, so both work with one reader):

* genieacs-sim: ``Parameter,Object,Writable,Value,Value type``, with ``DeviceID.*`` rows
  for the Inform's DeviceId;
* the GenieACS UI export: ``Parameter,Object,Object timestamp,Writable,...,Notification,
  ...,Access list,...``; the identity then comes from ``<root>.DeviceInfo.*``.

Object rows name objects without a trailing dot; here objects are always kept with it
(``Device.WiFi.SSID.1.``), as CWMP writes partial paths.
"""

from __future__ import annotations

import csv
import io
import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Final, NamedTuple

from cwmpgw.cwmp import values
from cwmpgw.cwmp.datamodel import DataModelError, standard_model

__all__ = [
    "BUILTIN_CSV",
    "DeviceModel",
    "ModelIdentity",
    "Param",
    "Template",
    "TemplateError",
    "builtin_template",
    "load_csv",
    "parse_csv",
]

# Above every character a parameter name can hold: the end of a prefix range.
_HIGH: Final = "\U0010ffff"
_INSTANCE_RE: Final = re.compile(r"[1-9][0-9]*")
_MAX_NAME: Final = 256
#: Roots of GenieACS's own rows in its UI export (not part of any device's tree).
_GENIEACS_ONLY: Final = frozenset({"Events", "Tags", "VirtualParameters"})

#: A new instance's values where the standard model says the type (strings: empty).
_DEFAULTS: Final = {
    "xsd:boolean": "false",
    "xsd:int": "0",
    "xsd:long": "0",
    "xsd:unsignedInt": "0",
    "xsd:unsignedLong": "0",
    "xsd:dateTime": "0001-01-01T00:00:00Z",
}

#: Parameters whose Notification is forced active by the data models (TR-098/TR-181).
_FORCED_ACTIVE: Final = (
    "DeviceInfo.SoftwareVersion",
    "DeviceInfo.ProvisioningCode",
    "ManagementServer.ConnectionRequestURL",
)


class TemplateError(ValueError):
    """A data-model CSV that cannot be used; the message names the file and line."""


class Param(NamedTuple):
    """A leaf parameter: its value text, canonical type, writability and attributes."""

    value: str
    type: str
    writable: bool
    notification: int = 0
    access_list: tuple[str, ...] = ()


class ModelIdentity(NamedTuple):
    """The Inform's DeviceId parts found in the template."""

    manufacturer: str
    oui: str
    product_class: str
    serial_number: str


def _canonical_type(text: str) -> str:
    if not text.strip():
        return "xsd:string"
    try:
        return values.normalise_type(text)[0]
    except ValueError:
        return "xsd:string"  # a vendor type: its values are carried as text


def _truth(text: str | None) -> bool:
    return (text or "").strip().lower() in ("true", "1")


class Template:
    """An immutable data model shared by every device simulated from it.

    ``params`` maps leaf names to :class:`Param`; ``objects`` maps object paths (ending
    with ".") to their writability; ``names`` is every name, sorted, so the names below
    a partial path are one contiguous slice.
    """

    __slots__ = (
        "forced",
        "identity",
        "ms",
        "names",
        "objects",
        "params",
        "root",
        "source",
    )

    def __init__(
        self,
        params: Mapping[str, Param],
        objects: Mapping[str, bool],
        identity: ModelIdentity,
        source: str,
    ) -> None:
        self.params: Mapping[str, Param] = MappingProxyType(dict(params))
        self.objects: Mapping[str, bool] = MappingProxyType(dict(objects))
        self.identity = identity
        self.source = source
        self.names: tuple[str, ...] = tuple(sorted([*self.params, *self.objects]))
        first = next(iter(self.params), "Device.")
        self.root = first.split(".", 1)[0]
        self.ms = self.root + ".ManagementServer."
        self.forced = self._forced_inform()

    def __repr__(self) -> str:
        return f"<Template {self.source} root={self.root} params={len(self.params)}>"

    def _forced_inform(self) -> tuple[str, ...]:
        """The forced-inform parameters this tree has (PROTOCOL.md §6.2), in a stable order."""
        r = self.root + "."
        wanted = [
            r + "RootDataModelVersion",
            r + "DeviceSummary",
            r + "DeviceInfo.SpecVersion",
            r + "DeviceInfo.HardwareVersion",
            r + "DeviceInfo.SoftwareVersion",
            r + "DeviceInfo.ProvisioningCode",
            self.ms + "ParameterKey",
            self.ms + "ConnectionRequestURL",
            self.ms + "AliasBasedAddressing",
            # Forced when the CPE does XMPP connection requests (Annex K); the simulator
            # sends it only once a device has a JID (see SimDevice's Inform).
            self.ms + "ConnReqJabberID",
        ]
        found = [n for n in wanted if n in self.params]
        if self.root == "InternetGatewayDevice":
            # The default WAN connection's external address (the first one in the tree).
            for name in self.names:
                if name.endswith(".ExternalIPAddress") and (
                    ".WANIPConnection." in name or ".WANPPPConnection." in name
                ):
                    found.append(name)
                    break
        return tuple(found)

    def with_values(self, changes: Mapping[str, str]) -> Template:
        """A template with some default values replaced (names it lacks are ignored).

        Used for what every device of a fleet shares (the ACS URL, a periodic interval),
        so those values cost nothing per device.
        """
        params = dict(self.params)
        for name, value in changes.items():
            param = params.get(name)
            if param is not None:
                params[name] = param._replace(value=value)
        return Template(params, self.objects, self.identity, self.source)

    def range(self, prefix: str) -> tuple[str, ...]:
        """Every name starting with ``prefix`` (objects with their dot), sorted."""
        names = self.names
        start = bisect_left(names, prefix)
        end = bisect_left(names, prefix + _HIGH, start)
        return names[start:end]

    def attribute_default(self, name: str) -> tuple[int, tuple[str, ...]]:
        param = self.params.get(name)
        if param is None:
            return 0, ()
        return param.notification, param.access_list


def parse_csv(text: str, source: str = "<csv>") -> Template:
    """A template from the text of a genieacs-sim CSV or a GenieACS UI export."""
    reader = csv.DictReader(io.StringIO(text))
    columns = {c.strip() for c in (reader.fieldnames or [])}
    missing = {"Parameter", "Object", "Writable", "Value"} - columns
    if missing:
        raise TemplateError(f"{source}: missing column(s) {', '.join(sorted(missing))}")
    params: dict[str, Param] = {}
    objects: dict[str, bool] = {}
    device_id: dict[str, str] = {}
    for raw in reader:
        row = {(k or "").strip(): (v or "") for k, v in raw.items()}
        name = row.get("Parameter", "").strip()
        if not name:
            continue
        if len(name) > _MAX_NAME or any(c in name for c in " \t\r\n"):
            raise TemplateError(f"{source}, line {reader.line_num}: bad parameter name")
        if name.startswith("DeviceID."):
            device_id[name[len("DeviceID.") :]] = row.get("Value", "")
            continue
        if name.split(".", 1)[0] in _GENIEACS_ONLY:
            continue  # GenieACS's own bookkeeping in its UI export, not the device's tree
        writable = _truth(row.get("Writable"))
        if _truth(row.get("Object")):
            objects[name.rstrip(".") + "."] = writable
            continue
        notification_text = row.get("Notification", "").strip()
        notification = int(notification_text) if notification_text.isdigit() else 0
        access = tuple(a.strip() for a in row.get("Access list", "").split(",") if a.strip())
        params[name] = Param(
            row.get("Value", ""),
            _canonical_type(row.get("Value type", "")),
            writable,
            min(notification, 6),
            access,
        )
    if not params:
        raise TemplateError(f"{source}: no parameters")
    roots = {n.split(".", 1)[0] for n in params}
    if len(roots) != 1:
        raise TemplateError(f"{source}: more than one root object ({', '.join(sorted(roots))})")
    root = roots.pop()
    # Every ancestor of a parameter is an object, even if the dump left it out.
    for name in list(params):
        parts = name.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            objects.setdefault(".".join(parts[:i]) + ".", False)
    for suffix in _FORCED_ACTIVE:
        name = f"{root}.{suffix}"
        param = params.get(name)
        if param is not None and param.notification == 0:
            params[name] = param._replace(notification=2)
    identity = _identity(root, params, device_id)
    if not identity.oui or not identity.serial_number:
        raise TemplateError(f"{source}: no OUI or serial number (DeviceID.* or DeviceInfo.*)")
    return Template(params, objects, identity, source)


def _identity(
    root: str, params: Mapping[str, Param], device_id: Mapping[str, str]
) -> ModelIdentity:
    info = f"{root}.DeviceInfo."

    def pick(key: str, *names: str) -> str:
        if key in device_id:
            return device_id[key].strip()
        for name in names:
            param = params.get(info + name)
            if param is not None and param.value.strip():
                return param.value.strip()
        return ""

    return ModelIdentity(
        manufacturer=pick("Manufacturer", "Manufacturer"),
        oui=pick("OUI", "ManufacturerOUI").upper(),
        product_class=pick("ProductClass", "ProductClass", "ModelName"),
        serial_number=pick("SerialNumber", "SerialNumber"),
    )


def load_csv(path: str) -> Template:
    """A template from a CSV file (UTF-8, with or without a BOM)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as e:
        raise TemplateError(f"{path}: {e.strerror}") from None
    return parse_csv(text, path)


#: A small TR-181 (Device:2) tree, used when no CSV is given.
BUILTIN_CSV: Final = """\
Parameter,Object,Writable,Value,Value type
DeviceID.Manufacturer,false,false,cwmpgw,xsd:string
DeviceID.OUI,false,false,00CAFE,xsd:string
DeviceID.ProductClass,false,false,SimCPE,xsd:string
DeviceID.SerialNumber,false,false,SIM000000,xsd:string
Device.RootDataModelVersion,false,false,2.12,xsd:string
Device.DeviceInfo.Manufacturer,false,false,cwmpgw,xsd:string
Device.DeviceInfo.ManufacturerOUI,false,false,00CAFE,xsd:string
Device.DeviceInfo.ModelName,false,false,SimCPE,xsd:string
Device.DeviceInfo.Description,false,false,cwmpgw simulated CPE,xsd:string
Device.DeviceInfo.ProductClass,false,false,SimCPE,xsd:string
Device.DeviceInfo.SerialNumber,false,false,SIM000000,xsd:string
Device.DeviceInfo.HardwareVersion,false,false,1.0,xsd:string
Device.DeviceInfo.SoftwareVersion,false,false,1.0.0,xsd:string
Device.DeviceInfo.ProvisioningCode,false,true,,xsd:string
Device.DeviceInfo.UpTime,false,false,120,xsd:unsignedInt
Device.ManagementServer.URL,false,true,,xsd:string
Device.ManagementServer.Username,false,true,,xsd:string
Device.ManagementServer.Password,false,true,,xsd:string
Device.ManagementServer.PeriodicInformEnable,false,true,true,xsd:boolean
Device.ManagementServer.PeriodicInformInterval,false,true,300,xsd:unsignedInt
Device.ManagementServer.PeriodicInformTime,false,true,0001-01-01T00:00:00Z,xsd:dateTime
Device.ManagementServer.ParameterKey,false,false,,xsd:string
Device.ManagementServer.ConnectionRequestURL,false,false,,xsd:string
Device.ManagementServer.ConnectionRequestUsername,false,true,,xsd:string
Device.ManagementServer.ConnectionRequestPassword,false,true,,xsd:string
Device.ManagementServer.UpgradesManaged,false,true,false,xsd:boolean
Device.ManagementServer.CWMPRetryMinimumWaitInterval,false,true,5,xsd:unsignedInt
Device.ManagementServer.CWMPRetryIntervalMultiplier,false,true,2000,xsd:unsignedInt
Device.ManagementServer.AliasBasedAddressing,false,false,false,xsd:boolean
Device.ManagementServer.STUNEnable,false,true,false,xsd:boolean
Device.ManagementServer.NATDetected,false,false,false,xsd:boolean
Device.ManagementServer.SupportedConnReqMethods,false,false,HTTP,xsd:string
Device.ManagementServer.ConnReqXMPPConnection,false,true,,xsd:string
Device.ManagementServer.ConnReqAllowedJabberIDs,false,true,,xsd:string
Device.ManagementServer.ConnReqJabberID,false,false,,xsd:string
Device.Time.Enable,false,true,true,xsd:boolean
Device.Time.NTPServer1,false,true,pool.ntp.org,xsd:string
Device.Time.LocalTimeZone,false,true,UTC,xsd:string
Device.WiFi.SSIDNumberOfEntries,false,false,2,xsd:unsignedInt
Device.WiFi.SSID.1.Enable,false,true,true,xsd:boolean
Device.WiFi.SSID.1.SSID,false,true,SimCPE,xsd:string
Device.WiFi.SSID.1.Status,false,false,Up,xsd:string
Device.WiFi.SSID.1.BSSID,false,false,02:CA:FE:00:00:01,xsd:string
Device.WiFi.SSID.2.Enable,false,true,false,xsd:boolean
Device.WiFi.SSID.2.SSID,false,true,SimCPE-Guest,xsd:string
Device.WiFi.SSID.2.Status,false,false,Down,xsd:string
Device.WiFi.SSID.2.BSSID,false,false,02:CA:FE:00:00:02,xsd:string
Device.WiFi.AccessPoint.1.Enable,false,true,true,xsd:boolean
Device.WiFi.AccessPoint.1.SSIDReference,false,true,Device.WiFi.SSID.1.,xsd:string
Device.WiFi.AccessPoint.1.Security.ModeEnabled,false,true,WPA2-Personal,xsd:string
Device.WiFi.AccessPoint.1.Security.KeyPassphrase,false,true,,xsd:string
Device.IP.InterfaceNumberOfEntries,false,false,1,xsd:unsignedInt
Device.IP.Interface.1.Enable,false,true,true,xsd:boolean
Device.IP.Interface.1.Name,false,false,wan0,xsd:string
Device.IP.Interface.1.Status,false,false,Up,xsd:string
Device.IP.Interface.1.IPv4Address.1.IPAddress,false,true,192.0.2.10,xsd:string
Device.IP.Interface.1.IPv4Address.1.SubnetMask,false,true,255.255.255.0,xsd:string
Device.Hosts.HostNumberOfEntries,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.DiagnosticsState,false,true,None,xsd:string
Device.IP.Diagnostics.IPPing.Interface,false,true,,xsd:string
Device.IP.Diagnostics.IPPing.ProtocolVersion,false,true,Any,xsd:string
Device.IP.Diagnostics.IPPing.Host,false,true,,xsd:string
Device.IP.Diagnostics.IPPing.NumberOfRepetitions,false,true,3,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.Timeout,false,true,1000,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.DataBlockSize,false,true,56,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.DSCP,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.IPAddressUsed,false,false,,xsd:string
Device.IP.Diagnostics.IPPing.SuccessCount,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.FailureCount,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.AverageResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.MinimumResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.MaximumResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.AverageResponseTimeDetailed,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.MinimumResponseTimeDetailed,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.IPPing.MaximumResponseTimeDetailed,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.DiagnosticsState,false,true,None,xsd:string
Device.IP.Diagnostics.TraceRoute.Interface,false,true,,xsd:string
Device.IP.Diagnostics.TraceRoute.ProtocolVersion,false,true,Any,xsd:string
Device.IP.Diagnostics.TraceRoute.Host,false,true,,xsd:string
Device.IP.Diagnostics.TraceRoute.NumberOfTries,false,true,3,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.Timeout,false,true,5000,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.DataBlockSize,false,true,38,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.DSCP,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.MaxHopCount,false,true,30,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.IPAddressUsed,false,false,,xsd:string
Device.IP.Diagnostics.TraceRoute.ResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.RouteHopsNumberOfEntries,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.RouteHops.1.Host,false,false,,xsd:string
Device.IP.Diagnostics.TraceRoute.RouteHops.1.HostAddress,false,false,,xsd:string
Device.IP.Diagnostics.TraceRoute.RouteHops.1.ErrorCode,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.TraceRoute.RouteHops.1.RTTimes,false,false,,xsd:string
Device.IP.Diagnostics.DownloadDiagnostics.DiagnosticsState,false,true,None,xsd:string
Device.IP.Diagnostics.DownloadDiagnostics.DownloadURL,false,true,,xsd:string
Device.IP.Diagnostics.DownloadDiagnostics.Interface,false,true,,xsd:string
Device.IP.Diagnostics.DownloadDiagnostics.DSCP,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.DownloadDiagnostics.EthernetPriority,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.DownloadDiagnostics.ProtocolVersion,false,true,Any,xsd:string
Device.IP.Diagnostics.DownloadDiagnostics.NumberOfConnections,false,true,1,xsd:unsignedInt
Device.IP.Diagnostics.DownloadDiagnostics.IPAddressUsed,false,false,,xsd:string
Device.IP.Diagnostics.DownloadDiagnostics.ROMTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.DownloadDiagnostics.BOMTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.DownloadDiagnostics.EOMTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.DownloadDiagnostics.TotalBytesReceived,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.DownloadDiagnostics.TotalBytesSent,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.DownloadDiagnostics.TCPOpenRequestTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.DownloadDiagnostics.TCPOpenResponseTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.DownloadDiagnostics.TestBytesReceived,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.DiagnosticsState,false,true,None,xsd:string
Device.IP.Diagnostics.UploadDiagnostics.UploadURL,false,true,,xsd:string
Device.IP.Diagnostics.UploadDiagnostics.TestFileLength,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.Interface,false,true,,xsd:string
Device.IP.Diagnostics.UploadDiagnostics.DSCP,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.EthernetPriority,false,true,0,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.ProtocolVersion,false,true,Any,xsd:string
Device.IP.Diagnostics.UploadDiagnostics.NumberOfConnections,false,true,1,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.IPAddressUsed,false,false,,xsd:string
Device.IP.Diagnostics.UploadDiagnostics.ROMTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.UploadDiagnostics.BOMTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.UploadDiagnostics.EOMTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.UploadDiagnostics.TotalBytesReceived,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.TotalBytesSent,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.UploadDiagnostics.TCPOpenRequestTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.UploadDiagnostics.TCPOpenResponseTime,false,false,0001-01-01T00:00:00Z,xsd:dateTime
Device.IP.Diagnostics.UploadDiagnostics.TestBytesSent,false,false,0,xsd:unsignedInt
Device.DNS.Diagnostics.NSLookupDiagnostics.DiagnosticsState,false,true,None,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Interface,false,true,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.HostName,false,true,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.DNSServer,false,true,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Timeout,false,true,1000,xsd:unsignedInt
Device.DNS.Diagnostics.NSLookupDiagnostics.NumberOfRepetitions,false,true,1,xsd:unsignedInt
Device.DNS.Diagnostics.NSLookupDiagnostics.SuccessCount,false,false,0,xsd:unsignedInt
Device.DNS.Diagnostics.NSLookupDiagnostics.ResultNumberOfEntries,false,false,0,xsd:unsignedInt
Device.DNS.Diagnostics.NSLookupDiagnostics.Result.1.Status,false,false,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Result.1.AnswerType,false,false,None,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Result.1.HostNameReturned,false,false,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Result.1.IPAddresses,false,false,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Result.1.DNSServerIP,false,false,,xsd:string
Device.DNS.Diagnostics.NSLookupDiagnostics.Result.1.ResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.ServerSelectionDiagnostics.DiagnosticsState,false,true,None,xsd:string
Device.IP.Diagnostics.ServerSelectionDiagnostics.Interface,false,true,,xsd:string
Device.IP.Diagnostics.ServerSelectionDiagnostics.ProtocolVersion,false,true,Any,xsd:string
Device.IP.Diagnostics.ServerSelectionDiagnostics.Protocol,false,true,ICMP,xsd:string
Device.IP.Diagnostics.ServerSelectionDiagnostics.HostList,false,true,,xsd:string
Device.IP.Diagnostics.ServerSelectionDiagnostics.NumberOfRepetitions,false,true,3,xsd:unsignedInt
Device.IP.Diagnostics.ServerSelectionDiagnostics.Timeout,false,true,1000,xsd:unsignedInt
Device.IP.Diagnostics.ServerSelectionDiagnostics.FastestHost,false,false,,xsd:string
Device.IP.Diagnostics.ServerSelectionDiagnostics.MinimumResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.ServerSelectionDiagnostics.AverageResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.ServerSelectionDiagnostics.MaximumResponseTime,false,false,0,xsd:unsignedInt
Device.IP.Diagnostics.ServerSelectionDiagnostics.IPAddressUsed,false,false,,xsd:string
"""

_builtin: Template | None = None


def builtin_template() -> Template:
    """The built-in TR-181 template (parsed once per process)."""
    global _builtin
    if _builtin is None:
        _builtin = parse_csv(BUILTIN_CSV, "built-in")
    return _builtin


def _is_password(name: str) -> bool:
    return name.endswith("Password") or name.endswith("KeyPassphrase")


class DeviceModel:
    """One device's view of a template: the template plus this device's differences.

    Every container is created on first use and stays ``None`` until then, which is what
    keeps an untouched device small. ``extra`` holds leaves and objects added by
    AddObject; ``deleted`` the instance paths removed by DeleteObject; ``attributes``
    notification/access-list changes by name (a partial path covers its subtree).
    """

    __slots__ = ("attributes", "deleted", "extra", "next_instance", "template", "values")

    def __init__(self, template: Template, values: dict[str, str] | None = None) -> None:
        self.template = template
        self.values = values or None
        self.extra: dict[str, Param | None] | None = None  # None marks an added object
        self.deleted: list[str] | None = None
        self.attributes: dict[str, tuple[int | None, tuple[str, ...] | None]] | None = None
        self.next_instance: dict[str, int] | None = None

    # -- reading ------------------------------------------------------------------------

    def _gone(self, name: str) -> bool:
        deleted = self.deleted
        return deleted is not None and any(name.startswith(p) for p in deleted)

    def param(self, name: str) -> Param | None:
        """The leaf ``name`` with this device's value, or None if there is no such leaf."""
        param = self.template.params.get(name)
        if param is None:
            extra = self.extra
            if extra is None:
                return None
            param = extra.get(name)
            if param is None:
                return None
        if self.deleted is not None and self._gone(name):
            return None
        if self.values is not None:
            value = self.values.get(name)
            if value is not None:
                return param._replace(value=value)
        return param

    def value(self, name: str, default: str = "") -> str:
        param = self.param(name)
        return default if param is None else param.value

    def read(self, name: str) -> Param | None:
        """As :meth:`param`, with passwords read back empty, as TR-069 makes CPEs do."""
        param = self.param(name)
        if param is not None and _is_password(name) and param.value:
            return param._replace(value="")
        return param

    def is_object(self, path: str) -> bool:
        """Whether ``path`` (ending with ".") is an object of this device ("" is the root).

        A standard multi-instance table the dump does not list (a dump shows no empty
        table) is one, when its parent object is: empty until AddObject fills it."""
        if path == "":
            return True
        if path in self.template.objects or (
            self.extra is not None and path in self.extra and self.extra[path] is None
        ):
            return not self._gone(path)
        return self._standard_table(path) is not None

    def _standard_table(self, path: str) -> str | None:
        """The generic path of ``path`` if it is a standard table whose parent object this
        device has."""
        parent = path[:-1].rpartition(".")[0] + "."
        if not path.endswith(".") or parent == "." or not self.is_object(parent):
            return None
        try:
            return standard_model().table(path)
        except DataModelError:
            return None

    def object_writable(self, path: str) -> bool:
        writable = self.template.objects.get(path)
        return bool(writable) or (self.extra is not None and path in self.extra)

    def _names(self, prefix: str) -> Iterator[str]:
        """Every name below ``prefix`` (objects with their dot), template order then added."""
        deleted = self.deleted
        for name in self.template.range(prefix):
            if deleted is None or not any(name.startswith(p) for p in deleted):
                yield name
        if self.extra is not None:
            for name in sorted(self.extra):
                if name.startswith(prefix) and not self._gone(name):
                    yield name

    def leaves(self, prefix: str) -> list[str]:
        """The leaf names below a partial path ("" for the whole tree)."""
        return [n for n in self._names(prefix) if not n.endswith(".")]

    def names(self, path: str, next_level: bool) -> list[tuple[str, bool]]:
        """GetParameterNames for an object path ("" or ending with "."): (name, writable).

        ``next_level``: only the immediate children; otherwise the path itself (unless it
        is the root) and everything below it.
        """
        result: list[tuple[str, bool]] = []
        if path == "" and next_level:
            return [(self.template.root + ".", False)]
        if path and not next_level:
            result.append((path, self.object_writable(path)))
        for name in self._names(path):
            if name == path:
                continue
            rest = name[len(path) :]
            if next_level:
                inner = rest[:-1] if rest.endswith(".") else rest
                if "." in inner:
                    continue
            if name.endswith("."):
                result.append((name, self.object_writable(name)))
            else:
                param = self.param(name)
                result.append((name, bool(param and param.writable)))
        return result

    # -- writing ------------------------------------------------------------------------

    def set(self, name: str, value: str) -> None:
        """Set a leaf's value (the caller has checked that it exists)."""
        if self.values is None:
            self.values = {}
        self.values[name] = value

    def instances(self, table: str) -> list[int]:
        """The instance numbers of a multi-instance object (``table`` ends with ".")."""
        numbers: set[int] = set()
        for name in self._names(table):
            head = name[len(table) :].split(".", 1)[0]
            if _INSTANCE_RE.fullmatch(head):
                numbers.add(int(head))
        return sorted(numbers)

    def is_table(self, path: str) -> bool:
        """Whether AddObject may create instances of ``path``: writable, or has instances."""
        return self.is_object(path) and (
            bool(self.template.objects.get(path))
            or bool(self.instances(path))
            or self._standard_table(path) is not None
        )

    def add_object(self, table: str) -> int:
        """A new instance of ``table``, shaped like its first instance, with default values."""
        existing = self.instances(table)
        if self.next_instance is None:
            self.next_instance = {}
        number = max(self.next_instance.get(table, 1), (existing[-1] + 1) if existing else 1)
        self.next_instance[table] = number + 1
        if self.extra is None:
            self.extra = {}
        new = f"{table}{number}."
        self.extra[new] = None
        model = f"{table}{existing[0]}." if existing else ""
        shape = [n for n in self.template.range(model) if n != model] if model else []
        if shape:
            for name in shape:
                clone = new + name[len(model) :]
                self.extra[clone] = None if name.endswith(".") else self.template.params[name]
            return number
        # No instance in the template to copy: the standard model's parameters, defaults.
        generic = self._standard_table(table)
        if generic is not None:
            prefix = generic + "{i}."
            for spec in standard_model().instance_parameters(generic):
                rest = spec.path[len(prefix) :]
                parts = rest.split(".")
                for i in range(1, len(parts)):
                    self.extra[new + ".".join(parts[:i]) + "."] = None
                self.extra[new + rest] = Param(
                    _DEFAULTS.get(spec.type, ""), spec.type, spec.writable
                )
        return number

    def delete_object(self, instance: str) -> None:
        """Remove an instance (``instance`` ends with "."): its subtree disappears."""
        if self.extra is not None:
            for name in [n for n in self.extra if n.startswith(instance)]:
                del self.extra[name]
        if self.values is not None:
            for name in [n for n in self.values if n.startswith(instance)]:
                del self.values[name]
        if self.attributes is not None:
            for name in [n for n in self.attributes if n.startswith(instance)]:
                del self.attributes[name]
        if any(n.startswith(instance) for n in self.template.range(instance)):
            if self.deleted is None:
                self.deleted = []
            self.deleted.append(instance)
        # Instance numbers are not reused (TR-069 A.3.2.6).
        table, _, number = instance[:-1].rpartition(".")
        if number.isdigit():
            if self.next_instance is None:
                self.next_instance = {}
            key = table + "."
            self.next_instance[key] = max(self.next_instance.get(key, 1), int(number) + 1)

    def attribute(self, name: str) -> tuple[int, tuple[str, ...]]:
        """(Notification, AccessList) of a leaf: each part from its own setting, else from
        its nearest object's, else from the template."""
        notification, access = self.template.attribute_default(name)
        attributes = self.attributes
        if attributes is None:
            return notification, access
        found_n: int | None = None
        found_a: tuple[str, ...] | None = None
        parts = name.split(".")
        keys = [name] + [".".join(parts[:i]) + "." for i in range(len(parts) - 1, 0, -1)]
        for key in keys:
            entry = attributes.get(key)
            if entry is None:
                continue
            if found_n is None:
                found_n = entry[0]
            if found_a is None:
                found_a = entry[1]
            if found_n is not None and found_a is not None:
                break
        return (
            notification if found_n is None else found_n,
            access if found_a is None else found_a,
        )

    def set_attribute(
        self,
        name: str,
        notification: int | None,
        access_list: tuple[str, ...] | None,
    ) -> None:
        """Change a leaf's or a subtree's attributes (None leaves that part as it is).

        A subtree setting replaces the same part set below it before, as if each leaf had
        been set; it is stored once, not per leaf.
        """
        if notification is None and access_list is None:
            return
        if self.attributes is None:
            self.attributes = {}
        attributes = self.attributes
        if name.endswith("."):
            for key in [k for k in attributes if k.startswith(name) and k != name]:
                n, a = attributes[key]
                n = None if notification is not None else n
                a = None if access_list is not None else a
                if n is None and a is None:
                    del attributes[key]
                else:
                    attributes[key] = (n, a)
        old_n, old_a = attributes.get(name, (None, None))
        attributes[name] = (
            old_n if notification is None else notification,
            old_a if access_list is None else access_list,
        )

    def reset(self, values: dict[str, str] | None) -> None:
        """Factory reset: back to the template, keeping only ``values`` (the device's own)."""
        self.values = values or None
        self.extra = None
        self.deleted = None
        self.attributes = None
        self.next_instance = None
