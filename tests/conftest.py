"""Suite-wide fixtures: one real redis-server on a free loopback port for the tests needing it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="session")
def prosody_server() -> Iterator[Any]:
    """A started Prosody (XMPP) server shared by the session, with TLS from a test CA.

    Skipped only when the ``prosody`` binary is genuinely absent; .ci/run installs it."""
    from tests.support.certfactory import CertAuthority
    from tests.support.prosody_server import ProsodyServer, prosody_binary

    if prosody_binary() is None:
        pytest.skip("prosody is not installed (apt-get install prosody): XMPP tests need it")
    server = ProsodyServer(CertAuthority("cwmpgw XMPP Test CA")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="class")
def prosody_for_class(request: pytest.FixtureRequest, prosody_server: Any) -> None:
    """Expose the server as ``self.prosody`` to unittest/trial classes."""
    request.cls.prosody = prosody_server
