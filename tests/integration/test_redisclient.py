"""The gateway's Redis pool (cwmpgw.redisclient) against a real redis-server, over TCP
and its unix socket: the lean path and txredisapi's own path on the same connections."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from cwmpgw import redisclient
from tests.support.redis_server import unique_prefix


@pytest.mark.usefixtures("redis_for_class")
class PoolTests(TestCase):
    redis_server: Any

    async def pools(self) -> list[Any]:
        server = self.redis_server
        made = [
            await redisclient.pool(reactor, host=server.host, port=server.port, poolsize=2),
            await redisclient.pool(reactor, path=server.socket_path, poolsize=2),
        ]
        for pool in made:
            self.addCleanup(pool.disconnect)
        return made

    async def test_text_numbers_and_foreign_bytes_round_trip(self) -> None:
        for pool in await self.pools():
            key = unique_prefix() + "k"
            foreign = b"\xff\xfe caf\xc3\xa9".decode("utf-8", "surrogateescape")
            await pool.hset(key, "a", "café")
            await pool.execute_command("HSET", key, "n", 42, "f", foreign)
            self.assertEqual(
                await pool.execute_command("HGETALL", key),
                ["a", "café", "n", "42", "f", foreign],
            )
            # The stored bytes are the foreign ones, not their escapes.
            self.assertEqual(await pool.execute_command("HSTRLEN", key, "f"), 8)

    async def test_scripts_and_a_transaction(self) -> None:
        for pool in await self.pools():
            key = unique_prefix() + "n"
            script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
            self.assertEqual(await pool.eval(script, [key], [2]), 2)
            self.assertEqual(await pool.eval(script, [key], [3]), 5)  # by its hash now
            await pool.execute_command("SCRIPT", "FLUSH")
            self.assertEqual(await pool.eval(script, [key], [1]), 6)  # sent in full again
            # MULTI holds a connection and takes txredisapi's own path.
            transaction = await pool.multi()
            await transaction.incr(key)
            await transaction.get(key)
            self.assertEqual(await transaction.commit(), [7, "7"])
