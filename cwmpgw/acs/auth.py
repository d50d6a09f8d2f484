"""CPE authentication through twisted.cred: Digest by default, Basic only over TLS.

The checker looks the HTTP username up in the credential store (which keeps only Digest
HA1 values), the realm turns the avatar id into an :class:`Identity`, and
:class:`CpeAuthenticator` is the one place that decides which challenges a request gets
and what a failure is called. Whether the identity may speak for the DeviceId in the
Inform is decided by :meth:`CpeAuthenticator.authorize`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameDigestHash, IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.web.guard import BasicCredentialFactory
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from cwmpgw.acs.nonceclaims import INonceClaims
from cwmpgw.store.interfaces import ICredentialStore
from cwmpgw.web.digest import DigestCredentialFactory, DigestCredentials, ha1

__all__ = [
    "AuthFailure",
    "CpeAuthenticator",
    "DeviceCredentialsChecker",
    "IDeviceIdentity",
    "Identity",
]


class IDeviceIdentity(Interface):
    """The avatar interface: who a CPE proved to be."""


@dataclass(frozen=True, slots=True)
class Identity:
    username: str
    device_id: str | None  # None for the shared bootstrap credential
    scheme: str  # "digest" or "basic"

    @property
    def bootstrap(self) -> bool:
        return self.device_id is None


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was not authenticated; ``reason`` is safe to log and publish."""

    reason: str
    username: str | None = None
    # A right Digest response under a nonce that may no longer be used (expired, a
    # replayed or re-used nonce count, claimed by another process): challenge again
    # with stale=true. Never set for a wrong response.
    stale: bool = False
    # Nothing was verified (no credentials, or a scheme not offered here, such as the
    # pre-emptive Basic TR-069 §3.4.4 asks of a CPE over TLS): a normal first 401.
    challenge_only: bool = False


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@implementer(ICredentialsChecker)
class DeviceCredentialsChecker:
    """Checks Digest hashes and Basic passwords against per-device HA1 values.

    The bootstrap credential, when enrollment is on, is checked the same way against
    HA1 values computed once at start-up, so the password itself is not kept.
    """

    credentialInterfaces = (IUsernameDigestHash, IUsernamePassword)

    def __init__(
        self,
        store: ICredentialStore,
        realm: str,
        *,
        bootstrap_username: str | None = None,
        bootstrap_password: str | None = None,
        on_promoted: Callable[[str, str], None] | None = None,
    ) -> None:
        self._store = store
        self._realm = realm
        self._on_promoted = on_promoted
        self._bootstrap: tuple[str, dict[str, str]] | None = None
        if bootstrap_username and bootstrap_password:
            self._bootstrap = (
                bootstrap_username,
                {a: ha1(a, bootstrap_username, realm, bootstrap_password) for a in _ALGORITHMS},
            )

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: Any) -> Identity:
        username: str = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        scheme = "digest" if IUsernameDigestHash.providedBy(credentials) else "basic"
        stored = await self._store.get(username)
        if stored is not None and self._verify(credentials, username, stored.ha1):
            return Identity(username, stored.device_id, scheme)
        # A credential the gateway is giving the device (TR-069 zero-touch): proving it
        # shows the CPE applied our SetParameterValues, so it replaces the old one now.
        pending = await self._store.get_pending(username)
        if pending is not None and self._verify(credentials, username, pending.ha1):
            await self._store.promote(username)
            if self._on_promoted is not None:
                self._on_promoted(pending.device_id, username)
            return Identity(username, pending.device_id, scheme)
        if stored is not None:
            raise UnauthorizedLogin("wrong password")
        if self._bootstrap is not None and _same(username, self._bootstrap[0]):
            if self._verify(credentials, username, self._bootstrap[1]):
                return Identity(username, None, scheme)
            raise UnauthorizedLogin("wrong password")
        raise UnauthorizedLogin("unknown username")

    def _verify(self, credentials: Any, username: str, ha1s: dict[str, str]) -> bool:
        if IUsernameDigestHash.providedBy(credentials):
            stored = ha1s.get(getattr(credentials, "algorithm", "MD5"))
            return stored is not None and bool(credentials.checkHash(stored))
        password = credentials.password
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        for algorithm, stored in ha1s.items():
            return _same(ha1(algorithm, username, self._realm, password), stored)
        return False


_ALGORITHMS = ("MD5", "SHA-256")


@implementer(IRealm)
class DeviceRealm:
    """The avatar is the identity itself: there is nothing else to hand out."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IDeviceIdentity not in interfaces:
            raise NotImplementedError("only IDeviceIdentity avatars")
        return IDeviceIdentity, avatarId, lambda: None


class CpeAuthenticator:
    """Challenges and verifies CPE requests with the schemes the operator allowed.

    Basic is offered and accepted only on TLS connections, unless the operator asked
    for it on plain HTTP explicitly (``auth.allow_basic_without_tls``).
    """

    def __init__(
        self,
        checker: DeviceCredentialsChecker,
        digest: DigestCredentialFactory,
        *,
        schemes: Sequence[str] = ("digest",),
        realm: str = "cwmpgw",
        basic_without_tls: bool = False,
        nonce_claims: INonceClaims | None = None,
    ) -> None:
        self._portal = Portal(DeviceRealm(), [checker])
        # Several processes share one fleet: nonce counts are advanced in Redis too.
        self._claims = nonce_claims
        self._digest = digest if "digest" in schemes else None
        self._basic = BasicCredentialFactory(realm) if "basic" in schemes else None
        self._schemes = tuple(schemes)
        self._basic_without_tls = basic_without_tls

    def _basic_allowed(self, request: IRequest) -> bool:
        return self._basic is not None and (request.isSecure() or self._basic_without_tls)

    def challenges(self, request: IRequest, *, stale: bool = False) -> list[bytes]:
        """The WWW-Authenticate header values for a 401, in the configured order."""
        out: list[bytes] = []
        for scheme in self._schemes:
            if scheme == "digest" and self._digest is not None:
                out += self._digest.challenges(stale=stale)
            elif scheme == "basic" and self._basic is not None and self._basic_allowed(request):
                realm = self._basic.getChallenge(request)["realm"]
                out.append(b'Basic realm="' + _as_bytes(realm) + b'"')
        return out

    async def authenticate(self, request: IRequest) -> Identity | AuthFailure:
        header = request.getHeader(b"authorization")
        if not header:
            return AuthFailure("no credentials", challenge_only=True)
        scheme, _, response = header.partition(b" ")
        scheme = scheme.lower()
        factory: Any
        if scheme == b"digest" and self._digest is not None:
            factory = self._digest
        elif scheme == b"basic" and self._basic_allowed(request):
            factory = self._basic
        else:
            # Not a guess at anything: nothing is looked up or compared. A CPE over TLS
            # SHOULD send Basic pre-emptively (TR-069 §3.4.4); where Basic is not
            # offered, its answer is our challenge, and nothing is counted against it.
            where = " on plain HTTP" if scheme == b"basic" and self._basic is not None else ""
            name = scheme[:16].decode("ascii", "replace")
            return AuthFailure(f"scheme {name!r} not offered{where}", challenge_only=True)
        try:
            credentials = factory.decode(response.strip(), request)
        except LoginFailed as e:
            return AuthFailure(f"bad {scheme.decode()} header: {e}")
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        claim: Deferred[bool] | None = None
        if (
            self._claims is not None
            and self._digest is not None
            and isinstance(credentials, DigestCredentials)
            and credentials.unusable is None
        ):
            # Every acceptance advances the nonce's count shared by all processes (a
            # returning CPE may re-use its nonce on any of them; a replay fails on all).
            # Sent now, beside the credential lookup, and awaited after it.
            ttl = credentials.claim_ttl_ms(self._digest.lifetime_ms)
            claim = self._claims.claim(credentials.nonce, credentials.nc_value, ttl)
        try:
            _, identity, _ = await self._portal.login(credentials, None, IDeviceIdentity)
        except UnauthorizedLogin as e:
            if claim is not None:
                claim.addErrback(lambda _: None)  # its outcome no longer matters
            if isinstance(credentials, DigestCredentials) and credentials.stale:
                # The right response, under a nonce it may not use: not a failure.
                return AuthFailure("stale nonce", username=username, stale=True)
            return AuthFailure(str(e) or "unauthorized", username=username)
        except BaseException:
            if claim is not None:
                claim.addErrback(lambda _: None)  # the lookup's failure is the one to report
            raise
        if claim is not None and not await claim:
            # This count was accepted already, by another process (whose nonce-count
            # table is not ours): a replay; a fresh nonce settles it for an honest CPE.
            return AuthFailure("nonce count already used by another gateway process", stale=True)
        assert isinstance(identity, Identity)
        return identity

    @staticmethod
    async def authorize(identity: Identity, device_id: str, store: ICredentialStore) -> str | None:
        """None if ``identity`` may speak for ``device_id``, else the reason it may not.

        A device's own credential is valid for that device only; the bootstrap
        credential only for devices that have no credential of their own yet.
        """
        if identity.device_id is not None:
            if identity.device_id != device_id:
                return "credentials belong to another device"
            return None
        if await store.username_for(device_id) is not None:
            return "bootstrap credential used by a device that has its own"
        return None


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
