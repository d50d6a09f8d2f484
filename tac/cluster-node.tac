# -*- mode: python -*-
"""One cwmpgw node of a cluster sharing an external Redis, for ``twistd -y``.

    CWMPGW_CONFIG=/etc/cwmpgw.toml CWMPGW_NODE=gw1-a twistd -ny tac/cluster-node.tac

Every node of a fleet points redis.url (and redis.prefix) at the same Redis; devices,
tasks, session locks and events then live there, so a CPE may reach any node.
CWMPGW_CONFIG names the TOML file; it must set redis.url.
CWMPGW_NODE, if set, overrides gateway.node: give each process its own name when
several processes on one machine share one file (the default is the host name).
Logs go to stdout as text; set CWMPGW_LOGFILE to a path for a rotated log file.
"""

import os
import sys

from twisted.application import service
from twisted.logger import ILogObserver
from twisted.python.logfile import LogFile

from cwmpgw import logs
from cwmpgw.config import ConfigError, load_config


def _fail(lines):
    where = f" ({config_path})" if config_path else ""
    sys.stderr.write(f"cwmpgw: invalid configuration for a cluster node{where}:\n")
    sys.stderr.writelines(f"  {line}\n" for line in lines)
    raise SystemExit(1)


config_path = os.environ.get("CWMPGW_CONFIG") or None
overrides = {}
if os.environ.get("CWMPGW_NODE"):
    overrides["gateway.node"] = os.environ["CWMPGW_NODE"]
try:
    config = load_config(config_path, overrides=overrides)
except ConfigError as e:
    _fail(e.errors)
if config.redis.target is None:
    _fail(
        [
            "redis.url: must be set for a cluster node: every node shares one external Redis "
            "(redis://[:password@]host[:port][/db] or unix:///path/to/socket); "
            "use tac/cwmpgw.tac for a single node with the embedded Redis"
        ]
    )

# Imported once the configuration is known to be good: it pulls in the whole gateway.
from cwmpgw.service import make_service  # noqa: E402

log_path = os.environ.get("CWMPGW_LOGFILE")
log_file = (
    LogFile.fromFullPath(log_path, rotateLength=10_000_000, maxRotatedFiles=10)
    if log_path
    else sys.stdout
)

application = service.Application("cwmpgw")
application.setComponent(ILogObserver, logs.text(log_file))  # info and above
make_service(config).setServiceParent(application)
