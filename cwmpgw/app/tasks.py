"""The task part: the Redis task service, the runner that turns tasks into RPCs, the
profiles in front of it (desired state), and the provisioner in front of those (what the
gateway itself sets: credentials, presets)."""

from __future__ import annotations

from typing import Any

from cwmpgw.availability import GuardedRedis
from cwmpgw.bus.events import IEventSink
from cwmpgw.bus.listener import EventListener
from cwmpgw.config import Config
from cwmpgw.fleet.profiles import ProfileApplier, ProfileCache, RedisProfileStore
from cwmpgw.provision.provisioner import Provisioner, RedisRotations
from cwmpgw.sessions import IRequestSource
from cwmpgw.store.interfaces import IConnReqCredentialStore, ICredentialStore, IDeviceStore
from cwmpgw.tasks.redis import RedisTaskService
from cwmpgw.tasks.runner import TaskRunner

__all__ = ["make_profiles", "make_provisioner", "make_task_service"]


def make_task_service(
    config: Config,
    reactor: Any,
    redis: GuardedRedis,
    *,
    events: IEventSink,
    listener: EventListener | None,
) -> RedisTaskService:
    cfg = config.tasks
    return RedisTaskService(
        redis,
        config.redis.prefix,
        events=events,
        clock=reactor,
        node=config.gateway.node_name,
        listener=listener,
        default_expiry=cfg.default_expiry,
        max_attempts=cfg.max_attempts,
        keep_finished=cfg.keep_finished,
        gpv_batch=cfg.gpv_batch,
        report_timeout=cfg.report_timeout,
        stream_maxlen=config.events.stream_maxlen,
    )


def make_profiles(
    config: Config,
    reactor: Any,
    redis: GuardedRedis,
    runner: TaskRunner,
    *,
    devices: IDeviceStore,
    events: IEventSink,
) -> tuple[RedisProfileStore, ProfileApplier]:
    """The profile store, and the request source that applies profiles before the tasks."""
    from cwmpgw.app.fleet import online_window

    store = RedisProfileStore(redis, config.redis.prefix)
    applier = ProfileApplier(
        runner,
        profiles=ProfileCache(store, reactor, config.fleet.profile_cache),
        store=store,
        devices=devices,
        events=events,
        clock=reactor,
        node=config.gateway.node_name,
        online_window=online_window(config),
    )
    return store, applier


def make_provisioner(
    config: Config,
    reactor: Any,
    runner: IRequestSource,
    rotations: RedisRotations,
    *,
    credentials: ICredentialStore,
    connreq_credentials: IConnReqCredentialStore,
    devices: IDeviceStore,
    events: IEventSink,
) -> Provisioner:
    return Provisioner(
        runner,
        credentials=credentials,
        devices=devices,
        connreq_credentials=connreq_credentials,
        rotations=rotations,
        events=events,
        clock=reactor,
        node=config.gateway.node_name,
        realm=config.auth.realm,
        config=config.provision,
    )
