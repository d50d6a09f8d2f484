"""A whole gateway in the test's reactor: real TLS, real Redis, every listener on a free
loopback port, stopped at the test's cleanup.

    service = await start_gateway(self, directory, redis_server.url, prefix, acs={...})

``sections`` are merged over the defaults key by key (``acs={"read_timeout": 3}`` keeps
the port and interface). The defaults keep concurrent tests apart: port 0 everywhere, no
STUN, no zero-touch provisioning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

from twisted.internet import reactor

from cwmpgw.config import parse_config
from cwmpgw.service import GatewayService, make_service

__all__ = ["acs_url", "cafile", "merge", "nbi_call", "start_gateway"]

DEFAULTS: dict[str, dict[str, Any]] = {
    "acs": {"port": 0, "interface": "127.0.0.1", "hostname": "localhost"},
    "nbi": {"port": 0},
    "metrics": {"port": 0},
    "files": {"port": 0, "interface": "127.0.0.1"},
    "connreq": {"stun": False, "stun_port": 0},
    "provision": {"credentials": False, "periodic_inform": False},
}


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Configuration sections, later layers winning key by key."""
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for name, values in layer.items():
            out[name] = {**out.get(name, {}), **values}
    return out


async def start_gateway(
    testcase: Any, directory: str, redis_url: str, prefix: str, **sections: dict[str, Any]
) -> GatewayService:
    config = merge(
        DEFAULTS,
        {"gateway": {"data_dir": directory}, "redis": {"url": redis_url, "prefix": prefix}},
        sections,
    )
    service = make_service(parse_config(config), reactor)
    assert isinstance(service, GatewayService)
    service.startService()
    await service.whenStarted()

    async def stop() -> None:
        if service.running:
            await service.stopService()

    testcase.addCleanup(stop)
    return service


def acs_url(service: GatewayService) -> str:
    assert service.acs_port is not None
    return f"https://127.0.0.1:{service.acs_port.getHost().port}/"  # type: ignore[attr-defined]


def cafile(directory: str) -> str:
    """The self-signed certificate the gateway generated in its data directory."""
    return os.path.join(directory, "tls", "acs-cert.pem")


def nbi_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """(status, JSON body or None) of one northbound API call on 127.0.0.1:``port``;
    blocking (for test threads and helper processes' clients)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def import_credentials(
    csv_text: str, directory: str, *args: str
) -> subprocess.CompletedProcess[str]:
    path = os.path.join(directory, "creds.csv")
    with open(path, "w") as f:
        f.write(csv_text)
    return subprocess.run(
        [sys.executable, "-m", "cwmpgw.credentials", *args, "import", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def import_into(
    testcase: Any, csv_text: str, directory: str, redis_url: str, prefix: str
) -> None:
    """Import credentials as an operator does (the credentials command, into the gateway's
    Redis and data directory), in a thread; the test fails if the command does."""
    from twisted.internet.threads import deferToThread

    result = await deferToThread(
        import_credentials,
        csv_text,
        directory,
        "--redis",
        redis_url,
        "--prefix",
        prefix,
        "--data-dir",
        directory,
    )
    testcase.assertEqual(result.returncode, 0, result.stderr)
