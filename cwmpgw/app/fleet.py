"""The fleet part: inventory, bulk tasks and profiles, from the configuration."""

from __future__ import annotations

from typing import Any

from cwmpgw.bus.events import IEventSink
from cwmpgw.config import Config
from cwmpgw.fleet.bulk import BulkRunner, RedisBulkService
from cwmpgw.fleet.inventory import RedisInventory
from cwmpgw.tasks.model import ITaskService

__all__ = ["make_bulk_runner", "make_bulks", "make_inventory", "online_window"]


def online_window(config: Config) -> float:
    """Seconds since its last Inform within which a device counts as online."""
    if config.fleet.online_window:
        return float(config.fleet.online_window)
    return 2.0 * config.provision.periodic_inform_interval


def make_inventory(config: Config, reactor: Any, redis: Any) -> RedisInventory:
    return RedisInventory(
        redis, config.redis.prefix, clock=reactor, online_window=online_window(config)
    )


def make_bulks(config: Config, reactor: Any, redis: Any) -> RedisBulkService:
    return RedisBulkService(
        redis,
        config.redis.prefix,
        clock=reactor,
        default_expiry=config.tasks.default_expiry,
        gpv_batch=config.tasks.gpv_batch,
    )


def make_bulk_runner(
    config: Config,
    reactor: Any,
    bulks: RedisBulkService,
    *,
    tasks: ITaskService,
    inventory: RedisInventory,
    events: IEventSink,
    waker: Any,
) -> BulkRunner:
    """The fan-out of bulk tasks; every node runs one, each bulk's lease decides who works."""
    return BulkRunner(
        bulks,
        tasks=tasks,
        inventory=inventory,
        events=events,
        clock=reactor,
        node=config.gateway.node_name,
        rate=config.fleet.bulk_rate,
        tick=config.fleet.bulk_tick,
        waker=waker,
        wake_rate=config.connreq.rate if waker is not None else None,
    )
