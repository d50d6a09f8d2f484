"""The pieces of a service tree whose children start and stop asynchronously, in order.

Twisted's ``MultiService`` starts its children synchronously and stops them all at once;
the gateway's parts need each other ready (Redis before the stores, the stores before
the ACS) and must stop one after the other in reverse (the embedded Redis last). So the
tree awaits each child: :class:`Part` is a service whose start and stop are coroutines,
:class:`Listener` a listening port as a part.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.waiters import Waiters

__all__ = ["FunctionPart", "Listener", "OrderedTree", "Part"]


class Part(Service):
    """A child of the tree with asynchronous ``start`` and ``stop`` (override them).

    ``startService`` runs ``start`` and keeps its Deferred as :meth:`whenStarted`, so a
    part also works outside the tree (as in a ``.tac`` file or a test).
    """

    _started: Deferred[None] | None = None

    async def start(self) -> None:
        """Start; the tree waits for this before it starts the next part."""

    async def stop(self) -> None:
        """Stop; the tree waits for this before it stops the part started before."""

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._started = Deferred.fromCoroutine(self.start())

    def whenStarted(self) -> Deferred[None]:
        return self._started if self._started is not None else succeed(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        started = self._started
        if started is not None and not started.called:
            started.cancel()
        return Deferred.fromCoroutine(self.stop())


class FunctionPart(Part):
    """A part made of two plain functions, for steps with nothing else to keep."""

    def __init__(
        self,
        name: str,
        start: Callable[[], Awaitable[None]] | None = None,
        stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._start_fn, self._stop_fn = start, stop

    async def start(self) -> None:
        if self._start_fn is not None:
            await self._start_fn()

    async def stop(self) -> None:
        if self._stop_fn is not None:
            await self._stop_fn()


class Listener(Part):
    """A listening port as a part: ``twisted.application.internet``'s
    ``StreamServerEndpointService``, but the port is public once started (a port 0 is
    chosen by the system, and the logs and tests need the number) and a failure to
    listen fails the start instead of being logged and forgotten."""

    _log = Logger()

    def __init__(
        self, name: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, describe: str
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.factory = factory
        self.port: IListeningPort | None = None
        self._describe = describe  # "ACS endpoint listening on https://{host}:{port}/"

    async def start(self) -> None:
        self.port = await self.endpoint.listen(self.factory)
        address: Any = self.port.getHost()
        self._log.info(self._describe, host=address.host, port=address.port)

    async def stop(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)


class OrderedTree(MultiService):
    """A tree whose children start one after another, each once the one before is up,
    and stop in reverse order, each once the one after it is down.

    ``steps`` are called in order while starting; each builds the next child from what
    the children before it made (or returns None when configured off).
    """

    _log = Logger()

    def __init__(self, steps: list[Callable[[], Part | Service | None]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._steps = steps
        self._started: Deferred[None] | None = None
        self._waiting: Waiters[None] = Waiters()

    def startService(self) -> None:
        Service.startService(self)  # children are added, and so started, one by one
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addBoth(self._start_ended)

    async def _start(self) -> None:
        for step in self._steps:
            child = step()
            if child is None:
                continue
            child.setServiceParent(self)  # the tree is running: this starts it
            if isinstance(child, Part):
                await child.whenStarted()

    def _start_ended(self, result: object) -> None:
        waited = bool(self._waiting)
        if isinstance(result, Failure):
            self._waiting.fail(result)
            if not result.check(CancelledError):  # a stop during the start is no failure
                self.start_failed(result, waited=waited)
        else:
            self._waiting.fire(None)

    def start_failed(self, failure: Failure, *, waited: bool) -> None:
        """Starting failed; ``waited``: somebody was told (else only this log line is)."""
        self._log.failure("could not start", failure)

    def whenStarted(self) -> Deferred[None]:
        """Fires once every child is up; errbacks if starting failed."""
        if self._started is not None and self._started.called:
            return succeed(None)
        return self._waiting.wait()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        if self._started is not None and not self._started.called:
            self._started.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self._log.failure("could not stop {name} cleanly", name=child.name)
            self.removeService(child)  # type: ignore[no-untyped-call]
