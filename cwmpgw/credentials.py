"""Set CPE credentials in bulk from a CSV file: ``python -m cwmpgw.credentials import FILE``.

The CSV has a header row with the columns ``device_id``, ``password`` and optionally
``username`` (default: the device id, which is TR-069's recommended username form
``OUI-ProductClass-SerialNumber``). Only Digest HA1 values are stored, computed for the
configured realm, so changing ``auth.realm`` later means importing again.

Optional columns ``cr_username``, ``cr_password`` and ``cr_allow_basic`` (``1``/``0``) set
the credentials the gateway answers the CPE's connection-request challenge with
(ManagementServer.ConnectionRequestUsername/Password); that password is stored encrypted
with the gateway's connection-request key.

Every row is checked before anything is written: one bad row and nothing is written.
Errors name the line and the problem, never the password.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cwmpgw.config import Config, ConfigError, RedisTarget, load_config

__all__ = ["CredentialRow", "main", "read_rows"]

_MAX = 256


@dataclass(frozen=True)
class CredentialRow:
    line: int
    device_id: str
    username: str
    password: str = ""
    cr_username: str = ""
    cr_password: str = ""
    cr_allow_basic: bool = False

    def __repr__(self) -> str:  # the password never reaches a log or a traceback
        return (
            f"CredentialRow(line={self.line}, device_id={self.device_id!r}, "
            f"username={self.username!r})"
        )


def read_rows(text: str) -> tuple[list[CredentialRow], list[str]]:
    """Parse and check the CSV; returns the rows and every error found."""
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    errors: list[str] = []
    missing = {"device_id", "password"} - set(fields)
    if missing:
        return [], [f"line 1: missing column(s) {', '.join(sorted(missing))}"]
    rows: list[CredentialRow] = []
    seen_devices: dict[str, int] = {}
    seen_users: dict[str, int] = {}
    for raw in reader:
        line = reader.line_num
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        device_id, password = row.get("device_id", ""), row.get("password", "")
        username = row.get("username", "") or device_id
        cr_username, cr_password = row.get("cr_username", ""), row.get("cr_password", "")
        cr_basic = row.get("cr_allow_basic", "") or "0"
        problems = []
        if bool(cr_username) != bool(cr_password):
            problems.append("give both cr_username and cr_password, or neither")
        if len(cr_username) > _MAX or len(cr_password) > _MAX:
            problems.append(f"cr_username and cr_password must be at most {_MAX} characters")
        if cr_basic not in ("0", "1"):
            problems.append("cr_allow_basic must be 0 or 1")
        if not device_id:
            problems.append("empty device_id")
        if not password:
            problems.append("empty password")
        if len(username) > _MAX or len(password) > _MAX:
            problems.append(f"username and password must be at most {_MAX} characters")
        if any(c in username for c in '":\\') or any(ord(c) < 32 for c in username):
            problems.append("username must not contain quotes, colons, backslashes or controls")
        if device_id in seen_devices:
            problems.append(f"device {device_id!r} already on line {seen_devices[device_id]}")
        if username in seen_users:
            problems.append(f"username {username!r} already on line {seen_users[username]}")
        if problems:
            errors.append(f"line {line}: " + "; ".join(problems))
            continue
        seen_devices[device_id] = line
        seen_users[username] = line
        rows.append(
            CredentialRow(
                line, device_id, username, password, cr_username, cr_password, cr_basic == "1"
            )
        )
    return rows, errors


async def _connect(reactor: Any, config: Config) -> tuple[Any, Any]:
    """A Redis connection for this command, and the embedded Redis it started (or None).

    With the embedded Redis, use the running gateway's socket; if the gateway is not
    running, start its private Redis just for this command.
    """
    import txredisapi

    embedded = None
    target: RedisTarget | None = config.redis.target
    if target is None:
        data_dir = os.path.abspath(config.gateway.data_dir)
        sock = os.path.join(data_dir, "redis", "redis.sock")
        if not os.path.exists(sock):
            from cwmpgw.store.embedded import EmbeddedRedisService

            embedded = EmbeddedRedisService(os.path.join(data_dir, "redis"), reactor=reactor)
            embedded.startService()
            await embedded.whenReady()
            sock = embedded.unix_path or sock
        target = RedisTarget(host=None, port=None, path=sock, db=0)
    if target.path is not None:
        redis = await txredisapi.UnixConnection(
            target.path, dbid=target.db, password=target.password, convertNumbers=False
        )
    else:
        redis = await txredisapi.Connection(
            target.host or "127.0.0.1",
            target.port or 6379,
            dbid=target.db,
            password=target.password,
            convertNumbers=False,
        )
    return redis, embedded


async def _rotate(reactor: Any, config: Config, device_ids: list[str]) -> int:
    from cwmpgw.provision.provisioner import RedisRotations

    redis, embedded = await _connect(reactor, config)
    try:
        rotations = RedisRotations(redis, config.redis.prefix)
        for device_id in device_ids:
            await rotations.request(device_id)
    finally:
        await redis.disconnect()
        if embedded is not None:
            await embedded.stopService()
    print(f"{len(device_ids)} device(s) get new credentials in their next session")
    return 0


async def _import(reactor: Any, config: Config, rows: list[CredentialRow]) -> int:
    from cwmpgw.store.interfaces import ConnReqCredential
    from cwmpgw.store.redis import RedisConnReqCredentialStore, RedisCredentialStore
    from cwmpgw.store.secretbox import SecretBox, load_or_create_key
    from cwmpgw.web.digest import ha1

    redis, embedded = await _connect(reactor, config)
    store = RedisCredentialStore(redis, config.redis.prefix)
    key_file = config.connreq.key_file or os.path.join(
        os.path.abspath(config.gateway.data_dir), "connreq.key"
    )
    crstore = RedisConnReqCredentialStore(
        redis, config.redis.prefix, SecretBox(load_or_create_key(key_file))
    )
    realm = config.auth.realm
    failed = 0
    try:
        for row in rows:
            hashes = {a: ha1(a, row.username, realm, row.password) for a in ("MD5", "SHA-256")}
            try:
                await store.set(row.device_id, row.username, hashes)
                if row.cr_username:
                    await crstore.set(
                        row.device_id,
                        ConnReqCredential(row.cr_username, row.cr_password, row.cr_allow_basic),
                    )
            except ValueError as e:
                failed += 1
                print(f"line {row.line}: {e}", file=sys.stderr)
    finally:
        await redis.disconnect()
        if embedded is not None:
            await embedded.stopService()
    print(f"{len(rows) - failed} credential(s) set for realm {realm!r}, {failed} refused")
    return 1 if failed else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cwmpgw.credentials",
        description="Set per-device CPE credentials (ManagementServer.Username/Password) in bulk.",
    )
    p.add_argument("--config", "-c", help="the gateway's TOML config file (for realm and Redis)")
    p.add_argument("--data-dir", help="gateway.data_dir (where the embedded Redis lives)")
    p.add_argument("--redis", help="redis.url, if the gateway uses an external Redis")
    p.add_argument("--prefix", help="redis.prefix")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="set credentials from a CSV file (- for stdin)")
    imp.add_argument("file")
    imp.add_argument("--check", action="store_true", help="only check the file; write nothing")
    rot = sub.add_parser(
        "rotate",
        help="give devices new unique credentials in their next session (the old ones "
        "keep working until the device has used the new ones)",
    )
    rot.add_argument("device_id", nargs="+")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        key: value
        for key, value in (
            ("gateway.data_dir", args.data_dir),
            ("redis.url", args.redis),
            ("redis.prefix", args.prefix),
        )
        if value is not None
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"configuration error:\n{e}", file=sys.stderr)
        return 2
    if args.command == "rotate":
        return _run(lambda reactor: _rotate(reactor, config, list(args.device_id)))
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8-sig") as f:
                text = f.read()
    except OSError as e:
        print(f"cannot read {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    rows, errors = read_rows(text)
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{len(errors)} bad row(s): nothing written", file=sys.stderr)
        return 1
    if args.check:
        print(f"{len(rows)} row(s) OK")
        return 0
    return _run(lambda reactor: _import(reactor, config, rows))


def _run(work: Any) -> int:
    """Run one async job under twisted's react() and return its exit code."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    result: list[int] = []

    async def run(reactor: Any) -> None:
        result.append(await work(reactor))

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
