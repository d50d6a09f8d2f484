"""The diagnostics part: the signer of throughput URLs every node's task runner uses, and
the TR-143 throughput endpoint's listener (``[diagnostics]``)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from cwmpgw.acs.tls import server_options
from cwmpgw.app.acs import certificate, tcp_endpoint
from cwmpgw.app.tree import Listener
from cwmpgw.config import Config
from cwmpgw.web.throughput import ThroughputSigner, ThroughputSite

__all__ = ["SECRET_FILE", "ThroughputSigner", "ensure_secret", "make_signer", "make_throughput"]

SECRET_FILE = "throughput-secret"  # noqa: S105 (a file name)
_log = Logger()


def ensure_secret(path: str) -> bytes:
    """The secret in ``path``, created (32 random bytes, hex, mode 0600) if missing; two
    processes starting together end up with one secret."""
    if not os.path.lexists(path):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
                _log.info("created the throughput endpoint's signing secret in {path}", path=path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    with open(path, "rb") as f:
        secret = f.read().strip()
    if len(secret) < 16:
        raise ValueError(f"{path}: the throughput secret must be at least 16 bytes")
    return secret


def make_signer(config: Config, reactor: Any, data_dir: str) -> ThroughputSigner | None:
    """The URL signer when the throughput endpoint is enabled (reads or creates the
    secret: call it from a start step, not a constructor)."""
    cfg = config.diagnostics
    if not cfg.throughput_enabled:
        return None
    path = cfg.secret_file or os.path.join(data_dir, SECRET_FILE)
    return ThroughputSigner(
        ensure_secret(path),
        cfg.url,
        reactor,
        download_bytes=cfg.download_bytes,
        max_download_bytes=cfg.max_download_bytes,
        max_upload_bytes=cfg.max_upload_bytes,
    )


def make_throughput(
    config: Config, reactor: Any, data_dir: str, signer: ThroughputSigner
) -> Listener:
    cfg = config.diagnostics
    site = ThroughputSite(
        signer,
        max_transfers=cfg.max_transfers,
        read_timeout=cfg.transfer_timeout,
        reactor=reactor,
    )
    endpoint: IStreamServerEndpoint
    if cfg.tls:
        pair, second_pair = certificate(config, data_dir)
        endpoint = SSL4ServerEndpoint(
            reactor,
            cfg.port,
            server_options(*pair, second_pair=second_pair),
            interface=cfg.interface,
        )
    else:
        endpoint = tcp_endpoint(reactor, cfg.port, cfg.interface)
    scheme = "https" if cfg.tls else "http"
    return Listener(
        "throughput",
        endpoint,
        site,
        f"TR-143 throughput endpoint listening on {scheme}://{{host}}:{{port}}/",
    )
