"""A Digest response accepted by one gateway process cannot be replayed to another.

Every process accepts every other's nonces (a CPE may reconnect after the 401 to another
worker or node, or come back for its next session with its last nonce and a higher count),
and each tracks nonce counts in its own memory. Each acceptance also advances the nonce's
count in Redis: a count accepted anywhere is refused everywhere after (401
``stale=true``; an honest CPE retries with a fresh nonce).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
from typing import Any

import pytest
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.acs.nonceclaims import MemoryNonceClaims, RedisNonceClaims
from cwmpgw.availability import Unavailable
from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.store.memory import MemoryCredentialStore, MemoryDeviceStore
from tests.support import cpe_envelopes as cpe
from tests.support import digest_client
from tests.support.attackkit import GatewayBase, RawCpe
from tests.support.gateway import cafile, start_gateway
from tests.support.memhttp import DEVICE_ID, PASSWORD, USER, MemoryAcs, Response
from tests.support.redis_server import connect, unique_prefix


class TwoProcessesTests(SynchronousTestCase):
    """Two gateway processes of one fleet: shared stores and nonce key, own nonce counts."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = MemoryEventBus()
        self.claims = MemoryNonceClaims(self.clock)
        shared: dict[str, Any] = {
            "clock": self.clock,
            "devices": MemoryDeviceStore(),
            "credentials": MemoryCredentialStore(),
            "bus": self.bus,
        }
        self.a = MemoryAcs(node="a", nonce_claims=self.claims, **shared)
        self.b = MemoryAcs(node="b", nonce_claims=self.claims, **shared)
        self.a.add_device(DEVICE_ID, USER, PASSWORD)

    def challenge(self, acs: MemoryAcs) -> dict[str, str]:
        first = acs.connect().post(cpe.inform())
        self.assertEqual(first.status, 401)
        return digest_client.pick(first.headers["www-authenticate"])

    def inform(self, acs: MemoryAcs, authorization: str) -> Response:
        return acs.connect(peer="198.51.100.9").post(cpe.inform(), {"Authorization": authorization})

    def failures(self) -> list[str]:
        return [e.data["reason"] for e in self.bus.events if e.type == "auth.failed"]

    def assertStale(self, response: Response) -> None:
        self.assertEqual(response.status, 401)
        values = response.headers["www-authenticate"]
        self.assertTrue(values and all(v.endswith("stale=true") for v in values), values)

    def test_a_response_accepted_by_one_process_is_refused_by_the_other(self) -> None:
        header = digest_client.authorization(self.challenge(self.a), USER, PASSWORD)
        self.assertEqual(self.inform(self.a, header).status, 200)
        self.assertStale(self.inform(self.b, header))  # the replay, elsewhere
        self.assertEqual(self.inform(self.a, header).status, 401)  # and here, as before
        self.assertEqual([e.type for e in self.bus.events].count("inform"), 1)

    def test_without_claims_the_other_process_accepted_the_replay(self) -> None:
        # What the claims close: each process alone tracks only its own nonce counts.
        a, b = (MemoryAcs(node=n, credentials=self.a.credentials) for n in ("a", "b"))
        header = digest_client.authorization(self.challenge(a), USER, PASSWORD)
        self.assertEqual(self.inform(a, header).status, 200)
        self.assertEqual(self.inform(b, header).status, 200)

    def test_a_cpe_answering_on_the_other_process_gets_in(self) -> None:
        # The 401 came from A; the CPE reconnected and its answer reached B first.
        challenge = self.challenge(self.a)
        header = digest_client.authorization(challenge, USER, PASSWORD)
        self.assertEqual(self.inform(self.b, header).status, 200)
        # Its next session re-uses the nonce with a higher count and lands on A: in,
        # without a 401 (a returning CPE needs no new challenge on any process).
        moved = digest_client.authorization(challenge, USER, PASSWORD, nc=2)
        self.assertEqual(self.inform(self.a, moved).status, 200)
        # That header replayed, to either process: stale. The retry with the fresh
        # nonce gets in; nothing is counted as a failure.
        for acs in (self.b, self.a):
            replay = self.inform(acs, moved)
            self.assertStale(replay)
        fresh = digest_client.pick(replay.headers["www-authenticate"])
        self.assertNotEqual(fresh["nonce"], challenge["nonce"])
        again = digest_client.authorization(fresh, USER, PASSWORD)
        self.assertEqual(self.inform(self.a, again).status, 200)
        self.assertEqual(self.failures(), [])  # a stale nonce is no failed authentication
        self.assertEqual([e.type for e in self.bus.events].count("inform"), 3)

    def test_a_returning_cpe_re_uses_its_nonce_on_either_process(self) -> None:
        """Sessions that each start on a new connection with the last nonce and the next
        count: no 401 at all, whichever process each lands on; a lower count is stale."""
        challenge = self.challenge(self.a)
        for nc, acs in enumerate((self.a, self.b, self.b, self.a, self.b), start=1):
            header = digest_client.authorization(challenge, USER, PASSWORD, nc=nc)
            self.assertEqual(self.inform(acs, header).status, 200, nc)
        old = digest_client.authorization(challenge, USER, PASSWORD, nc=3)
        self.assertStale(self.inform(self.a, old))  # A accepted 1 and 4 only, Redis knows 5
        self.assertEqual(self.failures(), [])

    def test_each_authentication_advances_the_shared_count(self) -> None:
        calls: list[int] = []
        real = self.claims.claim

        def counted(nonce: str, nc: int, ttl_ms: int) -> Any:
            calls.append(nc)
            return real(nonce, nc, ttl_ms)

        self.claims.claim = counted  # type: ignore[method-assign]
        challenge = self.challenge(self.a)
        for nc in (1, 2, 3):
            header = digest_client.authorization(challenge, USER, PASSWORD, nc=nc)
            self.assertEqual(self.inform(self.a, header).status, 200)
        self.assertEqual(calls, [1, 2, 3])
        # The record lasts the nonce's lifetime (300 s), plus a minute for clock skew.
        count, until = self.claims.counts[challenge["nonce"]]
        self.assertEqual(count, 3)
        self.assertEqual(until - self.clock.seconds(), 360)

    def test_the_claim_store_unreachable_is_503(self) -> None:
        self.claims.claim = lambda *a: fail(Unavailable("redis"))  # type: ignore[method-assign]
        header = digest_client.authorization(self.challenge(self.a), USER, PASSWORD)
        response = self.inform(self.a, header)
        self.assertEqual(response.status, 503)
        self.assertTrue(response.headers["retry-after"])
        self.assertEqual(self.failures(), [])


@pytest.mark.usefixtures("redis_for_class")
class RedisNonceClaimsTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        self.redis = await connect(self, self.redis_server)
        self.prefix = unique_prefix()
        self.claims = RedisNonceClaims(self.redis, self.prefix)

    async def test_only_a_higher_count_is_accepted_until_expiry(self) -> None:
        self.assertTrue(await self.claims.claim("n1", 1, 60_000))
        self.assertFalse(await self.claims.claim("n1", 1, 60_000))  # the replay
        self.assertTrue(await self.claims.claim("n1", 3, 60_000))
        self.assertFalse(await self.claims.claim("n1", 2, 60_000))  # below the highest
        self.assertTrue(await self.claims.claim("n2", 1, 60_000))
        ttl = int(await self.redis.execute_command("PTTL", self.prefix + "nonce:n1"))
        self.assertTrue(0 < ttl <= 60_000, ttl)
        self.assertTrue(await self.claims.claim("short", 5, 1))
        await self.redis.execute_command("PEXPIRE", self.prefix + "nonce:short", "1")
        while await self.redis.execute_command("EXISTS", self.prefix + "nonce:short"):
            pass  # gone within a millisecond or two
        self.assertTrue(await self.claims.claim("short", 1, 60_000))


@pytest.mark.usefixtures("redis_for_class")
class TwoGatewaysTests(GatewayBase):
    """The same over real TLS: two gateways on one Redis, a header captured on one."""

    async def test_a_header_accepted_by_one_gateway_is_stale_on_the_other(self) -> None:
        await self.start()
        other_dir = tempfile.mkdtemp(prefix="cwmpgw-other-")
        self.addCleanup(shutil.rmtree, other_dir, True)
        other = await start_gateway(self, other_dir, self.redis_server.url, self.prefix)
        assert other.acs_port is not None
        other_port = other.acs_port.getHost().port
        await self.add_device("REPLAY1", "replayed", "replayed-pw")

        def other_tls() -> ssl.SSLSocket:
            context = ssl.create_default_context(cafile=cafile(other_dir))
            raw = socket.create_connection(("127.0.0.1", other_port), timeout=10)
            return context.wrap_socket(raw, server_hostname="127.0.0.1")

        def run() -> tuple[int, Response, int]:
            device = RawCpe(self, "REPLAY1")
            accepted = device.login("replayed", "replayed-pw").status
            captured = device.last_authorization
            device.close()
            sock = other_tls()
            replay = self.exchange(device.inform(), {"Authorization": captured}, sock=sock)
            # A CPE that really moved retries with the fresh nonce and gets in.
            fresh = digest_client.pick(replay.headers["www-authenticate"])
            retry = digest_client.authorization(fresh, "replayed", "replayed-pw")
            moved = self.exchange(device.inform(), {"Authorization": retry}, sock=sock)
            sock.close()
            return accepted, replay, moved.status

        accepted, replay, moved = await deferToThread(run)
        self.assertEqual(accepted, 200)
        self.assertEqual(replay.status, 401)
        values = replay.headers["www-authenticate"]
        self.assertTrue(values and all(v.endswith("stale=true") for v in values), values)
        self.assertEqual(moved, 200)
