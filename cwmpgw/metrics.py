"""Prometheus metrics: what an operator graphs and alerts on.

One registry per gateway service (not the process-global one), so several services in one
process — tests, benchmarks — keep separate counts. Labels are bounded sets (outcomes,
method names, event types), never device ids.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink, IStoredEvents

__all__ = ["CONTENT_TYPE", "MeteredEventSink", "Metrics", "MetricsResource"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Sessions last from a few hundred milliseconds to minutes (a slow CPE, many tasks).
_SESSION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)
# A healthy reactor runs a timer within a few ms; a stall of 100 ms delays every connection.
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Counter(
            "cwmpgw_sessions", "CWMP sessions ended, by outcome.", ["outcome"], registry=r
        )
        self.session_duration = Histogram(
            "cwmpgw_session_duration_seconds",
            "Duration of CWMP sessions, Inform to end.",
            buckets=_SESSION_BUCKETS,
            registry=r,
        )
        self.live_sessions = Gauge(
            "cwmpgw_live_sessions", "CWMP sessions open on this node.", registry=r
        )
        self.rpcs = Counter(
            "cwmpgw_rpcs",
            "RPCs exchanged, by method and result (ok, fault; cpe = a CPE request).",
            ["method", "result"],
            registry=r,
        )
        self.auth_failures = Counter(
            "cwmpgw_auth_failures", "Failed CPE authentications.", registry=r
        )
        self.credentials_stuck = Counter(
            "cwmpgw_credentials_stuck",
            "Devices reported (credentials.stuck) for still authenticating with the"
            " bootstrap credential after confirming their own.",
            registry=r,
        )
        self.bootstrap_refused = Counter(
            "cwmpgw_bootstrap_refused",
            "Informs refused because the bootstrap credential's grace for the device ended.",
            registry=r,
        )
        self.connection_requests = Counter(
            "cwmpgw_connection_requests",
            "Connection requests, by method and outcome.",
            ["method", "outcome"],
            registry=r,
        )
        self.stun_bindings = Counter(
            "cwmpgw_stun_bindings",
            "STUN connection-request bindings, by outcome (recorded, or why not).",
            ["outcome"],
            registry=r,
        )
        self.events = Counter(
            "cwmpgw_events_published", "Events published, by type.", ["type"], registry=r
        )
        self.events_spooled = Gauge(
            "cwmpgw_events_spooled",
            "Events kept in this node's local spool, not yet stored in Redis.",
            registry=r,
        )
        self.events_failed = Counter(
            "cwmpgw_events_failed",
            "Events that could not be published, by type.",
            ["type"],
            registry=r,
        )
        self.admission_rejections = Counter(
            "cwmpgw_admission_rejections", "New sessions shed by admission control.", registry=r
        )
        self.budget_refusals = Counter(
            "cwmpgw_budget_refusals",
            "Unauthenticated requests answered 503 unparsed: their address was over its"
            " budget of body bytes (acs.unauthenticated_bytes_per_second).",
            registry=r,
        )
        self.reactor_lag = Histogram(
            "cwmpgw_reactor_lag_seconds",
            "How late the event loop ran a timer due every few ms: its stalls.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.reactor_lag_max = Gauge(
            "cwmpgw_reactor_lag_max_seconds",
            "The longest stall of the event loop in the last 10 to 20 seconds.",
            registry=r,
        )
        self.redis_latency = Histogram(
            "cwmpgw_redis_latency_seconds",
            "Round trip of a Redis PING, sampled every few seconds.",
            buckets=_REDIS_BUCKETS,
            registry=r,
        )
        self.redis_up = Gauge(
            "cwmpgw_redis_up", "1 if Redis is reachable now, as /healthz says.", registry=r
        )

        for metric in (
            self.sessions,
            self.rpcs,
            self.connection_requests,
            self.stun_bindings,
            self.events,
            self.events_failed,
        ):
            _remember_children(metric)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


def _remember_children(metric: Any) -> None:
    """``metric.labels(...)`` answered from a dict once each child is made.

    prometheus_client's ``labels`` checks and converts the values and takes a lock on
    every call: ~1.4 µs, nine times a session. The children are the same objects it keeps
    anyway (the label sets are bounded), so a dict in front of it changes nothing else.
    """
    made: dict[tuple[str, ...], Any] = {}
    labels = metric.labels

    def remembered(*values: str) -> Any:
        child = made.get(values)
        if child is None:
            child = made[values] = labels(*values)
        return child

    metric.labels = remembered


@implementer(IEventSink, IStoredEvents)
class MeteredEventSink:
    """Counts what goes through an event sink, published or failed, and the events that
    state-changing scripts stored themselves (task events)."""

    def __init__(self, inner: IEventSink, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def publish(self, event: Event) -> Deferred[None]:
        def ok(result: None) -> None:
            self._metrics.events.labels(event.type).inc()
            return result

        def failed(failure: Any) -> Any:
            self._metrics.events_failed.labels(event.type).inc()
            return failure

        return self._inner.publish(event).addCallbacks(ok, failed)

    def stored(self, event: Event) -> None:
        self._metrics.events.labels(event.type).inc()
        if IStoredEvents.providedBy(self._inner):
            IStoredEvents(self._inner).stored(event)


class MetricsResource(Resource):
    """``GET /metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        if request.path not in (b"/metrics", b"/"):
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        return self._metrics.render()
