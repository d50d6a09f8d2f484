"""The typed handle to a running gateway's parts: what tests, workers and tools reach
them through. Every attribute is None until the step that makes the part has run (see
:mod:`cwmpgw.service` for the order)."""

from __future__ import annotations

from twisted.internet.interfaces import IListeningPort

from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.resource import AcsSite
from cwmpgw.app.acs import AcsPart
from cwmpgw.app.connreq import ConnreqPart
from cwmpgw.app.diagnostics import ThroughputSigner
from cwmpgw.app.files import FilesPart
from cwmpgw.app.redis import RedisPart
from cwmpgw.app.tree import Listener
from cwmpgw.app.xmpp import XmppPart
from cwmpgw.availability import GuardedRedis, RedisAvailability
from cwmpgw.bus.listener import EventListener
from cwmpgw.bus.spool import SpoolingEventSink
from cwmpgw.connreq.waker import ConnectionRequestService
from cwmpgw.files.campaigns import RedisCampaigns
from cwmpgw.fleet.bulk import BulkRunner, RedisBulkService
from cwmpgw.fleet.inventory import RedisInventory
from cwmpgw.fleet.profiles import ProfileApplier, RedisProfileStore
from cwmpgw.metrics import MeteredEventSink
from cwmpgw.nbi.commands import CommandConsumer
from cwmpgw.nbi.directory import DeviceDirectory
from cwmpgw.provision.provisioner import Provisioner, RedisRotations
from cwmpgw.store.embedded import EmbeddedRedisService
from cwmpgw.store.redis import RedisConnReqCredentialStore, RedisCredentialStore, RedisDeviceStore
from cwmpgw.tasks.redis import RedisTaskService
from cwmpgw.tasks.runner import TaskRunner
from cwmpgw.workers import WorkerPool

__all__ = ["GatewayHandle"]


class GatewayHandle:
    """The parts, as the steps of :class:`cwmpgw.service.GatewayService` make them."""

    inventory: RedisInventory | None = None  # with the stores (state step)
    listener: EventListener | None = None
    spool: SpoolingEventSink | None = None
    events: MeteredEventSink | None = None
    devices: RedisDeviceStore | None = None
    credentials: RedisCredentialStore | None = None
    connreq_credentials: RedisConnReqCredentialStore | None = None
    _xmpp: XmppPart | None = None
    _connreq: ConnreqPart | None = None
    _files: FilesPart | None = None
    campaigns: RedisCampaigns | None = None
    tasks: RedisTaskService | None = None
    runner: TaskRunner | None = None
    rotations: RedisRotations | None = None
    provisioner: Provisioner | None = None
    profiles: RedisProfileStore | None = None
    profile_applier: ProfileApplier | None = None
    _acs: AcsPart | None = None
    _nbi: Listener | None = None
    _metrics: Listener | None = None
    _throughput: Listener | None = None
    throughput_signer: ThroughputSigner | None = None
    directory: DeviceDirectory | None = None
    bulks: RedisBulkService | None = None
    bulk_runner: BulkRunner | None = None
    commands: CommandConsumer | None = None
    workers: WorkerPool | None = None
    _redis: RedisPart

    @property
    def redis(self) -> GuardedRedis | None:
        return self._redis.redis

    @property
    def availability(self) -> RedisAvailability | None:
        return self._redis.availability

    @property
    def embedded_redis(self) -> EmbeddedRedisService | None:
        return self._redis.embedded

    @property
    def connreq(self) -> ConnectionRequestService | None:
        return self._connreq.service if self._connreq is not None else None

    @property
    def xmpp(self) -> XmppPart | None:
        return self._xmpp

    @property
    def engine(self) -> AcsEngine | None:
        return self._acs.engine if self._acs is not None else None

    @property
    def acs_site(self) -> AcsSite | None:
        return self._acs.site if self._acs is not None else None

    @property
    def acs_port(self) -> IListeningPort | None:
        return self._acs.port if self._acs is not None else None

    @property
    def nbi_port(self) -> IListeningPort | None:
        return self._nbi.port if self._nbi is not None else None

    @property
    def throughput_port(self) -> IListeningPort | None:
        return self._throughput.port if self._throughput is not None else None

    @property
    def metrics_port(self) -> IListeningPort | None:
        return self._metrics.port if self._metrics is not None else None

    @property
    def files(self) -> FilesPart | None:
        """The file store (``.store``), links (``.links``) and file server (``.port``)."""
        return self._files

    @property
    def files_port(self) -> IListeningPort | None:
        return self._files.port if self._files is not None else None

    @property
    def stun_port(self) -> IListeningPort | None:
        return self._connreq.stun_port if self._connreq is not None else None
