"""Derive cwmpgw/cwmp/datamodel.tsv: the data-model description the gateway checks
SetParameterValues (tasks and profiles) against.

It is DERIVED, not vendored: the Broadband Forum's TR-181 (Device:2) and TR-098
(InternetGatewayDevice:1) XML could not be obtained where this was built (no package on
PyPI ships them). The description is made from

* the two real parameter dumps in ``tests/data/cwmp/*.csv`` (a TP-Link EC220 on TR-181, a
  Huawei BM632w on TR-098): names, types and writability as those CPEs report them;
* the simulator's models (``cwmpgw.sim.datamodel.BUILTIN_CSV``, ``cwmpgw.sim.tr181``);
* the table below, written from the TR-181 2.x / TR-098 1.x parameter lists for the
  objects it names: the standard parameters and their ranges and sizes, and whether the
  object's list of children is complete ("closed").

Only the covered top-level objects are kept (``COVERED``); vendor extensions (any segment
starting with ``X_``) are left out, because they pass unchecked. A parameter is writable
if any source says so (refusing it would be wrong for that CPE); its type is the
standard table's. A parameter only the dumps or the simulator know is recorded as known
("seen": an unknown-name check under a closed object counts it) but its type and
writability are not enforced: they are what one CPE reports. The standard table was
checked against the Broadband Forum's TR-181 2.17 and TR-098 1.8 XML (types and access of
every entry; where the two differ, the table keeps the more permissive, e.g. Alias
read-write as older versions have it). Run ``python tools/derive_datamodel.py`` from
the repository root; the output is committed.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cwmpgw.cwmp import values  # noqa: E402
from cwmpgw.sim.datamodel import BUILTIN_CSV  # noqa: E402
from cwmpgw.sim.tr181 import large_tr181_csv  # noqa: E402

OUT = REPO / "cwmpgw" / "cwmp" / "datamodel.tsv"
DUMPS = sorted((REPO / "tests" / "data" / "cwmp").glob("*.csv"))

COVERED = {
    "Device": (
        "ManagementServer",
        "DeviceInfo",
        "Time",
        "WiFi",
        "IP",
        "Ethernet",
        "Hosts",
        "DHCPv4",
        "NAT",
        "Users",
        "UserInterface",
        "DNS",
        "Routing",
        "PPP",
    ),
    "InternetGatewayDevice": (
        "ManagementServer",
        "DeviceInfo",
        "Time",
        "LANDevice",
        "WANDevice",
        "User",
        "UserInterface",
        "Layer3Forwarding",
    ),
}
ROOT_PARAMETERS = {
    "Device.RootDataModelVersion",
    "Device.InterfaceStackNumberOfEntries",
    "InternetGatewayDevice.LANDeviceNumberOfEntries",
    "InternetGatewayDevice.WANDeviceNumberOfEntries",
    "InternetGatewayDevice.UserNumberOfEntries",
    "InternetGatewayDevice.DeviceSummary",
}

# The standard table: "Name type access" per line (rw/ro; type as TR-106 writes it, with
# [low:high] for a numeric range); "Object. closed" marks an object whose children are all
# listed (here, plus what the dumps have). {i} is a multi-instance object's instance.
_MS = """
ManagementServer. closed
ManagementServer.EnableCWMP boolean rw
ManagementServer.URL string(256) rw
ManagementServer.Username string(256) rw
ManagementServer.Password string(256) rw
ManagementServer.ScheduleReboot dateTime rw
ManagementServer.DelayReboot int[-1:] rw
ManagementServer.PeriodicInformEnable boolean rw
ManagementServer.PeriodicInformInterval unsignedInt[1:] rw
ManagementServer.PeriodicInformTime dateTime rw
ManagementServer.ParameterKey string(32) ro
ManagementServer.ConnectionRequestURL string(256) ro
ManagementServer.ConnectionRequestUsername string(256) rw
ManagementServer.ConnectionRequestPassword string(256) rw
ManagementServer.UpgradesManaged boolean rw
ManagementServer.KickURL string(256) ro
ManagementServer.DownloadProgressURL string(256) ro
ManagementServer.DefaultActiveNotificationThrottle unsignedInt rw
ManagementServer.CWMPRetryMinimumWaitInterval unsignedInt[1:65535] rw
ManagementServer.CWMPRetryIntervalMultiplier unsignedInt[1000:65535] rw
ManagementServer.HTTPConnectionRequestEnable boolean rw
ManagementServer.UDPConnectionRequestAddress string(256) ro
ManagementServer.UDPConnectionRequestAddressNotificationLimit unsignedInt rw
ManagementServer.STUNEnable boolean rw
ManagementServer.STUNServerAddress string(256) rw
ManagementServer.STUNServerPort unsignedInt[0:65535] rw
ManagementServer.STUNUsername string(256) rw
ManagementServer.STUNPassword string(256) rw
ManagementServer.STUNMaximumKeepAlivePeriod int[-1:] rw
ManagementServer.STUNMinimumKeepAlivePeriod unsignedInt rw
ManagementServer.NATDetected boolean ro
ManagementServer.AliasBasedAddressing boolean ro
ManagementServer.InstanceMode string rw
ManagementServer.AutoCreateInstances boolean rw
ManagementServer.ManageableDeviceNumberOfEntries unsignedInt ro
ManagementServer.ManageableDeviceNotificationLimit unsignedInt rw
ManagementServer.EmbeddedDeviceNumberOfEntries unsignedInt ro
ManagementServer.VirtualDeviceNumberOfEntries unsignedInt ro
ManagementServer.LightweightNotificationProtocolsSupported string ro
ManagementServer.LightweightNotificationProtocolsUsed string rw
ManagementServer.UDPLightweightNotificationHost string(256) rw
ManagementServer.UDPLightweightNotificationPort unsignedInt rw
ManagementServer.InstanceWildcardsSupported boolean ro
ManagementServer.SupportedConnReqMethods string ro
ManagementServer.ConnReqXMPPConnection string(256) rw
ManagementServer.ConnReqAllowedJabberIDs string(32768) rw
ManagementServer.ConnReqJabberID string(256) ro
ManagementServer.HTTPCompressionSupported string ro
ManagementServer.HTTPCompression string rw
ManagementServer.InformParameterNumberOfEntries unsignedInt ro
ManagementServer.ManageableDevice.{i}. open
ManagementServer.EmbeddedDevice.{i}. open
ManagementServer.VirtualDevice.{i}. open
ManagementServer.InformParameter.{i}. open
ManagementServer.AutonomousTransferCompletePolicy. open
ManagementServer.DUStateChangeComplPolicy. open
ManagementServer.HeartbeatPolicy. open
ManagementServer.DownloadAvailability. open
ManagementServer.StandbyPolicy. open
Time. closed
Time.Enable boolean rw
Time.Status string ro
Time.NTPServer1 string(64) rw
Time.NTPServer2 string(64) rw
Time.NTPServer3 string(64) rw
Time.NTPServer4 string(64) rw
Time.NTPServer5 string(64) rw
Time.CurrentLocalTime dateTime ro
Time.LocalTimeZone string(256) rw
Time.LocalTimeZoneName string(64) rw
Time.DaylightSavingsUsed boolean rw
Time.DaylightSavingsStart dateTime rw
Time.DaylightSavingsEnd dateTime rw
Time.Client.{i}. open
Time.Server.{i}. open
UserInterface.PasswordRequired boolean rw
UserInterface.PasswordUserSelectable boolean rw
UserInterface.UpgradeAvailable boolean rw
UserInterface.WarrantyDate dateTime rw
UserInterface.ISPName string(64) rw
UserInterface.ISPHelpDesk string(32) rw
UserInterface.ISPHomePage string(256) rw
UserInterface.ISPHelpPage string(256) rw
UserInterface.ISPMailServer string(256) rw
UserInterface.ISPNewsServer string(256) rw
UserInterface.AvailableLanguages string(256) ro
UserInterface.CurrentLanguage string(16) rw
DeviceInfo.Manufacturer string(64) ro
DeviceInfo.ManufacturerOUI string(6) ro
DeviceInfo.ModelName string(64) ro
DeviceInfo.Description string(256) ro
DeviceInfo.ProductClass string(64) ro
DeviceInfo.SerialNumber string(64) ro
DeviceInfo.HardwareVersion string(64) ro
DeviceInfo.SoftwareVersion string(64) ro
DeviceInfo.ProvisioningCode string(64) rw
DeviceInfo.UpTime unsignedInt ro
"""
_TR181 = """
WiFi.SSID.{i}. closed
WiFi.SSID.{i}.Enable boolean rw
WiFi.SSID.{i}.Status string ro
WiFi.SSID.{i}.Alias string(64) rw
WiFi.SSID.{i}.Name string(64) ro
WiFi.SSID.{i}.LastChange unsignedInt ro
WiFi.SSID.{i}.LowerLayers string(1024) rw
WiFi.SSID.{i}.BSSID string(17) ro
WiFi.SSID.{i}.MACAddress string(17) ro
WiFi.SSID.{i}.SSID string(32) rw
WiFi.SSID.{i}.Upstream boolean ro
WiFi.SSID.{i}.MLDUnit int[-1:] rw
WiFi.SSID.{i}.Stats. open
WiFi.Radio.{i}.Enable boolean rw
WiFi.Radio.{i}.Channel unsignedInt[1:255] rw
WiFi.Radio.{i}.AutoChannelEnable boolean rw
WiFi.Radio.{i}.TransmitPower int[-1:100] rw
WiFi.AccessPoint.{i}.Enable boolean rw
WiFi.AccessPoint.{i}.SSIDReference string(256) rw
WiFi.AccessPoint.{i}.SSIDAdvertisementEnabled boolean rw
WiFi.AccessPoint.{i}.Security.ModeEnabled string rw
WiFi.AccessPoint.{i}.Security.KeyPassphrase string(63) rw
WiFi.AccessPoint.{i}.Security.PreSharedKey hexBinary(32) rw
Users.UserNumberOfEntries unsignedInt ro
Users.User.{i}. open
Users.User.{i}.Enable boolean rw
Users.User.{i}.Alias string(64) rw
Users.User.{i}.RemoteAccessCapable boolean rw
Users.User.{i}.Username string(64) rw
Users.User.{i}.Password string(64) rw
Users.User.{i}.Language string(16) rw
UserInterface.Enable boolean rw
UserInterface.RemoteAccess.Enable boolean rw
UserInterface.RemoteAccess.Port unsignedInt[0:65535] rw
UserInterface.RemoteAccess.Protocol string rw
NAT.PortMapping.{i}. closed
NAT.PortMapping.{i}.Enable boolean rw
NAT.PortMapping.{i}.Status string ro
NAT.PortMapping.{i}.Alias string(64) rw
NAT.PortMapping.{i}.Interface string(256) rw
NAT.PortMapping.{i}.AllInterfaces boolean rw
NAT.PortMapping.{i}.LeaseDuration unsignedInt rw
NAT.PortMapping.{i}.RemoteHost string(45) rw
NAT.PortMapping.{i}.ExternalPort unsignedInt[0:65535] rw
NAT.PortMapping.{i}.ExternalPortEndRange unsignedInt[0:65535] rw
NAT.PortMapping.{i}.InternalPort unsignedInt[0:65535] rw
NAT.PortMapping.{i}.Protocol string rw
NAT.PortMapping.{i}.InternalClient string(256) rw
NAT.PortMapping.{i}.Description string(256) rw
NAT.PortMappingNumberOfEntries unsignedInt ro
DHCPv4.Server.Enable boolean rw
DHCPv4.Server.Pool.{i}.Enable boolean rw
DHCPv4.Server.Pool.{i}.MinAddress string(45) rw
DHCPv4.Server.Pool.{i}.MaxAddress string(45) rw
DHCPv4.Server.Pool.{i}.SubnetMask string(45) rw
DHCPv4.Server.Pool.{i}.LeaseTime int[-1:] rw
DHCPv4.Server.Pool.{i}.DNSServers string(256) rw
"""
_TR098 = """
User.{i}. closed
User.{i}.Enable boolean rw
User.{i}.RemoteAccessCapable boolean rw
User.{i}.Username string(64) rw
User.{i}.Password string(64) rw
User.{i}.Language string(16) rw
LANDevice.{i}.WLANConfiguration.{i}.Enable boolean rw
LANDevice.{i}.WLANConfiguration.{i}.SSID string(32) rw
LANDevice.{i}.WLANConfiguration.{i}.Channel unsignedInt[0:255] rw
LANDevice.{i}.WLANConfiguration.{i}.AutoChannelEnable boolean rw
LANDevice.{i}.WLANConfiguration.{i}.BeaconType string rw
LANDevice.{i}.WLANConfiguration.{i}.SSIDAdvertisementEnabled boolean rw
LANDevice.{i}.WLANConfiguration.{i}.KeyPassphrase string(63) rw
LANDevice.{i}.WLANConfiguration.{i}.BSSID string ro
LANDevice.{i}.WLANConfiguration.{i}.Status string ro
LANDevice.{i}.WLANConfiguration.{i}.PreSharedKey.{i}.KeyPassphrase string(63) rw
LANDevice.{i}.WLANConfiguration.{i}.PreSharedKey.{i}.PreSharedKey string(64) rw
LANDevice.{i}.LANHostConfigManagement.DHCPServerEnable boolean rw
LANDevice.{i}.LANHostConfigManagement.MinAddress string rw
LANDevice.{i}.LANHostConfigManagement.MaxAddress string rw
LANDevice.{i}.LANHostConfigManagement.SubnetMask string rw
LANDevice.{i}.LANHostConfigManagement.DNSServers string(64) rw
LANDevice.{i}.LANHostConfigManagement.DHCPLeaseTime int[-1:] rw
@PM. closed
@PM.PortMappingEnabled boolean rw
@PM.PortMappingLeaseDuration unsignedInt rw
@PM.RemoteHost string rw
@PM.ExternalPort unsignedInt[0:65535] rw
@PM.ExternalPortEndRange unsignedInt[0:65535] rw
@PM.InternalPort unsignedInt[0:65535] rw
@PM.PortMappingProtocol string rw
@PM.InternalClient string(256) rw
@PM.PortMappingDescription string(256) rw
@PM.Alias string(64) rw
"""
_PM = "WANDevice.{i}.WANConnectionDevice.{i}.WANIPConnection.{i}.PortMapping.{i}"
STANDARD = {
    "Device": _MS + _TR181,
    "InternetGatewayDevice": _MS + _TR098.replace("@PM", _PM),
}

_INSTANCE = re.compile(r"^[0-9]+$")


def generic(name: str) -> str:
    return ".".join("{i}" if _INSTANCE.match(s) else s for s in name.split("."))


def covered(name: str) -> bool:
    root, _, rest = name.partition(".")
    if root not in COVERED or any(s.startswith("X_") for s in name.split(".")):
        return False
    return name in ROOT_PARAMETERS or (rest.split(".", 1)[0] in COVERED[root] and "." in rest)


def main() -> None:
    objects: dict[str, str] = {}  # path. -> closed/open
    params: dict[str, list[str]] = {}  # name -> [type, access]
    for root, table in STANDARD.items():
        for line in table.strip().splitlines():
            parts = line.split()
            if not parts:
                continue
            name = f"{root}.{parts[0]}"
            if name.endswith("."):
                objects[name] = parts[1]
            else:
                params[name] = [parts[1], parts[2]]
    sources = [(p.name, p.read_text(encoding="utf-8")) for p in DUMPS]
    sources += [("sim builtin", BUILTIN_CSV), ("sim tr181", large_tr181_csv(2000))]
    for _, text in sources:
        for row in csv.DictReader(io.StringIO(text)):
            name = generic(row["Parameter"])
            if not covered(name):
                continue
            if row["Object"] == "true":
                objects.setdefault(name + ".", "open")
                continue
            type_ = row.get("Value type") or "xsd:string"
            canonical = values.normalise_type(type_)[0].partition(":")[2]
            if name not in params:
                # Known to exist, but what one CPE reports of its type and writability is
                # not the standard's: never enforced ("seen"), or a CPE that follows the
                # standard would be refused what another CPE's firmware got wrong.
                params[name] = [canonical, "seen"]
    for name in list(params):  # every ancestor object is known
        parts = name.split(".")[:-1]
        for i in range(2, len(parts) + 1):
            objects.setdefault(".".join(parts[:i]) + ".", "open")
    lines = [
        "# cwmpgw data-model description: DERIVED, not the Broadband Forum's XML.",
        "# Made by tools/derive_datamodel.py from two real CPE dumps, the simulator's models",
        "# and a table of standard TR-181 2.x / TR-098 1.x parameters; see that script.",
        "# path<TAB>type<TAB>access: rw, ro, or seen (exists; not enforced)",
        "# (objects: path.<TAB>object<TAB>closed|open)",
    ]
    for name in sorted(set(objects) | set(params)):
        if name in objects:
            lines.append(f"{name}\tobject\t{objects[name]}")
        else:
            lines.append(f"{name}\t{params[name][0]}\t{params[name][1]}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(objects)} objects, {len(params)} parameters")


if __name__ == "__main__":
    main()
