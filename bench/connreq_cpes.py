"""The simulated CPEs' side of bench/connreq.py, run as a process of its own.

    python bench/connreq_cpes.py --devices 10000 --out cpes.csv [--interface 127.0.0.1]

Builds a simulated fleet (cwmpgw.sim) and the simulator's one connection-request
listener for all of it (cwmpgw.sim.connreq: ``/cr/<token>`` per device, HTTP Digest
MD5/SHA-256 with the ACS's own nonce and replay checks), writes
``device_id,url,cr_username,cr_password`` per device to ``--out``, prints
``listening <port>`` and serves until stdin closes. A line ``stats`` on stdin is
answered with one JSON line (requests accepted, refused, this process's CPU seconds).

A valid request is answered 204 and nothing else happens: the simulated CPE does not
open the "6 CONNECTION REQUEST" session, since the bench measures the sender of
connection requests, not the ACS sessions that follow them (bench/sessions.py does).
It runs apart from the bench so that its CPU is not counted as the sender's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor as _reactor
from twisted.internet import stdio
from twisted.protocols.basic import LineReceiver

from cwmpgw.sim.connreq import ConnectionRequestListener
from cwmpgw.sim.device import credential_templates
from cwmpgw.sim.fleet import Fleet


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, listener: ConnectionRequestListener) -> None:
        self.listener = listener

    def lineReceived(self, line: bytes) -> None:
        if line.strip() == b"stats":
            times = os.times()
            answer = {
                "accepted": self.listener.accepted,
                "refused": self.listener.refused,
                "cpu_s": round(times.user + times.system, 3),
            }
            self.sendLine(json.dumps(answer).encode())

    def connectionLost(self, reason: Any = None) -> None:
        if reactor.running:
            reactor.stop()


reactor: Any = _reactor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    # The fleet only provides the devices (identity, data model, connection-request
    # credentials): it never starts a session, so its ACS URL is never used.
    fleet = Fleet(
        reactor,
        "http://127.0.0.1:9/",
        devices=args.devices,
        credentials=credential_templates(
            "{device_id}", "pw-{serial}-bench", None, "cr-{serial}-bench"
        ),
        bootstrap=False,
        seed=3,
    )
    listener = ConnectionRequestListener(reactor, lambda device: None)
    port = listener.listen(args.interface, args.port)
    # Twisted listens with a backlog of 50: with 100 requests in flight the kernel would
    # drop SYNs and the client would wait for their retransmission (1 s), which measures
    # this process's accept loop, not the sender. Listening again raises the backlog.
    cast(Any, port).socket.listen(1024)
    lines = ["device_id,url,cr_username,cr_password"]
    for device in fleet.devices:
        url = listener.register(device)
        lines.append(f"{device.device_id},{url},{device.cr_username},{device.cr_password}")
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"listening {port.getHost().port}", flush=True)
    stdio.StandardIO(Control(listener))
    reactor.run()


if __name__ == "__main__":
    main()
