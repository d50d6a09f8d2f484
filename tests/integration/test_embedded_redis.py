"""The embedded redis-server service, with a fake reactor and against the real binary."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.testing import Clock
from twisted.logger import LogLevel, capturedLogs, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from cwmpgw.store.embedded import EmbeddedRedisService, EmbeddedRedisStopped, redis_server_binary

READY_TCP = b"4242:M 25 Nov 2026 15:08:19.704 * Ready to accept connections\n"
READY_UNIX = (
    b"4242:M 25 Nov 2026 15:08:19.704 * The server is now ready to accept connections at /x.sock\n"
)
REDIS_NAMESPACE = "cwmpgw.store.embedded.redis-server"


@implementer(IProcessTransport)
class FakeProcess:
    """Records what the service does to its child."""

    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.signals: list[str] = []
        self.stdin = b""
        self.stdin_closed = False

    def signalProcess(self, signalID: str | int) -> None:
        if self.pid is None:
            raise ProcessExitedAlready()
        self.signals.append(str(signalID))

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True


class Spawned:
    def __init__(
        self,
        protocol: ProcessProtocol,
        executable: str,
        args: list[str],
        env: dict[str, str] | None,
        path: str | None,
        process: FakeProcess,
    ) -> None:
        self.protocol = protocol
        self.executable = executable
        self.args = args
        self.env = env
        self.path = path
        self.process = process

    def output(self, data: bytes) -> None:
        self.protocol.outReceived(data)

    def end(self, reason: Exception | None = None) -> None:
        self.process.pid = None
        self.protocol.processEnded(Failure(reason or ProcessTerminated(signal=9)))


@implementer(IReactorProcess, IReactorTime)
class FakeReactor(Clock):
    """A Clock whose spawnProcess records the call and hands back a FakeProcess."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[Spawned] = []
        self.fail_spawns = 0

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Any = (),
        env: dict[str, str] | None = None,
        path: str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Any = None,
    ) -> FakeProcess:
        if self.fail_spawns:
            self.fail_spawns -= 1
            raise OSError("cannot fork")
        process = FakeProcess(pid=1000 + len(self.spawned))
        self.spawned.append(Spawned(processProtocol, executable, list(args), env, path, process))
        processProtocol.makeConnection(process)
        return process


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


class EmbeddedRedisUnitTests(SynchronousTestCase):
    def setUp(self) -> None:
        base = tempfile.mkdtemp(prefix="cwr")
        self.addCleanup(shutil.rmtree, base, True)
        self.data_dir = os.path.join(base, "data")
        self.reactor = FakeReactor()

    def service(self, data_dir: str | None = None, **kw: Any) -> EmbeddedRedisService:
        kw.setdefault("die_with_parent", False)
        return EmbeddedRedisService(
            data_dir or self.data_dir, reactor=self.reactor, binary="/opt/redis-server", **kw
        )

    def test_die_with_parent_runs_redis_through_the_launcher(self) -> None:
        self.service(die_with_parent=True).startService()
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.executable, sys.executable)
        self.assertEqual(spawned.args[:3], [sys.executable, "-I", "-S"])
        self.assertEqual(spawned.args[3], "-c")
        self.assertIn("prctl(1, signal.SIGTERM", spawned.args[4])
        self.assertEqual(spawned.args[5], str(os.getpid()))  # the parent it must outlive not
        self.assertEqual(spawned.args[6], "/opt/redis-server")
        self.assertEqual(option(spawned.args, "--dir"), self.data_dir)

    def test_constructor_does_no_io(self) -> None:
        self.service()
        self.assertEqual(self.reactor.spawned, [])
        self.assertFalse(os.path.exists(self.data_dir))

    def test_unix_socket_arguments(self) -> None:
        svc = self.service()
        svc.startService()
        [spawned] = self.reactor.spawned
        args = spawned.args
        sock = os.path.join(self.data_dir, "redis.sock")
        self.assertEqual(spawned.executable, "/opt/redis-server")
        self.assertEqual(args[0], "/opt/redis-server")
        self.assertEqual(option(args, "--port"), "0")
        self.assertNotIn("--bind", args)
        self.assertEqual(option(args, "--unixsocket"), sock)
        self.assertEqual(option(args, "--unixsocketperm"), "700")
        self.assertEqual(option(args, "--dir"), self.data_dir)
        self.assertEqual(option(args, "--appendonly"), "yes")
        self.assertEqual(option(args, "--appendfsync"), "everysec")
        self.assertEqual(option(args, "--save"), "")
        self.assertEqual(option(args, "--daemonize"), "no")
        self.assertEqual(spawned.env, {})
        self.assertEqual(spawned.path, self.data_dir)
        self.assertTrue(spawned.process.stdin_closed)
        self.assertEqual(spawned.process.stdin, b"")
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)
        self.assertEqual(svc.url, "unix://" + sock)
        self.assertEqual(svc.unix_path, sock)
        self.assertIsNone(svc.host)
        self.assertIsNone(svc.port)
        self.assertIsNone(svc.password)
        self.assertEqual(svc.pid, 1000)

    def test_long_path_falls_back_to_tcp_with_password(self) -> None:
        long_dir = os.path.join(self.data_dir, "x" * 120)
        svc = self.service(long_dir)
        self.assertIsNone(svc.unix_path)
        self.assertRaises(RuntimeError, lambda: svc.url)
        svc.startService()
        [spawned] = self.reactor.spawned
        args = spawned.args
        assert svc.port is not None and svc.password is not None
        self.assertEqual(svc.host, "127.0.0.1")
        self.assertEqual(args[1], "-")
        self.assertEqual(option(args, "--port"), str(svc.port))
        self.assertEqual(option(args, "--bind"), "127.0.0.1")
        self.assertNotIn("--unixsocket", args)
        self.assertNotIn(svc.password, " ".join(args))
        self.assertEqual(spawned.process.stdin, b"requirepass " + svc.password.encode() + b"\n")
        self.assertTrue(spawned.process.stdin_closed)
        self.assertEqual(svc.url, f"redis://:{svc.password}@127.0.0.1:{svc.port}/0")
        self.assertTrue(os.path.isdir(long_dir))

    def test_ready_after_ready_line_split_across_reads(self) -> None:
        svc = self.service()
        svc.startService()
        d = svc.whenReady()
        spawned = self.reactor.spawned[0]
        spawned.output(b"4242:M 25 Nov 2026 15:08:19.704 * Server initialized\n")
        spawned.output(READY_TCP[:40])
        self.assertNoResult(d)
        spawned.output(READY_TCP[40:])
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(self.successResultOf(svc.whenReady()))

    def test_ready_unix_socket_wording(self) -> None:
        svc = self.service()
        svc.startService()
        d = svc.whenReady()
        self.reactor.spawned[0].output(READY_UNIX)
        self.successResultOf(d)

    def test_output_is_logged_line_by_line_with_levels(self) -> None:
        svc = self.service()
        svc.startService()
        with capturedLogs() as events:
            self.reactor.spawned[0].output(
                b"4242:M 25 Nov 2026 15:08:19.704 * monotonic clock\n"
                b"4242:M 25 Nov 2026 15:08:19.704 # WARNING overcommit\r\n" + READY_TCP
            )
        lines = [
            (e["line"], e["log_level"]) for e in events if e["log_namespace"] == REDIS_NAMESPACE
        ]
        self.assertEqual(
            lines,
            [
                ("4242:M 25 Nov 2026 15:08:19.704 * monotonic clock", LogLevel.debug),
                ("4242:M 25 Nov 2026 15:08:19.704 # WARNING overcommit", LogLevel.info),
                (READY_TCP.decode().rstrip("\n"), LogLevel.info),
            ],
        )
        self.assertEqual({e["pid"] for e in events if "line" in e}, {1000})

    def test_restart_with_backoff_and_reset_after_ready(self) -> None:
        svc = self.service(restart_delay=1.0, max_restart_delay=3.0)
        svc.startService()
        spawned = self.reactor.spawned
        spawned[0].output(READY_TCP)
        with capturedLogs() as events:
            spawned[0].end()
        self.assertTrue(any("died" in e["log_format"] and e["pid"] == 1000 for e in events))
        self.assertIsNone(svc.pid)
        waiting = svc.whenReady()
        self.assertNoResult(waiting)

        expected_delays = [1.0, 2.0, 3.0, 3.0]
        for n, delay in enumerate(expected_delays, start=1):
            self.reactor.advance(delay - 0.01)
            self.assertEqual(len(spawned), n)
            self.reactor.advance(0.01)
            self.assertEqual(len(spawned), n + 1)
            if n < len(expected_delays):
                spawned[-1].end(ProcessTerminated(exitCode=1))

        spawned[-1].output(READY_TCP)
        self.successResultOf(waiting)
        spawned[-1].end()
        self.reactor.advance(0.99)
        self.assertEqual(len(spawned), 5)
        self.reactor.advance(0.01)
        self.assertEqual(len(spawned), 6)

    def test_failed_respawn_is_retried_with_backoff(self) -> None:
        svc = self.service()
        svc.startService()
        self.reactor.spawned[0].end()
        self.reactor.fail_spawns = 1
        with capturedLogs() as events:
            self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertTrue(any(e.get("log_failure") is not None for e in events))
        self.assertIsNone(svc.pid)
        self.reactor.advance(1.99)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(0.01)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(svc.pid, 1001)
        self.flushLoggedErrors(OSError)

    def test_output_of_a_dead_child_is_ignored(self) -> None:
        svc = self.service()
        svc.startService()
        old = self.reactor.spawned[0]
        old.end()
        self.reactor.advance(1.0)
        d = svc.whenReady()
        old.output(READY_TCP)
        self.assertNoResult(d)
        self.reactor.spawned[1].output(READY_TCP)
        self.successResultOf(d)

    def test_stop_sends_sigterm_and_fires_on_exit_without_restart(self) -> None:
        svc = self.service()
        svc.startService()
        spawned = self.reactor.spawned[0]
        spawned.output(READY_TCP)
        d = svc.stopService()
        self.assertEqual(spawned.process.signals, ["TERM"])
        self.assertNoResult(d)
        spawned.end(ProcessDone(0))
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(100)
        self.assertEqual(len(self.reactor.spawned), 1)
        self.assertFalse(svc.running)

    def test_sigkill_after_stop_timeout(self) -> None:
        svc = self.service(stop_timeout=5.0)
        svc.startService()
        spawned = self.reactor.spawned[0]
        d = svc.stopService()
        self.reactor.advance(4.99)
        self.assertEqual(spawned.process.signals, ["TERM"])
        self.reactor.advance(0.01)
        self.assertEqual(spawned.process.signals, ["TERM", "KILL"])
        self.assertNoResult(d)
        spawned.end()
        self.successResultOf(d)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_stop_while_restart_pending_cancels_it(self) -> None:
        svc = self.service()
        svc.startService()
        self.reactor.spawned[0].end()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.successResultOf(svc.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_stop_fails_pending_ready_waiters(self) -> None:
        svc = self.service()
        svc.startService()
        d = svc.whenReady()
        stopped = svc.stopService()
        self.failureResultOf(d, EmbeddedRedisStopped)
        self.reactor.spawned[0].end()
        self.successResultOf(stopped)

    def test_cancelled_waiter_is_forgotten(self) -> None:
        svc = self.service()
        svc.startService()
        d = svc.whenReady()
        d.cancel()
        self.reactor.spawned[0].output(READY_TCP)
        self.failureResultOf(d)  # CancelledError, and the later ready does not fire it again

    def test_restart_after_stop(self) -> None:
        svc = self.service()
        svc.startService()
        d = svc.stopService()
        self.reactor.spawned[0].end()
        self.successResultOf(d)
        svc.startService()
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertTrue(svc.running)


def test_redis_server_binary_is_executable() -> None:
    path = redis_server_binary()
    assert os.path.basename(path) == "redis-server"
    assert os.access(path, os.X_OK)


class EmbeddedRedisIntegrationTests(TestCase):
    """The real binary under the real reactor: AOF survives a SIGKILL and a restart."""

    timeout = 60

    async def test_kill_restart_keeps_data_then_stop(self) -> None:
        import txredisapi
        from twisted.internet import reactor

        base = tempfile.mkdtemp(prefix="cwr")
        self.addCleanup(shutil.rmtree, base, True)
        data_dir = os.path.join(base, "data")
        svc = EmbeddedRedisService(data_dir, reactor=reactor, restart_delay=0.05)
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        assert svc.unix_path is not None
        sock_path: str = svc.unix_path

        def within(d: Deferred[Any]) -> Deferred[Any]:
            return d.addTimeout(30, reactor)

        svc.startService()
        await within(svc.whenReady())
        first_pid = svc.pid
        assert first_pid is not None
        self.assertEqual(stat.S_IMODE(os.stat(data_dir).st_mode), 0o700)

        conn = await within(txredisapi.UnixConnection(sock_path, reconnect=False))
        await within(conn.set("embedded:key", "kept"))
        await within(conn.disconnect())

        died: Deferred[None] = Deferred()

        def observer(event: dict[str, Any]) -> None:
            if "died" in event.get("log_format", "") and event.get("pid") == first_pid:
                if not died.called:
                    died.callback(None)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        os.kill(first_pid, signal.SIGKILL)
        await within(died)
        await within(svc.whenReady())
        self.assertNotEqual(svc.pid, first_pid)

        conn = await within(txredisapi.UnixConnection(sock_path, reconnect=False))
        value = await within(conn.get("embedded:key"))
        await within(conn.disconnect())
        self.assertEqual(value, "kept")
        self.assertTrue(os.path.exists(os.path.join(data_dir, "appendonly.aof")))

        second_pid = svc.pid
        assert second_pid is not None
        await within(svc.stopService())
        self.assertIsNone(svc.pid)
        self.assertRaises(ProcessLookupError, os.kill, second_pid, 0)
        if os.path.exists(sock_path):
            with socket.socket(socket.AF_UNIX) as s:
                self.assertRaises(OSError, s.connect, sock_path)

    async def test_tcp_fallback_requires_password(self) -> None:
        import txredisapi
        from twisted.internet import reactor

        base = tempfile.mkdtemp(prefix="cwr")
        self.addCleanup(shutil.rmtree, base, True)
        data_dir = os.path.join(base, "d" * 110)
        svc = EmbeddedRedisService(data_dir, reactor=reactor)
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        self.assertIsNone(svc.unix_path)
        svc.startService()
        await svc.whenReady().addTimeout(30, reactor)
        assert svc.host is not None and svc.port is not None

        conn = await txredisapi.Connection(
            svc.host, svc.port, password=svc.password, reconnect=False
        ).addTimeout(30, reactor)
        try:
            self.assertEqual(await conn.ping(), "PONG")
        finally:
            await conn.disconnect()

        anonymous = await txredisapi.Connection(svc.host, svc.port, reconnect=False)
        try:
            with self.assertRaises(txredisapi.ResponseError) as raised:
                await anonymous.ping()
            self.assertIn("NOAUTH", str(raised.exception))
        finally:
            await anonymous.disconnect()
        await svc.stopService().addTimeout(30, reactor)


_RUN_SERVICE = """
import sys
from twisted.internet import reactor
from cwmpgw.store.embedded import EmbeddedRedisService
svc = EmbeddedRedisService(sys.argv[1], reactor=reactor)
svc.startService()
svc.whenReady().addCallback(lambda _: print(svc.pid, flush=True))
reactor.run()
"""


class _FirstLine(ProcessProtocol):
    def __init__(self) -> None:
        self.line: Deferred[bytes] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" in self._buffer and not self.line.called:
            self.line.callback(self._buffer.split(b"\n", 1)[0])

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet (a container's init)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
class OrphanTests(TestCase):
    """A gateway killed with SIGKILL takes its redis-server with it."""

    timeout = 60

    async def test_redis_server_stops_when_its_gateway_is_killed(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        import cwmpgw

        base = tempfile.mkdtemp(prefix="cwr")
        self.addCleanup(shutil.rmtree, base, True)
        root = os.path.dirname(os.path.dirname(os.path.abspath(cwmpgw.__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        proto = _FirstLine()
        gateway = reactor.spawnProcess(
            proto,
            sys.executable,
            [sys.executable, "-c", _RUN_SERVICE, os.path.join(base, "data")],
            env=env,
        )
        redis_pid = int(await proto.line.addTimeout(30, reactor))
        self.addCleanup(lambda: _alive(redis_pid) and os.kill(redis_pid, signal.SIGKILL))
        self.assertTrue(_alive(redis_pid))
        with open(f"/proc/{redis_pid}/cmdline", "rb") as f:
            self.assertIn(b"redis-server", f.read().split(b"\0")[0])  # exec'd, same pid

        gateway.signalProcess("KILL")
        await proto.ended
        for _ in range(300):  # SIGTERM makes it fsync and exit; allow 30 s on a slow machine
            if not _alive(redis_pid):
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(_alive(redis_pid), "redis-server outlived its gateway")


@pytest.mark.usefixtures("redis_for_class")
class RedisFixtureTests(TestCase):
    """The suite's shared Redis fixture is reachable from a trial TestCase."""

    redis_server: Any

    async def test_ping(self) -> None:
        import txredisapi
        from twisted.internet import reactor

        from tests.support.redis_server import unique_prefix

        conn = await txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, reconnect=False
        ).addTimeout(10, reactor)
        try:
            self.assertEqual(await conn.ping(), "PONG")
            key = unique_prefix() + "k"
            await conn.set(key, "v")
            self.assertEqual(await conn.get(key), "v")
            await conn.delete(key)
        finally:
            await conn.disconnect()
