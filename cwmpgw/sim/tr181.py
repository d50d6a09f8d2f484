"""A large, realistic TR-181 (Device:2) data model, generated at any size.

Real home gateways answer ``GetParameterNames("Device.", false)`` with thousands of
parameters: most of them are rows of tables that grow with the household (hosts seen on
the LAN, Wi-Fi stations, DHCP leases, port mappings, routes). :func:`large_tr181` builds
such a tree with a fixed part (DeviceInfo with its processes and temperature sensors,
ManagementServer, Time, Ethernet, Wi-Fi radios, SSIDs and access points, IP interfaces
with their addresses, DHCP, DNS, firewall) and then adds hosts, each with what a host
brings along, until the tree has the parameters asked for. Values have the types and
shapes of a real dump (MAC and IP addresses, counters, dBm, date-times), drawn from a
seeded generator, so a model is the same on every run.

Nothing is committed as a file: a 50,000-parameter model is 4 MB of CSV, and generating
it takes about a second.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Callable
from typing import Final

from cwmpgw.sim.datamodel import BUILTIN_CSV, Template, parse_csv

__all__ = ["large_tr181", "large_tr181_csv"]

_S, _B, _U, _I, _L, _T = (
    "xsd:string",
    "xsd:boolean",
    "xsd:unsignedInt",
    "xsd:int",
    "xsd:unsignedLong",
    "xsd:dateTime",
)
_RADIOS: Final = 2
_SSIDS: Final = 8  # four per radio: main, guest, IoT, mesh backhaul
_PROCESSES: Final = 40
_ETHERNET: Final = 5  # one WAN port, four LAN ports

Row = tuple[str, bool, str, str]  # name, writable, value, type


class _Rows:
    def __init__(self, rng: random.Random) -> None:
        self.rows: list[Row] = []
        self.rng = rng

    def add(self, name: str, value: object, type_: str = _S, writable: bool = False) -> None:
        if isinstance(value, bool):
            value = "true" if value else "false"
        self.rows.append((name, writable, str(value), type_))

    # realistic values

    def mac(self, prefix: str) -> str:
        """``prefix`` (three octets, an OUI) and three random octets."""
        return prefix + "".join(f":{self.rng.randrange(256):02X}" for _ in range(3))

    def counter(self, high: int = 10**9) -> int:
        return self.rng.randrange(high)

    def when(self) -> str:
        day, second = self.rng.randrange(1, 29), self.rng.randrange(86400)
        return f"2026-11-{day:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z"


def _stats(r: _Rows, prefix: str) -> None:
    for name in (
        "BytesSent",
        "BytesReceived",
        "PacketsSent",
        "PacketsReceived",
        "ErrorsSent",
        "ErrorsReceived",
        "DiscardPacketsSent",
        "DiscardPacketsReceived",
        "BroadcastPacketsSent",
        "BroadcastPacketsReceived",
    ):
        big = name.startswith(("Bytes", "Packets"))
        r.add(prefix + "Stats." + name, r.counter(10**12 if big else 1000), _L)


def _fixed(r: _Rows) -> dict[str, int]:
    """The part every gateway has; returns the instance counts of its tables."""
    builtin = csv.DictReader(io.StringIO(BUILTIN_CSV))
    skip = ("DeviceID.", "Device.WiFi.", "Device.IP.", "Device.Hosts.")
    for row in builtin:
        name = row["Parameter"]
        if not name.startswith(skip):
            r.add(name, row["Value"], row["Value type"], row["Writable"] == "true")
    info = "Device.DeviceInfo."
    r.add(info + "ModelNumber", "SIM-XL-5000")
    r.add(info + "FirstUseDate", "2026-01-15T09:30:00Z", _T)
    r.add(info + "AdditionalHardwareVersion", "rev.B")
    r.add(info + "AdditionalSoftwareVersion", "bootloader 2024.10")
    r.add(info + "MemoryStatus.Total", 1048576, _U)
    r.add(info + "MemoryStatus.Free", r.rng.randrange(200000, 600000), _U)
    r.add(info + "ProcessStatus.CPUUsage", r.rng.randrange(100), _U)
    r.add(info + "ProcessStatus.ProcessNumberOfEntries", _PROCESSES, _U)
    for i in range(1, _PROCESSES + 1):
        p = f"{info}ProcessStatus.Process.{i}."
        r.add(p + "PID", 100 + 7 * i, _U)
        r.add(p + "Command", r.rng.choice(["dnsmasq", "hostapd", "dropbear", "odhcpd", "cwmpd"]))
        r.add(p + "Size", r.rng.randrange(200, 20000), _U)
        r.add(p + "Priority", r.rng.randrange(40), _U)
        r.add(p + "CPUTime", r.counter(10**7), _U)
        r.add(p + "State", r.rng.choice(["Running", "Sleeping", "Idle"]))
    r.add(info + "TemperatureStatus.TemperatureSensorNumberOfEntries", 3, _U)
    for i, sensor in enumerate(("CPU", "WiFi 2.4GHz", "WiFi 5GHz"), 1):
        p = f"{info}TemperatureStatus.TemperatureSensor.{i}."
        r.add(p + "Enable", True, _B, True)
        r.add(p + "Status", "Enabled")
        r.add(p + "Name", sensor)
        r.add(p + "Value", r.rng.randrange(38, 71), _I)
        r.add(p + "LastUpdate", r.when(), _T)
        r.add(p + "MaxValue", 85, _I)
    r.add("Device.Time.CurrentLocalTime", r.when(), _T)
    r.add("Device.Time.NTPServer2", "time.google.com", _S, True)
    r.add("Device.Ethernet.InterfaceNumberOfEntries", _ETHERNET, _U)
    for i in range(1, _ETHERNET + 1):
        p = f"Device.Ethernet.Interface.{i}."
        r.add(p + "Enable", True, _B, True)
        r.add(p + "Status", "Up" if i < 4 else "Down")
        r.add(p + "Name", "wan" if i == 1 else f"lan{i - 1}")
        r.add(p + "Upstream", i == 1, _B)
        r.add(p + "MACAddress", r.mac("02:CA:FE"))
        r.add(p + "MaxBitRate", 1000, _I, True)
        r.add(p + "CurrentBitRate", 1000 if i < 4 else 0, _U)
        r.add(p + "DuplexMode", "Full", _S, True)
        _stats(r, p)
    r.add("Device.WiFi.RadioNumberOfEntries", _RADIOS, _U)
    for i in range(1, _RADIOS + 1):
        p = f"Device.WiFi.Radio.{i}."
        band = "2.4GHz" if i == 1 else "5GHz"
        r.add(p + "Enable", True, _B, True)
        r.add(p + "Status", "Up")
        r.add(p + "Name", f"wifi{i - 1}")
        r.add(p + "OperatingFrequencyBand", band, _S, True)
        r.add(p + "SupportedStandards", "b,g,n,ax" if i == 1 else "a,n,ac,ax")
        r.add(p + "OperatingStandards", "ax", _S, True)
        r.add(p + "Channel", 6 if i == 1 else 36, _U, True)
        r.add(p + "AutoChannelEnable", True, _B, True)
        r.add(p + "OperatingChannelBandwidth", "20MHz" if i == 1 else "80MHz", _S, True)
        r.add(p + "TransmitPower", 100, _I, True)
        r.add(p + "RegulatoryDomain", "DE ", _S, True)
        _stats(r, p)
    r.add("Device.WiFi.SSIDNumberOfEntries", _SSIDS, _U)
    r.add("Device.WiFi.AccessPointNumberOfEntries", _SSIDS, _U)
    for i in range(1, _SSIDS + 1):
        p = f"Device.WiFi.SSID.{i}."
        radio = 1 + (i - 1) % _RADIOS
        kind = ("", "-Guest", "-IoT", "-Mesh")[(i - 1) // _RADIOS]
        r.add(p + "Enable", i <= 4, _B, True)
        r.add(p + "Status", "Up" if i <= 4 else "Down")
        r.add(p + "Alias", f"cpe-ssid-{i}", _S, True)
        r.add(p + "Name", f"wl{radio - 1}.{(i - 1) // _RADIOS}")
        r.add(p + "LowerLayers", f"Device.WiFi.Radio.{radio}.")
        r.add(p + "BSSID", f"02:CA:FE:00:{radio:02X}:{i:02X}")
        r.add(p + "MACAddress", f"02:CA:FE:00:{radio:02X}:{i:02X}")
        r.add(p + "SSID", f"SimCPE{kind}", _S, True)
        _stats(r, p)
        p = f"Device.WiFi.AccessPoint.{i}."
        r.add(p + "Enable", i <= 4, _B, True)
        r.add(p + "Status", "Enabled" if i <= 4 else "Disabled")
        r.add(p + "SSIDReference", f"Device.WiFi.SSID.{i}.", _S, True)
        r.add(p + "SSIDAdvertisementEnabled", True, _B, True)
        r.add(p + "WMMEnable", True, _B, True)
        r.add(p + "MaxAssociatedDevices", 64, _U, True)
        r.add(p + "IsolationEnable", "Guest" in kind, _B, True)
        r.add(p + "Security.ModesSupported", "None,WPA2-Personal,WPA3-Personal")
        r.add(p + "Security.ModeEnabled", "WPA2-Personal", _S, True)
        r.add(p + "Security.KeyPassphrase", "", _S, True)
        r.add(p + "Security.RekeyingInterval", 3600, _U, True)
        r.add(p + "WPS.Enable", False, _B, True)
    r.add("Device.IP.IPv4Enable", True, _B, True)
    r.add("Device.IP.IPv6Enable", True, _B, True)
    r.add("Device.IP.InterfaceNumberOfEntries", 3, _U)
    for i, (name, address) in enumerate(
        (("wan0", "192.0.2.10"), ("br-lan", "192.168.1.1"), ("br-guest", "192.168.2.1")), 1
    ):
        p = f"Device.IP.Interface.{i}."
        r.add(p + "Enable", True, _B, True)
        r.add(p + "Status", "Up")
        r.add(p + "Name", name)
        r.add(p + "Type", "Normal")
        r.add(p + "MaxMTUSize", 1500, _U, True)
        r.add(p + "LastChange", r.counter(10**6), _U)
        r.add(p + "IPv4AddressNumberOfEntries", 2, _U)
        for j in (1, 2):
            a = f"{p}IPv4Address.{j}."
            r.add(a + "Enable", True, _B, True)
            r.add(a + "Status", "Enabled")
            r.add(a + "IPAddress", address if j == 1 else f"10.{i}.0.1", _S, True)
            r.add(a + "SubnetMask", "255.255.255.0", _S, True)
            r.add(a + "AddressingType", "DHCP" if i == 1 else "Static")
        r.add(p + "IPv6AddressNumberOfEntries", 1, _U)
        a = f"{p}IPv6Address.1."
        r.add(a + "Enable", True, _B, True)
        r.add(a + "IPAddress", f"2001:db8:{i}::1", _S, True)
        r.add(a + "Origin", "AutoConfigured")
        r.add(a + "PreferredLifetime", r.when(), _T)
        _stats(r, p)
    pool = "Device.DHCPv4.Server.Pool.1."
    r.add("Device.DHCPv4.Server.Enable", True, _B, True)
    r.add(pool + "Enable", True, _B, True)
    r.add(pool + "Interface", "Device.IP.Interface.2.", _S, True)
    r.add(pool + "MinAddress", "192.168.1.100", _S, True)
    r.add(pool + "MaxAddress", "192.168.1.249", _S, True)
    r.add(pool + "SubnetMask", "255.255.255.0", _S, True)
    r.add(pool + "DNSServers", "192.168.1.1", _S, True)
    r.add(pool + "LeaseTime", 86400, _I, True)
    r.add("Device.DNS.Client.ServerNumberOfEntries", 2, _U)
    for i, server in enumerate(("192.0.2.53", "198.51.100.53"), 1):
        r.add(f"Device.DNS.Client.Server.{i}.DNSServer", server, _S, True)
        r.add(f"Device.DNS.Client.Server.{i}.Type", "DHCPv4")
    r.add("Device.Firewall.Enable", True, _B, True)
    r.add("Device.Firewall.Config", "Advanced", _S, True)
    r.add("Device.Firewall.Type", "Stateful")
    return {"ssids": _SSIDS}


def _host(r: _Rows, i: int, counts: dict[str, int]) -> None:
    """One device of the household: its Hosts entry, DHCP lease, maybe a Wi-Fi station,
    a port mapping or a route."""
    rng = r.rng
    mac = r.mac("5C:CF:7F")
    ip = f"192.168.{1 + i // 250}.{2 + i % 250}"
    wireless = i % 3 != 0
    p = f"Device.Hosts.Host.{i}."
    r.add(p + "Alias", f"cpe-host-{i}", _S, True)
    r.add(p + "PhysAddress", mac)
    r.add(p + "IPAddress", ip)
    r.add(p + "AddressSource", "DHCP")
    r.add(p + "DHCPClient", f"Device.DHCPv4.Server.Pool.1.Client.{i}.")
    r.add(p + "LeaseTimeRemaining", rng.randrange(86400), _I)
    r.add(p + "AssociatedDevice", "")
    r.add(
        p + "Layer1Interface", "Device.WiFi.SSID.1." if wireless else "Device.Ethernet.Interface.2."
    )
    r.add(p + "Layer3Interface", "Device.IP.Interface.2.")
    r.add(
        p + "HostName",
        rng.choice(["android", "iphone", "laptop", "tv", "printer", "cam"]) + f"-{i}",
    )
    r.add(p + "Active", rng.random() < 0.6, _B)
    r.add(p + "ActiveLastChange", r.when(), _T)
    r.add(p + "IPv4AddressNumberOfEntries", 1, _U)
    r.add(p + "IPv4Address.1.IPAddress", ip)
    r.add(p + "IPv6AddressNumberOfEntries", 1, _U)
    r.add(p + "IPv6Address.1.IPAddress", f"2001:db8:2::{i:x}")
    c = f"Device.DHCPv4.Server.Pool.1.Client.{i}."
    r.add(c + "Alias", f"cpe-lease-{i}", _S, True)
    r.add(c + "Chaddr", mac)
    r.add(c + "Active", True, _B)
    r.add(c + "IPv4AddressNumberOfEntries", 1, _U)
    r.add(c + "IPv4Address.1.IPAddress", ip)
    r.add(c + "IPv4Address.1.LeaseTimeRemaining", r.when(), _T)
    if wireless:
        ap = 1 + i % 4
        counts[f"ap{ap}"] = n = counts.get(f"ap{ap}", 0) + 1
        a = f"Device.WiFi.AccessPoint.{ap}.AssociatedDevice.{n}."
        r.add(a + "MACAddress", mac)
        r.add(a + "AuthenticationState", True, _B)
        r.add(a + "LastDataDownlinkRate", rng.randrange(6000, 1200000), _U)
        r.add(a + "LastDataUplinkRate", rng.randrange(6000, 600000), _U)
        r.add(a + "SignalStrength", -rng.randrange(30, 90), _I)
        r.add(a + "Noise", -rng.randrange(90, 100), _I)
        r.add(a + "Retransmissions", rng.randrange(100), _U)
        r.add(a + "Active", True, _B)
        r.add(a + "OperatingStandard", rng.choice(["n", "ac", "ax"]))
        r.add(a + "Stats.BytesSent", r.counter(10**10), _L)
        r.add(a + "Stats.BytesReceived", r.counter(10**10), _L)
        r.add(a + "Stats.PacketsSent", r.counter(10**8), _L)
        r.add(a + "Stats.PacketsReceived", r.counter(10**8), _L)
    if i % 10 == 0:
        counts["nat"] = n = counts.get("nat", 0) + 1
        m = f"Device.NAT.PortMapping.{n}."
        port = 10000 + n
        r.add(m + "Enable", True, _B, True)
        r.add(m + "Status", "Enabled")
        r.add(m + "Alias", f"cpe-map-{n}", _S, True)
        r.add(m + "Interface", "Device.IP.Interface.1.", _S, True)
        r.add(m + "AllInterfaces", False, _B, True)
        r.add(m + "LeaseDuration", 0, _U, True)
        r.add(m + "RemoteHost", "", _S, True)
        r.add(m + "ExternalPort", port, _U, True)
        r.add(m + "InternalPort", port, _U, True)
        r.add(m + "Protocol", rng.choice(["TCP", "UDP"]), _S, True)
        r.add(m + "InternalClient", ip, _S, True)
        r.add(m + "Description", f"upnp {port}", _S, True)
    if i % 25 == 0:
        counts["route"] = n = counts.get("route", 0) + 1
        f = f"Device.Routing.Router.1.IPv4Forwarding.{n}."
        r.add(f + "Enable", True, _B, True)
        r.add(f + "Status", "Enabled")
        r.add(f + "StaticRoute", True, _B)
        r.add(f + "DestIPAddress", f"10.{n // 256 % 256}.{n % 256}.0", _S, True)
        r.add(f + "DestSubnetMask", "255.255.255.0", _S, True)
        r.add(f + "GatewayIPAddress", ip, _S, True)
        r.add(f + "Interface", "Device.IP.Interface.2.", _S, True)
        r.add(f + "Origin", "Static")
        r.add(f + "ForwardingMetric", rng.randrange(1, 10), _I, True)


def large_tr181_csv(parameters: int = 10_000, *, seed: int = 1) -> str:
    """The CSV (genieacs-sim format) of a TR-181 tree of about ``parameters`` leaves.

    The tree has at least ``parameters`` leaves and never more than one host's worth
    (under 60) beyond that; below about 800 it is the fixed part alone.
    """
    r = _Rows(random.Random(seed))
    _fixed(r)
    counts: dict[str, int] = {}
    hosts = 0
    # The table sizes go in before the tables: room for their rows is kept now.
    sizes = 6
    while len(r.rows) + sizes < parameters:
        hosts += 1
        _host(r, hosts, counts)
    entries: list[tuple[str, int]] = [
        ("Device.Hosts.HostNumberOfEntries", hosts),
        ("Device.DHCPv4.Server.Pool.1.ClientNumberOfEntries", hosts),
        ("Device.NAT.PortMappingNumberOfEntries", counts.get("nat", 0)),
        ("Device.Routing.Router.1.IPv4ForwardingNumberOfEntries", counts.get("route", 0)),
    ]
    entries += [
        (f"Device.WiFi.AccessPoint.{ap}.AssociatedDeviceNumberOfEntries", counts.get(f"ap{ap}", 0))
        for ap in range(1, 5)
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["Parameter", "Object", "Writable", "Value", "Value type"])
    identity: list[tuple[str, str]] = [
        ("Manufacturer", "cwmpgw"),
        ("OUI", "00CAFE"),
        ("ProductClass", "SimCPE-XL"),
        ("SerialNumber", "SIM000000"),
    ]
    for key, value in identity:
        writer.writerow([f"DeviceID.{key}", "false", "false", value, _S])
    put: Callable[[list[str]], object] = writer.writerow
    for name, count in entries:
        put([name, "false", "false", str(count), _U])
    for name, writable, value, type_ in r.rows:
        put([name, "false", "true" if writable else "false", value, type_])
    return out.getvalue()


def large_tr181(parameters: int = 10_000, *, seed: int = 1) -> Template:
    """A template of about ``parameters`` leaves (see :func:`large_tr181_csv`)."""
    if parameters < 1:
        raise ValueError("parameters must be at least 1")
    return parse_csv(large_tr181_csv(parameters, seed=seed), f"large TR-181 ({parameters})")
