"""A simulated fleet against a whole gateway: the helpers the simulator's and the
campaigns' integration tests share."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from cwmpgw.sim.datamodel import load_csv
from cwmpgw.sim.device import (
    Behaviour,
    SimDevice,
)
from cwmpgw.sim.fleet import Fleet, Rate
from tests.support.gateway import (
    acs_url,
    cafile,
    import_into,
    merge,
    start_gateway,
)
from tests.support.paths import DATA
from tests.support.redis_server import unique_prefix

EC220 = str(DATA / "device-9CA2F4-EC220_G5_V3-22275K2000315.csv")


@pytest.mark.usefixtures("redis_for_class")
class FleetGatewayBase(TestCase):
    """Starts a gateway (real TLS, real Redis) and a simulated fleet against it."""

    redis_server: Any

    async def start_gateway(self, **sections: Any) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-sim-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        connreq = {
            "allowed_networks": ["127.0.0.0/8"],
            "min_interval": 0.0,
            "retries": 0,
            "session_wait": 10.0,
        }
        service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            # Provisioning as shipped (periodic-inform presets): the fleet applies them.
            **merge(
                {
                    "gateway": {"node": "sim-node"},
                    "connreq": connreq,
                    "provision": {"credentials": True, "periodic_inform": True},
                },
                sections,
            ),
        )
        assert service.acs_port is not None
        self.url = acs_url(service)
        self.cafile = cafile(self.dir)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        return service

    async def start_fleet(self, **kw: Any) -> Fleet:
        self.sent: list[bytes] = []

        def trace(direction: str, device: SimDevice, body: bytes) -> None:
            if direction == "cpe" and body:
                self.sent.append(body)

        kw.setdefault("template", load_csv(EC220))
        kw.setdefault("behaviour", Behaviour(reboot_delay=0.05, transfer_time=0.05))
        kw.setdefault("concurrency", 10)
        fleet = Fleet(
            reactor,
            self.url,
            cafile=self.cafile,
            arrival=Rate(None),
            connreq_listen=("127.0.0.1", 0),
            seed=1,
            trace=trace,
            **kw,
        )
        await fleet.start()
        self.addCleanup(fleet.stop)
        return fleet

    async def import_fleet(self, fleet: Fleet) -> None:
        await import_into(
            self, fleet.credentials_csv(), self.dir, self.redis_server.url, self.prefix
        )

    def events(self, type_: str) -> list[dict[str, Any]]:
        out = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in out if e["type"] == type_]
