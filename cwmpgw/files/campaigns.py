"""Firmware campaigns: a file rolled out to a set of devices in waves, safely.

A campaign targets a fixed, ordered list of devices (an explicit list, or what a
selector matched when it was created), cut into cumulative waves ("1%", "10%", "100%"
or counts). The driver queues a Download task per device, at most ``max_in_flight`` at
a time, inside the maintenance window, wave after wave. A device is **upgraded** only
when its TransferComplete succeeded *and* an Inform after the Download was queued
reports the target SoftwareVersion; a device already on it is **skipped**. When more
than ``stop_rule.failed_percent`` of a wave has failed the campaign **stops**: no new
devices, the ones in flight are still followed to their end.

Everything is in Redis (``<prefix>campaign:<id>`` and its ``:devices`` list, ``:state``
hash and ``:inflight`` set); each device's move is one Lua script that checks the move
is still due (the state it leaves, the wave cursor) and stores its event with it. The
Download task's idempotency key is ``campaign:<id>:<device>``, so a driver that dies
between queuing a task and recording it queues nothing twice. One node drives at a time
(a lease in Redis); any node answers the API.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from cwmpgw.bus.events import Event, device_ref
from cwmpgw.bus.redis import EMIT_LUA, EventStream
from cwmpgw.connreq.interfaces import IConnectionRequester
from cwmpgw.files.model import FileError, FileInfo
from cwmpgw.files.selector import (
    SOFTWARE_VERSION,
    IDeviceSelector,
    check_selector,
    software_version,
)
from cwmpgw.store.interfaces import IDeviceStore
from cwmpgw.tasks.model import ITaskService, TaskError, UnknownDevice

__all__ = [
    "CAMPAIGN_STATUSES",
    "DEVICE_STATES",
    "CampaignConflict",
    "CampaignSpec",
    "ICampaigns",
    "RedisCampaigns",
    "parse_spec",
]

CAMPAIGN_STATUSES: Final = ("running", "paused", "stopped", "aborted", "completed")
DEVICE_STATES: Final = ("pending", "queued", "transferred", "upgraded", "failed", "skipped")
_FINAL_DEVICE: Final = frozenset({"upgraded", "failed", "skipped"})
#: action → (allowed from, to)
_ACTIONS: Final = {
    "pause": (("running",), "paused"),
    "resume": (("paused", "stopped"), "running"),
    "abort": (("running", "paused", "stopped"), "aborted"),
}
_TIME_RE: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_OFFSET_RE: Final = re.compile(r"([+-])([01][0-9]|2[0-3]):([0-5][0-9])")
_POSIX_TZ_RE: Final = re.compile(r"(?:<[^>]{1,32}>|[A-Za-z]{3,32})([+-]?)(\d{1,2})(?::(\d{2}))?")
_TIME_ZONE: Final = ("Device.Time.LocalTimeZone", "InternetGatewayDevice.Time.LocalTimeZone")
_WAVE_RE: Final = re.compile(r"(\d{1,3}(?:\.\d{1,3})?)%")
_MAX_DEVICES: Final = 1_000_000
# Seconds after which a device whose Download still waits is woken again.
_REWAKE: Final = 30.0


class CampaignConflict(Exception):
    """The campaign is not in a status the action applies to."""


# -- the spec ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    name: str
    file: str
    devices: tuple[str, ...] | None
    selector: dict[str, Any] | None
    waves: tuple[str | int, ...]
    max_in_flight: int
    failed_percent: float
    min_failed: int
    window: dict[str, str] | None
    connection_request: bool
    task_expiry: int
    verify_timeout: int
    wave_delay: int
    target_version: str | None  # None: the file's

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "selector": self.selector,
            "waves": list(self.waves),
            "max_in_flight": self.max_in_flight,
            "stop_rule": {"failed_percent": self.failed_percent, "min_failed": self.min_failed},
            "window": self.window,
            "connection_request": self.connection_request,
            "task_expiry": self.task_expiry,
            "verify_timeout": self.verify_timeout,
            "wave_delay": self.wave_delay,
        }


def _int(body: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FileError(key, f"an integer from {low} to {high}")
    return value


def _str(value: Any, where: str, max_length: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise FileError(where, f"a string of 1 to {max_length} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FileError(where, "control characters are not allowed")
    return value


def parse_spec(body: Any) -> CampaignSpec:
    """Check a campaign request (raises FileError naming the field)."""
    if not isinstance(body, dict):
        raise FileError("body", "a JSON object is required")
    allowed = (
        "name file devices selector waves max_in_flight stop_rule window connection_request "
        "task_expiry verify_timeout wave_delay target_version"
    ).split()
    for key in body:
        if key not in allowed:
            raise FileError(str(key)[:64], f"unknown field (allowed: {', '.join(allowed)})")
    if "file" not in body:
        raise FileError("file", "required")
    file_id = _str(body["file"], "file", 64)
    if ("devices" in body) == ("selector" in body):
        raise FileError("devices", "give either devices (a list of ids) or selector")
    devices: tuple[str, ...] | None = None
    selector: dict[str, Any] | None = None
    if "devices" in body:
        raw = body["devices"]
        if not isinstance(raw, list) or not raw or len(raw) > _MAX_DEVICES:
            raise FileError("devices", f"a list of 1 to {_MAX_DEVICES} device ids")
        seen: dict[str, None] = {}
        for i, d in enumerate(raw):
            seen[_str(d, f"devices[{i}]", 1024)] = None
        devices = tuple(seen)
    else:
        selector = check_selector(body["selector"])
    waves_raw = body.get("waves", ["100%"])
    if not isinstance(waves_raw, list) or not 1 <= len(waves_raw) <= 20:
        raise FileError("waves", "a list of 1 to 20 cumulative sizes: '10%' or counts")
    waves: list[str | int] = []
    last = 0.0
    for i, w in enumerate(waves_raw):
        where = f"waves[{i}]"
        if isinstance(w, str) and (m := _WAVE_RE.fullmatch(w)):
            share = float(m.group(1))
            if not 0 < share <= 100:
                raise FileError(where, "a share from 0% (excluded) to 100%")
            key = share / 100
        elif isinstance(w, int) and not isinstance(w, bool) and w > 0:
            key = float(w)
        else:
            raise FileError(where, "'<n>%' or a positive count")
        if waves and type(w) is not type(waves[0]):
            raise FileError(where, "all shares or all counts")
        if key <= last:
            raise FileError(where, "waves are cumulative: each larger than the one before")
        last = key
        waves.append(w)
    rule = body.get("stop_rule", {})
    if not isinstance(rule, dict) or any(k not in ("failed_percent", "min_failed") for k in rule):
        raise FileError("stop_rule", "an object: failed_percent, min_failed")
    percent = rule.get("failed_percent", 5)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise FileError("stop_rule.failed_percent", "a number from 0 to 100")
    min_failed = _int(rule, "min_failed", 1, 1, _MAX_DEVICES)
    window = body.get("window")
    if window is not None:
        if not isinstance(window, dict) or set(window) - {"start", "end", "utc_offset"}:
            raise FileError("window", "an object: start, end ('HH:MM'), utc_offset")
        for key in ("start", "end"):
            if not isinstance(window.get(key), str) or not _TIME_RE.fullmatch(window[key]):
                raise FileError(f"window.{key}", "a time 'HH:MM'")
        offset = window.get("utc_offset", "+00:00")
        if offset != "device" and not (isinstance(offset, str) and _OFFSET_RE.fullmatch(offset)):
            raise FileError("window.utc_offset", "'+HH:MM', '-HH:MM' or 'device'")
        window = {"start": window["start"], "end": window["end"], "utc_offset": offset}
    cr = body.get("connection_request", True)
    if not isinstance(cr, bool):
        raise FileError("connection_request", "true or false")
    target = body.get("target_version")
    if target is not None:
        target = _str(target, "target_version") if target != "" else ""
    return CampaignSpec(
        name=_str(body.get("name", "campaign"), "name", 128),
        file=file_id,
        devices=devices,
        selector=selector,
        waves=tuple(waves),
        max_in_flight=_int(body, "max_in_flight", 100, 1, 100_000),
        failed_percent=float(percent),
        min_failed=min_failed,
        window=window,
        connection_request=cr,
        task_expiry=_int(body, "task_expiry", 86_400, 60, 31_536_000),
        verify_timeout=_int(body, "verify_timeout", 3_600, 10, 2_592_000),
        wave_delay=_int(body, "wave_delay", 0, 0, 2_592_000),
        target_version=target,
    )


def wave_ends(waves: Sequence[str | int], total: int) -> list[int]:
    """Where each wave ends in the device list (cumulative, the last at most ``total``)."""
    ends: list[int] = []
    for w in waves:
        if isinstance(w, str):
            end = math.ceil(float(w[:-1]) / 100 * total - 1e-9)
        else:
            end = w
        end = max(1, min(total, end))
        if not ends or end > ends[-1]:
            ends.append(end)
    return ends or [total]


def in_window(now: float, window: Mapping[str, str] | None, offset: float) -> bool:
    if window is None:
        return True
    minute = int(((now + offset) % 86_400) // 60)
    sh, sm = map(int, window["start"].split(":"))
    eh, em = map(int, window["end"].split(":"))
    start, end = sh * 60 + sm, eh * 60 + em
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end


def _fixed_offset(text: str) -> float:
    m = _OFFSET_RE.fullmatch(text)
    if m is None:
        return 0.0
    sign = -1 if m.group(1) == "-" else 1
    return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)


def posix_tz_offset(tz: str | None) -> float:
    """The standard-time UTC offset (seconds east) of a POSIX TZ string ("CET-1CEST,…");
    0 when unknown. POSIX counts hours west, so "CET-1" is UTC+1."""
    m = _POSIX_TZ_RE.match(tz or "")
    if m is None:
        return 0.0
    west = int(m.group(2)) * 3600 + int(m.group(3) or 0) * 60
    return float(west if m.group(1) == "-" else -west)


# -- the interface the API uses -------------------------------------------------------------


class ICampaigns(Interface):
    def create(spec: CampaignSpec, file: FileInfo) -> Deferred[dict[str, Any]]:
        """Resolve the targets, store the campaign (running) and fire with its view."""

    def list() -> Deferred[list[dict[str, Any]]]:
        """Every campaign's view, newest first."""

    def get(campaign_id: str) -> Deferred[dict[str, Any] | None]:
        """The campaign's view with its counts, or None."""

    def control(campaign_id: str, action: str) -> Deferred[dict[str, Any] | None]:
        """pause, resume or abort; None if there is no such campaign; errbacks with
        CampaignConflict if the action does not apply to its status."""


# -- Redis ------------------------------------------------------------------------------------

# KEYS: campaign, state, inflight, stream. ARGV: device, json, old, new, wave, inflight op
# ('add', 'rem', ''), expected cursor ('' = none), new cursor, then the four of emit.
_MOVE = (
    EMIT_LUA
    + """
if ARGV[7] ~= '' then
  if redis.call('HGET', KEYS[1], 'cursor') ~= ARGV[7] then return 0 end
  redis.call('HSET', KEYS[1], 'cursor', ARGV[8])
end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
local was = ''
if cur then was = cjson.decode(cur)['s'] end
if was ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[3], -1) end
redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[4], 1)
if ARGV[4] == 'failed' then redis.call('HINCRBY', KEYS[1], 'f:' .. ARGV[5], 1) end
if ARGV[6] == 'add' then redis.call('SADD', KEYS[3], ARGV[1]) end
if ARGV[6] == 'rem' then redis.call('SREM', KEYS[3], ARGV[1]) end
emit(KEYS[4], ARGV[9], ARGV[10], ARGV[11], ARGV[12])
return 1
"""
)
# KEYS: campaign, stream, active. ARGV: to, reason, now, the four of emit, extra field,
# its value, then the statuses it may leave. Returns the old status, or '!<status>'.
_STATUS = (
    EMIT_LUA
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
local ok = false
for i = 10, #ARGV do if ARGV[i] == cur then ok = true end end
if not ok then return '!' .. cur end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'reason', ARGV[2], 'updated', ARGV[3])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], ARGV[8], ARGV[9]) end
if ARGV[1] == 'completed' then redis.call('SREM', KEYS[3], KEYS[1]) end
emit(KEYS[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return cur
"""
)
# KEYS: campaign, stream. ARGV: expected wave, the four of emit, then field/value pairs.
_FIELDS = (
    EMIT_LUA
    + """
if redis.call('HGET', KEYS[1], 'wave') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
emit(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
)
# KEYS: lease. ARGV: owner, ms. Take or renew.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


@implementer(ICampaigns)
class RedisCampaigns:
    _log = Logger()

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        tasks: ITaskService,
        devices: IDeviceStore,
        clock: IReactorTime,
        node: str,
        selector: IDeviceSelector,
        waker: IConnectionRequester | None = None,
        stream_maxlen: int = 100_000,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._tasks = tasks
        self._devices = devices
        self._clock = clock
        self._node = node
        self._selector = selector
        self._waker = waker
        self._stream = EventStream(prefix, stream_maxlen)
        self._owner = f"{node}:{os.urandom(6).hex()}"
        # When this driver last woke a device whose task still waits (in memory: after a
        # restart every waiting device is woken again at once).
        self._woken: dict[str, float] = {}

    def _key(self, campaign_id: str) -> str:
        return f"{self._prefix}campaign:{campaign_id}"

    def _event(self, kind: str, data: dict[str, Any], device_id: str | None = None) -> Event:
        device = device_ref(device_id) if device_id else None
        return Event(kind, self._clock.seconds(), self._node, data, device)

    # -- the API side ---------------------------------------------------------------------

    def create(self, spec: CampaignSpec, file: FileInfo) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._create(spec, file))

    async def _create(self, spec: CampaignSpec, file: FileInfo) -> dict[str, Any]:
        devices = list(spec.devices) if spec.devices is not None else None
        if devices is None:
            assert spec.selector is not None
            devices = await self._selector.select(spec.selector)
        if not devices:
            raise FileError("selector", "matches no device")
        now = self._clock.seconds()
        campaign_id = f"c{int(now * 1000):011x}{os.urandom(4).hex()}"
        target = spec.target_version if spec.target_version is not None else file.software_version
        key = self._key(campaign_id)
        record = {
            "id": campaign_id,
            "spec": json.dumps(spec.to_dict()),
            "file_type": file.file_type,
            "target_version": target,
            "status": "running",
            "reason": "",
            "wave": "0",
            "cursor": "0",
            "wave_done_at": "",
            "ignore_stop_wave": "-1",
            "total": str(len(devices)),
            "created": repr(now),
            "updated": repr(now),
        }
        for start in range(0, len(devices), 1000):
            await self._redis.execute_command(
                "RPUSH", key + ":devices", *devices[start : start + 1000]
            )
        await self._redis.execute_command("HSET", key, *[x for kv in record.items() for x in kv])
        await self._redis.execute_command(
            "ZADD", self._prefix + "campaigns", repr(now), campaign_id
        )
        await self._redis.execute_command("SADD", self._prefix + "campaigns:active", key)
        view = await self._view(campaign_id)
        assert view is not None
        await self._publish(self._event("campaign.created", _summary(view)))
        self._log.info(
            "campaign {campaign_id} ({name}) created: {total} devices, file {file_id}, "
            "target version {target}",
            campaign_id=campaign_id,
            name=spec.name,
            total=len(devices),
            file_id=file.id,
            target=target or "(any)",
        )
        return view

    async def _publish(self, event: Event) -> None:
        await self._redis.eval(
            EMIT_LUA + "emit(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])",
            [self._stream.key],
            self._stream.args(event),
        )

    def list(self) -> Deferred[list[dict[str, Any]]]:
        async def run() -> list[dict[str, Any]]:
            ids = await self._redis.execute_command("ZREVRANGE", self._prefix + "campaigns", 0, 999)
            views = [await self._view(i) for i in ids]
            return [v for v in views if v is not None]

        return Deferred.fromCoroutine(run())

    def get(self, campaign_id: str) -> Deferred[dict[str, Any] | None]:
        return Deferred.fromCoroutine(self._view(campaign_id))

    async def _view(self, campaign_id: str) -> dict[str, Any] | None:
        h = await self._redis.hgetall(self._key(campaign_id))
        if not h or "spec" not in h:
            return None
        spec = json.loads(h["spec"])
        total = int(h["total"])
        counts = {s: int(h.get("n:" + s, 0)) for s in DEVICE_STATES if s != "pending"}
        counts = {"pending": total - sum(counts.values()), **counts}
        ends = wave_ends(spec["waves"], total)
        waves = []
        for i, end in enumerate(ends):
            start = ends[i - 1] if i else 0
            waves.append({"size": end - start, "failed": int(h.get(f"f:{i}", 0))})
        return {
            "id": campaign_id,
            **spec,
            "target_version": h["target_version"],
            "file_type": h["file_type"],
            "status": h["status"],
            "reason": h.get("reason", ""),
            "wave": int(h["wave"]),
            "total": total,
            "dispatched": int(h["cursor"]),
            "counts": counts,
            "wave_progress": waves,
            "created": float(h["created"]),
            "updated": float(h["updated"]),
        }

    def control(self, campaign_id: str, action: str) -> Deferred[dict[str, Any] | None]:
        return Deferred.fromCoroutine(self._control(campaign_id, action))

    async def _control(self, campaign_id: str, action: str) -> dict[str, Any] | None:
        froms, to = _ACTIONS[action]
        extra: tuple[str, str] = ("", "")
        if action == "resume":
            # The stop rule has spoken for this wave; resuming overrides it for the wave.
            wave = await self._redis.execute_command("HGET", self._key(campaign_id), "wave")
            extra = ("ignore_stop_wave", str(wave or 0))
        old = await self._set_status(campaign_id, froms, to, f"{action} by the API", extra)
        if old == "":
            return None
        if old.startswith("!"):
            raise CampaignConflict(f"campaign {campaign_id} is {old[1:]}; cannot {action}")
        return await self._view(campaign_id)

    async def _set_status(
        self,
        campaign_id: str,
        froms: Sequence[str],
        to: str,
        reason: str,
        extra: tuple[str, str] = ("", ""),
    ) -> str:
        kind = {"paused": "campaign.paused", "running": "campaign.resumed"}.get(
            to, f"campaign.{to}"
        )
        event = self._event(kind, {"campaign": campaign_id, "reason": reason})
        old: Any = await self._redis.eval(
            _STATUS,
            [self._key(campaign_id), self._stream.key, self._prefix + "campaigns:active"],
            [to, reason, repr(self._clock.seconds()), *self._stream.args(event), *extra, *froms],
        )
        return str(old or "")

    # -- the driver -----------------------------------------------------------------------

    async def tick(self, lease: float = 30.0) -> bool:
        """One step of every active campaign, if this node holds the lease."""
        held = await self._redis.eval(
            _LEASE, [self._prefix + "campaigns:lease"], [self._owner, str(int(lease * 1000))]
        )
        if not held:
            return False
        keys = await self._redis.execute_command("SMEMBERS", self._prefix + "campaigns:active")
        for key in sorted(keys):
            campaign_id = key[len(self._prefix + "campaign:") :]
            try:
                await self._step(campaign_id)
            except Exception:
                self._log.failure("campaign {campaign_id}: step failed", campaign_id=campaign_id)
        return True

    async def release(self) -> None:
        key = self._prefix + "campaigns:lease"
        if await self._redis.get(key) == self._owner:
            await self._redis.delete(key)

    async def _move(
        self,
        key: str,
        device_id: str,
        state: dict[str, Any],
        old: str,
        wave: int,
        inflight: str = "",
        cursor: tuple[str, str] = ("", ""),
        event: Event | None = None,
    ) -> bool:
        done: Any = await self._redis.eval(
            _MOVE,
            [key, key + ":state", key + ":inflight", self._stream.key],
            [
                device_id,
                json.dumps(state),
                old,
                state["s"],
                str(wave),
                inflight,
                *cursor,
                *self._stream.args(event),
            ],
        )
        return bool(done)

    async def _step(self, campaign_id: str) -> None:
        key = self._key(campaign_id)
        h = await self._redis.hgetall(key)
        if not h or "spec" not in h:
            await self._redis.execute_command("SREM", self._prefix + "campaigns:active", key)
            return
        spec = json.loads(h["spec"])
        inflight = sorted(await self._redis.execute_command("SMEMBERS", key + ":inflight"))
        if inflight:
            states = await self._redis.execute_command("HMGET", key + ":state", *inflight)
            for device_id, raw in zip(inflight, states, strict=True):
                if raw:
                    await self._follow(campaign_id, key, h, spec, device_id, json.loads(raw))
            inflight = sorted(await self._redis.execute_command("SMEMBERS", key + ":inflight"))
        h = await self._redis.hgetall(key)
        status = h["status"]
        if status == "aborted":
            await self._cancel_queued(key, inflight)
            if not inflight:
                await self._redis.execute_command("SREM", self._prefix + "campaigns:active", key)
            return
        if status != "running":
            return
        total, wave, cursor = int(h["total"]), int(h["wave"]), int(h["cursor"])
        ends = wave_ends(spec["waves"], total)
        start, end = (ends[wave - 1] if wave else 0), ends[wave]
        failed = int(h.get(f"f:{wave}", 0))
        rule = spec["stop_rule"]
        if (
            str(wave) != h.get("ignore_stop_wave")
            and failed >= rule["min_failed"]
            and failed * 100 > rule["failed_percent"] * (end - start)
        ):
            reason = (
                f"stop rule: {failed} of {end - start} devices of wave {wave + 1} failed "
                f"(more than {rule['failed_percent']:g}%)"
            )
            if await self._set_status(campaign_id, ("running",), "stopped", reason):
                self._log.warn(
                    "campaign {campaign_id} stopped: {reason}",
                    campaign_id=campaign_id,
                    reason=reason,
                )
            return
        if cursor >= end and not inflight:
            await self._wave_done(campaign_id, key, h, spec, wave, len(ends))
            return
        free = int(spec["max_in_flight"]) - len(inflight)
        if free <= 0 or cursor >= end:
            return
        now = self._clock.seconds()
        window = spec["window"]
        if window is not None and window["utc_offset"] != "device":
            if not in_window(now, window, _fixed_offset(window["utc_offset"])):
                return
        batch = await self._redis.execute_command(
            "LRANGE", key + ":devices", cursor, min(end, cursor + free) - 1
        )
        for device_id in batch:
            if not await self._dispatch(campaign_id, key, h, spec, device_id, wave, cursor, now):
                return  # outside its window (or the cursor moved): try again next tick
            cursor += 1

    async def _wave_done(
        self,
        campaign_id: str,
        key: str,
        h: dict[str, str],
        spec: dict[str, Any],
        wave: int,
        waves: int,
    ) -> None:
        if wave + 1 >= waves:
            view = await self._view(campaign_id)
            counts = view["counts"] if view else {}
            if await self._set_status(campaign_id, ("running",), "completed", "every wave done"):
                self._log.info(
                    "campaign {campaign_id} completed: {counts}",
                    campaign_id=campaign_id,
                    counts=counts,
                )
            return
        now = self._clock.seconds()
        if not h.get("wave_done_at"):
            h["wave_done_at"] = repr(now)
            await self._redis.execute_command("HSET", key, "wave_done_at", repr(now))
        if now - float(h["wave_done_at"]) < spec["wave_delay"]:
            return
        event = self._event("campaign.wave", {"campaign": campaign_id, "wave": wave + 2})
        await self._redis.eval(
            _FIELDS,
            [key, self._stream.key],
            [str(wave), *self._stream.args(event), "wave", str(wave + 1), "wave_done_at", ""],
        )
        self._log.info(
            "campaign {campaign_id}: wave {wave} starts", campaign_id=campaign_id, wave=wave + 2
        )

    async def _dispatch(
        self,
        campaign_id: str,
        key: str,
        h: dict[str, str],
        spec: dict[str, Any],
        device_id: str,
        wave: int,
        cursor: int,
        now: float,
    ) -> bool:
        target = h["target_version"]
        device = await self._devices.get_device(device_id, (*SOFTWARE_VERSION, *_TIME_ZONE))
        window = spec["window"]
        if device is not None and window is not None and window["utc_offset"] == "device":
            params = device.get("parameters") or {}
            tz = next((params[n]["value"] for n in _TIME_ZONE if n in params), None)
            if not in_window(now, window, posix_tz_offset(tz)):
                return False
        moved = (str(cursor), str(cursor + 1))
        data = {"campaign": campaign_id, "wave": wave + 1}
        if device is None:
            state = {"s": "failed", "reason": "unknown device", "t": now}
            event = self._event("campaign.device", {**data, **state}, device_id)
            return await self._move(key, device_id, state, "", wave, "", moved, event)
        if target and software_version(device) == target:
            state = {"s": "skipped", "reason": f"already on {target}", "t": now}
            event = self._event("campaign.device", {**data, **state}, device_id)
            return await self._move(key, device_id, state, "", wave, "", moved, event)
        try:
            task = await self._tasks.submit(
                device_id,
                "Download",
                {"file_type": h["file_type"], "file": spec["file"]},
                expires_in=spec["task_expiry"],
                idempotency_key=f"campaign:{campaign_id}:{device_id}"[:128],
            )
        except (TaskError, UnknownDevice) as e:
            state = {"s": "failed", "reason": f"not queued: {e}", "t": now}
            event = self._event("campaign.device", {**data, **state}, device_id)
            return await self._move(key, device_id, state, "", wave, "", moved, event)
        state = {"s": "queued", "task": task.id, "t": now, "queued_at": task.created, "w": wave}
        if not await self._move(key, device_id, state, "", wave, "add", moved):
            return False
        if spec["connection_request"]:
            self._wake(device_id)
        return True

    def _wake(self, device_id: str) -> None:
        """Ask the device to connect now; best effort (its next Inform runs the task)."""
        if self._waker is None:
            return
        self._woken[device_id] = self._clock.seconds()
        self._waker.wake(device_id).addErrback(lambda f: None)

    async def _follow(
        self,
        campaign_id: str,
        key: str,
        h: dict[str, str],
        spec: dict[str, Any],
        device_id: str,
        state: dict[str, Any],
    ) -> None:
        now = self._clock.seconds()
        wave = int(state.get("w", h["wave"]))
        data = {"campaign": campaign_id, "wave": wave + 1, "task": state.get("task")}
        if state["s"] == "queued":
            task = await self._tasks.get(state["task"])
            if task is None or task.status in ("failed", "expired", "cancelled"):
                reason = _why(task)
                new = {**state, "s": "failed", "reason": reason, "t": now}
                event = self._event(
                    "campaign.device", {**data, "s": "failed", "reason": reason}, device_id
                )
                await self._move(key, device_id, new, "queued", wave, "rem", event=event)
                return
            if task.status == "queued" and spec["connection_request"]:
                if now - self._woken.get(device_id, 0.0) >= _REWAKE:
                    self._wake(device_id)
            if task.status != "done":
                return
            self._woken.pop(device_id, None)
            transferred = {**state, "s": "transferred", "done_at": now, "t": now}
            if not await self._move(key, device_id, transferred, "queued", wave):
                return
            state = transferred
        if state["s"] != "transferred":
            return
        target = h["target_version"]
        device = await self._devices.get_device(device_id, SOFTWARE_VERSION)
        version = software_version(device)
        informed_since = device is not None and float(device["last_inform"]) >= state["queued_at"]
        if not target or (informed_since and version == target):
            new = {**state, "s": "upgraded", "version": version or "", "t": now}
            event = self._event(
                "campaign.device", {**data, "s": "upgraded", "version": version or ""}, device_id
            )
            await self._move(key, device_id, new, "transferred", wave, "rem", event=event)
        elif now - state["done_at"] > spec["verify_timeout"]:
            reason = (
                f"transfer complete, but the device reports version {version!r}, not {target!r}"
            )
            new = {**state, "s": "failed", "reason": reason, "t": now}
            event = self._event(
                "campaign.device", {**data, "s": "failed", "reason": reason}, device_id
            )
            await self._move(key, device_id, new, "transferred", wave, "rem", event=event)

    async def _cancel_queued(self, key: str, inflight: Sequence[str]) -> None:
        if not inflight:
            return
        states = await self._redis.execute_command("HMGET", key + ":state", *inflight)
        for raw in states:
            if raw:
                state = json.loads(raw)
                if state["s"] == "queued":
                    await self._tasks.cancel(state["task"])  # queued ones only; ends as failed


def _why(task: Any) -> str:
    if task is None:
        return "task lost"
    if task.status == "failed":
        fault = task.fault or {}
        if "code" in fault:
            return f"fault {fault['code']}: {fault.get('string', '')}"
        return str(fault.get("reason", "failed"))
    return f"task {task.status}"


def _summary(view: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: view[k] for k in ("id", "name", "file", "target_version", "total", "waves", "status")
    }
