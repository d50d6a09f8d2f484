"""The file part: the file store, the link signer, and the HTTPS file server's listener.

The file server has a port of its own, on the hardened web base, with the ACS
certificates; over-cap connections are refused before TLS by a ConnectionGate. The
links (what completes a Download or Upload task for its device) are made here too,
and work on a node that does not listen (``files.listen = false``) as long as the
file directory is shared.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from cwmpgw.acs.tls import server_options
from cwmpgw.app.acs import certificate, tcp_endpoint
from cwmpgw.app.tree import Listener, Part
from cwmpgw.availability import is_backend_failure
from cwmpgw.config import Config
from cwmpgw.files.campaigns import RedisCampaigns
from cwmpgw.files.links import TransferLinks
from cwmpgw.files.server import FileResource, FileSite
from cwmpgw.files.signing import LinkSigner, shared_file_secret
from cwmpgw.files.store import FileStore, RedisFileIndex
from cwmpgw.web.site import ConnectionGate

__all__ = ["CampaignDriver", "FilesPart"]


class FilesPart(Listener):
    """The file store and links, and (``files.listen``) the file server's port."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        data_dir: str,
        *,
        redis: Any,
        on_stored: Any = None,
    ) -> None:
        cfg = config.files
        scheme = "https" if cfg.tls else "http"
        super().__init__(
            "files",
            tcp_endpoint(reactor, cfg.port, cfg.interface),
            Factory(),  # the gate in front of the site, made at start
            f"file server listening on {scheme}://{{host}}:{{port}}/",
        )
        self._config = config
        self._reactor = reactor
        self._data_dir = data_dir
        self._redis = redis
        directory = cfg.dir or os.path.join(data_dir, "files")
        index = RedisFileIndex(
            redis,
            config.redis.prefix,
            stream_maxlen=config.events.stream_maxlen,
            on_stored=on_stored,
        )
        self.store = FileStore(directory, index, clock=reactor, node=config.gateway.node_name)
        self.links = TransferLinks(
            self.store,
            base_url=cfg.public_url,
            lifetime=cfg.url_lifetime,
            style=cfg.url_style,
            clock=reactor,
        )
        self.site: FileSite | None = None

    async def start(self) -> None:
        cfg = self._config.files
        self.store.start()
        signer = LinkSigner(await shared_file_secret(self._redis, self._config.redis.prefix))
        self.links.signer = signer
        if not cfg.listen:
            return
        resource = FileResource(
            self.store, signer, clock=self._reactor, require_credentials=cfg.require_credentials
        )
        self.site = site = FileSite(
            resource,
            max_upload_bytes=cfg.max_upload_bytes,
            min_upload_rate=cfg.min_upload_rate,
            max_connections=cfg.max_connections,
            max_connections_per_source=cfg.max_connections_per_source,
            reactor=self._reactor,
        )
        inner: Any = site
        if cfg.tls:
            pair, second = certificate(self._config, self._data_dir)
            inner = TLSMemoryBIOFactory(server_options(*pair, second_pair=second), False, site)
        self.factory = ConnectionGate(site, inner)
        await super().start()
        if not cfg.public_url:
            assert self.port is not None
            port = self.port.getHost().port  # type: ignore[attr-defined]
            scheme = "https" if cfg.tls else "http"
            host = self._config.acs.certificate_hostname
            self.links.base_url = f"{scheme}://{host}:{port}"

    async def stop(self) -> None:
        await super().stop()
        if self.site is not None:
            self.site.abort_all()


class CampaignDriver(Part):
    """Steps the campaigns every ``files.campaign_tick`` seconds while this node holds
    the driver lease; stopping waits for the step under way and gives the lease up."""

    _log = Logger()

    def __init__(self, campaigns: RedisCampaigns, reactor: Any, *, interval: float) -> None:
        self.name = "campaigns"
        self.campaigns = campaigns
        self._reactor = reactor
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._running: Deferred[Any] | None = None

    async def start(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: self._log.failure("the campaign driver stopped", f)
        )

    def _tick(self) -> Deferred[Any] | None:
        if self._running is not None:
            return None
        d = Deferred.fromCoroutine(self.campaigns.tick(lease=max(30.0, self._interval * 10)))

        def done(result: object) -> None:
            self._running = None
            if isinstance(result, Failure) and not is_backend_failure(result.value or Exception()):
                self._log.failure("campaign step failed", result)

        d.addBoth(done)
        self._running = d
        return None

    async def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._running is not None:
            await self._running  # its failures are logged, never raised
        try:
            await self.campaigns.release()
        except Exception:
            self._log.warn("could not give the campaign lease up; it expires on its own")
