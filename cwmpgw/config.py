"""The gateway's configuration: a TOML file turned into frozen dataclasses.

The file is the source of truth; the command line only overrides a few keys. Every problem
is collected and reported at once as ``<key.path>: <message>`` (as Buildbot and Synapse do),
so an operator fixes a file in one pass instead of one error per start. Unknown sections
and keys are errors too: a typo must not silently fall back to a default.

Each section dataclass is the schema: a field whose metadata holds a ``check`` is a TOML key,
its default is the key's default. Paths are made absolute at load time, relative to the
current directory, so a later ``chdir`` (twistd ``--rundir``) cannot move them.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import date, datetime, time
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

__all__ = [
    "AcsConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConnreqConfig",
    "DiagnosticsConfig",
    "EventsConfig",
    "FilesConfig",
    "FleetConfig",
    "GatewayConfig",
    "MetricsConfig",
    "NbiConfig",
    "ProvisionConfig",
    "RedisConfig",
    "RedisTarget",
    "TasksConfig",
    "default_config",
    "load_config",
    "parse_config",
]

_T = TypeVar("_T")


class ConfigError(Exception):
    """Every problem found in a configuration, each as ``<key.path>: <message>``."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__(*self.errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


class _Invalid(Exception):
    """A value failed its check; the message is reported after the key's path."""


_Check = Callable[[object], object]


def _setting(default: _T, check: _Check, *, show: bool = True) -> _T:
    """A TOML key: its default and the check that validates and normalises a value."""
    return field(default=default, repr=show, metadata={"check": check})


# -- checks ------------------------------------------------------------------------------


def _describe(value: object) -> str:
    """Name a TOML value's type the way the file's author thinks of it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    return f"a {type(value).__name__}"


def _choices(options: Iterable[str]) -> str:
    return ", ".join(repr(o) for o in options)


def _need_str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_describe(value)}")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WHITESPACE = re.compile(r"\s")


def _text(value: object) -> str:
    """Any string without control characters: it ends up in logs and headers."""
    s = _need_str(value)
    if _CONTROL.search(s):
        raise _Invalid("must not contain control characters")
    return s


def _secret(value: object) -> str:
    """A password: only its type is checked and it is never echoed."""
    return _need_str(value)


def _word(value: object) -> str:
    """A non-empty string without whitespace (key prefixes)."""
    s = _text(value)
    if not s:
        raise _Invalid("must not be empty")
    if _WHITESPACE.search(s):
        raise _Invalid("must not contain spaces")
    return s


def _hostname(value: object) -> str:
    s = _text(value)
    if _WHITESPACE.search(s):
        raise _Invalid("must not contain spaces")
    return s


def _directory(value: object) -> str:
    s = _text(value)
    if not s:
        raise _Invalid("must not be empty")
    return os.path.abspath(s)


def _optional_file(value: object) -> str:
    """ "" (unset) or a file that exists now, so a bad path fails at load, not at first use."""
    s = _text(value)
    if not s:
        return s
    path = os.path.abspath(s)
    if not os.path.isfile(path):
        raise _Invalid(f"no such file: {path}")
    return path


def _interface(value: object) -> str:
    s = _text(value)
    if s:
        try:
            ipaddress.ip_address(s)
        except ValueError:
            raise _Invalid(
                f"must be an IP address ('' for all IPv4 interfaces, '::' for all), got {s!r}"
            ) from None
    return s


def _url_path(value: object) -> str:
    s = _text(value)
    if not s.startswith("/"):
        raise _Invalid(f"must start with '/', got {s!r}")
    if _WHITESPACE.search(s) or "?" in s or "#" in s:
        raise _Invalid("must be a plain path without spaces, '?' or '#'")
    return s


def _realm(value: object) -> str:
    """The realm goes inside a quoted header parameter, so quotes and backslashes are out."""
    s = _text(value)
    if not s:
        raise _Invalid("must not be empty")
    if '"' in s or "\\" in s:
        raise _Invalid("must not contain quotes or backslashes")
    return s


def _redis_url(value: object) -> str:
    s = _text(value)
    _parse_redis_url(s)
    return s


def _int(low: int, high: int) -> _Check:
    def check(value: object) -> int:
        # bool is a subclass of int; `port = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, not {_describe(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return check


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {_describe(value)}")
    return value


def _one_of(*options: str) -> _Check:
    def check(value: object) -> str:
        s = _need_str(value)
        if s not in options:
            raise _Invalid(f"must be one of {_choices(options)}, got {s!r}")
        return s

    return check


def _list_of(*options: str) -> _Check:
    """A non-empty list of distinct options; order matters (it is sent to the CPE)."""

    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"must be an array, not {_describe(value)}")
        if not value:
            raise _Invalid(f"must not be empty (choose from {_choices(options)})")
        not_str = [v for v in value if not isinstance(v, str)]
        if not_str:
            raise _Invalid(f"items must be strings, not {_describe(not_str[0])}")
        unknown = [v for v in value if v not in options]
        if unknown:
            raise _Invalid(f"unknown value {_choices(unknown)}; expected {_choices(options)}")
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise _Invalid(f"duplicate {_choices(dupes)}")
        return tuple(value)

    return check


def _number(low: float, high: float) -> _Check:
    """Seconds and rates: an integer or a float within bounds."""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"must be a number, not {_describe(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low:g} and {high:g}, got {value:g}")
        return float(value)

    return check


def _networks(value: object) -> tuple[str, ...]:
    """A list of CIDR networks ("192.0.2.0/24", "2001:db8::/32"), normalised."""
    if not isinstance(value, list | tuple):
        raise _Invalid(f"must be an array, not {_describe(value)}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise _Invalid(f"items must be strings, not {_describe(item)}")
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise _Invalid(f"{item!r} is not a network such as '192.0.2.0/24'") from None
    return tuple(out)


def _sha256_list(value: object) -> tuple[str, ...]:
    """Hex SHA-256 digests of API tokens (the tokens themselves are never configured)."""
    if not isinstance(value, list | tuple):
        raise _Invalid(f"must be an array, not {_describe(value)}")
    out = []
    for item in value:
        if not isinstance(item, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", item):
            raise _Invalid(
                "items must be 64 hex digits (the SHA-256 of a token: "
                "python -m cwmpgw.nbi.tokens new)"
            )
        out.append(item.lower())
    return tuple(out)


def _preset_values(value: object) -> tuple[tuple[str, str, str], ...]:
    """``[[provision.values]]`` tables: name, value, optional xsi type (checked like a task's)."""
    from cwmpgw.cwmp.values import check_value

    if not isinstance(value, list | tuple):
        raise _Invalid(f"must be an array of tables, not {_describe(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _Invalid(f"[{i}]: must be a table with name, value and optionally type")
        unknown = set(item) - {"name", "value", "type"}
        if unknown:
            raise _Invalid(f"[{i}]: unknown key {_choices(sorted(unknown))}")
        name, raw, type_ = item.get("name"), item.get("value"), item.get("type", "xsd:string")
        if not isinstance(name, str) or not name or name.endswith(".") or len(name) > 256:
            raise _Invalid(f"[{i}].name: must be a parameter name (not ending in '.')")
        if not isinstance(type_, str):
            raise _Invalid(f"[{i}].type: must be a string such as 'xsd:unsignedInt'")
        if raw is None:
            raise _Invalid(f"[{i}].value: required")
        try:
            text = check_value(type_, raw)
        except ValueError as e:
            raise _Invalid(f"[{i}].value: {e}") from None
        out.append((name, text, type_ if type_.startswith("xsd:") else "xsd:" + type_))
    return tuple(out)


# -- the schema ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where an external Redis lives: TCP (host, port) or a Unix socket (path)."""

    host: str | None
    port: int | None
    path: str | None
    db: int = 0
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    data_dir: str = _setting("./cwmpgw-data", _directory)
    node: str = _setting("", _text)
    workers: int = _setting(1, _int(1, 256))
    gc_threshold: int = _setting(10000, _int(0, 10_000_000))

    @property
    def node_name(self) -> str:
        """The node's name in events: ``node``, else this host's name."""
        return self.node or socket.gethostname()


@dataclass(frozen=True, slots=True)
class AcsConfig:
    interface: str = _setting("", _interface)
    port: int = _setting(7547, _int(0, 65535))
    tls: bool = _setting(True, _bool)
    cert_file: str = _setting("", _optional_file)
    key_file: str = _setting("", _optional_file)
    rsa_cert_file: str = _setting("", _optional_file)
    rsa_key_file: str = _setting("", _optional_file)
    hostname: str = _setting("", _hostname)
    max_body_bytes: int = _setting(262144, _int(1024, 16777216))
    max_session_body_bytes: int = _setting(33554432, _int(1024, 268435456))
    min_session_upload_rate: int = _setting(16384, _int(1, 1073741824))
    session_timeout: int = _setting(30, _int(5, 3600))
    max_session_timeout: int = _setting(300, _int(5, 86400))
    hold_requests: bool = _setting(False, _bool)
    path: str = _setting("/", _url_path)
    client_certs: str = _setting("off", _one_of("off", "optional", "required"))
    client_ca_file: str = _setting("", _optional_file)
    client_identity: str = _setting(
        "cn", _one_of("cn", "serial_number", "san_dns", "san_uri", "any")
    )
    client_identity_match: str = _setting("device_id", _one_of("device_id", "oui_serial", "serial"))
    legacy_ciphers: bool = _setting(False, _bool)
    max_new_sessions_per_second: int = _setting(300, _int(0, 1000000))
    max_sessions: int = _setting(10000, _int(1, 10000000))
    retry_after_min: int = _setting(30, _int(1, 86400))
    retry_after_max: int = _setting(120, _int(1, 86400))
    max_connections: int = _setting(20000, _int(0, 10000000))
    max_connections_per_source: int = _setting(1000, _int(0, 10000000))
    first_byte_timeout: int = _setting(10, _int(1, 3600))
    idle_timeout: int = _setting(20, _int(1, 3600))
    drain_timeout: int = _setting(10, _int(0, 3600))
    read_timeout: int = _setting(30, _int(1, 3600))
    max_requests_per_connection: int = _setting(1000, _int(1, 1000000))
    unauthenticated_bytes_per_second: int = _setting(2097152, _int(0, 1073741824))
    unauthenticated_burst_bytes: int = _setting(8388608, _int(1024, 1073741824))

    @property
    def certificate_hostname(self) -> str:
        """The name for a self-signed certificate; resolved lazily (getfqdn may do DNS)."""
        return self.hostname or socket.getfqdn()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    realm: str = _setting("cwmpgw", _realm)
    schemes: tuple[str, ...] = _setting(("digest",), _list_of("digest", "basic"))
    digest_algorithms: tuple[str, ...] = _setting(("MD5", "SHA-256"), _list_of("MD5", "SHA-256"))
    nonce_lifetime: int = _setting(300, _int(10, 86400))
    allow_basic_without_tls: bool = _setting(False, _bool)
    unknown_devices: str = _setting("reject", _one_of("reject", "enroll"))
    bootstrap_username: str = _setting("", _text)
    bootstrap_password: str = _setting("", _secret, show=False)
    bootstrap_password_file: str = _setting("", _optional_file)
    bootstrap_stuck_after: int = _setting(3, _int(0, 1000000))
    bootstrap_after_confirm: str = _setting("accept", _one_of("accept", "refuse"))
    bootstrap_grace: int = _setting(604800, _int(0, 31536000))
    max_failures_per_source: int = _setting(20, _int(0, 1000000))
    max_failures_per_device: int = _setting(10, _int(0, 1000000))
    failure_window: int = _setting(300, _int(1, 86400))
    block_for: int = _setting(900, _int(1, 604800))


@dataclass(frozen=True, slots=True)
class RedisConfig:
    # The URL may hold a password: it stays out of repr (target shows where, not how).
    url: str = _setting("", _redis_url, show=False)
    prefix: str = _setting("cwmpgw:", _word)
    connections: int = _setting(1, _int(1, 64))
    call_timeout: float = _setting(5.0, _number(0.5, 120))
    target: RedisTarget | None = None  # parsed from url; None = the embedded Redis


@dataclass(frozen=True, slots=True)
class EventsConfig:
    stream_maxlen: int = _setting(100000, _int(100, 100000000))
    spool_max_mb: int = _setting(256, _int(1, 1048576))


@dataclass(frozen=True, slots=True)
class TasksConfig:
    default_expiry: int = _setting(604800, _int(10, 31536000))
    max_attempts: int = _setting(3, _int(1, 100))
    gpv_batch: int = _setting(100, _int(1, 10000))
    keep_finished: int = _setting(100, _int(0, 100000))
    report_timeout: int = _setting(604800, _int(60, 31536000))


@dataclass(frozen=True, slots=True)
class NbiConfig:
    enabled: bool = _setting(True, _bool)
    interface: str = _setting("127.0.0.1", _interface)
    port: int = _setting(7557, _int(0, 65535))
    tls: bool = _setting(False, _bool)
    cert_file: str = _setting("", _optional_file)
    key_file: str = _setting("", _optional_file)
    auth: str = _setting("token", _one_of("token", "none"))
    token_sha256: tuple[str, ...] = _setting((), _sha256_list)
    max_body_bytes: int = _setting(1048576, _int(1024, 67108864))
    max_wait: int = _setting(300, _int(0, 3600))


@dataclass(frozen=True, slots=True)
class ConnreqConfig:
    enabled: bool = _setting(True, _bool)
    connect_timeout: float = _setting(2.0, _number(0.1, 60))
    timeout: float = _setting(5.0, _number(0.1, 120))
    session_wait: float = _setting(30.0, _number(0, 600))
    retries: int = _setting(2, _int(0, 10))
    retry_delay: float = _setting(1.0, _number(0, 60))
    max_concurrent: int = _setting(100, _int(1, 100000))
    per_destination: int = _setting(2, _int(1, 1000))
    min_interval: float = _setting(10.0, _number(0, 86400))
    rate: float = _setting(100.0, _number(0.1, 100000))
    allowed_networks: tuple[str, ...] = _setting((), _networks)
    source_address: str = _setting("", _interface)
    verify_tls: bool = _setting(False, _bool)
    udp: bool = _setting(True, _bool)
    prefer: str = _setting("http", _one_of("http", "udp"))
    udp_copies: int = _setting(3, _int(1, 10))
    stun: bool = _setting(True, _bool)
    stun_interface: str = _setting("", _interface)
    stun_port: int = _setting(3478, _int(0, 65535))
    stun_require_integrity: bool = _setting(True, _bool)
    key_file: str = _setting("", _text)
    sent_events: bool = _setting(False, _bool)


def _jid(value: object) -> str:
    """ "" or ``user@domain`` with an optional ``/resource`` (checked lightly: the XMPP
    library normalises it)."""
    s = _text(value)
    if s and not re.fullmatch(r"[^@/\s]+@[^@/\s]+(/[^\s]+)?", s):
        raise _Invalid("must be a JID, user@domain or user@domain/resource")
    return s


def _domains(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"must be a list of domain names, not {_describe(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not re.fullmatch(r"[A-Za-z0-9.-]+", item):
            raise _Invalid(f"[{i}]: must be a domain name")
        out.append(item.lower())
    return tuple(out)


@dataclass(frozen=True, slots=True)
class XmppConfig:
    enabled: bool = _setting(False, _bool)
    jid: str = _setting("", _jid)
    password: str = _setting("", _secret, show=False)
    password_file: str = _setting("", _optional_file)
    server: str = _setting("", _hostname)
    port: int = _setting(5222, _int(1, 65535))
    cafile: str = _setting("", _optional_file)
    tls_hostname: str = _setting("", _hostname)
    connect_timeout: float = _setting(10.0, _number(0.5, 120))
    timeout: float = _setting(10.0, _number(0.5, 120))
    retry_min: float = _setting(1.0, _number(0.1, 600))
    retry_max: float = _setting(60.0, _number(0.1, 3600))
    keepalive: float = _setting(60.0, _number(0, 3600))
    allowed_domains: tuple[str, ...] = _setting((), _domains)
    prefer: bool = _setting(True, _bool)

    @property
    def domain(self) -> str:
        return self.jid.partition("@")[2].partition("/")[0].lower()

    @property
    def bare_jid(self) -> str:
        return self.jid.partition("/")[0]


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = _setting(True, _bool)
    interface: str = _setting("127.0.0.1", _interface)
    port: int = _setting(9557, _int(0, 65535))


@dataclass(frozen=True, slots=True)
class FilesConfig:
    """The file server (firmware, configuration files, uploads) and campaigns."""

    enabled: bool = _setting(True, _bool)
    listen: bool = _setting(True, _bool)  # false: only hand out links another node serves
    interface: str = _setting("", _interface)
    port: int = _setting(7548, _int(0, 65535))
    tls: bool = _setting(True, _bool)
    dir: str = _setting("", _text)  # "" = <data_dir>/files; shared storage on several nodes
    public_url: str = _setting("", _hostname)  # "" = https://<acs hostname>:<port>
    url_lifetime: int = _setting(86400, _int(60, 2592000))
    require_credentials: bool = _setting(True, _bool)
    url_style: str = _setting("signed", _one_of("signed", "short"))
    max_file_bytes: int = _setting(1073741824, _int(1024, 68719476736))
    max_upload_bytes: int = _setting(67108864, _int(1024, 68719476736))
    min_upload_rate: int = _setting(16384, _int(1, 1073741824))
    max_connections: int = _setting(5000, _int(0, 10000000))
    max_connections_per_source: int = _setting(1000, _int(0, 10000000))
    campaign_tick: float = _setting(2.0, _number(0.05, 3600))


@dataclass(frozen=True, slots=True)
class ProvisionConfig:
    credentials: bool = _setting(True, _bool)
    stun_credentials: bool = _setting(True, _bool)
    periodic_inform: bool = _setting(True, _bool)
    periodic_inform_interval: int = _setting(86400, _int(30, 2592000))
    spread_informs: bool = _setting(True, _bool)
    presets_on: str = _setting("bootstrap", _one_of("bootstrap", "boot", "every"))
    values: tuple[tuple[str, str, str], ...] = _setting((), _preset_values)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    # A device is online if it informed within this many seconds; 0: twice
    # provision.periodic_inform_interval.
    online_window: int = _setting(0, _int(0, 31536000))
    # Bulk tasks: devices given their task per second, per bulk (without connection
    # requests; with them, connreq.rate paces), and how often the fan-out runs.
    bulk_rate: float = _setting(200.0, _number(0.1, 100000))
    bulk_tick: float = _setting(1.0, _number(0.05, 60))
    # Profiles are re-read from Redis at most this often by each node.
    profile_cache: float = _setting(5.0, _number(0, 3600))


def _http_base_url(value: object) -> str:
    s = _text(value)
    if s:
        parts = urlsplit(s)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Invalid(f"must be an http:// or https:// URL, got {s!r}")
        if parts.query or parts.fragment:
            raise _Invalid("must have no query and no fragment")
    return s


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    # The TR-143 throughput endpoint (DownloadDiagnostics / UploadDiagnostics target).
    throughput_enabled: bool = _setting(False, _bool)
    serve: bool = _setting(True, _bool)  # false: sign URLs for another node's endpoint
    interface: str = _setting("", _interface)
    port: int = _setting(7549, _int(0, 65535))
    tls: bool = _setting(False, _bool)
    url: str = _setting("", _http_base_url)  # how CPEs reach it; required when enabled
    secret_file: str = _setting("", _text)  # "": <data_dir>/throughput-secret
    download_bytes: int = _setting(10_000_000, _int(1, 2**40))
    max_download_bytes: int = _setting(1_000_000_000, _int(1, 2**40))
    max_upload_bytes: int = _setting(1_000_000_000, _int(1, 2**40))
    max_transfers: int = _setting(16, _int(1, 10000))
    transfer_timeout: float = _setting(300.0, _number(1, 86400))


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    acs: AcsConfig = field(default_factory=AcsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    nbi: NbiConfig = field(default_factory=NbiConfig)
    connreq: ConnreqConfig = field(default_factory=ConnreqConfig)
    xmpp: XmppConfig = field(default_factory=XmppConfig)
    provision: ProvisionConfig = field(default_factory=ProvisionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    source: str | None = None  # the file it came from; None = defaults and overrides only


_SECTIONS: dict[str, type[Any]] = {
    "gateway": GatewayConfig,
    "acs": AcsConfig,
    "auth": AuthConfig,
    "redis": RedisConfig,
    "events": EventsConfig,
    "tasks": TasksConfig,
    "nbi": NbiConfig,
    "connreq": ConnreqConfig,
    "xmpp": XmppConfig,
    "provision": ProvisionConfig,
    "metrics": MetricsConfig,
    "fleet": FleetConfig,
    "diagnostics": DiagnosticsConfig,
    "files": FilesConfig,
}


def _keys(section: type[Any]) -> dict[str, tuple[object, _Check]]:
    """The TOML keys of a section class: name → (default, check)."""
    keys: dict[str, tuple[object, _Check]] = {}
    for f in fields(section):
        if "check" in f.metadata:
            assert f.default is not MISSING
            keys[f.name] = (f.default, f.metadata["check"])
    return keys


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind}{hint}"


# -- redis URLs ----------------------------------------------------------------------------


def _parse_redis_url(url: str) -> RedisTarget | None:
    """Parse ``redis.url``; messages never echo the URL, which may hold a password."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Invalid("is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme == "rediss":
        raise _Invalid("TLS to Redis is not supported yet")
    if parts.fragment:
        raise _Invalid("must not have a '#fragment'")
    if scheme == "redis":
        return _parse_redis_tcp(parts)
    if scheme == "unix":
        return _parse_redis_unix(parts)
    raise _Invalid("must be empty (the embedded Redis) or a redis:// or unix:// URL")


def _parse_db(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise _Invalid("the database must be a number, as in redis://host:6379/0")
    return int(text)


def _parse_redis_tcp(parts: SplitResult) -> RedisTarget:
    if parts.query:
        raise _Invalid("redis:// URLs take no query parameters; put the database in the path")
    host = parts.hostname
    if not host:
        raise _Invalid("must name a host, as in redis://host:6379/0")
    try:
        port = parts.port
    except ValueError:
        raise _Invalid("has an invalid port") from None
    if port == 0:
        raise _Invalid("has an invalid port")
    if parts.username:
        raise _Invalid("user names are not supported; write redis://:password@host")
    password = unquote(parts.password) if parts.password else None
    db = 0 if parts.path in ("", "/") else _parse_db(parts.path[1:])
    return RedisTarget(host=host, port=port or 6379, path=None, db=db, password=password)


def _parse_redis_unix(parts: SplitResult) -> RedisTarget:
    if parts.netloc:
        raise _Invalid("unix:// URLs take no host; write unix:///path/to/socket")
    socket_path = unquote(parts.path)
    if not socket_path.startswith("/") or socket_path == "/":
        raise _Invalid("must name an absolute socket path, as in unix:///run/redis.sock")
    db = 0
    password: str | None = None
    try:
        params = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _Invalid("has an invalid query string") from None
    for name, value in params:
        if name == "db":
            db = _parse_db(value)
        elif name == "password":
            password = value or None
        else:
            raise _Invalid(f"unknown query parameter {name!r} (expected 'db' or 'password')")
    return RedisTarget(host=None, port=None, path=socket_path, db=db, password=password)


# -- parsing ----------------------------------------------------------------------------------


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Validate parsed TOML (plus dotted-path overrides) into a Config, or raise ConfigError."""
    errors: list[str] = []
    raw: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    bad_sections: set[str] = set()

    for name, table in data.items():
        if name not in _SECTIONS:
            errors.append(f"{name}: {_unknown('section', name, _SECTIONS)}")
        elif not isinstance(table, Mapping):
            errors.append(f"{name}: must be a table, not {_describe(table)}")
            bad_sections.add(name)
        else:
            raw[name].update(table)

    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in _SECTIONS or key not in _keys(_SECTIONS[section]):
            known = [f"{n}.{k}" for n, c in _SECTIONS.items() for k in _keys(c)]
            errors.append(f"{dotted}: {_unknown('setting', dotted, known)}")
        elif section not in bad_sections:
            raw[section][key] = value

    values: dict[str, dict[str, Any]] = {}
    for name, cls in _SECTIONS.items():
        keys = _keys(cls)
        good: dict[str, Any] = {}
        for key in raw[name]:
            if key not in keys:
                errors.append(f"{name}.{key}: {_unknown('key', key, keys)}")
        for key, (default, check) in keys.items():
            # Defaults go through their check too: it normalises (a relative path → absolute).
            try:
                good[key] = check(raw[name].get(key, default))
            except _Invalid as e:
                errors.append(f"{name}.{key}: {e}")
        values[name] = good

    _cross_check(raw, values, errors)
    if errors:
        raise ConfigError(errors)
    return Config(
        **{name: _SECTIONS[name](**good) for name, good in values.items()},
        source=source,
    )


def _cross_check(
    raw: Mapping[str, Mapping[str, Any]], values: dict[str, dict[str, Any]], errors: list[str]
) -> None:
    """Rules that tie keys together; a key that failed its own check is skipped here."""
    acs, auth, redis = values["acs"], values["auth"], values["redis"]

    diag = values["diagnostics"]
    if diag.get("throughput_enabled") and not raw["diagnostics"].get("url"):
        errors.append(
            "diagnostics.url: required when diagnostics.throughput_enabled = true "
            "(the address CPEs reach the throughput endpoint at, e.g. http://acs.example.net:7549)"
        )
    if diag.get("download_bytes", 0) > diag.get("max_download_bytes", 2**40):
        errors.append("diagnostics.download_bytes: must be at most diagnostics.max_download_bytes")

    if "session_timeout" in acs and "max_session_timeout" in acs:
        if acs["max_session_timeout"] < acs["session_timeout"]:
            errors.append(
                "acs.max_session_timeout: must be at least acs.session_timeout "
                f"({acs['session_timeout']}), got {acs['max_session_timeout']}"
            )

    # On what was written, so a missing file and a missing partner are reported together.
    cert_given, key_given = bool(raw["acs"].get("cert_file")), bool(raw["acs"].get("key_file"))
    if cert_given and not key_given:
        errors.append("acs.key_file: required when acs.cert_file is set")
    if key_given and not cert_given:
        errors.append("acs.cert_file: required when acs.key_file is set")
    rsa_cert_given = bool(raw["acs"].get("rsa_cert_file"))
    rsa_key_given = bool(raw["acs"].get("rsa_key_file"))
    if rsa_cert_given != rsa_key_given:
        errors.append(
            "acs.rsa_cert_file: give both acs.rsa_cert_file and acs.rsa_key_file, or neither"
        )
    elif rsa_cert_given and not cert_given:
        errors.append(
            "acs.rsa_cert_file: serves beside acs.cert_file (the ECDSA certificate), so set "
            "acs.cert_file and acs.key_file too; with none of them a generated pair is used"
        )

    if (
        acs.get("tls") is False
        and "basic" in auth.get("schemes", ())
        and auth.get("allow_basic_without_tls") is False
    ):
        errors.append(
            "auth.schemes: 'basic' sends passwords in clear text when acs.tls = false; "
            "use 'digest', or set auth.allow_basic_without_tls = true"
        )

    if "bootstrap_password" in auth and auth.get("bootstrap_password_file"):
        path = auth["bootstrap_password_file"]
        if auth["bootstrap_password"]:
            errors.append(
                "auth.bootstrap_password_file: cannot be used together with "
                "auth.bootstrap_password; set only one"
            )
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    password = f.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
                errors.append(f"auth.bootstrap_password_file: cannot read {path}: {reason}")
            else:
                if password:
                    auth["bootstrap_password"] = password
                else:
                    errors.append(f"auth.bootstrap_password_file: {path} is empty")

    if auth.get("unknown_devices") == "enroll":
        if auth.get("bootstrap_username") == "":
            errors.append("auth.bootstrap_username: required when auth.unknown_devices = 'enroll'")
        if auth.get("bootstrap_password") == "" and not raw["auth"].get("bootstrap_password_file"):
            errors.append(
                "auth.bootstrap_password: required when auth.unknown_devices = 'enroll' "
                "(or set auth.bootstrap_password_file)"
            )

    if acs.get("max_session_body_bytes", 2**31) < acs.get("max_body_bytes", 0):
        errors.append(
            "acs.max_session_body_bytes: must be at least acs.max_body_bytes "
            f"({acs['max_body_bytes']}), got {acs['max_session_body_bytes']}"
        )

    if acs.get("retry_after_max", 0) < acs.get("retry_after_min", 0):
        errors.append("acs.retry_after_max: must be at least acs.retry_after_min")

    if acs.get("client_certs") in ("optional", "required"):
        if not raw["acs"].get("client_ca_file"):
            errors.append(
                "acs.client_ca_file: required when acs.client_certs is "
                f"{acs['client_certs']!r} (the CA bundle that signs device certificates)"
            )
        if acs.get("tls") is False:
            errors.append("acs.client_certs: client certificates need acs.tls = true")

    nbi = values["nbi"]
    if nbi.get("auth") == "none" and "interface" in nbi:
        address = nbi["interface"] or "0.0.0.0"  # noqa: S104 - what "" means here
        if not ipaddress.ip_address(address).is_loopback:
            errors.append(
                "nbi.auth: 'none' is allowed only on a loopback nbi.interface "
                f"(such as 127.0.0.1), not {address!r}"
            )
    nbi_cert, nbi_key = bool(raw["nbi"].get("cert_file")), bool(raw["nbi"].get("key_file"))
    if nbi_cert != nbi_key:
        errors.append("nbi.cert_file: give both nbi.cert_file and nbi.key_file, or neither")

    xmpp = values["xmpp"]
    if xmpp.get("enabled"):
        if not xmpp.get("jid"):
            errors.append("xmpp.jid: required when xmpp.enabled = true (the gateway's JID)")
        if xmpp.get("password") and raw["xmpp"].get("password_file"):
            errors.append("xmpp.password_file: cannot be used together with xmpp.password")
        elif not xmpp.get("password") and not raw["xmpp"].get("password_file"):
            errors.append("xmpp.password: required when xmpp.enabled = true (or password_file)")
    if xmpp.get("password_file") and not xmpp.get("password"):
        path = xmpp["password_file"]
        try:
            with open(path, encoding="utf-8") as f:
                xmpp["password"] = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            errors.append(f"xmpp.password_file: cannot read {path}: {reason}")
    if xmpp.get("retry_max", 60.0) < xmpp.get("retry_min", 1.0):
        errors.append("xmpp.retry_max: must be at least xmpp.retry_min")

    if "url" in redis:
        # The check already accepted the URL; parsing again cannot fail.
        redis["target"] = _parse_redis_url(redis["url"])


def load_config(path: str | None = None, *, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a TOML file (None: defaults only) and apply overrides; raise ConfigError."""
    if path is None:
        return parse_config({}, overrides=overrides)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: {e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_config(data, source=path, overrides=overrides)


def default_config() -> Config:
    """Every key at its default (data_dir resolved against the current directory)."""
    return parse_config({})
