"""The composition root: the gateway as one ordered service tree, and the typed handle to
its parts.

Children, in start order (each once the one before is up; stop is the reverse, so the
embedded Redis goes last): Redis → the event listener → the event spool → the file
server → the XMPP login → connection requests → task expiry → the ACS listener → the
API listener → the command stream → the bulk-task fan-out → campaigns → metrics →
worker processes. Each is built by a small step below from what the steps before it
made; the parts themselves are made in
:mod:`cwmpgw.app`.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from cwmpgw.app import acs as acs_part
from cwmpgw.app import nbi as nbi_part
from cwmpgw.app.connreq import ConnreqPart
from cwmpgw.app.diagnostics import make_signer, make_throughput
from cwmpgw.app.files import CampaignDriver, FilesPart
from cwmpgw.app.fleet import make_bulk_runner, make_bulks, make_inventory
from cwmpgw.app.handle import GatewayHandle
from cwmpgw.app.metrics import ReactorLag, make_metrics, redis_sampler
from cwmpgw.app.redis import RedisPart
from cwmpgw.app.state import StatePart, spool_name
from cwmpgw.app.tasks import make_profiles, make_provisioner, make_task_service
from cwmpgw.app.tree import Listener, OrderedTree, Part
from cwmpgw.app.xmpp import XmppPart
from cwmpgw.availability import GuardedRedis, RedisAvailability
from cwmpgw.bus.events import IStoredEvents
from cwmpgw.collector import CollectorThreshold
from cwmpgw.config import Config
from cwmpgw.files.campaigns import RedisCampaigns
from cwmpgw.files.selector import InventorySelector
from cwmpgw.fleet.bulk import BulkRunner
from cwmpgw.fleet.inventory import RedisInventory
from cwmpgw.metrics import Metrics
from cwmpgw.nbi.commands import CommandConsumer
from cwmpgw.nbi.directory import DeviceDirectory
from cwmpgw.nbi.health import GatewayHealth
from cwmpgw.provision.provisioner import RedisRotations
from cwmpgw.tasks.expiry import expiry_service
from cwmpgw.tasks.runner import TaskRunner
from cwmpgw.workers import WorkerPool

__all__ = ["GatewayService", "make_service"]


def make_service(config: Config, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return GatewayService(config, reactor)


class GatewayService(OrderedTree, GatewayHandle):
    """The whole gateway as one twistd service; its attributes are the parts, once up."""

    def __init__(self, config: Config, reactor: Any, *, reuse_port: bool = False) -> None:
        self.config = config
        self._reactor = reactor
        # A worker of a multi-process node (or worker 0 of one): share the ACS port.
        self._reuse_port = reuse_port or config.gateway.workers > 1
        self.node = config.gateway.node_name
        self.data_dir = os.path.abspath(config.gateway.data_dir)
        self.metrics = Metrics()
        self._redis = RedisPart(config.redis, self.data_dir, reactor)
        super().__init__(
            [
                self._step_collector,
                self._step_redis,
                self._step_listener,
                self._step_state,
                self._step_files,
                self._step_xmpp,
                self._step_connreq,
                self._step_tasks,
                self._step_acs,
                self._step_campaigns,
                self._step_api,
                self._step_commands,
                self._step_bulk,
                self._step_throughput,
                self._step_metrics,
                self._step_sampler,
                self._step_lag,
                self._step_workers,
            ]
        )

    def whenStarted(self) -> Deferred[GatewayService]:  # type: ignore[override]
        """Fires with this service once every listener listens (errbacks if start failed)."""
        return super().whenStarted().addCallback(lambda _: self)

    def start_failed(self, failure: Failure, *, waited: bool) -> None:
        self._log.failure("cwmpgw could not start", failure)
        if not waited and self._reactor.running:
            self._reactor.stop()

    def _inventory(self) -> RedisInventory:
        assert self.inventory is not None
        return self.inventory

    def _up(self) -> tuple[GuardedRedis, RedisAvailability]:
        redis, availability = self._redis.redis, self._redis.availability
        assert redis is not None and availability is not None
        return redis, availability

    # -- the steps, in start order --------------------------------------------------------

    def _step_collector(self) -> Service | None:
        young = self.config.gateway.gc_threshold
        return CollectorThreshold(young) if young else None

    def _step_redis(self) -> RedisPart:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        return self._redis

    def _step_listener(self) -> Part:
        self.listener, part = self._redis.event_listener(self.config.redis.prefix)
        return part

    def _step_state(self) -> StatePart:
        redis, availability = self._up()
        per_process = self._reuse_port and self.config.gateway.workers == 1
        state = StatePart(
            self.config,
            self._reactor,
            self.data_dir,
            redis=redis,
            availability=availability,
            metrics=self.metrics,
            spool_file=spool_name(self.node, per_process=per_process),
        )
        self.spool, self.events, self.devices = state.spool, state.events, state.devices
        self.inventory = make_inventory(self.config, self._reactor, redis)
        self.credentials, self.connreq_credentials = state.credentials, state.connreq_credentials
        return state

    def _step_files(self) -> FilesPart | None:
        if not self.config.files.enabled:
            return None
        events = self.events
        stored = IStoredEvents(events).stored if IStoredEvents.providedBy(events) else None
        self._files = FilesPart(
            self.config, self._reactor, self.data_dir, redis=self._up()[0], on_stored=stored
        )
        return self._files

    def _step_xmpp(self) -> XmppPart | None:
        if not (self.config.connreq.enabled and self.config.xmpp.enabled):
            return None
        self._xmpp = XmppPart(self.config, self._reactor)
        return self._xmpp

    def _step_connreq(self) -> ConnreqPart | None:
        if not self.config.connreq.enabled:
            return None
        assert self.devices and self.connreq_credentials and self.events
        self._connreq = ConnreqPart(
            self.config,
            self._reactor,
            redis=self._up()[0],
            devices=self.devices,
            credentials=self.connreq_credentials,
            events=self.events,
            listener=self.listener,
            metrics=self.metrics,
            xmpp=self._xmpp.requester if self._xmpp is not None else None,
        )
        return self._connreq

    def _step_tasks(self) -> Service:
        redis, availability = self._up()
        assert self.devices and self.credentials and self.connreq_credentials and self.events
        self.tasks = make_task_service(
            self.config, self._reactor, redis, events=self.events, listener=self.listener
        )
        self.throughput_signer = make_signer(self.config, self._reactor, self.data_dir)
        self.runner = TaskRunner(
            self.tasks,
            self.devices,
            gpv_batch=self.config.tasks.gpv_batch,
            throughput=self.throughput_signer.url if self.throughput_signer else None,
            links=self._files.links if self._files is not None else None,
        )
        self.rotations = RedisRotations(redis, self.config.redis.prefix)
        self.profiles, self.profile_applier = make_profiles(
            self.config, self._reactor, redis, self.runner, devices=self.devices, events=self.events
        )
        self.provisioner = make_provisioner(
            self.config,
            self._reactor,
            self.profile_applier,
            self.rotations,
            credentials=self.credentials,
            connreq_credentials=self.connreq_credentials,
            devices=self.devices,
            events=self.events,
        )
        return expiry_service(self.tasks, availability, self._reactor)

    def _step_acs(self) -> acs_part.AcsPart:
        redis, availability = self._up()
        assert self.devices and self.credentials and self.events and self.provisioner
        engine = acs_part.make_engine(
            self.config,
            self._reactor,
            redis=redis,
            availability=availability,
            devices=self.devices,
            events=self.events,
            requests=self.provisioner,
            metrics=self.metrics,
        )
        make_site = functools.partial(
            acs_part.make_site,
            self.config,
            self._reactor,
            engine,
            redis=redis,
            availability=availability,
            credentials=self.credentials,
            on_promoted=self.provisioner.promoted,
        )
        self._acs = acs_part.AcsPart(
            self.config,
            self._reactor,
            self.data_dir,
            engine,
            make_site,
            reuse_port=self._reuse_port,
        )
        return self._acs

    def _step_campaigns(self) -> CampaignDriver | None:
        if self._files is None:
            return None
        assert self.tasks and self.devices
        self.campaigns = RedisCampaigns(
            self._up()[0],
            self.config.redis.prefix,
            tasks=self.tasks,
            devices=self.devices,
            clock=self._reactor,
            node=self.node,
            waker=self.connreq,
            selector=InventorySelector(self._inventory()),
            stream_maxlen=self.config.events.stream_maxlen,
        )
        return CampaignDriver(
            self.campaigns, self._reactor, interval=self.config.files.campaign_tick
        )

    def _step_api(self) -> Listener | None:
        if not self.config.nbi.enabled:
            return None
        assert self.devices and self.credentials and self.connreq_credentials and self.tasks
        self.bulks = make_bulks(self.config, self._reactor, self._up()[0])
        self.directory = DeviceDirectory(
            self.devices,
            self.credentials,
            self.connreq_credentials,
            realm=self.config.auth.realm,
            inventory=self._inventory(),
            tasks=self.tasks,
            rotations=self.rotations,
        )
        self._nbi = nbi_part.make_api(
            self.config,
            self._reactor,
            self.data_dir,
            tasks=self.tasks,
            directory=self.directory,
            waker=self.connreq,
            health=GatewayHealth(
                self._up()[0],
                availability=self._up()[1],
                clock=self._reactor,
                node=self.node,
                listener=self.listener,
                spool=self.spool,
            ),
            bulks=self.bulks,
            profiles=self.profiles,
            files=self._files.store if self._files is not None else None,
            campaigns=self.campaigns,
        )
        return self._nbi

    def _step_commands(self) -> CommandConsumer | None:
        if not self.config.nbi.enabled:
            return None
        assert self.tasks and self.events
        self.commands = nbi_part.make_commands(
            self.config,
            self._reactor,
            redis=self._up()[0],
            dedicated=self._redis.dedicated,
            tasks=self.tasks,
            events=self.events,
            tagger=self.devices,
            bulks=self.bulks,
            profiles=self.profiles,
        )
        return self.commands

    def _step_bulk(self) -> BulkRunner | None:
        if not self.config.nbi.enabled:
            return None
        assert self.bulks and self.tasks and self.inventory and self.events
        self.bulk_runner = make_bulk_runner(
            self.config,
            self._reactor,
            self.bulks,
            tasks=self.tasks,
            inventory=self.inventory,
            events=self.events,
            waker=self.connreq,
        )
        return self.bulk_runner

    def _step_throughput(self) -> Listener | None:
        signer = self.throughput_signer
        if signer is None or not self.config.diagnostics.serve:
            return None
        self._throughput = make_throughput(self.config, self._reactor, self.data_dir, signer)
        return self._throughput

    def _step_metrics(self) -> Listener | None:
        if self.config.metrics.enabled:
            self._metrics = make_metrics(self.config, self._reactor, self.metrics)
        return self._metrics

    def _step_sampler(self) -> Service | None:
        enabled = self.config.metrics.enabled
        return redis_sampler(self._reactor, self.metrics, *self._up()) if enabled else None

    def _step_lag(self) -> Service | None:
        enabled = self.config.metrics.enabled
        return ReactorLag(self._reactor, self.metrics) if enabled else None

    def _step_workers(self) -> WorkerPool | None:
        if self.config.gateway.workers <= 1:
            return None
        from cwmpgw.workers import child_config

        assert self.acs_port is not None
        port: int = self.acs_port.getHost().port  # type: ignore[attr-defined]
        files_url = self._files.links.base_url if self._files is not None else ""
        configs = {
            i: child_config(
                self.config, index=i, port=port, redis_url=self._redis.url, files_url=files_url
            )
            for i in range(1, self.config.gateway.workers)
        }
        # They use this node's Redis: stopped first, as the last child.
        self.workers = WorkerPool(self._reactor, configs)
        return self.workers
