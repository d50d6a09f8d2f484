"""What every benchmark shares: the machine, a gateway process, CPU accounting, reporting.

Benchmarks measure; they never assert. Each prints a human table and one JSON line
(prefixed ``BENCH``) that a later run can be compared with.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    import lxml.etree
    import OpenSSL

    import twisted

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "pyopenssl": OpenSSL.__version__,
        "openssl": OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode(),
        "lxml": lxml.etree.__version__,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """user + sys of a process and its children (a gateway's workers count)."""
    try:
        proc = psutil.Process(pid)
        total = sum(proc.cpu_times()[:2])
        for child in proc.children(recursive=True):
            if "redis-server" in " ".join(child.cmdline()):
                continue  # Redis is measured apart: it is not the gateway
            total += sum(child.cpu_times()[:2])
        return total
    except psutil.NoSuchProcess:
        return 0.0


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


@dataclass
class Gateway:
    """A gateway started with twistd, as an operator runs it."""

    directory: Path
    redis_url: str
    prefix: str = "bench:"
    workers: int = 1
    extra: str = ""
    acs_extra: str = "max_new_sessions_per_second = 0"
    redis_extra: str = ""
    # The benches measure sessions, not the brute-force defence or the metrics listener.
    auth_extra: str = "max_failures_per_source = 0\nmax_failures_per_device = 0"
    metrics_extra: str = "enabled = false"
    acs_port: int = field(default_factory=free_port)
    nbi_port: int = field(default_factory=free_port)
    files_port: int = field(default_factory=free_port)
    process: subprocess.Popen[str] | None = None
    token: str = "bench-token-" + os.urandom(6).hex()
    # As the README tells operators to run it: the shipped observer, info and above (twistd's
    # default observer would also format and write every debug event).
    # (Measured against the default observer: no difference beyond the noise.)
    twistd_args: tuple[str, ...] = ("--logger=cwmpgw.logs.text",)

    def start(self) -> Gateway:
        from cwmpgw.nbi.tokens import token_sha256

        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "gw.toml"
        config.write_text(
            f"""
[gateway]
data_dir = "{self.directory / "data"}"
node = "bench"
workers = {self.workers}
[acs]
port = {self.acs_port}
interface = "127.0.0.1"
hostname = "localhost"
{self.acs_extra}
max_connections = 0
max_sessions = 10000000
[auth]
{self.auth_extra}
[redis]
url = "{self.redis_url}"
prefix = "{self.prefix}"
{self.redis_extra}
[nbi]
port = {self.nbi_port}
token_sha256 = ["{token_sha256(self.token)}"]
[metrics]
{self.metrics_extra}
[files]
port = {self.files_port}
interface = "127.0.0.1"
[connreq]
stun = false
allowed_networks = ["127.0.0.0/8"]
min_interval = 0
rate = 100000
max_concurrent = 10000
per_destination = 1000
[provision]
credentials = false
periodic_inform = false
{self.extra}
"""
        )
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        log = open(self.directory / "gateway.log", "w")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", *self.twistd_args, "cwmpgw", "--config", str(config)],
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        wanted = self.workers
        while time.monotonic() < deadline:
            text = (self.directory / "gateway.log").read_text()
            if text.count("ACS endpoint listening") >= wanted and "northbound API" in text:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(text)
            time.sleep(0.1)
        raise RuntimeError(
            "the gateway did not start:\n" + (self.directory / "gateway.log").read_text()
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.acs_port}/"

    @property
    def cafile(self) -> str:
        return str(self.directory / "data" / "tls" / "acs-cert.pem")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> str:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        return (self.directory / "gateway.log").read_text()

    def fleet(
        self,
        reactor: Any,
        *,
        devices: int,
        concurrency: int,
        seed: int,
        url: str = "",
        reuse_nonce: bool = False,
        tls_resume: bool = False,
    ) -> Any:
        """Simulated CPEs for this gateway (or another ``url`` with its certificate), each
        with its own password, booting without BOOTSTRAP."""
        from cwmpgw.sim.device import credential_templates
        from cwmpgw.sim.fleet import Fleet

        return Fleet(
            reactor,
            url or self.url,
            devices=devices,
            credentials=credential_templates("{device_id}", "pw-{serial}-bench"),
            cafile=self.cafile,
            concurrency=concurrency,
            bootstrap=False,
            seed=seed,
            # Only when asked: the same bench runs against older code in comparisons.
            **({"reuse_nonce": True} if reuse_nonce else {}),
            **({"tls_resume": True} if tls_resume else {}),
        )

    def import_credentials(self, fleet: Any) -> None:
        """Give the gateway the fleet's credentials, with the operator's command."""
        csv_file = self.directory / "creds.csv"
        csv_file.write_text(fleet.credentials_csv())
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cwmpgw.credentials",
                "--redis",
                self.redis_url,
                "--prefix",
                self.prefix,
                "import",
                str(csv_file),
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )

    def errors(self) -> list[str]:
        text = (self.directory / "gateway.log").read_text()
        return [
            line for line in text.splitlines() if re.search(r"Traceback|#critical|#error", line)
        ]


def report(name: str, rows: list[tuple[str, Any]], data: dict[str, Any]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n== {name} ==")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    data = {"bench": name, **data, "machine": machine()}
    print("BENCH " + json.dumps(data, sort_keys=True))
