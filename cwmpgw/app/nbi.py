"""The northbound part: the API's site and listener, and the Redis command stream."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint

from cwmpgw.acs.tls import server_options
from cwmpgw.app.acs import certificate, tcp_endpoint
from cwmpgw.app.tree import Listener
from cwmpgw.bus.events import IEventSink
from cwmpgw.config import Config
from cwmpgw.connreq.interfaces import IConnectionRequester
from cwmpgw.files.campaigns import ICampaigns
from cwmpgw.files.store import FileStore
from cwmpgw.fleet.bulk import IBulkService
from cwmpgw.nbi.api import NbiResource, NbiSite
from cwmpgw.nbi.auth import make_authorizer
from cwmpgw.nbi.commands import CommandConsumer
from cwmpgw.nbi.health import GatewayHealth
from cwmpgw.nbi.interfaces import IDeviceDirectory
from cwmpgw.tasks.model import ITaskService

__all__ = ["make_api", "make_commands"]


def make_api(
    config: Config,
    reactor: Any,
    data_dir: str,
    *,
    tasks: ITaskService,
    directory: IDeviceDirectory,
    waker: IConnectionRequester | None,
    health: GatewayHealth,
    bulks: IBulkService | None = None,
    profiles: Any = None,
    files: FileStore | None = None,
    campaigns: ICampaigns | None = None,
) -> Listener:
    cfg = config.nbi
    resource = NbiResource(
        tasks=tasks,
        devices=directory,
        waker=waker,
        health=health,
        authorizer=make_authorizer(cfg, data_dir),
        clock=reactor,
        max_body_bytes=cfg.max_body_bytes,
        max_wait=cfg.max_wait,
        bulks=bulks,
        profiles=profiles,
        default_expiry=config.tasks.default_expiry,
        gpv_batch=config.tasks.gpv_batch,
        files=files,
        campaigns=campaigns,
        max_file_bytes=config.files.max_file_bytes,
    )
    site = NbiSite(resource, reactor=reactor)
    endpoint: IStreamServerEndpoint
    if cfg.tls:
        pair, second_pair = (cfg.cert_file, cfg.key_file), None
        if not cfg.cert_file:
            pair, second_pair = certificate(config, data_dir)
        endpoint = SSL4ServerEndpoint(
            reactor,
            cfg.port,
            server_options(*pair, second_pair=second_pair),
            interface=cfg.interface,
        )
    else:
        endpoint = tcp_endpoint(reactor, cfg.port, cfg.interface)
    scheme = "https" if cfg.tls else "http"
    return Listener(
        "nbi", endpoint, site, f"northbound API listening on {scheme}://{{host}}:{{port}}/"
    )


def make_commands(
    config: Config,
    reactor: Any,
    *,
    redis: Any,
    dedicated: Any,
    tasks: ITaskService,
    events: IEventSink,
    tagger: Any = None,
    bulks: IBulkService | None = None,
    profiles: Any = None,
) -> CommandConsumer:
    """The command stream's consumer; its blocking reads use a connection of their own."""
    consumer = CommandConsumer(
        redis,
        config.redis.prefix,
        connect=dedicated,
        tasks=tasks,
        events=events,
        clock=reactor,
        node=config.gateway.node_name,
        tagger=tagger,
        bulks=bulks,
        profiles=profiles,
    )
    consumer.name = "commands"
    return consumer
