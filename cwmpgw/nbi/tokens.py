"""API tokens for the northbound API: made here, kept by the caller, configured only as hashes.

``python -m cwmpgw.nbi.tokens new`` prints a new token and the ``token_sha256`` line to put
under ``[nbi]`` in the configuration; ``python -m cwmpgw.nbi.tokens hash TOKEN`` (or ``-``
to read it from stdin, out of the shell history; ``hash -- TOKEN`` for a token of someone
else's making that starts with ``-``) prints the digest of an existing one.

When no digest is configured the service calls :func:`ensure_token_file`, which keeps one
token in ``<data_dir>/nbi-token`` (mode 0600), so a first start is usable and still
authenticated. Only the file's path is ever logged, never the token.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import stat
import sys
from collections.abc import Sequence

from twisted.logger import Logger

__all__ = [
    "TOKEN_FILE",
    "TOKEN_RE",
    "ensure_token_file",
    "main",
    "new_token",
    "token_sha256",
]

TOKEN_FILE = "nbi-token"  # noqa: S105 - a file name, not a secret
# RFC 6750 b64token: what may follow "Bearer " in an Authorization header.
TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_MAX_TOKEN = 512

_log = Logger()


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters, no padding), never starting with ``-``.

    A token starting with ``-`` reads as an option to ``hash`` and to most other command
    lines it is pasted into; drawing again when that happens costs under 0.03 bits.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def token_sha256(token: str) -> str:
    """The hex SHA-256 of a token: what the configuration holds instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_token(token: str, where: str) -> str:
    if not (0 < len(token) <= _MAX_TOKEN) or not TOKEN_RE.fullmatch(token):
        raise ValueError(f"{where}: not a usable API token")
    return token


def _read_token_file(path: str) -> str:
    # O_NOFOLLOW: a symlink planted in the data directory must not redirect us.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if info.st_mode & 0o077:
            _log.warn(
                "the NBI token file {path} is readable by others (mode {mode:o}); chmod 600 it",
                path=path,
                mode=stat.S_IMODE(info.st_mode),
            )
        data = os.read(fd, _MAX_TOKEN + 2)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a usable API token") from None
    return _check_token(text, path)


def ensure_token_file(data_dir: str) -> tuple[str, bool]:
    """The SHA-256 of the token in ``<data_dir>/nbi-token``, creating it if missing.

    Returns ``(digest, created)``. The file is written under a temporary name with mode
    0600 and linked into place, so a reader never sees a partial token and two processes
    starting together end up sharing one token.
    """
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    path = os.path.join(data_dir, TOKEN_FILE)
    if os.path.lexists(path):
        return token_sha256(_read_token_file(path)), False
    token = new_token()
    tmp = os.path.join(data_dir, f".{TOKEN_FILE}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, (token + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created it first
        except FileExistsError:
            return token_sha256(_read_token_file(path)), False
    finally:
        os.unlink(tmp)
    _fsync_dir(data_dir)
    return token_sha256(token), True


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cwmpgw.nbi.tokens",
        description="Make API tokens for the cwmpgw northbound API and hash them for the config.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("new", help="print a new token, then its token_sha256 line for [nbi]")
    h = sub.add_parser("hash", help="print the SHA-256 of a token")
    h.add_argument("token", nargs="?", default="-", help="the token, or - to read it from stdin")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "new":
        token = new_token()
        print(token)
        print(f'token_sha256 = ["{token_sha256(token)}"]')
        print(
            "The first line is the token: give it to the API client and keep it secret.\n"
            "The second goes under [nbi] in the configuration (add to the list to keep "
            "older tokens valid).",
            file=sys.stderr,
        )
        return 0
    from_stdin = args.token == "-"  # noqa: S105 - the "read stdin" marker
    token = sys.stdin.readline().strip() if from_stdin else args.token
    try:
        _check_token(token, "token")
    except ValueError:
        print("that is not a usable API token", file=sys.stderr)
        return 2
    print(token_sha256(token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
