"""A simulated CPE, sans-IO: identity, credentials, data model and state across sessions.

:class:`SimDevice` keeps what a router keeps between sessions (events not yet delivered,
the retry count, transfers, scheduled informs, the periodic-inform schedule);
:class:`CpeSession` is one CWMP session seen from the CPE: it writes the Inform, reads the
ACS's answers and answers every ACS request as a CPE would. Neither does I/O or reads a
clock: the fleet (:mod:`cwmpgw.sim.fleet`) passes the time in and moves the bytes.

A device is small on purpose (slots, containers created on first use, the data model an
overlay on a shared template): a simulator process holds thousands of them.
"""

from __future__ import annotations

import csv
import io
import math
import random
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cwmpgw.cwmp import rpc, values
from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.diagnostics import STATE as DIAGNOSTICS_STATE
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.cwmp.soap import CWMP_1_2, CWMP_1_3
from cwmpgw.sim import cwmp
from cwmpgw.sim.datamodel import DeviceModel, Template

__all__ = [
    "Behaviour",
    "CpeSession",
    "CredentialSource",
    "Credentials",
    "SessionFailed",
    "SimDevice",
    "credential_templates",
    "format_time",
    "initial_values",
    "parse_device_id",
    "read_credentials_csv",
    "retry_delay",
    "retry_wait_range",
]

BOOTSTRAP: Final = "0 BOOTSTRAP"
BOOT: Final = "1 BOOT"
PERIODIC: Final = "2 PERIODIC"
SCHEDULED: Final = "3 SCHEDULED"
VALUE_CHANGE: Final = "4 VALUE CHANGE"
CONNECTION_REQUEST: Final = "6 CONNECTION REQUEST"
TRANSFER_COMPLETE: Final = "7 TRANSFER COMPLETE"
DU_STATE_CHANGE_COMPLETE: Final = "11 DU STATE CHANGE COMPLETE"
# A deployment unit's state once a ChangeDUState operation of this type succeeded.
_DU_STATE_AFTER: Final = {
    "InstallOpStruct": "Installed",
    "UpdateOpStruct": "Installed",
    "UninstallOpStruct": "Uninstalled",
}

#: Events kept after their Inform was answered, until the TransferComplete (or the
#: DUStateChangeComplete) is.
_TRANSFER_EVENTS: Final = frozenset(
    {
        TRANSFER_COMPLETE,
        "M Download",
        "M Upload",
        "M ScheduleDownload",
        DU_STATE_CHANGE_COMPLETE,
        "M ChangeDUState",
    }
)
_MAX_EVENTS: Final = 64
_MAX_TRANSFERS: Final = 16
_TRANSFER_SCHEMES: Final = frozenset({"http", "https", "ftp", "ftps", "tftp"})
_SUPPORTED_VERSIONS: Final = "1.0,1.1,1.2,1.3,1.4"


# ---------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a device authenticates with, and what it checks connection requests against."""

    username: str
    password: str
    cr_username: str
    cr_password: str

    def __repr__(self) -> str:  # never a password in a log or a traceback
        return f"Credentials(username={self.username!r}, cr_username={self.cr_username!r})"


#: (index, DeviceId, device id) -> the device's factory credentials.
CredentialSource = Callable[[int, DeviceId, str], Credentials]


def credential_templates(
    username: str,
    password: str,
    cr_username: str | None = None,
    cr_password: str | None = None,
) -> CredentialSource:
    """Credentials from ``str.format`` templates.

    Fields: ``{device_id}``, ``{serial}``, ``{oui}``, ``{product_class}``, ``{index}``.
    The connection-request username defaults to the device id, its password to the ACS
    password. A template without fields gives every device the same value: a shared
    bootstrap credential, for zero-touch provisioning.
    """
    for template in (username, password, cr_username or "", cr_password or ""):
        _format(template, 0, DeviceId("", "000000", "", "0"), "000000-0")  # fail early

    def source(index: int, device: DeviceId, device_id: str) -> Credentials:
        password_text = _format(password, index, device, device_id)
        return Credentials(
            _format(username, index, device, device_id),
            password_text,
            _format(cr_username or "{device_id}", index, device, device_id),
            password_text
            if cr_password is None
            else _format(cr_password, index, device, device_id),
        )

    return source


def _format(template: str, index: int, device: DeviceId, device_id: str) -> str:
    try:
        return template.format(
            device_id=device_id,
            serial=device.serial_number,
            oui=device.oui,
            product_class=device.product_class,
            index=index,
        )
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"bad credential template {template!r}: {e}") from None


def parse_device_id(device_id: str) -> tuple[str, str, str]:
    """(OUI, ProductClass, SerialNumber) of a GenieACS-style device id."""
    parts = device_id.split("-")
    if len(parts) == 2:
        parts.insert(1, "")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"{device_id!r} is not OUI-ProductClass-SerialNumber")
    oui, product_class, serial = (urllib.parse.unquote(p) for p in parts)
    return oui, product_class, serial


def read_credentials_csv(text: str) -> dict[str, Credentials]:
    """Rows of the CSV ``python -m cwmpgw.credentials import`` takes, by device id.

    Columns ``device_id``, ``password``, optionally ``username`` (default: the device id),
    ``cr_username`` and ``cr_password`` (default: the device id and the password).
    """
    reader = csv.DictReader(io.StringIO(text))
    fields = {f.strip() for f in (reader.fieldnames or [])}
    missing = {"device_id", "password"} - fields
    if missing:
        raise ValueError(f"line 1: missing column(s) {', '.join(sorted(missing))}")
    rows: dict[str, Credentials] = {}
    for raw in reader:
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        device_id, password = row.get("device_id", ""), row.get("password", "")
        if not device_id or not password:
            raise ValueError(f"line {reader.line_num}: empty device_id or password")
        parse_device_id(device_id)
        if device_id in rows:
            raise ValueError(f"line {reader.line_num}: device {device_id!r} twice")
        rows[device_id] = Credentials(
            row.get("username") or device_id,
            password,
            row.get("cr_username") or device_id,
            row.get("cr_password") or password,
        )
    return rows


# ---------------------------------------------------------------------------------------
# Time and retries


def format_time(seconds: float) -> str:
    """A CWMP dateTime (UTC, whole seconds) from Unix seconds."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float | None:
    """Unix seconds of a dateTime, None for the unknown time or something unreadable."""
    text = text.strip()
    if not text or text.startswith("0001-01-01"):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def retry_wait_range(
    retry: int, minimum: float = 5.0, multiplier: int = 2000
) -> tuple[float, float]:
    """TR-069 §3.2.1.1: the wait before retry ``retry`` (1-based), as (low, high) seconds.

    Retry n waits in [m·(k/1000)^(n-1), m·(k/1000)^n]; the range stops growing at the
    10th retry (PROTOCOL.md §2.7: 5-10 s, 10-20 s, ... 2560-5120 s with the defaults).
    """
    if retry < 1:
        raise ValueError("retry counts from 1")
    n = min(retry, 10)
    k = max(multiplier, 1000) / 1000
    return minimum * k ** (n - 1), minimum * k**n


def retry_delay(
    retry: int,
    rng: random.Random,
    *,
    minimum: float = 5.0,
    multiplier: int = 2000,
    retry_after: float | None = None,
) -> float:
    """How long to wait before retry ``retry``: random in the TR-069 range, or at least a
    503's Retry-After (with up to 10 % added, so a refused fleet does not come back at
    once)."""
    if retry_after is not None:
        return retry_after * rng.uniform(1.0, 1.1)
    low, high = retry_wait_range(retry, minimum, multiplier)
    return rng.uniform(low, high)


# ---------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What all devices of a fleet share: how long things take, how informs are spread."""

    reboot_delay: float = 1.0  # a reboot or factory reset, until the BOOT session
    transfer_time: float = 1.0  # a download or upload, once started
    jitter: float = 0.05  # periodic informs: ± this fraction of the interval
    periodic: bool = True  # whether PERIODIC informs are sent at all
    namespace: str = CWMP_1_2
    supported_versions: str | None = _SUPPORTED_VERSIONS
    # Download and Upload really move the bytes (HTTP(S) GET/PUT with the RPC's
    # credentials); a firmware image "CWMPGW-SIM-FIRMWARE <version>\n…" is installed and
    # the device boots into <version>; any other image fails with 9018 (file corrupted).
    fetch: bool = False
    fail_fraction: float = 0.0  # this share of transfers fails (9010/9011), on demand


def initial_values(
    template: Template, serial: str, credentials: Credentials, cr_url: str | None
) -> dict[str, str]:
    """The values that make a device itself: its serial number and credentials."""
    ms = template.ms
    wanted = {
        f"{template.root}.DeviceInfo.SerialNumber": serial,
        ms + "Username": credentials.username,
        ms + "Password": credentials.password,
        ms + "ConnectionRequestUsername": credentials.cr_username,
        ms + "ConnectionRequestPassword": credentials.cr_password,
    }
    if cr_url is not None:
        wanted[ms + "ConnectionRequestURL"] = cr_url
    return {
        name: value
        for name, value in wanted.items()
        if name in template.params and template.params[name].value != value
    }


class _Transfer:
    """A Download, Upload or ScheduleDownload the device was asked for, or a ChangeDUState
    (``operations``: one (UUID, deployment unit, state after) per operation)."""

    __slots__ = (
        "command_key",
        "complete_at",
        "complete_time",
        "delay",
        "done",
        "fault",
        "fetching",
        "file_size",
        "file_type",
        "is_download",
        "method",
        "new_version",
        "operations",
        "password",
        "start_at",
        "start_time",
        "target",
        "url",
        "username",
    )

    def __init__(
        self,
        method: str,
        command_key: str,
        file_type: str,
        file_size: int,
        target: str,
        delay: float,
    ) -> None:
        self.method = method
        self.command_key = command_key
        self.is_download = method != "Upload"
        self.file_type = file_type
        self.file_size = file_size
        self.target = target
        self.delay = delay  # from the end of the session that asked for it
        self.start_at: float | None = None  # set when that session ends
        self.complete_at: float | None = None
        self.done = False
        self.start_time = values.UNKNOWN_TIME
        self.complete_time = values.UNKNOWN_TIME
        self.operations: tuple[tuple[str, str, str], ...] = ()
        self.url = self.username = self.password = ""
        self.fault: tuple[int, str] | None = None
        self.fetching = False
        self.new_version: str | None = None

    def state(self, now: float) -> int:
        """1 not yet started, 2 in progress, 3 completed (TR-069 A.4.1.1)."""
        if self.done:
            return 3
        return 1 if self.start_at is None or now < self.start_at else 2

    def schedule(self, session_end: float, duration: float) -> None:
        if self.start_at is None:
            self.start_at = session_end + self.delay
            self.complete_at = self.start_at + duration


class SessionFailed(Exception):
    """A session that did not complete; ``reason`` is short and carries no secret."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class SimDevice:
    """One simulated CPE.

    ``username``/``password`` are the credentials in use; a SetParameterValues of
    ManagementServer.Username/Password changes the data model at once and the credentials
    in use when the session ends, as a router does. The connection-request credentials are
    read from the data model each time.
    """

    __slots__ = (
        "busy",
        "changed",
        "device_id",
        "diagnostics",
        "events",
        "factory",
        "hold_until",
        "identity",
        "index",
        "model",
        "next_periodic",
        "password",
        "retry_at",
        "retry_count",
        "sessions",
        "timers",
        "transfers",
        "username",
        "wake_at",
    )

    def __init__(
        self,
        index: int,
        identity: DeviceId,
        template: Template,
        credentials: Credentials,
        *,
        cr_url: str | None = None,
        bootstrap: bool = True,
    ) -> None:
        self.index = index
        self.identity = identity
        self.device_id = make_device_id(identity)
        self.factory = credentials
        self.username = credentials.username
        self.password = credentials.password
        self.model = DeviceModel(
            template, initial_values(template, identity.serial_number, credentials, cr_url)
        )
        self.events: list[tuple[str, str]] | None = (
            [(BOOTSTRAP, ""), (BOOT, "")] if bootstrap else [(BOOT, "")]
        )
        self.retry_count = 0
        self.retry_at: float | None = None
        self.hold_until: float | None = None
        self.next_periodic: float | None = None
        self.timers: list[tuple[float, str]] | None = None  # ScheduleInform: (when, key)
        self.transfers: list[_Transfer] | None = None
        self.changed: list[str] | None = None  # parameters changed locally, to inform
        # Diagnostic objects requested in the last session, run once it has ended.
        self.diagnostics: list[str] | None = None
        self.busy = False  # in a session, or waiting for a slot
        self.wake_at: float | None = None  # the fleet's scheduler entry
        self.sessions = 0  # completed sessions

    def __repr__(self) -> str:
        return f"<SimDevice {self.device_id}>"

    # -- the data model's view ------------------------------------------------------------

    @property
    def ms(self) -> str:
        return self.model.template.ms

    @property
    def cr_username(self) -> str:
        return self.model.value(self.ms + "ConnectionRequestUsername", self.factory.cr_username)

    @property
    def cr_password(self) -> str:
        return self.model.value(self.ms + "ConnectionRequestPassword", self.factory.cr_password)

    @property
    def cr_url(self) -> str:
        return self.model.value(self.ms + "ConnectionRequestURL")

    def acs_url(self, default: str) -> str:
        """The ACS URL the device uses: its ManagementServer.URL, else the fleet's."""
        return self.model.value(self.ms + "URL") or default

    def credentials(self) -> Credentials:
        """The credentials in use now (what --write-credentials writes)."""
        return Credentials(self.username, self.password, self.cr_username, self.cr_password)

    # -- events and timers ----------------------------------------------------------------

    def add_event(self, code: str, command_key: str = "") -> None:
        """Queue an event for the next Inform; a numbered event at most once."""
        events = self.events
        if events is None:
            events = self.events = []
        if code.startswith("M "):
            if (code, command_key) in events:
                return
        elif any(c == code for c, _ in events):
            return
        events.append((code, command_key))

    def _remove_events(self, drop: Callable[[str, str], bool]) -> None:
        if self.events is not None:
            self.events = [e for e in self.events if not drop(*e)] or None

    def wants_session(self, now: float) -> bool:
        """Events are waiting and no retry wait or reboot holds the device back."""
        return (
            self.events is not None
            and (self.retry_at is None or now >= self.retry_at)
            and (self.hold_until is None or now >= self.hold_until)
        )

    def next_wakeup(self) -> float | None:
        """When something is next due: a session wanted, a timer, a transfer, a periodic."""
        times: list[float] = []
        if self.events is not None:
            times.append(max(self.retry_at or 0.0, self.hold_until or 0.0))
        if self.next_periodic is not None:
            times.append(self.next_periodic)
        if self.timers:
            times.extend(when for when, _ in self.timers)
        if self.transfers:
            times.extend(
                t.complete_at for t in self.transfers if not t.done and t.complete_at is not None
            )
        return min(times) if times else None

    def fire(self, now: float, behaviour: Behaviour, rng: random.Random) -> bool:
        """Turn what is due into events; whether a session should start now."""
        if self.next_periodic is not None and now >= self.next_periodic:
            if behaviour.periodic:
                self.add_event(PERIODIC)
                following = self._periodic_after(self.next_periodic, rng, behaviour)
                if following is not None and following <= now:
                    following = self._periodic_after(now, rng, behaviour)  # missed some: skip
                self.next_periodic = following
            else:
                self.next_periodic = None
        if self.timers:
            due = [key for when, key in self.timers if when <= now]
            if due:
                self.timers = [(w, k) for w, k in self.timers if w > now] or None
                self.add_event(SCHEDULED)
                for key in due:
                    self.add_event("M ScheduleInform", key)
        if self.transfers:
            for transfer in self.transfers:
                if (
                    not transfer.done
                    and transfer.complete_at is not None
                    and now >= transfer.complete_at
                ):
                    transfer.done = True
                    transfer.start_time = format_time(transfer.start_at or now)
                    transfer.complete_time = format_time(now)
                    if transfer.method == "ChangeDUState":
                        self.add_event(DU_STATE_CHANGE_COMPLETE)
                    else:
                        firmware = transfer.is_download and transfer.file_type.startswith("1 ")
                        if firmware and transfer.fault is None:
                            self.add_event(BOOT)  # a new firmware image boots the device
                            if transfer.new_version is not None:
                                name = self.model.template.root + ".DeviceInfo.SoftwareVersion"
                                self.model.set(name, transfer.new_version)
                        self.add_event(TRANSFER_COMPLETE)
                    self.add_event("M " + transfer.method, transfer.command_key)
        return self.wants_session(now)

    def fetches_due(self, behaviour: Behaviour) -> list[_Transfer]:
        """Transfers whose bytes the fleet must now really move (``behaviour.fetch``);
        they complete when :meth:`fetched` is told."""
        if not behaviour.fetch or not self.transfers:
            return []
        due = [
            t
            for t in self.transfers
            if not t.done
            and not t.fetching
            and t.start_at is not None
            and t.method in ("Download", "Upload")
            and t.url.lower().startswith(("http://", "https://"))
        ]
        for t in due:
            t.fetching, t.complete_at = True, None
        return due

    def fetched(
        self, transfer: _Transfer, now: float, fault: tuple[int, str] | None, version: str | None
    ) -> None:
        transfer.complete_at = now
        transfer.fault = fault
        transfer.new_version = version

    def local_change(self, name: str, value: str) -> str | None:
        """A change not caused by the ACS (a subscriber's, a firmware's).

        Returns ``"active"`` (the device should inform now), ``"passive"`` (at the next
        inform) or None when the parameter's Notification is off. Raises KeyError for a
        parameter the device does not have.
        """
        if self.model.param(name) is None:
            raise KeyError(name)
        self.model.set(name, value)
        notification, _ = self.model.attribute(name)
        if notification not in (1, 2, 4, 6):
            return None
        if self.changed is None:
            self.changed = []
        if name not in self.changed:
            self.changed.append(name)
        self.add_event(VALUE_CHANGE)
        return "active" if notification == 2 else "passive"

    # -- periodic informs -----------------------------------------------------------------

    def _periodic_after(
        self, base: float, rng: random.Random, behaviour: Behaviour
    ) -> float | None:
        model, ms = self.model, self.ms
        enabled = model.value(ms + "PeriodicInformEnable", "true").strip().lower() in ("1", "true")
        try:
            interval = int(model.value(ms + "PeriodicInformInterval", "0"))
        except ValueError:
            interval = 0
        if not enabled or interval <= 0:
            return None
        jitter = min(max(behaviour.jitter, 0.0), 0.5)
        phase = _parse_time(model.value(ms + "PeriodicInformTime"))
        if phase is None:
            return base + interval * (1 + rng.uniform(-jitter, jitter))
        # Aligned on PeriodicInformTime, as the ACS asked (late by at most the jitter).
        steps = math.floor((base - phase) / interval) + 1
        return phase + steps * interval + rng.uniform(0, jitter) * interval

    def schedule_periodic(
        self, now: float, behaviour: Behaviour, rng: random.Random, *, force: bool = False
    ) -> None:
        """(Re)start the periodic schedule from ``now`` (kept if already running)."""
        if not behaviour.periodic:
            self.next_periodic = None
        elif force or self.next_periodic is None:
            self.next_periodic = self._periodic_after(now, rng, behaviour)

    # -- sessions -------------------------------------------------------------------------

    def begin(self, now: float, url: str, behaviour: Behaviour) -> CpeSession:
        """Open a session: the fleet then posts ``session.inform()``."""
        if self.events is None:
            self.add_event(PERIODIC)  # asked to inform with nothing to say: a periodic one
        self.hold_until = None
        return CpeSession(self, now, url, behaviour)

    def finish(
        self,
        session: CpeSession,
        now: float,
        rng: random.Random,
        *,
        ok: bool,
        retry_after: float | None = None,
    ) -> None:
        """Account for a session that ended (completed or not) at ``now``."""
        behaviour = session.behaviour
        for transfer in self.transfers or ():
            transfer.schedule(now, behaviour.transfer_time)
        if session.diagnostics:
            # "The CPE SHOULD wait until after completion of the communication session."
            pending = self.diagnostics or []
            self.diagnostics = pending + [d for d in session.diagnostics if d not in pending]
        if session.factory_reset:
            self._factory_reset(now, behaviour)
        else:
            self._apply_after(session, now, behaviour, rng)
        if ok:
            self.sessions += 1
            self.retry_count = 0
            self.retry_at = None
            return
        # "6 CONNECTION REQUEST" alone is not retried (TR-069 §3.4).
        self._remove_events(lambda code, _: code == CONNECTION_REQUEST and session.had_cr)
        self.retry_count += 1
        if self.events is None:
            self.retry_at = None
            return
        model, ms = self.model, self.ms
        try:
            minimum = float(model.value(ms + "CWMPRetryMinimumWaitInterval", "5") or 5)
            multiplier = int(model.value(ms + "CWMPRetryIntervalMultiplier", "2000") or 2000)
        except ValueError:
            minimum, multiplier = 5.0, 2000
        self.retry_at = now + retry_delay(
            self.retry_count,
            rng,
            minimum=max(minimum, 1.0),
            multiplier=multiplier,
            retry_after=retry_after,
        )

    def _apply_after(
        self, session: CpeSession, now: float, behaviour: Behaviour, rng: random.Random
    ) -> None:
        model, ms = self.model, self.ms
        # New ACS credentials take effect for the next session.
        self.username = model.value(ms + "Username", self.username)
        self.password = model.value(ms + "Password", self.password)
        if session.reboot_key is not None:
            self.hold_until = now + behaviour.reboot_delay
            self.add_event(BOOT)
            self.add_event("M Reboot", session.reboot_key)
        if model.value(ms + "URL") != session.configured_url:
            self.add_event(BOOTSTRAP)  # a new ACS: introduce ourselves
        if session.periodic_changed:
            self.schedule_periodic(now, behaviour, rng, force=True)

    def _factory_reset(self, now: float, behaviour: Behaviour) -> None:
        cr_url = self.model.value(self.ms + "ConnectionRequestURL") or None
        template = self.model.template
        self.model.reset(
            initial_values(template, self.identity.serial_number, self.factory, cr_url)
        )
        self.username, self.password = self.factory.username, self.factory.password
        self.events = [(BOOTSTRAP, ""), (BOOT, "")]
        self.timers = self.transfers = self.changed = None
        self.hold_until = now + behaviour.reboot_delay
        self.next_periodic = None

    def _delivered(self, events: Iterable[tuple[str, str]]) -> None:
        """An InformResponse arrived: its events are delivered, except those waiting for
        their TransferComplete to be acknowledged."""
        sent = set(events)
        self._remove_events(lambda c, k: (c, k) in sent and c not in _TRANSFER_EVENTS)
        if VALUE_CHANGE in {c for c, _ in sent}:
            self.changed = None

    def _transfer_acknowledged(self, transfer: _Transfer) -> None:
        if self.transfers is not None and transfer in self.transfers:
            self.transfers.remove(transfer)
            self.transfers = self.transfers or None
        method_event = "M " + transfer.method
        self._remove_events(lambda c, k: c == method_event and k == transfer.command_key)
        done = [t.method == "ChangeDUState" for t in self.transfers or () if t.done]
        if False not in done:
            self._remove_events(lambda c, _: c == TRANSFER_COMPLETE)
        if True not in done:
            self._remove_events(lambda c, _: c == DU_STATE_CHANGE_COMPLETE)


class _Fault(Exception):
    def __init__(self, code: int, spv: Iterable[tuple[str, int]] = ()) -> None:
        super().__init__(code)
        self.code = code
        self.spv = list(spv)


_INFORM, _CPE, _ACS, _DONE = "inform", "cpe", "acs", "done"


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true")


def _uint(text: str | None, default: int | None = None) -> int:
    if text is None or not text.strip():
        if default is None:
            raise _Fault(9003)
        return default
    try:
        number = int(text.strip())
    except ValueError:
        raise _Fault(9003) from None
    if number < 0:
        raise _Fault(9003)
    return number


class CpeSession:
    """One session from the CPE's side.

    The fleet posts :meth:`inform`, then feeds every HTTP answer to :meth:`receive`,
    which returns the next body to POST (``b""`` is the empty POST) or None when the
    session has completed; it raises :class:`SessionFailed` otherwise.
    """

    def __init__(self, device: SimDevice, now: float, url: str, behaviour: Behaviour) -> None:
        self.device = device
        self.now = now
        self.url = url
        self.configured_url = device.model.value(device.ms + "URL")
        self.behaviour = behaviour
        self.namespace = behaviour.namespace
        self.events: tuple[tuple[str, str], ...] = tuple((device.events or [])[:_MAX_EVENTS])
        self.had_cr = any(code == CONNECTION_REQUEST for code, _ in self.events)
        self.answered: list[str] = []  # ACS methods answered, in order
        self.faults: list[tuple[str, int]] = []  # (method, fault code) we answered with
        self.reboot_key: str | None = None
        self.factory_reset = False
        self.periodic_changed = False
        self.diagnostics: list[str] = []  # diagnostic objects set to Requested
        self._phase = _INFORM
        self._ids = 0
        self._hold = False
        self._to_report: list[_Transfer] = []
        self._reporting: _Transfer | None = None

    def _next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def inform(self) -> bytes:
        device = self.device
        model = device.model
        names = list(model.template.forced)
        for name in device.changed or ():
            if name not in names:
                names.append(name)
        parameters = []
        for name in names:
            param = model.read(name)
            if param is None or (name.endswith(".ConnReqJabberID") and not param.value):
                continue  # no XMPP session: not an XMPP-capable CPE as far as the ACS knows
            parameters.append((name, param.value, param.type))
        return cwmp.inform(
            self.namespace,
            self._next_id(),
            device.identity,
            self.events,
            current_time=format_time(self.now),
            retry_count=device.retry_count,
            parameters=parameters,
            # The version-negotiation header exists only in the cwmp-1-2 schema.
            supported_versions=self.behaviour.supported_versions
            if self.namespace in (CWMP_1_2, CWMP_1_3)
            else None,
        )

    # -- the exchange ---------------------------------------------------------------------

    def receive(self, status: int, body: bytes, retry_after: float | None = None) -> bytes | None:
        """The next POST body, or None: the session completed."""
        if status in (429, 503):
            raise SessionFailed(f"http {status}", retry_after)
        if status not in (200, 204):
            raise SessionFailed(f"http {status}")
        if status == 204 or not body.strip():
            return self._empty_answer()
        try:
            message = cwmp.parse_acs(body)
        except cwmp.ProtocolError as e:
            raise SessionFailed(f"protocol: {e}") from None
        if self._phase == _INFORM:
            return self._inform_answered(message)
        if self._phase == _CPE:
            return self._report_answered(message)
        if self._phase == _ACS:
            self._hold = message.hold_requests
            return self.answer(message)
        raise SessionFailed("protocol: message after the session ended")

    def _empty_answer(self) -> bytes | None:
        if self._phase != _ACS:
            raise SessionFailed(f"protocol: empty answer in phase {self._phase}")
        self._hold = False
        if self._to_report:
            return self._report_next()  # held back by HoldRequests: send them now
        self._phase = _DONE
        return None

    def _inform_answered(self, message: cwmp.AcsMessage) -> bytes:
        if message.method == "Fault":
            raise SessionFailed(f"fault {message.fault_code}")
        if message.method != "InformResponse":
            raise SessionFailed("protocol: no InformResponse")
        device = self.device
        device._delivered(self.events)
        self._to_report = [t for t in device.transfers or () if t.done]
        self._hold = message.hold_requests
        return self._report_next()

    def _report_next(self) -> bytes:
        if self._to_report and not self._hold:
            transfer = self._reporting = self._to_report.pop(0)
            self._phase = _CPE
            if transfer.method == "ChangeDUState":
                return cwmp.du_state_change_complete(
                    self.namespace,
                    self._next_id(),
                    command_key=transfer.command_key,
                    results=transfer.operations,
                    start_time=transfer.start_time,
                    complete_time=transfer.complete_time,
                )
            fault_code, fault_string = transfer.fault or (0, "")
            return cwmp.transfer_complete(
                self.namespace,
                self._next_id(),
                command_key=transfer.command_key,
                fault_code=fault_code,
                fault_string=fault_string,
                start_time=transfer.start_time,
                complete_time=transfer.complete_time,
            )
        self._phase = _ACS
        return b""

    def _report_answered(self, message: cwmp.AcsMessage) -> bytes:
        if message.method == "Fault":
            raise SessionFailed(f"fault {message.fault_code}")
        expected = (
            "DUStateChangeCompleteResponse"
            if self._reporting is not None and self._reporting.method == "ChangeDUState"
            else "TransferCompleteResponse"
        )
        if message.method != expected or self._reporting is None:
            raise SessionFailed(f"protocol: no {expected}")
        self.device._transfer_acknowledged(self._reporting)
        self._reporting = None
        self._hold = message.hold_requests
        return self._report_next()

    # -- the ACS's requests ---------------------------------------------------------------

    def answer(self, message: cwmp.AcsMessage) -> bytes:
        """The response (or fault) to one ACS request, as a real CPE would give it."""
        method = message.method
        if method == "Fault" or method.endswith("Response"):
            raise SessionFailed(f"protocol: unexpected {method} from the ACS")
        self.answered.append(method)
        handler = _HANDLERS.get(method)
        spec = rpc.METHODS.get(method)
        try:
            if handler is None or spec is None or not spec.available_in(message.namespace):
                raise _Fault(9000)
            return handler(self, message)
        except _Fault as fault:
            self.faults.append((method, fault.code))
            return cwmp.cpe_fault(
                message.namespace, message.request_id, fault.code, spv_faults=fault.spv
            )

    def _get_rpc_methods(self, m: cwmp.AcsMessage) -> bytes:
        methods = [name for name, s in rpc.METHODS.items() if s.available_in(m.namespace)]
        return cwmp.rpc_methods_response(m.namespace, m.request_id, methods)

    def _names_argument(self, m: cwmp.AcsMessage) -> list[str]:
        if m.child("ParameterNames") is None:
            raise _Fault(9003)
        return [str(item.text or "").strip() for item in m.items("ParameterNames")]

    def _get_parameter_values(self, m: cwmp.AcsMessage) -> bytes:
        model = self.device.model
        found: list[tuple[str, str, str]] = []
        for name in self._names_argument(m):
            if name == "" or name.endswith("."):
                if not model.is_object(name):
                    raise _Fault(9005)
                leaves = model.leaves(name)
            else:
                leaves = [name]
            for leaf in leaves:
                param = model.read(leaf)
                if param is None:
                    raise _Fault(9005)
                found.append((leaf, param.value, param.type))
        return cwmp.parameter_values_response(m.namespace, m.request_id, found)

    def _set_parameter_values(self, m: cwmp.AcsMessage) -> bytes:
        device, model = self.device, self.device.model
        key = m.text("ParameterKey", "") or ""
        if len(key) > 32 or m.child("ParameterList") is None:
            raise _Fault(9003)
        changes: dict[str, str] = {}
        faults: list[tuple[str, int]] = []
        for struct in m.items("ParameterList"):
            parts = cwmp.fields(struct)
            name_el, value_el = parts.get("Name"), parts.get("Value")
            name = cwmp.text_of(name_el) or ""
            text = "" if value_el is None or value_el.text is None else str(value_el.text)
            if name in changes or any(n == name for n, _ in faults):
                raise _Fault(9003)  # the same parameter twice
            param = model.param(name) if name and not name.endswith(".") else None
            if param is None:
                faults.append((name, 9005))
                continue
            if not param.writable:
                faults.append((name, 9008))
                continue
            try:
                text = values.check_value(
                    param.type, text.strip() if param.type != "xsd:string" else text
                )
            except ValueError:
                faults.append((name, 9007))
                continue
            if name.endswith("." + DIAGNOSTICS_STATE) and text != "Requested":
                faults.append((name, 9007))  # "the only allowed value is Requested"
                continue
            changes[name] = text
        if faults:
            raise _Fault(9003, faults)  # all or nothing: nothing is applied
        ms = device.ms
        for name, text in changes.items():
            model.set(name, text)
            if name.startswith(ms + "PeriodicInform"):
                self.periodic_changed = True
            if name.endswith("." + DIAGNOSTICS_STATE):
                obj = name[: -len(DIAGNOSTICS_STATE)]
                if obj not in self.diagnostics:
                    self.diagnostics.append(obj)
        self._parameter_key(key)
        return cwmp.status_response(m.namespace, m.request_id, "SetParameterValues", 0)

    def _parameter_key(self, key: str) -> None:
        name = self.device.ms + "ParameterKey"
        if self.device.model.param(name) is not None:
            self.device.model.set(name, key)

    def _get_parameter_names(self, m: cwmp.AcsMessage) -> bytes:
        model = self.device.model
        path = m.text("ParameterPath")
        if path is None:
            raise _Fault(9003)
        next_level = _flag(m.text("NextLevel", "0"))
        if path == "" or path.endswith("."):
            if not model.is_object(path):
                raise _Fault(9005)
            names = model.names(path, next_level)
        else:
            param = model.param(path)
            if param is None:
                raise _Fault(9005)
            if next_level:
                raise _Fault(9003)  # NextLevel true needs an object path
            names = [(path, param.writable)]
        return cwmp.parameter_names_response(m.namespace, m.request_id, names)

    def _attribute_leaves(self, name: str) -> list[str]:
        model = self.device.model
        if name == "" or name.endswith("."):
            if not model.is_object(name):
                raise _Fault(9005)
            return model.leaves(name)
        if model.param(name) is None:
            raise _Fault(9005)
        return [name]

    def _get_parameter_attributes(self, m: cwmp.AcsMessage) -> bytes:
        model = self.device.model
        found: list[tuple[str, int, tuple[str, ...]]] = []
        for name in self._names_argument(m):
            for leaf in self._attribute_leaves(name):
                notification, access = model.attribute(leaf)
                found.append((leaf, notification, access))
        return cwmp.parameter_attributes_response(m.namespace, m.request_id, found)

    def _set_parameter_attributes(self, m: cwmp.AcsMessage) -> bytes:
        model = self.device.model
        if m.child("ParameterList") is None:
            raise _Fault(9003)
        planned: list[tuple[str, int | None, tuple[str, ...] | None]] = []
        for struct in m.items("ParameterList"):
            parts = cwmp.fields(struct)
            name = cwmp.text_of(parts.get("Name"))
            if name is None:
                raise _Fault(9003)
            self._attribute_leaves(name)  # 9005 for an unknown name
            notification: int | None = None
            if _flag(cwmp.text_of(parts.get("NotificationChange"))):
                notification = _uint(cwmp.text_of(parts.get("Notification")))
                if notification > 6:
                    raise _Fault(9003)
            access: tuple[str, ...] | None = None
            if _flag(cwmp.text_of(parts.get("AccessListChange"))):
                access_el = parts.get("AccessList")
                entries = [] if access_el is None else cwmp.elements(access_el)
                access = tuple(cwmp.text_of(e) or "" for e in entries)
                if any(a != "Subscriber" for a in access):
                    raise _Fault(9003)
            planned.append((name, notification, access))
        for name, notification, access in planned:
            model.set_attribute(name, notification, access)
        return cwmp.empty_response(m.namespace, m.request_id, "SetParameterAttributes")

    def _object_name(self, m: cwmp.AcsMessage) -> str:
        name = m.text("ObjectName")
        key = m.text("ParameterKey", "") or ""
        if name is None or not name.endswith(".") or len(key) > 32:
            raise _Fault(9003)
        return name

    def _add_object(self, m: cwmp.AcsMessage) -> bytes:
        name = self._object_name(m)
        model = self.device.model
        if not model.is_table(name):
            raise _Fault(9005)
        number = model.add_object(name)
        self._parameter_key(m.text("ParameterKey", "") or "")
        return cwmp.add_object_response(m.namespace, m.request_id, number)

    def _delete_object(self, m: cwmp.AcsMessage) -> bytes:
        name = self._object_name(m)
        model = self.device.model
        last = name[:-1].rsplit(".", 1)[-1]
        if not last.isdigit() or not model.is_object(name):
            raise _Fault(9005)
        model.delete_object(name)
        self._parameter_key(m.text("ParameterKey", "") or "")
        return cwmp.status_response(m.namespace, m.request_id, "DeleteObject", 0)

    def _queue_transfer(self, m: cwmp.AcsMessage, method: str, delay: float, size: int = 0) -> None:
        device = self.device
        key = m.text("CommandKey", "") or ""
        file_type = m.text("FileType") or ""
        url = m.text("URL") or ""
        if not file_type or not url or len(key) > 32:
            raise _Fault(9003)
        if urllib.parse.urlsplit(url).scheme.lower() not in _TRANSFER_SCHEMES:
            raise _Fault(9013)
        if len(device.transfers or ()) >= _MAX_TRANSFERS:
            raise _Fault(9004)
        transfer = _Transfer(
            method,
            key,
            file_type,
            size,
            m.text("TargetFileName", "") or "",
            delay,
        )
        transfer.url = url
        transfer.username = m.text("Username", "") or ""
        transfer.password = m.text("Password", "") or ""
        if device.transfers is None:
            device.transfers = []
        device.transfers.append(transfer)

    def _download(self, m: cwmp.AcsMessage) -> bytes:
        delay = _uint(m.text("DelaySeconds"), 0)
        self._queue_transfer(m, "Download", delay, _uint(m.text("FileSize"), 0))
        return cwmp.transfer_response(m.namespace, m.request_id, "Download", status=1)

    def _upload(self, m: cwmp.AcsMessage) -> bytes:
        delay = _uint(m.text("DelaySeconds"), 0)
        self._queue_transfer(m, "Upload", delay)
        return cwmp.transfer_response(m.namespace, m.request_id, "Upload", status=1)

    def _schedule_download(self, m: cwmp.AcsMessage) -> bytes:
        windows = m.items("TimeWindowList")
        if not 1 <= len(windows) <= 2:
            raise _Fault(9003)
        first = cwmp.fields(windows[0])
        start = _uint(cwmp.text_of(first.get("WindowStart")))
        if _uint(cwmp.text_of(first.get("WindowEnd"))) < start:
            raise _Fault(9003)
        self._queue_transfer(m, "ScheduleDownload", self.now + start, _uint(m.text("FileSize"), 0))
        return cwmp.empty_response(m.namespace, m.request_id, "ScheduleDownload")

    def _cancel_transfer(self, m: cwmp.AcsMessage) -> bytes:
        device = self.device
        key = m.text("CommandKey")
        if key is None:
            raise _Fault(9003)
        matching = [
            t
            for t in device.transfers or ()
            if t.command_key == key and t.method != "ChangeDUState"
        ]
        if not matching:
            raise _Fault(9003)
        if any(t.state(self.now) != 1 for t in matching):
            raise _Fault(9021)  # already under way or done: too late
        device.transfers = [t for t in device.transfers or () if t not in matching] or None
        return cwmp.empty_response(m.namespace, m.request_id, "CancelTransfer")

    def _queued(self) -> list[_Transfer]:
        """The transfers (a pending ChangeDUState shares their list, not their RPCs)."""
        transfers = [t for t in self.device.transfers or () if t.method != "ChangeDUState"]
        return transfers[:_MAX_TRANSFERS]

    def _get_queued_transfers(self, m: cwmp.AcsMessage) -> bytes:
        items = [(t.command_key, t.state(self.now)) for t in self._queued()]
        return cwmp.queued_transfers_response(m.namespace, m.request_id, items)

    def _get_all_queued_transfers(self, m: cwmp.AcsMessage) -> bytes:
        items = [
            (t.command_key, t.state(self.now), t.is_download, t.file_type, t.file_size, t.target)
            for t in self._queued()
        ]
        return cwmp.all_queued_transfers_response(m.namespace, m.request_id, items)

    def _reboot(self, m: cwmp.AcsMessage) -> bytes:
        self.reboot_key = m.text("CommandKey", "") or ""
        return cwmp.empty_response(m.namespace, m.request_id, "Reboot")

    def _factory_reset(self, m: cwmp.AcsMessage) -> bytes:
        self.factory_reset = True
        return cwmp.empty_response(m.namespace, m.request_id, "FactoryReset")

    def _schedule_inform(self, m: cwmp.AcsMessage) -> bytes:
        delay = _uint(m.text("DelaySeconds"))
        if delay < 1:
            raise _Fault(9003)
        device = self.device
        if device.timers is None:
            device.timers = []
        device.timers.append((self.now + delay, m.text("CommandKey", "") or ""))
        return cwmp.empty_response(m.namespace, m.request_id, "ScheduleInform")

    def _change_du_state(self, m: cwmp.AcsMessage) -> bytes:
        """Accepted; each operation succeeds a moment after the session (the deployment
        units themselves are not in the data model), reported by DUStateChangeComplete."""
        key = m.text("CommandKey", "") or ""
        operations: list[tuple[str, str, str]] = []
        for n, (kind, given) in enumerate(cwmp.du_operations(m), start=1):
            state = _DU_STATE_AFTER.get(kind)
            if state is None:
                raise _Fault(9003)
            # An install names no UUID: the CPE makes one (stable for the same request).
            made = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.device.device_id}/{key}/{n}")
            ref = f"Device.SoftwareModules.DeploymentUnit.{n}"
            operations.append((given or str(made), ref, state))
        if not operations or len(key) > 32:
            raise _Fault(9003)
        device = self.device
        if len(device.transfers or ()) >= _MAX_TRANSFERS:
            raise _Fault(9004)
        change = _Transfer("ChangeDUState", key, "", 0, "", 0.0)
        change.operations = tuple(operations)
        if device.transfers is None:
            device.transfers = []
        device.transfers.append(change)
        return cwmp.empty_response(m.namespace, m.request_id, "ChangeDUState")

    def _set_vouchers(self, m: cwmp.AcsMessage) -> bytes:
        if m.child("VoucherList") is None:
            raise _Fault(9003)
        return cwmp.empty_response(m.namespace, m.request_id, "SetVouchers")

    def _get_options(self, m: cwmp.AcsMessage) -> bytes:
        return cwmp.get_options_response(m.namespace, m.request_id)


_HANDLERS: Final[Mapping[str, Callable[[CpeSession, cwmp.AcsMessage], bytes]]] = {
    "GetRPCMethods": CpeSession._get_rpc_methods,
    "GetParameterValues": CpeSession._get_parameter_values,
    "SetParameterValues": CpeSession._set_parameter_values,
    "GetParameterNames": CpeSession._get_parameter_names,
    "GetParameterAttributes": CpeSession._get_parameter_attributes,
    "SetParameterAttributes": CpeSession._set_parameter_attributes,
    "AddObject": CpeSession._add_object,
    "DeleteObject": CpeSession._delete_object,
    "Download": CpeSession._download,
    "Upload": CpeSession._upload,
    "ScheduleDownload": CpeSession._schedule_download,
    "CancelTransfer": CpeSession._cancel_transfer,
    "GetQueuedTransfers": CpeSession._get_queued_transfers,
    "GetAllQueuedTransfers": CpeSession._get_all_queued_transfers,
    "Reboot": CpeSession._reboot,
    "FactoryReset": CpeSession._factory_reset,
    "ScheduleInform": CpeSession._schedule_inform,
    "ChangeDUState": CpeSession._change_du_state,
    "SetVouchers": CpeSession._set_vouchers,
    "GetOptions": CpeSession._get_options,
}
