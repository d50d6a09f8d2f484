"""``twistd cwmpgw``: command-line options and the service they make.

Deliberately thin (like ``twisted/web/tap.py``): the TOML file is the source of truth and
each option here only overrides one of its keys. Nothing at module scope may import the
reactor or txredisapi: twistd imports this module before it installs the reactor the user
chose, so the composition root is imported inside ``makeService``.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from cwmpgw.config import ConfigError, load_config

__all__ = ["Options", "makeService"]

# option name → the config key it overrides (strings as given on the command line)
_OVERRIDES = {
    "data-dir": "gateway.data_dir",
    "node": "gateway.node",
    "interface": "acs.interface",
    "redis": "redis.url",
    "prefix": "redis.prefix",
}


class Options(usage.Options):
    """Options of ``twistd cwmpgw``; postOptions leaves the loaded Config in self["config"]."""

    synopsis = "[-c cwmpgw.toml] [options]"

    longdesc = """\
cwmpgw is a TR-069 (CWMP) Auto-Configuration Server gateway. CPEs (routers, ONTs) open
CWMP sessions to its ACS endpoint over HTTPS; it authenticates them, runs the tasks the
back office queued for them, and publishes every device event to Redis (pub/sub channels
and a bounded stream). By default it runs a private embedded Redis; point redis.url at a
shared Redis to run several gateway processes or machines as one fleet.

The TOML configuration file (--config; see cwmpgw.example.toml) is the source of truth.
Every option below overrides the config-file key named in its help; with no file, every
key has its default. All configuration errors are reported together."""

    optParameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file (default: every key at its default)."],
        ["data-dir", None, None, "Directory for state and TLS keys [config: gateway.data_dir]."],
        ["node", None, None, "Name of this node in events [config: gateway.node]."],
        ["port", None, None, "TCP port of the ACS endpoint [config: acs.port]."],
        ["interface", None, None, "Address the ACS endpoint listens on [config: acs.interface]."],
        ["redis", None, None, "Redis URL; '' for the embedded Redis [config: redis.url]."],
        ["prefix", None, None, "Prefix of every Redis key [config: redis.prefix]."],
        ["workers", None, None, "Worker processes on the ACS port [config: gateway.workers]."],
    ]

    optFlags: list[list[Any]] = [
        ["no-tls", None, "Serve plain HTTP; for labs only [config: acs.tls = false]."],
    ]

    def postOptions(self) -> None:
        """Load the file with the given overrides; report every error in one UsageError."""
        errors: list[str] = []
        overrides: dict[str, object] = {
            key: self[option] for option, key in _OVERRIDES.items() if self[option] is not None
        }
        bad_port = False
        if self["port"] is not None:
            try:
                overrides["acs.port"] = int(self["port"])
            except ValueError:
                bad_port = True
                errors.append(f"acs.port: must be an integer, got {self['port']!r} (--port)")
        if self["workers"] is not None:
            try:
                overrides["gateway.workers"] = int(self["workers"])
            except ValueError:
                errors.append(f"gateway.workers: must be an integer, got {self['workers']!r}")
        if self["no-tls"]:
            overrides["acs.tls"] = False

        path: str | None = self["config"]
        try:
            config = load_config(path, overrides=overrides)
        except ConfigError as e:
            # A bad --port replaces the file's acs.port: its own error is the one to show.
            errors.extend(m for m in e.errors if not (bad_port and m.startswith("acs.port:")))
        if errors:
            where = f" ({path})" if path else ""
            lines = "\n".join(f"  {error}" for error in errors)
            raise usage.UsageError(f"invalid configuration{where}:\n{lines}")
        self["config"] = config


def makeService(options: Options) -> IService:
    """Build the gateway's service tree from the Config that postOptions loaded."""
    # Imported here, not at module scope: it pulls in the reactor (see the module docstring).
    from cwmpgw.service import make_service

    return make_service(options["config"])
