"""The metrics part: ``/metrics`` in the Prometheus text format, and the Redis latency
sampler feeding it."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.web.server import Site

from cwmpgw.app.acs import tcp_endpoint
from cwmpgw.app.tree import Listener
from cwmpgw.availability import GuardedRedis, RedisAvailability
from cwmpgw.config import Config
from cwmpgw.metrics import Metrics, MetricsResource

__all__ = ["make_metrics", "redis_sampler"]

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
