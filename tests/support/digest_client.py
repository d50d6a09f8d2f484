"""The client half of HTTP Digest (RFC 7616), as a test CPE computes it.

Written from the RFC, apart from the gateway's server code, except for the shared hash
primitives whose RFC test vectors are checked in tests/unit/test_digest.py.
"""

from __future__ import annotations

import os
import re

from cwmpgw.web.digest import compute_response, ha1

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')


def parse_challenge(value: str) -> dict[str, str]:
    scheme, _, rest = value.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in _PARAM.finditer(rest)
    }
    params["scheme"] = scheme.lower()
    return params


def pick(challenges: list[str], algorithm: str = "MD5") -> dict[str, str]:
    """The Digest challenge for ``algorithm`` (absent algorithm means MD5)."""
    for value in challenges:
        c = parse_challenge(value)
        if c["scheme"] == "digest" and c.get("algorithm", "MD5").upper() == algorithm.upper():
            return c
    raise LookupError(f"no Digest {algorithm} challenge in {challenges!r}")


def authorization(
    challenge: dict[str, str],
    username: str,
    password: str,
    *,
    method: str = "POST",
    uri: str = "/",
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    algorithm = challenge.get("algorithm", "MD5")
    cnonce = cnonce or os.urandom(8).hex()
    nc_hex = f"{nc:08x}"
    h1 = ha1(algorithm, username, challenge["realm"], password)
    response = compute_response(
        algorithm, h1, challenge["nonce"], nc_hex, cnonce, "auth", method, uri
    )
    parts = [
        f'username="{username}"',
        f'realm="{challenge["realm"]}"',
        f'nonce="{challenge["nonce"]}"',
        f'uri="{uri}"',
        f"algorithm={algorithm}",
        f'response="{response}"',
        "qop=auth",
        f"nc={nc_hex}",
        f'cnonce="{cnonce}"',
    ]
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(parts)
