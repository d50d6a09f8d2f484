"""A CPE simulator: one process, thousands of CWMP devices, for tests, demos and load tests.

``python -m cwmpgw.sim --help`` runs it from the command line (docs/simulator.md); the
programmatic API is :class:`Fleet`::

    fleet = Fleet(reactor, "https://acs.example.net:7547/", devices=1000,
                  credentials=credential_templates("{device_id}", "secret-{serial}"),
                  cafile="acs-ca.pem", arrival=Rate(200))
    await fleet.start()
    stats = await fleet.run_sessions(count=5000)
    await fleet.stop()
"""

from cwmpgw.sim.datamodel import Template, builtin_template, load_csv, parse_csv
from cwmpgw.sim.device import (
    Behaviour,
    Credentials,
    SimDevice,
    credential_templates,
    read_credentials_csv,
    retry_wait_range,
)
from cwmpgw.sim.fleet import Fleet, FleetStats, Periodic, Rate, SessionResult, Storm

__all__ = [
    "Behaviour",
    "Credentials",
    "Fleet",
    "FleetStats",
    "Periodic",
    "Rate",
    "SessionResult",
    "SimDevice",
    "Storm",
    "Template",
    "builtin_template",
    "credential_templates",
    "load_csv",
    "parse_csv",
    "read_credentials_csv",
    "retry_wait_range",
]
