"""The txredisapi connection pool the gateway's stores and buses talk through, with a
leaner path for the commands every session sends.

txredisapi 1.6.0 (pinned) pays, for every command: each argument encoded through a
chain of type checks and three ``bytearray.extend`` calls; the script text hashed with
SHA-1 on every ``eval``; the reply wrapped in a second Deferred (there only for the
per-command reply timeout, which the gateway leaves off: the availability guard bounds
every call); and every string of the reply decoded in Python, one call per element.
With a one-task session sending seven commands (most of them EVALSHA with 15 to 80
arguments), that was about 5% of the gateway's CPU per session (py-spy,
bench/sessions.py) and a tenth of a ``wake()``.

:class:`LeanRedisProtocol` keeps txredisapi's protocol and changes only that path: the
command is encoded in one pass, a script's hash is computed once per script text, the
reply Deferred is txredisapi's own reply queue's, and hiredis decodes the strings in C.
A command txredisapi treats specially (pipelining, MULTI, a reply timeout, a
post-processing keyword) takes txredisapi's own path unchanged.

Strings come back as ``str`` as before (charset UTF-8, ``convertNumbers`` off). Bytes
that are not UTF-8 (written by someone else) decode with ``surrogateescape`` and are
encoded back the same way, so such a value round-trips; txredisapi returned them as
``bytes``.

Importing this module imports txredisapi, which installs the global reactor: import it
where the Redis connection is made, after twistd chose the reactor.
"""

from __future__ import annotations

from hashlib import sha1
from typing import Any, Final

import hiredis
import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint

__all__ = ["LeanRedisProtocol", "encode_command", "pool"]

# Script text → (its SHA-1 as EVALSHA wants it). The gateway's scripts are module
# constants: a few dozen. Bounded anyway, in case some caller builds scripts per call.
_SCRIPT_HASHES: dict[str, str] = {}
_MAX_SCRIPTS = 512


# "$<length>\r\n" of every bulk string shorter than this, made once: nearly every argument
# of the gateway's commands (keys, ids, short values) is one of them.
_SHORT: Final = 1024
_BULK_HEADS: Final = tuple(b"$%d\r\n" % n for n in range(_SHORT))


def encode_command(args: tuple[Any, ...]) -> bytes:
    """A RESP array of bulk strings, as txredisapi's ``_build_command`` writes it.

    ``str`` as UTF-8 (``surrogateescape``: what :class:`LeanRedisProtocol` decoded goes
    back unchanged), ``int`` in decimal, ``float`` as ``format(x, "f")``, anything else
    as ``str(x)``, like txredisapi.
    """
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    heads = _BULK_HEADS
    for arg in args:
        kind = type(arg)
        if kind is str:
            try:
                data = arg.encode()  # the strict codec is the fast one; nearly all is UTF-8
            except UnicodeEncodeError:
                data = _surrogate_escaped(arg)
        elif kind is bytes:
            data = arg
        elif kind is int:
            data = b"%d" % arg
        elif kind is float:
            data = format(arg, "f").encode()
        elif isinstance(arg, (bytes, bytearray)):
            data = bytes(arg)
        else:
            data = _surrogate_escaped(str(arg))
        size = len(data)
        append(heads[size] if size < _SHORT else b"$%d\r\n" % size)
        append(data)
        append(b"\r\n")
    return b"".join(parts)


def _surrogate_escaped(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Not the value in the message (txredisapi's had it): it may be a task's JSON with
        # a password in it, and errors are logged.
        raise txredisapi.InvalidData(
            f"a text of {len(text)} characters that UTF-8 cannot encode (a lone surrogate)"
        ) from None


def _script_hash(script: str) -> str:
    known = _SCRIPT_HASHES.get(script)
    if known is None:
        known = sha1(script.encode(), usedforsecurity=False).hexdigest()  # EVALSHA names it so
        if len(_SCRIPT_HASHES) < _MAX_SCRIPTS:
            _SCRIPT_HASHES[script] = known
    return known


class LeanRedisProtocol(txredisapi.HiredisProtocol):  # type: ignore[misc]
    """txredisapi's hiredis protocol, minus the per-command overhead (module docstring).

    Only for connections made with charset UTF-8 and ``convertNumbers`` off, as
    :func:`pool` makes them; any other setting leaves txredisapi's behaviour whole.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean = self.charset == "utf-8" and not self.convertNumbers
        if self._lean:
            self._reader = hiredis.Reader(
                protocolError=txredisapi.InvalidData,
                replyError=txredisapi.ResponseError,
                encoding="utf-8",
                errors="surrogateescape",
            )

    def tryConvertData(self, data: Any) -> Any:
        if self._lean:
            return data  # hiredis decoded it already; numbers stay text
        return super().tryConvertData(data)

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if (
            kwargs
            or not self._lean
            or not self.connected
            or self.pipelining
            or self.inTransaction
            or self.inMulti
            or self.replyTimeout
        ):
            d: Deferred[Any] = super().execute_command(*args, **kwargs)
            return d
        self.transport.write(encode_command(args))
        # The reply queue's own Deferred: txredisapi wraps it in a second one only to be
        # able to fire it from a reply timeout, which is off here.
        reply: Deferred[Any] = self.replyQueue.get()
        return reply.addCallback(self.handle_reply)

    def eval(self, script: Any, keys: Any = (), args: Any = ()) -> Deferred[Any]:
        if not isinstance(script, str):
            d: Deferred[Any] = super().eval(script, keys, args)
            return d
        h = _script_hash(script)
        if h in self.script_hashes:
            d = self.execute_command("EVALSHA", h, len(keys), *keys, *args)
            return d.addErrback(self._unknown_script, script, h, keys, args)
        d = self._eval(script, h, keys, args)
        return d

    def _unknown_script(
        self, failure: Any, script: str, h: str, keys: Any, args: Any
    ) -> Deferred[Any] | Any:
        """On NOSCRIPT (Redis restarted: its script cache is empty) send the script whole,
        as txredisapi's ``evalsha`` and ``_evalsha_failed`` do together."""
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("NOSCRIPT"):
            self.script_hashes.discard(h)
            d: Deferred[Any] = self._eval(script, h, keys, args)
            return d
        return failure


class _LeanFactory(txredisapi.RedisFactory):  # type: ignore[misc]
    protocol = LeanRedisProtocol


def pool(
    reactor: Any,
    *,
    host: str | None = None,
    port: int = 6379,
    path: str | None = None,
    dbid: int | None = None,
    password: str | None = None,
    poolsize: int = 10,
) -> Deferred[Any]:
    """A connected txredisapi pool (``ConnectionPool`` or ``UnixConnectionPool``, as
    txredisapi's ``makeConnection`` builds them) whose connections are
    :class:`LeanRedisProtocol`; fires once every connection is ready."""
    if path is not None:
        uuid = path
        handler = txredisapi.UnixConnectionHandler
        endpoint: Any = UNIXClientEndpoint(reactor, path)
    else:
        uuid = f"{host}:{port}"
        handler = txredisapi.ConnectionHandler
        endpoint = HostnameEndpoint(reactor, host or "127.0.0.1", port)
    factory = _LeanFactory(
        uuid,
        dbid,
        poolsize,
        False,
        handler,
        "utf-8",
        password,
        None,
        False,
    )
    factory.reconnect = True
    factory.startConnecting(endpoint)
    d: Deferred[Any] = factory.deferred
    return d
