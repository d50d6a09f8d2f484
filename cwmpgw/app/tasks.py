"""The task part: the Redis task service, the runner that turns tasks into RPCs, and the
provisioner in front of it (what the gateway itself sets: credentials, presets)."""

from __future__ import annotations

from typing import Any

from cwmpgw.availability import GuardedRedis
from cwmpgw.bus.events import IEventSink
from cwmpgw.bus.listener import EventListener
from cwmpgw.config import Config
from cwmpgw.provision.provisioner import Provisioner, RedisRotations
from cwmpgw.store.interfaces import IConnReqCredentialStore, ICredentialStore, IDeviceStore
from cwmpgw.tasks.redis import RedisTaskService
from cwmpgw.tasks.runner import TaskRunner

__all__ = ["make_provisioner", "make_task_service"]


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


def make_provisioner(
    config: Config,
    reactor: Any,
    runner: TaskRunner,
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
