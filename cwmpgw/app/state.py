"""The state part: the event sink (metered, spooled to disk while Redis is down) and the
device, credential and connection-request credential stores on Redis."""

from __future__ import annotations

import os
import re
from typing import Any

from cwmpgw.app.tree import Part
from cwmpgw.availability import GuardedRedis, RedisAvailability
from cwmpgw.bus.redis import RedisEventBus
from cwmpgw.bus.spool import RedisSpoolWriter, SpoolingEventSink
from cwmpgw.config import Config
from cwmpgw.metrics import MeteredEventSink, Metrics
from cwmpgw.store.redis import RedisConnReqCredentialStore, RedisCredentialStore, RedisDeviceStore
from cwmpgw.store.secretbox import SecretBox, load_or_create_key

# Events that ride (RedisEventBus): each is sent just before the next command anybody sends
# to Redis, or after 50 ms if none comes, instead of in a write of its own, and the events
# waiting go in one command. ``publish`` still fires once the event is stored.
# - session.closed: published after its session's last answer and waited on by nobody.
# - connreq.succeeded, connreq.failed, connreq.refused: the end of a wake-up, one command
#   less per wake-up. wake() fires once its event is stored, so its caller (the NBI's wake,
#   a campaign or bulk action) gets the result up to 50 ms later in an idle gateway, and
#   with the next command in a busy one (mass wake-ups: the next wake-up's script). Nobody
#   waits on these events themselves (the listener waits for informs and task events).
# - not connreq.sent (opt-in): a wake-up awaits it before each attempt, so riding would
#   hold back the connection request itself.
RIDING_EVENTS = frozenset(
    {"session.closed", "connreq.succeeded", "connreq.failed", "connreq.refused"}
)

__all__ = ["StatePart", "spool_name"]


def spool_name(node: str, *, per_process: bool) -> str:
    """One spool file per process: a node's worker processes share the data dir."""
    if not per_process:
        return "events.jsonl"
    return "events-" + re.sub(r"[^A-Za-z0-9._-]", "_", node) + ".jsonl"


class StatePart(Part):
    """Built: ``events``, ``devices``, ``credentials``, ``connreq_credentials``;
    started: the spool replays what an outage left, in order, once."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        data_dir: str,
        *,
        redis: GuardedRedis,
        availability: RedisAvailability,
        metrics: Metrics,
        spool_file: str,
    ) -> None:
        self.name = "state"
        prefix, maxlen = config.redis.prefix, config.events.stream_maxlen
        self.spool = spool = SpoolingEventSink(
            RedisEventBus(redis, prefix, stream_maxlen=maxlen, riding=RIDING_EVENTS, clock=reactor),
            RedisSpoolWriter(redis, prefix, clock=reactor, stream_maxlen=maxlen),
            os.path.join(data_dir, "spool", spool_file),
            availability=availability,
            clock=reactor,
            max_bytes=config.events.spool_max_mb * 1024 * 1024,
        )
        metrics.events_spooled.set_function(lambda: spool.pending)
        self.events = MeteredEventSink(spool, metrics)
        self.devices = RedisDeviceStore(redis, prefix, stream_maxlen=maxlen)
        self.credentials = RedisCredentialStore(redis, prefix)
        key_file = config.connreq.key_file or os.path.join(data_dir, "connreq.key")
        self.connreq_credentials = RedisConnReqCredentialStore(
            redis, prefix, SecretBox(load_or_create_key(key_file))
        )

    async def start(self) -> None:
        self.spool.start()

    async def stop(self) -> None:
        # Live publishes under way end (or are spooled); a replay batch finishes.
        await self.spool.stop()
