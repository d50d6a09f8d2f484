"""The event spool and Redis availability, unit by unit: a Clock, a fake Redis, a temp file.

The last class runs RedisSpoolWriter's Lua script against a real redis-server: the
dedupe that makes a replay interrupted by a crash repeat nothing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from cwmpgw import availability as availability_module
from cwmpgw.availability import (
    AdmitWhileAvailable,
    GuardedRedis,
    RedisAvailability,
    RedisTimeout,
    Unavailable,
)
from cwmpgw.bus import spool as spool_module
from cwmpgw.bus.events import Event, IEventSink
from cwmpgw.bus.spool import (
    ISpoolWriter,
    RedisSpoolWriter,
    SpooledEvent,
    SpoolFull,
    SpoolingEventSink,
)
from tests.support.redis_server import connect, unique_prefix


def event(n: int, type_: str = "inform") -> Event:
    """The same event (same id) every time for the same ``n``."""
    return Event(
        type=type_,
        ts=1_700_000_000.0 + n,
        node="n1",
        data={"n": n},
        device={"id": "d"},
        id=f"{n:028x}",
    )


class FakeRedis:
    """The pool seen by RedisAvailability: a connection count and a PING we answer by hand."""

    def __init__(self) -> None:
        self.connections = 4
        self.pings: list[Deferred[str]] = []

    def ping(self) -> Deferred[str]:
        d: Deferred[str] = Deferred()
        self.pings.append(d)
        return d

    def answer_pings(self) -> None:
        pings, self.pings = self.pings, []
        for d in pings:
            if not d.called:
                d.callback("PONG")


def availability(clock: Clock, redis: FakeRedis) -> RedisAvailability:
    a = RedisAvailability(
        redis.ping,
        lambda: redis.connections,
        clock=clock,
        interval=1.0,
        ping_timeout=1.0,
        call_timeout=5.0,
    )
    a.start()
    return a


@implementer(IEventSink)
class FakeLive:
    """The live Redis bus: succeeds, fails, or hangs until told."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.fail_with: Exception | None = None
        self.hang = False
        self.hanging: list[Deferred[None]] = []

    def publish(self, event: Event) -> Deferred[None]:
        if self.hang:
            d: Deferred[None] = Deferred()
            self.hanging.append(d)
            return d
        if self.fail_with is not None:
            return fail(self.fail_with)
        self.published.append(event)
        return succeed(None)


@implementer(ISpoolWriter)
class FakeWriter:
    """The replay's Redis: a stream and a set of replayed ids, one batch at a time.

    ``stored`` outlives sinks, as Redis outlives a gateway that crashed mid-replay.
    """

    def __init__(self) -> None:
        self.stream: list[str] = []  # event ids, in stream order
        self.payloads: list[str] = []
        self.replayed: set[str] = set()
        self.batches: list[list[SpooledEvent]] = []
        self.fail_batches: set[int] = set()  # batch numbers (from 0) that fail
        self.hold = False
        self.held: list[Deferred[list[bool]]] = []

    def store(self, events: Sequence[SpooledEvent]) -> Deferred[list[bool]]:
        number = len(self.batches)
        self.batches.append(list(events))
        if number in self.fail_batches:
            return fail(RedisTimeout("no answer"))
        flags = []
        for e in events:
            new = e.id not in self.replayed
            if new:
                self.stream.append(e.id)
                self.payloads.append(e.payload)
            self.replayed.add(e.id)
            flags.append(new)
        if self.hold:
            d: Deferred[list[bool]] = Deferred()
            self.held.append(d)
            d.addCallback(lambda _: flags)
            return d
        return succeed(flags)

    def release(self) -> None:
        held, self.held = self.held, []
        for d in held:
            d.callback(None)


class SpoolTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cwmpgw-spool-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = os.path.join(self.dir, "spool", "events.jsonl")
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.redis = FakeRedis()
        self.availability = availability(self.clock, self.redis)
        self.addCleanup(self.availability.stop)
        self.live = FakeLive()
        self.writer = FakeWriter()

    def sink(self, **kwargs: Any) -> SpoolingEventSink:
        sink = SpoolingEventSink(
            self.live,
            self.writer,
            self.path,
            availability=self.availability,
            clock=self.clock,
            **kwargs,
        )
        sink.start()
        self.addCleanup(lambda: sink._fd is None or self.successResultOf(sink.stop()))
        return sink

    def down(self) -> None:
        """Redis closes every connection (killed)."""
        self.redis.connections = 0
        self.clock.advance(1)
        self.assertFalse(self.availability.available)

    def up(self) -> None:
        """Redis is back: the pool reconnects, the next tick's PING is answered."""
        self.redis.connections = 4
        self.clock.advance(1)
        self.redis.answer_pings()
        self.assertTrue(self.availability.available)

    def lines(self) -> list[dict[str, Any]]:
        with open(self.path, "rb") as f:
            return [json.loads(line) for line in f]

    def spooled_ids(self) -> list[str]:
        return [line["envelope"]["id"] for line in self.lines()]


class LivePathTests(SpoolTestCase):
    def test_live_while_available_and_nothing_spooled(self) -> None:
        sink = self.sink()
        e = event(1)
        self.successResultOf(sink.publish(e))
        self.assertEqual(self.live.published, [e])
        self.assertEqual(os.path.getsize(self.path), 0)
        self.assertEqual(sink.pending, 0)

    def test_spooled_while_unavailable_fsync_before_the_ack(self) -> None:
        sink = self.sink()
        self.down()
        trace: list[tuple[str, int]] = []
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            real_fsync(fd)
            trace.append(("fsync", os.fstat(fd).st_size))

        self.patch(spool_module.os, "fsync", fsync)
        e = event(1)
        d = sink.publish(e)
        d.addCallback(lambda _: trace.append(("acknowledged", os.path.getsize(self.path))))
        self.successResultOf(d)
        size = os.path.getsize(self.path)
        self.assertEqual(trace, [("fsync", size), ("acknowledged", size)])
        self.assertEqual(self.live.published, [])
        (line,) = self.lines()
        self.assertEqual(line["v"], 1)
        self.assertIsNone(line["sent_at"])  # never sent: certainly not in Redis
        self.assertEqual(
            json.dumps(line["envelope"], separators=(",", ":"), ensure_ascii=False), e.to_json()
        )
        self.assertEqual(sink.pending, 1)

    def test_failed_live_publish_is_spooled_as_maybe_sent(self) -> None:
        sink = self.sink()
        self.live.fail_with = RedisTimeout("no answer")
        self.successResultOf(sink.publish(event(1)))
        # Sent and not answered: it may be in the stream; the replay (at once, as the
        # pool still looks healthy) is told when it was sent, to look for it there.
        (spooled,) = self.writer.batches[0]
        self.assertEqual((spooled.id, spooled.sent_at), (event(1).id, self.clock.seconds()))
        self.assertEqual(self.writer.stream, [event(1).id])

    def test_refused_live_publish_is_spooled_as_never_sent(self) -> None:
        sink = self.sink()
        # What RedisEventBus fails with: its XADD and PUBLISH gathered.
        self.live.publish = lambda e: gatherResults(  # type: ignore[method-assign]
            [fail(Unavailable("down")), succeed(None)], consumeErrors=True
        ).addCallback(lambda _: None)
        self.successResultOf(sink.publish(event(1)))
        (spooled,) = self.writer.batches[0]
        self.assertEqual((spooled.id, spooled.sent_at), (event(1).id, None))

    def test_order_kept_behind_a_live_publish_still_under_way(self) -> None:
        sink = self.sink()
        self.live.hang = True
        first = sink.publish(event(1))
        self.redis.connections = 0  # Redis dies while the first publish waits for an answer
        second = sink.publish(event(2))
        self.assertNoResult(second)  # held: it must not overtake the first
        self.live.hanging[0].errback(RedisTimeout("no answer"))
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.spooled_ids(), [event(1).id, event(2).id])


class RidingTests(SpoolTestCase):
    """Riding events (RedisEventBus) behind the spool: the events waiting for a ride go in
    one command; when it fails, or is refused, each is spooled as one event would be."""

    def riding_sink(self) -> tuple[SpoolingEventSink, list[Deferred[Any]]]:
        from cwmpgw.bus.redis import RedisEventBus

        sent: list[Deferred[Any]] = []

        class Pool:
            def eval(self, script: str, keys: Any = (), args: Any = ()) -> Deferred[Any]:
                d: Deferred[Any] = Deferred()
                sent.append(d)
                return d

        self.live = RedisEventBus(  # type: ignore[assignment]
            GuardedRedis(Pool(), self.availability),
            "p:",
            riding=frozenset({"connreq.succeeded", "connreq.failed"}),
            clock=self.clock,
            max_ride=0.05,
        )
        return self.sink(), sent

    def publish_three(self, sink: SpoolingEventSink) -> list[Deferred[None]]:
        kinds = ["connreq.succeeded", "connreq.failed", "connreq.succeeded"]
        return [sink.publish(event(n, kind)) for n, kind in enumerate(kinds, 1)]

    def test_failed_together_then_spooled_in_order_as_maybe_sent(self) -> None:
        sink, sent = self.riding_sink()
        published = self.publish_three(sink)
        at = self.clock.seconds()
        self.clock.advance(0.05)
        self.assertEqual(len(sent), 1)  # the three in one command
        sent[0].errback(RedisTimeout("no answer"))
        for d in published:
            self.successResultOf(d)  # acknowledged: spooled, and replayed at once
        # Each spooled (and replayed) as it settles, as separate commands' failures were.
        replayed = [(e.id, e.sent_at) for batch in self.writer.batches for e in batch]
        self.assertEqual(replayed, [(event(n).id, at) for n in (1, 2, 3)])
        self.assertEqual(self.writer.stream, [event(n).id for n in (1, 2, 3)])
        self.assertEqual(sink.pending, 0)

    def test_refused_together_then_spooled_in_order_as_never_sent(self) -> None:
        sink, sent = self.riding_sink()
        published = self.publish_three(sink)
        self.redis.connections = 0  # Redis dies while they wait for a ride
        self.clock.advance(0.05)
        self.assertEqual(sent, [])  # refused by the guard: nothing sent
        for d in published:
            self.successResultOf(d)
        self.assertEqual(
            [(line["envelope"]["id"], line["sent_at"]) for line in self.lines()],
            [(event(n).id, None) for n in (1, 2, 3)],
        )
        self.assertEqual(sink.pending, 3)


class ReplayTests(SpoolTestCase):
    def test_replayed_in_order_when_redis_returns_then_live_again(self) -> None:
        sink = self.sink()
        self.down()
        events = [event(i) for i in range(5)]
        for e in events:
            self.successResultOf(sink.publish(e))
        self.assertEqual(self.writer.batches, [])  # nothing tried while down
        self.up()
        self.assertEqual(self.writer.stream, [e.id for e in events])
        self.assertEqual(self.writer.payloads, [e.to_json() for e in events])
        self.assertEqual(os.path.getsize(self.path), 0)  # truncated once all are stored
        self.assertEqual((sink.pending, sink.replayed), (0, 5))
        self.successResultOf(sink.whenDrained())
        later = event(9)
        self.successResultOf(sink.publish(later))
        self.assertEqual(self.live.published, [later])

    def test_events_published_during_a_replay_go_after_the_spooled_ones(self) -> None:
        sink = self.sink(batch=2)
        self.down()
        for i in range(3):
            sink.publish(event(i))
        self.writer.hold = True
        self.up()
        self.assertEqual(len(self.writer.batches), 1)  # first batch being written
        drained = sink.whenDrained()
        self.successResultOf(sink.publish(event(3)))  # Redis is up, but spooled events wait
        self.assertEqual(self.live.published, [])
        self.writer.hold = False
        self.writer.release()
        self.successResultOf(drained)
        self.assertEqual(self.writer.stream, [event(i).id for i in range(4)])
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_crash_mid_replay_then_restart_stores_each_event_once(self) -> None:
        sink = self.sink(batch=100)
        self.down()
        events = [event(i) for i in range(250)]
        for e in events:
            sink.publish(e)
        # The gateway dies after the first batch is stored: the third batch never goes,
        # the file is not truncated.
        self.writer.fail_batches = {1}
        self.up()
        self.assertEqual(len(self.writer.stream), 100)
        self.assertEqual(os.path.getsize(self.path) > 0, True)
        self.successResultOf(sink.stop())
        self.flushLoggedErrors(RedisTimeout)

        self.writer.fail_batches = set()
        restarted = self.sink(batch=100)  # start-up replays the file from the top
        self.assertEqual(self.writer.stream, [e.id for e in events])
        self.assertEqual((restarted.replayed, restarted.duplicates), (150, 100))
        self.assertEqual(os.path.getsize(self.path), 0)

    def test_failed_replay_is_retried_on_the_clock(self) -> None:
        sink = self.sink(retry_delay=5.0)
        self.down()
        sink.publish(event(1))
        self.writer.fail_batches = {0}
        self.up()
        self.assertEqual(self.writer.stream, [])
        self.assertEqual(len(self.flushLoggedErrors(RedisTimeout)), 1)
        self.clock.advance(5)
        self.assertEqual(self.writer.stream, [event(1).id])
        self.assertEqual(sink.pending, 0)

    def test_spool_left_by_a_previous_run_is_replayed_at_start_up(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        good = [event(1), event(2)]
        with open(self.path, "w") as f:
            for e in good:
                f.write('{"v":1,"sent_at":null,"envelope":' + e.to_json() + "}\n")
            f.write('{"v":1,"sent_at":null,"envelope":{"v":1,"id":"torn')  # crash mid-write
        sink = self.sink()
        self.assertEqual(self.writer.stream, [e.id for e in good])
        self.assertEqual(os.path.getsize(self.path), 0)
        self.assertEqual(sink.pending, 0)

    def test_torn_last_line_is_cut_and_new_lines_follow_whole_lines(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write('{"v":1,"sent_at":null,"envelope":' + event(1).to_json() + "}\n")
            f.write('{"v":1,"sent_at":nu')
        self.down()
        sink = self.sink()
        self.assertEqual(sink.pending, 1)
        self.successResultOf(sink.publish(event(2)))
        self.assertEqual(self.spooled_ids(), [event(1).id, event(2).id])

    def test_unreadable_line_is_skipped(self) -> None:
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write('{"v":1,"sent_at":null,"envelope":' + event(1).to_json() + "}\n")
            f.write("not json\n")
            f.write('{"v":1,"sent_at":null,"envelope":' + event(2).to_json() + "}\n")
        self.sink()
        self.assertEqual(self.writer.stream, [event(1).id, event(2).id])


class BoundsTests(SpoolTestCase):
    def test_full_spool_refuses_and_keeps_what_it_has(self) -> None:
        line = len('{"v":1,"sent_at":null,"envelope":' + event(1).to_json() + "}\n")
        sink = self.sink(max_bytes=2 * line + line // 2)
        self.down()
        self.successResultOf(sink.publish(event(1)))
        self.successResultOf(sink.publish(event(2)))
        failure = self.failureResultOf(sink.publish(event(3)), SpoolFull)
        self.assertIn("full", str(failure.value))
        self.assertEqual(self.spooled_ids(), [event(1).id, event(2).id])
        self.assertLessEqual(os.path.getsize(self.path), sink.max_bytes)
        self.up()  # once replayed there is room again
        self.successResultOf(sink.publish(event(4)))
        self.assertEqual(self.live.published, [event(4)])

    def test_stop_waits_for_live_publishes_and_spools_the_failed(self) -> None:
        sink = self.sink()
        self.live.hang = True
        sink.publish(event(1))
        stopped = sink.stop()
        self.assertNoResult(stopped)
        self.live.hanging[0].errback(RedisTimeout("no answer"))
        self.successResultOf(stopped)
        self.assertEqual(self.spooled_ids(), [event(1).id])
        self.failureResultOf(sink.publish(event(2)), RuntimeError)


class AvailabilityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.redis = FakeRedis()
        self.availability = availability(self.clock, self.redis)
        self.addCleanup(self.availability.stop)
        self.changes: list[bool] = []
        self.availability.subscribe(self.changes.append)

    def test_refuses_at_once_when_the_pool_has_no_connection(self) -> None:
        calls: list[int] = []
        self.redis.connections = 0

        def call() -> Deferred[int]:
            calls.append(1)
            return succeed(1)

        self.failureResultOf(self.availability.guard(call), Unavailable)
        self.assertEqual(calls, [])  # nothing sent, nothing queued
        self.assertEqual(self.changes, [False])
        self.assertRaises(Unavailable, self.availability.check)
        self.assertEqual(self.redis.pings, [])  # no PING over a pool with no connection

    def test_call_under_way_times_out_and_a_ping_confirms_down(self) -> None:
        d = self.availability.guard(lambda: Deferred())
        self.clock.advance(5)
        self.failureResultOf(d, RedisTimeout)
        self.clock.advance(0)  # the suspicion brings the PING forward
        self.assertEqual(len(self.redis.pings), 1)
        self.clock.advance(1)  # PING unanswered (Redis hangs, connections open)
        self.assertEqual(self.changes, [False])
        self.assertFalse(self.availability.available)

    def test_down_until_a_ping_answers_then_waiters_fire(self) -> None:
        self.redis.connections = 0
        self.clock.advance(1)
        waiting = self.availability.whenAvailable()
        self.redis.connections = 1
        self.assertNoResult(waiting)
        self.clock.advance(1)
        self.assertNoResult(waiting)  # reconnected, not yet confirmed
        self.redis.answer_pings()
        self.successResultOf(waiting)
        self.assertEqual(self.changes, [False, True])
        self.successResultOf(self.availability.guard(lambda: succeed("ok")))

    def test_caller_cancelling_says_nothing_about_redis(self) -> None:
        d = self.availability.guard(lambda: Deferred())
        d.cancel()
        self.failureResultOf(d)
        self.clock.advance(2)
        self.assertEqual(self.redis.pings, [])
        self.assertTrue(self.availability.available)

    def test_stop_leaves_no_timer(self) -> None:
        self.redis.connections = 0
        self.clock.advance(1)
        self.redis.connections = 1
        self.clock.advance(1)  # a PING under way
        self.availability.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.changes, [False])

    def test_each_call_times_out_at_its_own_deadline_with_one_timer(self) -> None:
        """Calls share one timer, armed at the oldest's deadline: none times out late, none
        early, a call settled in time is not touched, and no timer is left per call."""
        first = self.availability.guard(lambda: Deferred())
        self.clock.advance(0.5)
        answered: Deferred[str] = Deferred()
        second = self.availability.guard(lambda: answered)
        self.clock.advance(0.25)
        third = self.availability.guard(lambda: Deferred())
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # the tick and the expiry
        self.clock.advance(4.25 - 1e-3)  # t = 4.999
        self.assertNoResult(first)
        self.clock.advance(1e-3)  # t = 5: first's deadline
        self.failureResultOf(first, RedisTimeout)
        answered.callback("ok")
        self.assertEqual(self.successResultOf(second), "ok")
        self.clock.advance(0.75 - 1e-3)  # t = 5.749
        self.assertNoResult(third)
        self.clock.advance(1e-3)  # t = 5.75: third's deadline (second's came and went)
        self.failureResultOf(third, RedisTimeout)

    def test_a_call_with_a_timeout_of_its_own(self) -> None:
        shared = self.availability.guard(lambda: Deferred())
        short = self.availability.guard(lambda: Deferred(), timeout=0.5)
        long = self.availability.guard(lambda: Deferred(), timeout=8)
        self.clock.advance(0.5)
        failure = self.failureResultOf(short, RedisTimeout)
        self.assertIn("within 0.5s", str(failure.value))
        self.clock.advance(4.5)
        self.failureResultOf(shared, RedisTimeout)
        self.assertNoResult(long)
        self.clock.advance(3)
        self.failureResultOf(long, RedisTimeout)

    def test_a_timed_out_call_is_cancelled_and_a_late_answer_changes_nothing(self) -> None:
        cancelled: list[Deferred[str]] = []
        call: Deferred[str] = Deferred(cancelled.append)
        d = self.availability.guard(lambda: call)
        self.clock.advance(5)
        self.assertEqual(cancelled, [call])  # txredisapi is told, as addTimeout told it
        self.failureResultOf(d, RedisTimeout)
        self.clock.advance(0)
        self.assertEqual(len(self.redis.pings), 1)  # suspect: a PING at once

    def test_a_caller_cancelling_in_the_expiry_cannot_break_it(self) -> None:
        """A timed-out call's caller cancels another call due at the same moment."""
        a = self.availability.guard(lambda: Deferred())
        b = self.availability.guard(lambda: Deferred())
        c = self.availability.guard(lambda: Deferred())
        seen: list[Failure] = []

        def give_up_on_b(failure: Failure) -> None:
            seen.append(failure)
            b.cancel()

        a.addErrback(give_up_on_b)
        self.clock.advance(5)
        self.assertTrue(seen[0].check(RedisTimeout))
        self.failureResultOf(b, CancelledError)  # its caller's word, not a timeout
        self.failureResultOf(c, RedisTimeout)

    def test_stop_leaves_no_timer_once_calls_are_settled(self) -> None:
        settled = self.availability.guard(lambda: succeed(1))
        self.successResultOf(settled)
        under_way = self.availability.guard(lambda: Deferred())
        self.availability.stop()
        self.clock.advance(5)  # still times out after stop
        self.failureResultOf(under_way, RedisTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        answered: Deferred[int] = Deferred()
        d = self.availability.guard(lambda: answered)
        answered.callback(2)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_guarded_redis_passes_arguments_and_times_out(self) -> None:
        class Pool:
            def __init__(self) -> None:
                self.calls: list[tuple[Any, ...]] = []

            def evalsha(self, sha: str, keys: Any = None, args: Any = None) -> Deferred[Any]:
                self.calls.append((sha, keys, args))
                return Deferred()

            def boom(self) -> Deferred[None]:
                raise ValueError("bad call")

        pool = Pool()
        redis = GuardedRedis(pool, self.availability)
        d = redis.evalsha("abc", ["k"], args=[1])
        self.assertEqual(pool.calls, [("abc", ["k"], [1])])
        self.failureResultOf(redis.boom(), ValueError)
        self.clock.advance(5)
        self.failureResultOf(d, RedisTimeout)

    def test_guarded_redis_routes_commands_through_the_guard(self) -> None:
        class Pool:
            _factory = "private"
            disconnected = False

            def get(self, key: str) -> Deferred[str]:
                return succeed("value of " + key)

            def disconnect(self) -> Deferred[None]:
                self.disconnected = True
                return succeed(None)

        redis = GuardedRedis(Pool(), self.availability)
        self.assertEqual(self.successResultOf(redis.get("k")), "value of k")
        self.assertEqual(redis._factory, "private")
        self.redis.connections = 0
        self.failureResultOf(redis.get("k"), Unavailable)
        self.successResultOf(redis.disconnect())  # never refused: stopping must work
        self.assertTrue(redis.unguarded.disconnected)

    def test_admission_refuses_new_sessions_while_down(self) -> None:
        class Limits:
            def admit(self, codes: Any, live: int) -> int | None:
                return 7 if live > 10 else None

        admission = AdmitWhileAvailable(
            self.availability, Limits(), retry_after=(30, 90), rng=random.Random(1)
        )
        self.assertIsNone(admission.admit(["1 BOOT"], 0))
        self.assertEqual(admission.admit(["1 BOOT"], 11), 7)
        self.redis.connections = 0
        retry = admission.admit(["1 BOOT"], 0)
        assert retry is not None
        self.assertTrue(30 <= retry <= 90)
        self.assertEqual(admission.refused, 1)


@pytest.mark.usefixtures("redis_for_class")
class RedisSpoolWriterTests(TestCase):
    """The Lua script against a real Redis: order, once per id, and the stream search."""

    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        self.prefix = unique_prefix()
        self.redis = await connect(self, self.redis_server)
        self.clock = reactor
        self.writer = RedisSpoolWriter(self.redis, self.prefix, clock=reactor, stream_maxlen=1000)

    async def stream_ids(self) -> list[str]:
        entries = await self.redis.execute_command("XRANGE", self.prefix + "events", "-", "+")
        return [json.loads(fields[3])["id"] for _, fields in entries]

    def spooled(self, e: Event, sent_at: float | None = None) -> SpooledEvent:
        return SpooledEvent(e.id, e.type, e.to_json(), sent_at)

    async def test_a_replay_repeated_after_a_crash_stores_nothing_twice(self) -> None:
        events = [event(i) for i in range(5)]
        first = await self.writer.store([self.spooled(e) for e in events[:3]])
        self.assertEqual(first, [True, True, True])
        # The gateway died before truncating: the next start replays everything.
        again = await self.writer.store([self.spooled(e) for e in events])
        self.assertEqual(again, [False, False, False, True, True])
        self.assertEqual(await self.stream_ids(), [e.id for e in events])
        entries = await self.redis.execute_command("XRANGE", self.prefix + "events", "-", "+")
        self.assertEqual(entries[0][1][:2], ["type", "inform"])
        self.assertEqual(entries[0][1][3], events[0].to_json())

    async def test_a_live_publish_that_landed_before_failing_is_not_added_again(self) -> None:
        from cwmpgw.bus.redis import RedisEventBus

        e = event(1)
        await RedisEventBus(self.redis, self.prefix).publish(e)
        # Its answer was lost: spooled with the time it was sent.
        flags = await self.writer.store([self.spooled(e, sent_at=self.clock.seconds())])
        self.assertEqual(flags, [False])
        self.assertEqual(await self.stream_ids(), [e.id])

    async def test_replayed_events_are_published_too(self) -> None:
        import txredisapi

        received: Deferred[str] = Deferred()

        class Sub(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def messageReceived(self, pattern: str, channel: str, message: str) -> None:
                if not received.called:
                    received.callback(channel)

        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint

        factory = txredisapi.SubscriberFactory()
        factory.protocol = Sub
        factory.continueTrying = False
        endpoint = TCP4ClientEndpoint(reactor, self.redis_server.host, self.redis_server.port)
        sub = await endpoint.connect(factory)
        self.addCleanup(sub.transport.loseConnection)
        await sub.psubscribe(self.prefix + "events:*")
        await self.writer.store([self.spooled(event(1, "session.closed"))])
        channel = await received.addTimeout(10, reactor)
        self.assertEqual(channel, self.prefix + "events:session.closed")

    async def test_replayed_ids_are_forgotten_after_keep(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        writer = RedisSpoolWriter(self.redis, self.prefix, clock=clock, keep=5.0)
        await writer.store([self.spooled(event(1))])
        clock.advance(10)
        await writer.store([self.spooled(event(2))])
        members = await self.redis.execute_command("ZRANGE", writer.replayed_key, 0, -1)
        self.assertEqual(members, [event(2).id])


@pytest.mark.usefixtures("redis_for_class")
class GuardedTxredisapiTests(TestCase):
    """GuardedRedis over a real txredisapi pool: commands that do not hold a connection go
    straight to a ready connection (cwmpgw.availability._direct); the rest, and every
    case without a ready connection, take txredisapi's own path."""

    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        import txredisapi
        from twisted.internet import reactor

        self.prefix = unique_prefix()
        self.pool = await txredisapi.ConnectionPool(
            self.redis_server.host, self.redis_server.port, poolsize=2, convertNumbers=False
        )
        self.addCleanup(self.pool.disconnect)
        self.availability = RedisAvailability.for_txredisapi(self.pool, clock=reactor)
        self.availability.start()
        self.addCleanup(self.availability.stop)
        self.redis = GuardedRedis(self.pool, self.availability)

    async def test_commands_and_replies_in_step(self) -> None:
        import txredisapi

        self.assertIsNotNone(availability_module._direct(self.pool, "get"))
        self.assertIsNone(availability_module._direct(self.pool, "multi"))  # holds one
        self.assertIsNone(availability_module._direct(FakeRedis(), "ping"))
        unix = txredisapi.UnixConnectionHandler(self.pool._factory)  # the embedded Redis's
        self.assertIsNotNone(availability_module._direct(unix, "get"))
        key = self.prefix + "k"
        await self.redis.set(key, "v")
        self.assertEqual(await self.redis.get(key), "v")
        sha = await self.redis.script_load("return {KEYS[1], ARGV[1]}")
        self.assertEqual(await self.redis.evalsha(sha, [key], ["a"]), [key, "a"])
        # A cancelled command's reply is dropped; the next command gets its own.
        cancelled = self.redis.get(key)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        await self.redis.set(key, "w")
        self.assertEqual(await self.redis.get(key), "w")
        # A transaction holds a connection of its own, through txredisapi's path.
        transaction = await self.redis.multi()
        transaction.set(key, "x")
        transaction.get(key)
        self.assertEqual(await transaction.commit(), ["OK", "x"])
        self.assertEqual(await self.redis.get(key), "x")

    async def test_without_a_ready_connection_txredisapi_waits_for_one(self) -> None:
        key = self.prefix + "k"
        queue = self.pool._factory.connectionQueue
        held = list(queue.pending)
        queue.pending.clear()  # both connections taken (by transactions, say)
        got = self.redis.get(key)
        self.assertNoResult(got)
        for connection in held:
            queue.put(connection)
        self.assertIsNone(await got)
        # A connection that has died is skipped: txredisapi drops it from the pool.
        dead = queue.pending[0]
        dead.connected = 0
        try:
            await self.redis.set(key, "v")
            self.assertEqual(await self.redis.get(key), "v")
        finally:
            dead.connected = 1
