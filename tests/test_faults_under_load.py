"""Faults under load (issue 7): a fleet of simulated CPEs keeps working while the gateway
is overloaded, loses its Redis, or is stopped.

The CPEs are :mod:`cwmpgw.sim` devices in the test's reactor, over real TLS and Digest on
127.0.0.1, following Retry-After and the TR-069 retry back-off. Nothing here asserts a
duration except the one bound the issue states (a SIGTERM'd gateway exits within its
drain deadline + 5 s): every assertion is a count, from both sides — what the CPEs saw
(:class:`tests.loadkit.Ledger`) and what the gateway stored (the events stream, tasks).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from cwmpgw.sim import Fleet, Storm, credential_templates
from tests.loadkit import (
    Ledger,
    acs_url,
    give_credentials,
    start_gateway,
    stream_events,
    until,
)
from tests.redis_server import unique_prefix

SHED = "too many new sessions; retry later"


def boots_in_stream(events: list[dict[str, Any]]) -> Counter[str]:
    """How many stored Informs of each device carry 1 BOOT."""
    return Counter(
        e["device"]["id"]
        for e in events
        if e["type"] == "inform" and any(x["code"] == "1 BOOT" for x in e["data"]["events"])
    )


@pytest.mark.usefixtures("redis_for_class")
class OverloadTests(TestCase):
    """Twice the admitted rate of new sessions: the excess is shed (503 + Retry-After)
    before any work, accepted sessions all complete, and every shed CPE gets in later."""

    redis_server: Any

    async def test_twice_the_capacity_is_shed_and_every_device_gets_in_once(self) -> None:
        import redis

        devices, rate, window = 80, 10, 4.0  # 80 boots in 4 s: 20/s against 10/s admitted
        directory = tempfile.mkdtemp(prefix="cwmpgw-overload-")
        self.addCleanup(shutil.rmtree, directory, True)
        prefix = unique_prefix()
        service = await start_gateway(
            self,
            reactor,
            directory,
            self.redis_server.url,
            prefix,
            acs={
                "max_new_sessions_per_second": rate,
                "retry_after_min": 1,
                "retry_after_max": 20,
            },
        )
        ledger = Ledger()
        fleet = Fleet(
            reactor,
            acs_url(service),
            devices=devices,
            credentials=credential_templates("{device_id}", "pw-{serial}-overload"),
            cafile=os.path.join(directory, "tls", "acs-cert.pem"),
            concurrency=devices,
            bootstrap=False,  # "1 BOOT": no priority share, plain new sessions
            seed=7,
            trace=ledger.trace,
        )
        await give_credentials(service, fleet)
        await fleet.start()
        self.addCleanup(fleet.stop)

        run = defer.Deferred.fromCoroutine(
            fleet.run_sessions(arrival=Storm(window=window, interval=3600))
        )
        await until(
            reactor,
            lambda: sum(1 for d in fleet.devices if d.sessions) == devices,
            "every device to complete a session",
            bound=120,
        )
        fleet.interrupt()
        stats = await run

        # The CPEs' side: every failure is a shed 503, and every device got in once.
        shed = stats.failures["http 503"]
        self.assertEqual(dict(stats.failures), {"http 503": shed})
        self.assertGreaterEqual(shed, devices // 4)  # arrivals at 2x: many had to wait
        self.assertEqual(ledger.refusals, Counter({SHED: shed}))
        self.assertEqual(stats.completed, devices)
        self.assertEqual([d.sessions for d in fleet.devices], [1] * devices)
        self.assertEqual(
            ledger.delivered("1 BOOT"), Counter({d.device_id: 1 for d in fleet.devices})
        )
        # The shed ones followed their Retry-After and got in: each once, no more.
        self.assertEqual(sum(ledger.refused.values()), shed)
        self.assertGreaterEqual(len(ledger.refused), devices // 4)
        self.assertEqual(ledger.ended, devices)  # each accepted session ended with 204

        # The gateway's side: as many sheds as 503s seen, every session completed, and
        # each device's BOOT stored exactly once.
        sample = service.metrics.registry.get_sample_value
        self.assertEqual(sample("cwmpgw_admission_rejections_total"), shed)
        self.assertEqual(sample("cwmpgw_sessions_total", {"outcome": "completed"}), devices)
        for outcome in ("timeout", "superseded", "protocol_error", "shutdown"):
            self.assertIn(sample("cwmpgw_sessions_total", {"outcome": outcome}), (None, 0.0))
        client = redis.Redis(self.redis_server.host, self.redis_server.port, decode_responses=True)
        self.addCleanup(client.close)
        events = stream_events(client, prefix)
        self.assertEqual(boots_in_stream(events), Counter({d.device_id: 1 for d in fleet.devices}))
        self.assertEqual(sum(1 for e in events if e["type"] == "inform"), devices)
        self.assertEqual(client.zcard(prefix + "devices"), devices)
