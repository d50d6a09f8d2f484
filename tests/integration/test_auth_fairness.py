"""Issue 12, "survive the open internet": blocks that refuse only failing attempts.

One attacker (or a few misconfigured CPEs) behind a carrier-grade NAT must not lock out
the honest CPEs behind the same address; what verifies nothing (a CPE's pre-emptive
Basic where Basic is not offered, a right Digest response under the previous session's
nonce) is never counted; guesses spread over many addresses are still counted per
claimed device, across nodes, while the device with its right password gets in.

The logic through the whole HTTP stack in memory (tests/support/memhttp.py), then the same over
real TLS against real gateways and Redis, with a CPE written from the TR-069 text
(tests/support/tr069_cpe.py).
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.acs.throttle import MemoryAuthThrottle
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.service import GatewayService
from tests.support import cpe_envelopes as cpe
from tests.support import digest_client
from tests.support.gateway import acs_url, cafile, import_into, start_gateway
from tests.support.memhttp import Connection, MemoryAcs, Response, digest_post
from tests.support.redis_server import unique_prefix
from tests.support.tr069_cpe import Exchange, Tr069Cpe

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = DEVICE_ID, "s3cret-Pa55word"
NAT = "100.64.0.1"  # a carrier-grade NAT: an attacker and honest CPEs share it


def serial(i: int) -> str:
    return f"NAT{i:04d}"


def device_id(i: int) -> str:
    return f"9CA2F4-EC220_G5_V3-{serial(i)}"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class MemoryBase(SynchronousTestCase):
    """The defaults an operator gets: 20 per source, 10 per device, 300 s, 900 s."""

    schemes: tuple[str, ...] = ("digest",)

    def setUp(self) -> None:
        clock = Clock()
        self.throttle = MemoryAuthThrottle(clock=clock)
        self.acs = MemoryAcs(clock=clock, throttle=self.throttle, schemes=self.schemes)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        for i in range(30):
            self.acs.add_device(device_id(i), device_id(i), f"pw-{i}")

    def inform(self, i: int | None = None) -> bytes:
        if i is None:
            return cpe.inform()
        return cpe.inform(device=DeviceId("TP-Link", "9CA2F4", "EC220_G5_V3", serial(i)))

    def guess(self, peer: str, user: str = USER, i: int | None = None) -> Response:
        return digest_post(self.acs.connect(peer=peer), self.inform(i), user, "a-guess")

    def events(self, type_: str) -> list[Any]:
        return [e for e in self.acs.bus.events if e.type == type_]

    def assert429(self, response: Response) -> None:
        self.assertEqual(response.status, 429, response.body)
        self.assertTrue(int(response.header("retry-after") or 0) > 0)
        self.assertEqual(response.header("connection"), "close")

    def assertSession(self, conn: Connection, response: Response) -> None:
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(conn.post(b"").status, 204)

    def assertNothingCounted(self) -> None:
        self.assertEqual(self.events("auth.failed"), [])
        self.assertEqual(self.throttle._counts, {})
        self.assertEqual(self.throttle._blocks, {})


class CarrierGradeNatTests(MemoryBase):
    def test_25_failures_then_an_honest_cpe_from_the_same_address_gets_in(self) -> None:
        # Spread over five claimed devices, so only the address reaches its limit.
        statuses = [self.guess(NAT, device_id(n % 5), n % 5).status for n in range(25)]
        self.assertEqual(statuses, [401] * 19 + [429] * 6)
        blocked = [(e.data["kind"], e.data["key"]) for e in self.events("auth.blocked")]
        self.assertEqual(blocked, [("source", NAT)])
        # An honest CPE behind the NAT, with its right Digest credentials: its session.
        conn = self.acs.connect(peer=NAT)
        self.assertSession(conn, digest_post(conn, self.inform(), USER, PASSWORD))
        # Others behind the NAT get in too, one after the other, with nothing counted.
        for i in range(5, 10):
            conn = self.acs.connect(peer=NAT)
            self.assertSession(conn, digest_post(conn, self.inform(i), device_id(i), f"pw-{i}"))
        # The successes cleared nothing for the address: the next guess is still 429.
        self.assert429(self.guess(NAT, device_id(1), 1))
        self.assertEqual(len(self.events("auth.failed")), 26)
        self.assertEqual(len(self.events("auth.blocked")), 1)

    def test_a_wrong_password_behind_a_blocked_address_is_429(self) -> None:
        for n in range(20):
            self.guess(NAT, f"nobody-{n}")
        # An honest CPE with a stale configuration gets 429, and may retry after the block.
        conn = self.acs.connect(peer=NAT)
        response = digest_post(conn, self.inform(3), device_id(3), "last-year's password")
        self.assert429(response)
        self.assertTrue(conn.closing)
        self.acs.clock.advance(900)
        self.assertEqual(self.guess(NAT, device_id(3), 3).status, 401)


class PreemptiveBasicTests(MemoryBase):
    def test_30_cpes_with_preemptive_basic_get_the_challenge_and_block_nothing(self) -> None:
        for i in range(30):
            conn = self.acs.connect(secure=True, peer=NAT)
            first = conn.post(self.inform(i), basic(device_id(i), f"pw-{i}"))
            self.assertEqual(first.status, 401)
            challenges = first.headers["www-authenticate"]
            self.assertTrue(challenges and all(c.startswith("Digest ") for c in challenges))
            self.assertFalse(conn.closing)
            answer = digest_client.authorization(
                digest_client.pick(challenges), device_id(i), f"pw-{i}"
            )
            self.assertSession(conn, conn.post(self.inform(i), {"Authorization": answer}))
        self.assertNothingCounted()

    def test_basic_on_plain_http_where_basic_is_offered_only_over_tls(self) -> None:
        self.acs = MemoryAcs(
            clock=self.acs.clock, throttle=self.throttle, schemes=("digest", "basic")
        )
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        for _ in range(30):
            response = self.acs.connect(peer=NAT).post(self.inform(), basic(USER, PASSWORD))
            self.assertEqual(response.status, 401)
            self.assertFalse(
                any(c.startswith("Basic") for c in response.headers["www-authenticate"])
            )
        self.assertNothingCounted()


class BasicOfferedTests(MemoryBase):
    schemes = ("digest", "basic")

    def test_a_wrong_basic_password_still_counts(self) -> None:
        statuses = [
            self.acs.connect(secure=True, peer=NAT)
            .post(self.inform(n % 5), basic(device_id(n % 5), "a-guess"))
            .status
            for n in range(20)
        ]
        self.assertEqual(statuses, [401] * 19 + [429])
        self.assertEqual(len(self.events("auth.failed")), 20)
        # Blocked, and still the right Basic credential gets in.
        conn = self.acs.connect(secure=True, peer=NAT)
        self.assertSession(conn, conn.post(self.inform(), basic(USER, PASSWORD)))


class NonceReuseTests(MemoryBase):
    def first_session(self, peer: str = NAT) -> dict[str, str]:
        conn = self.acs.connect(peer=peer)
        challenge = digest_client.pick(conn.post(self.inform()).headers["www-authenticate"])
        auth = digest_client.authorization(challenge, USER, PASSWORD, nc=1)
        self.assertSession(conn, conn.post(self.inform(), {"Authorization": auth}))
        return challenge

    def test_previous_sessions_nonce_with_nc_1_is_stale_and_the_retry_succeeds(self) -> None:
        old = self.first_session()
        for _ in range(30):  # 30 such sessions from one address block nothing
            conn = self.acs.connect(peer=NAT)
            reused = digest_client.authorization(old, USER, PASSWORD, nc=1)
            stale = conn.post(self.inform(), {"Authorization": reused})
            self.assertEqual(stale.status, 401)
            values = stale.headers["www-authenticate"]
            self.assertTrue(values and all(v.endswith("stale=true") for v in values), values)
            self.assertFalse(conn.closing)
            fresh = digest_client.pick(values)
            self.assertNotEqual(fresh["nonce"], old["nonce"])
            retry = digest_client.authorization(fresh, USER, PASSWORD, nc=1)
            self.assertSession(conn, conn.post(self.inform(), {"Authorization": retry}))
        self.assertNothingCounted()

    def test_a_wrong_password_under_the_old_nonce_is_counted_not_stale(self) -> None:
        old = self.first_session()
        guess = digest_client.authorization(old, USER, "a-guess", nc=1)
        response = self.acs.connect(peer=NAT).post(self.inform(), {"Authorization": guess})
        self.assertEqual(response.status, 401)
        self.assertFalse(any("stale" in v for v in response.headers["www-authenticate"]))
        self.assertEqual([e.data["reason"] for e in self.events("auth.failed")], ["wrong password"])
        # Past its lifetime too: the same.
        self.acs.clock.advance(301)
        guess = digest_client.authorization(old, USER, "a-guess", nc=2)
        response = self.acs.connect(peer=NAT).post(self.inform(), {"Authorization": guess})
        self.assertFalse(any("stale" in v for v in response.headers["www-authenticate"]))
        self.assertEqual(len(self.events("auth.failed")), 2)

    def test_stale_is_no_refusal_behind_a_blocked_address(self) -> None:
        old = self.first_session()
        for n in range(20):
            self.guess(NAT, f"nobody-{n}")
        conn = self.acs.connect(peer=NAT)
        reused = digest_client.authorization(old, USER, PASSWORD, nc=1)
        stale = conn.post(self.inform(), {"Authorization": reused})
        self.assertEqual(stale.status, 401)
        retry = digest_client.authorization(
            digest_client.pick(stale.headers["www-authenticate"]), USER, PASSWORD
        )
        self.assertSession(conn, conn.post(self.inform(), {"Authorization": retry}))


class SpreadGuessesTests(MemoryBase):
    def test_guesses_from_30_addresses_block_the_claims_not_the_device(self) -> None:
        statuses = [self.guess(f"203.0.113.{i}").status for i in range(30)]
        # The device's 10th failure starts its block, whatever the address.
        self.assertEqual(statuses, [401] * 9 + [429] * 21)
        blocked = [(e.data["kind"], e.data["key"]) for e in self.events("auth.blocked")]
        self.assertEqual(blocked, [("device", DEVICE_ID)])
        self.assertEqual(self.events("auth.blocked")[0].device["id"], DEVICE_ID)
        self.assertEqual({k for k, _ in self.throttle._blocks}, {"device"})
        # The device itself, with its right password, from its own address or from one
        # of the attacker's: its session.
        for peer in ("192.0.2.10", "203.0.113.7"):
            conn = self.acs.connect(peer=peer)
            self.assertSession(conn, digest_post(conn, self.inform(), USER, PASSWORD))
        # And a 31st guess, from a new address, is still 429.
        self.assert429(self.guess("203.0.113.200"))


# ---------------------------------------------------------------------------------------
# Over real TLS


@pytest.mark.usefixtures("redis_for_class")
class OpenInternetGatewayTests(TestCase):
    """Real gateways on one real Redis, default limits, CPEs from several loopback
    addresses (127.0.0.0/8 is all ours on Linux)."""

    redis_server: Any

    async def start(self) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-fair-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        service = await start_gateway(self, self.dir, self.redis_server.url, self.prefix)
        self.url = acs_url(service)
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        rows = [f"{DEVICE_ID},{USER},{PASSWORD}"] + [
            f"{device_id(i)},{device_id(i)},pw-{i}" for i in range(30)
        ]
        await import_into(
            self,
            "device_id,username,password\n" + "\n".join(rows) + "\n",
            self.dir,
            self.redis_server.url,
            self.prefix,
        )
        return service

    async def start_second(self) -> str:
        other_dir = tempfile.mkdtemp(prefix="cwmpgw-fair-b-")
        self.addCleanup(shutil.rmtree, other_dir, True)
        other = await start_gateway(self, other_dir, self.redis_server.url, self.prefix)
        self.other_cafile = cafile(other_dir)
        return acs_url(other)

    def cpe(self, i: int | None = None, password: str | None = None, **kw: Any) -> Tr069Cpe:
        kw.setdefault("cafile", cafile(self.dir))
        if i is None:
            return Tr069Cpe(
                kw.pop("url", self.url), USER, password or PASSWORD, serial="22275K2000315", **kw
            )
        return Tr069Cpe(
            kw.pop("url", self.url), device_id(i), password or f"pw-{i}", serial=serial(i), **kw
        )

    def events(self, type_: str) -> list[dict[str, Any]]:
        out = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in out if e["type"] == type_]

    def counters(self) -> list[str]:
        return sorted(self.redis.scan_iter(self.prefix + "auth*"))

    async def session(self, cpe_: Tr069Cpe) -> list[Exchange]:
        return await deferToThread(cpe_.session)

    async def test_25_failures_then_the_honest_cpe_at_that_address_gets_its_session(self) -> None:
        await self.start()
        attacker = "127.0.0.2"
        last = []
        for n in range(25):
            guess = self.cpe(n % 5, password="a-guess", source_address=attacker)
            last.append((await self.session(guess))[-1])
        self.assertEqual([e.status for e in last], [401] * 19 + [429] * 6)
        self.assertTrue(all(int(e.header("retry-after") or 0) > 0 for e in last[19:]))
        blocked = [(e["data"]["kind"], e["data"]["key"]) for e in self.events("auth.blocked")]
        self.assertEqual(blocked, [("source", attacker)])
        # The honest CPE behind the same address, with its right Digest credentials.
        honest = await self.session(self.cpe(source_address=attacker))
        self.assertEqual([e.status for e in honest], [401, 200, 204])
        self.assertEqual(len(self.events("inform")), 1)
        # The address is still blocked for failing attempts.
        again = await self.session(self.cpe(0, password="a-guess", source_address=attacker))
        self.assertEqual(again[-1].status, 429)

    async def test_preemptive_basic_and_nonce_reuse_count_nothing(self) -> None:
        await self.start()
        nat = "127.0.0.3"
        # 30 CPEs sending Basic pre-emptively over TLS, as TR-069 §3.4.4 says they
        # should; Basic is not offered (auth.schemes = ["digest"]).
        for i in range(30):
            exchanges = await self.session(self.cpe(i, source_address=nat, preemptive_basic=True))
            self.assertEqual([e.status for e in exchanges], [401, 200, 204])
            challenges = exchanges[0].challenges
            self.assertTrue(challenges and all(c.startswith("Digest ") for c in challenges))
        # A CPE that answers the previous session's nonce, counting again from nc=1.
        reuser = self.cpe(source_address=nat, reuse_nonce=True)
        self.assertEqual([e.status for e in await self.session(reuser)], [401, 200, 204])
        for _ in range(3):
            exchanges = await self.session(reuser)
            self.assertEqual([e.status for e in exchanges], [401, 200, 204])
            self.assertTrue(all(c.endswith("stale=true") for c in exchanges[0].challenges))
        self.assertEqual(len(self.events("inform")), 34)
        self.assertEqual(self.events("auth.failed"), [])
        self.assertEqual(self.events("auth.blocked"), [])
        self.assertEqual(self.counters(), [])  # no failure counted anywhere

    async def test_guesses_from_30_addresses_over_two_nodes(self) -> None:
        await self.start()
        urls = [self.url, await self.start_second()]
        cafiles = [cafile(self.dir), self.other_cafile]
        last = []
        for i in range(30):
            guess = self.cpe(
                password="a-guess",
                url=urls[i % 2],
                cafile=cafiles[i % 2],
                source_address=f"127.0.1.{i + 1}",
            )
            last.append((await self.session(guess))[-1].status)
        # Counted per claimed device across both nodes: the 10th failure blocks it.
        self.assertEqual(last, [401] * 9 + [429] * 21)
        blocked = [(e["data"]["kind"], e["data"]["key"]) for e in self.events("auth.blocked")]
        self.assertEqual(blocked, [("device", DEVICE_ID)])
        self.assertFalse([k for k in self.counters() if "authblock:src:" in k])
        # The device itself, with its right password, gets in on both nodes, also from
        # an address the guesses came from.
        for n, peer in enumerate(("127.0.1.200", "127.0.1.3")):
            device = self.cpe(url=urls[n], cafile=cafiles[n], source_address=peer)
            self.assertEqual([e.status for e in await self.session(device)], [401, 200, 204])
