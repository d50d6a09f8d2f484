"""The metrics part: ``/metrics`` in the Prometheus text format, and the samplers feeding
it (Redis latency, the event loop's stalls)."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.server import Site

from cwmpgw.app.acs import tcp_endpoint
from cwmpgw.app.tree import Listener
from cwmpgw.availability import GuardedRedis, RedisAvailability
from cwmpgw.config import Config
from cwmpgw.metrics import Metrics, MetricsResource

__all__ = ["ReactorLag", "make_metrics", "redis_sampler"]

# Redis latency is sampled with a PING this often; a PING that takes longer is "down".
SAMPLE_INTERVAL = 5.0
PING_TIMEOUT = 2.0


def make_metrics(config: Config, reactor: Any, metrics: Metrics) -> Listener:
    cfg = config.metrics
    site = Site(MetricsResource(metrics), reactor=reactor)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return Listener(
        "metrics",
        tcp_endpoint(reactor, cfg.port, cfg.interface),
        site,
        "metrics listening on http://{host}:{port}/metrics",
    )


def redis_sampler(
    reactor: Any, metrics: Metrics, redis: GuardedRedis, availability: RedisAvailability
) -> TimerService:
    """Up or down as /healthz says it at the moment of the scrape (no round trip), not as
    a PING a few seconds ago found it; the PING samples only measure latency."""
    metrics.redis_up.set_function(lambda: 1.0 if availability.available else 0.0)

    async def sample() -> None:
        start = reactor.seconds()
        try:
            await redis.ping().addTimeout(PING_TIMEOUT, reactor)
        except Exception:
            return
        metrics.redis_latency.observe(reactor.seconds() - start)

    service = TimerService(SAMPLE_INTERVAL, lambda: Deferred.fromCoroutine(sample()))
    service.clock = reactor
    service.setName("redis-sampler")
    return service


class ReactorLag(Service):
    """Measures the event loop's stalls: how late a timer due every ``interval`` runs.

    Anything that holds the reactor (a parse, a TLS handshake, a long loop) delays every
    timer and every connection by as much; the lateness is observed into
    ``cwmpgw_reactor_lag_seconds`` and the worst of the last ``window`` to twice ``window``
    seconds is ``cwmpgw_reactor_lag_max_seconds`` (so a scrape every ``window`` seconds
    misses no stall). At the default 20 ms it costs ~50 short calls a second.
    """

    name = "reactor-lag"

    def __init__(
        self, clock: IReactorTime, metrics: Metrics, *, interval: float = 0.02, window: float = 10.0
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self.interval = interval
        self.window = window
        self._call: IDelayedCall | None = None
        self._due = 0.0
        self._slot_start = 0.0
        self._slot_max = 0.0
        self._previous_max = 0.0

    def worst(self) -> float:
        """The longest stall of the last ``window`` to twice ``window`` seconds."""
        if self._clock.seconds() - self._slot_start >= 2 * self.window:
            return 0.0
        return max(self._slot_max, self._previous_max)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._slot_start = self._clock.seconds()
        self._metrics.reactor_lag_max.set_function(self.worst)
        self._schedule()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self.interval
        self._call = self._clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        lag = max(0.0, now - self._due)
        self._metrics.reactor_lag.observe(lag)
        if now - self._slot_start >= self.window:
            # A new slot; the old one's worst is kept one more window (none if it is older).
            fresh = now - self._slot_start < 2 * self.window
            self._previous_max = self._slot_max if fresh else 0.0
            self._slot_start, self._slot_max = now, 0.0
        self._slot_max = max(self._slot_max, lag)
        self._schedule()
