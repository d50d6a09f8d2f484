"""The ACS's authentication, in one place: who a request proves to be, whether that
identity may speak for the device it claims, and the bookkeeping around both (failure
counts and blocks in the throttle, ``auth.failed`` and ``auth.blocked`` events).

The resource asks :meth:`AuthGate.check` once per request that must authenticate (an
Inform, or a POST continuing a session on a new connection) and gets an
:class:`~cwmpgw.acs.auth.Identity` or a :class:`Refusal` to send as it is.

What counts as a failure: only what was verified and found wrong. A first request
without credentials, a scheme we do not offer (a pre-emptive Basic), and a right
response under a stale nonce get the challenge and count nothing. A block refuses only
failing attempts: a correct credential always gets in (see :mod:`cwmpgw.acs.throttle`).
The throttle is a defence, not a dependency: if it fails, authentication decides alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from cwmpgw.acs.auth import AuthFailure, CpeAuthenticator, Identity
from cwmpgw.acs.bootstrap import BootstrapWatch
from cwmpgw.acs.certs import certificate_identity, matches, peer_certificate
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.throttle import Block, Claims, IAuthThrottle
from cwmpgw.availability import log_call_failure
from cwmpgw.bus.events import device_ref, format_ts
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.store.interfaces import ICredentialStore

__all__ = ["AuthGate", "ClientCertificates", "Refusal"]


@dataclass(frozen=True, slots=True)
class ClientCertificates:
    """How a verified client certificate names its device (acs.client_identity[_match])."""

    field: str = "cn"
    match: str = "device_id"


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer instead of a session: 401 (with challenges), 403 or 429."""

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


class AuthGate:
    _log = Logger()

    def __init__(
        self,
        engine: AcsEngine,
        authenticator: CpeAuthenticator,
        credentials: ICredentialStore,
        *,
        throttle: IAuthThrottle | None = None,
        certificates: ClientCertificates | None = None,
        bootstrap: BootstrapWatch | None = None,
    ) -> None:
        self._engine = engine
        self._auth = authenticator
        self._credentials = credentials
        self._throttle = throttle
        self.certificates = certificates
        self._bootstrap = bootstrap

    async def check(
        self, request: Request, peer: str, device: DeviceId, device_id: str
    ) -> Identity | Refusal:
        """The identity ``request`` proves, if it may speak for ``device_id``; else the
        refusal to answer with (counted, blocked and reported as it deserves)."""
        identity = await self._authenticate(request, peer, device, device_id)
        if isinstance(identity, Refusal):
            return identity
        refusal = await self._auth.authorize(identity, device_id, self._credentials)
        if refusal is not None:
            return await self._forbidden(peer, identity.username, device, device_id, refusal)
        if identity.bootstrap and self._bootstrap is not None:
            stuck = await self._stuck_bootstrap(request, peer, identity, device, device_id)
            if stuck is not None:
                return stuck
        # Not awaited: the counts' clean-up leaves in the same write as the session's first
        # command (one wait less per session); it cannot fail the session (it logs).
        Deferred.fromCoroutine(self._succeeded(peer, (identity.username, device_id)))
        channel: Any = request.channel
        if channel is not None and hasattr(channel, "auth_failures"):
            channel.auth_failures = 0
        return identity

    def challenge_only(self, request: Request) -> bool:
        """Whether ``request`` proves nothing (no credentials, no client certificate), so its
        answer is the challenge whatever it says: it need not even be read."""
        return request.getHeader(b"authorization") is None and not self.has_certificate(request)

    def challenge(self, request: Request) -> Refusal:
        """The 401 for a request that proves nothing: counted nowhere, as ever."""
        return self._challenge(request, AuthFailure("no credentials", challenge_only=True))

    def has_certificate(self, request: Request) -> bool:
        """Whether the request came with a verified client certificate (admission control
        charges such a request: it is not a bare first challenge)."""
        return self.certificates is not None and peer_certificate(request.transport) is not None

    async def _authenticate(
        self, request: Request, peer: str, device: DeviceId, device_id: str
    ) -> Identity | Refusal:
        if self.certificates is not None:
            cert = peer_certificate(request.transport)
            if cert is not None:
                # TLS verified it against our CA; here it must name this very device.
                names = certificate_identity(cert, self.certificates.field)
                if matches(names, device, device_id, self.certificates.match):
                    label = names.values[0] if names.values else ""
                    return Identity(f"certificate:{label}", device_id, "certificate")
                return await self._forbidden(
                    peer,
                    "certificate:" + ",".join(names.values)[:128],
                    device,
                    device_id,
                    "the client certificate does not name this device",
                )
        result = await self._auth.authenticate(request)
        if isinstance(result, Identity):
            return result
        if result.challenge_only or result.stale:
            # Not failures, so never counted nor refused by a block: a challenge.
            if result.stale or request.getHeader(b"authorization"):
                self._log.debug(
                    "challenged {peer} (user {username!r}): {reason}",
                    peer=peer,
                    username=result.username,
                    reason=result.reason,
                )
            return self._challenge(request, result)
        self._engine.auth_failed(
            peer=peer, reason=result.reason, username=result.username, device=device
        )
        channel: Any = request.channel
        if channel is not None and hasattr(channel, "auth_failures"):
            channel.auth_failures += 1
        claims = [c for c in (result.username, device_id) if c]
        retry = await self._failed(peer, claims, device, device_id)
        if retry is not None:
            self._log.info(
                "refused {peer} (user {username!r}, device {device_id}): too many failed "
                "authentications",
                peer=peer,
                username=result.username,
                device_id=device_id,
            )
            return Refusal(
                429,
                "too many failed authentications; retry later",
                (
                    (b"retry-after", str(max(1, math.ceil(retry))).encode()),
                    (b"connection", b"close"),
                ),
            )
        return self._challenge(request, result)

    def _challenge(self, request: Request, failure: AuthFailure) -> Refusal:
        headers = [
            (b"www-authenticate", value)
            for value in self._auth.challenges(request, stale=failure.stale)
        ]
        if getattr(request.channel, "auth_failures", 0) >= 2:
            headers.append((b"connection", b"close"))
        return Refusal(401, "authentication required", tuple(headers))

    async def _forbidden(
        self, peer: str, username: str, device: DeviceId, device_id: str, reason: str
    ) -> Refusal:
        """Valid credentials that may not speak for this device: counted for the device."""
        self._engine.auth_failed(peer=peer, reason=reason, username=username, device=device)
        await self._failed(peer, [device_id], device, device_id, check=False)
        return Refusal(
            403,
            "these credentials may not speak for this device",
            ((b"connection", b"close"),),
        )

    async def _stuck_bootstrap(
        self, request: Request, peer: str, identity: Identity, device: DeviceId, device_id: str
    ) -> Refusal | None:
        """A session opened with the bootstrap credential by a device that confirmed its
        own (:mod:`cwmpgw.acs.bootstrap`): reported once, refused after the grace period
        if the policy says so."""
        assert self._bootstrap is not None
        verdict = await self._bootstrap.session(device_id)
        use, policy = verdict.use, self._bootstrap.policy
        if use is None:
            return None
        if use.report:
            since = format_ts(use.confirmed_at)
            self._log.warn(
                "{device_id} confirmed its own credentials at {since} but still authenticates"
                " with the bootstrap credential ({sessions} sessions since)",
                device_id=device_id,
                since=since,
                sessions=use.sessions,
            )
            self._engine.note_stuck_bootstrap(refused=False)
            data = {
                "username": identity.username,
                "sessions": use.sessions,
                "since": since,
                "policy": "refuse" if policy.refuse else "accept",
                "refused_from": (
                    format_ts(use.confirmed_at + policy.grace) if policy.refuse else None
                ),
            }
            try:
                await self._engine.publish("credentials.stuck", data, _ref(device_id, device))
            except Exception:
                log_call_failure(
                    self._log,
                    Failure(),
                    "could not publish credentials.stuck for {device_id}",
                    device_id=device_id,
                )
        if not verdict.refused:
            return None
        # The credential is right, so this is no guess: not counted towards any block.
        # The 401 asks once more; firmware that re-reads its credential then gets in.
        self._engine.note_stuck_bootstrap(refused=True)
        self._engine.auth_failed(
            peer=peer,
            reason="bootstrap credential refused: the device confirmed its own",
            username=identity.username,
            device=device,
        )
        challenge = self._challenge(request, AuthFailure("bootstrap credential refused"))
        return Refusal(401, challenge.reason, (*challenge.headers, (b"connection", b"close")))

    # -- the throttle ---------------------------------------------------------------------

    async def _blocked(self, peer: str, claims: Claims) -> float | None:
        assert self._throttle is not None
        try:
            return await self._throttle.blocked(peer, claims)
        except Exception:
            log_call_failure(
                self._log, Failure(), "could not check the auth blocks of {peer}", peer=peer
            )
            return None

    async def _failed(
        self,
        peer: str,
        claims: list[str],
        device: DeviceId,
        device_id: str,
        *,
        check: bool = True,
    ) -> float | None:
        """Count a failure, report the blocks it starts; the wait if this attempt is blocked."""
        if self._throttle is None:
            return None
        try:
            blocks = await self._throttle.failed(peer, claims)
        except Exception:
            log_call_failure(
                self._log,
                Failure(),
                "could not count a failed authentication from {peer}",
                peer=peer,
            )
            return None
        for block in blocks:
            ref = (
                _ref(device_id, device)
                if block.kind == "device" and block.key == device_id
                else None
            )
            self._report(block, ref)
        return await self._blocked(peer, claims) if check else None

    async def _succeeded(self, peer: str, claims: tuple[str, str]) -> None:
        if self._throttle is None:
            return
        try:
            await self._throttle.succeeded(peer, claims)
        except Exception:
            log_call_failure(
                self._log, Failure(), "could not clear the failure count of {peer}", peer=peer
            )

    def _report(self, block: Block, ref: dict[str, str] | None) -> None:
        until = format_ts(block.until)
        self._log.warn(
            "blocking {kind} {key} until {until} after {failures} failed authentications",
            kind=block.kind,
            key=block.key,
            until=until,
            failures=block.failures,
        )
        d = self._engine.publish(
            "auth.blocked",
            {"kind": block.kind, "key": block.key, "until": until, "failures": block.failures},
            ref,
        )
        d.addErrback(lambda f: self._log.failure("could not publish auth.blocked", f))


def _ref(device_id: str, device: DeviceId) -> dict[str, str]:
    return device_ref(
        device_id, device.oui, device.product_class, device.serial_number, device.manufacturer
    )
