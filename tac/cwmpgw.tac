# -*- mode: python -*-
"""A single cwmpgw node with its private embedded Redis, for ``twistd -y``.

    CWMPGW_CONFIG=/etc/cwmpgw.toml twistd -ny tac/cwmpgw.tac

CWMPGW_CONFIG names the TOML file (unset: every key at its default).
Logs go to stdout as text (run with -n, or under systemd or a container); set
CWMPGW_LOGFILE to a path to write a rotated log file instead, e.g. when daemonized.
This builds the same service as ``twistd cwmpgw`` (cwmpgw.service.make_service).
"""

import os
import sys

from twisted.application import service
from twisted.logger import ILogObserver
from twisted.python.logfile import LogFile

from cwmpgw import logs
from cwmpgw.config import ConfigError, load_config

config_path = os.environ.get("CWMPGW_CONFIG") or None
try:
    config = load_config(config_path)
except ConfigError as e:
    where = f" ({config_path})" if config_path else ""
    sys.stderr.write(f"cwmpgw: invalid configuration{where}:\n")
    sys.stderr.writelines(f"  {error}\n" for error in e.errors)
    raise SystemExit(1) from None

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
