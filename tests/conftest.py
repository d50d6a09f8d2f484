"""Suite-wide fixtures: one real redis-server on a free loopback port for the tests needing it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.redis_server import RedisServer

# Speed is measured in bench/, never asserted in a test: no per-example deadline, which
# fails at random on a slow or shared CI machine whatever the code does.
settings.register_profile("cwmpgw", deadline=None)
settings.load_profile("cwmpgw")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A started RedisServer shared by the session; tests keep apart with unique_prefix()."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def redis_for_class(request: pytest.FixtureRequest, redis_server: RedisServer) -> None:
    """Expose the server as ``self.redis_server`` to unittest/trial classes.

    Use it with ``@pytest.mark.usefixtures("redis_for_class")`` on the TestCase class.
    """
    request.cls.redis_server = redis_server
