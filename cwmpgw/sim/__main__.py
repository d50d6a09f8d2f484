"""``python -m cwmpgw.sim``: run a simulated fleet against an ACS (docs/simulator.md).

A live progress line goes to stderr; the final summary to stdout (and one JSON line with
``--json``). Ctrl-C ends the run cleanly (sessions in flight finish); a second Ctrl-C
stops at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any, TextIO

from cwmpgw.sim.datamodel import Template, TemplateError, builtin_template, load_csv
from cwmpgw.sim.device import (
    Behaviour,
    Credentials,
    credential_templates,
    read_credentials_csv,
)
from cwmpgw.sim.fleet import Arrival, Fleet, FleetStats, Periodic, Rate, Storm

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cwmpgw.sim",
        description="Simulate many TR-069 CPEs in one process against an ACS.",
    )
    p.add_argument("--acs", required=True, metavar="URL", help="the ACS URL (http or https)")
    p.add_argument("--devices", type=int, metavar="N", help="how many devices (default 1)")
    p.add_argument("--csv", metavar="FILE", help="data model: genieacs-sim CSV or GenieACS export")
    p.add_argument("--serial-prefix", default="SIM", help="serial numbers: PREFIX + index")
    p.add_argument("--first-index", type=int, default=0, metavar="I")

    creds = p.add_argument_group("credentials")
    creds.add_argument("--username-template", default="{device_id}", metavar="T")
    creds.add_argument("--password-template", metavar="T")
    creds.add_argument("--cr-username-template", metavar="T")
    creds.add_argument("--cr-password-template", metavar="T")
    creds.add_argument(
        "--credentials-csv",
        metavar="FILE",
        help="device_id,username,password[,cr_username,cr_password]: the fleet is its devices",
    )
    creds.add_argument(
        "--write-credentials",
        metavar="FILE",
        help="write the fleet's credentials as `python -m cwmpgw.credentials import` takes them",
    )
    creds.add_argument(
        "--write-only", action="store_true", help="only write --write-credentials, then exit"
    )
    creds.add_argument("--basic", action="store_true", help="send Basic credentials first")
    creds.add_argument(
        "--reuse-nonce",
        action="store_true",
        help="a returning CPE answers its last Digest challenge again (next nc), no 401 first",
    )

    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--tls-resume", action="store_true", help="offer each device's last TLS session"
    )
    trust = tls.add_mutually_exclusive_group()
    trust.add_argument("--cafile", metavar="FILE", help="CA certificate(s) to trust (PEM)")
    trust.add_argument("--insecure", action="store_true", help="accept any server certificate")
    tls.add_argument("--client-cert", metavar="FILE", help="TLS client certificate (PEM)")
    tls.add_argument("--client-key", metavar="FILE", help="its key, if not in --client-cert")

    load = p.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=100, metavar="C")
    load.add_argument("--connection", choices=("session", "request"), default="session")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument(
        "--rate", metavar="R", help="sessions started per second ('max': closed loop)"
    )
    mode.add_argument("--periodic", type=float, metavar="S", help="every device informs every S s")
    load.add_argument("--storm", action="store_true", help="all devices boot within the window")
    load.add_argument("--storm-window", type=float, default=10.0, metavar="S")
    load.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    load.add_argument("--sessions", type=int, metavar="N", help="stop after N sessions")
    load.add_argument("--no-bootstrap", action="store_true", help="first inform: BOOT only")
    load.add_argument("--jitter", type=float, default=0.05, metavar="F")
    load.add_argument("--reboot-delay", type=float, default=1.0, metavar="S")
    load.add_argument("--transfer-time", type=float, default=1.0, metavar="S")
    load.add_argument(
        "--fetch",
        action="store_true",
        help="Download/Upload really move the bytes; firmware switches SoftwareVersion",
    )
    load.add_argument(
        "--fail-fraction", type=float, default=0.0, metavar="F", help="share of transfers failing"
    )
    load.add_argument("--value-change-rate", type=float, default=0.0, metavar="R")
    load.add_argument("--value-change-param", metavar="NAME")
    load.add_argument("--connect-timeout", type=float, default=10.0, metavar="S")
    load.add_argument("--request-timeout", type=float, default=30.0, metavar="S")
    load.add_argument("--seed", type=int)

    cr = p.add_argument_group("connection requests")
    cr.add_argument("--connreq-listen", metavar="ADDR:PORT", help="one listener for the fleet")
    cr.add_argument("--connreq-host", metavar="HOST", help="host put in ConnectionRequestURL")

    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="also print the summary as JSON")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    out.add_argument("--verbose", "-v", action="count", default=0, help="log (twice: debug)")
    return p


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--connreq-listen {text!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator's choice


def _route_to(url: str) -> str:
    """The local address that reaches the ACS (a UDP connect sends nothing)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, parts.port or 443))
        address: str = s.getsockname()[0]
        return address


def _arrival(args: argparse.Namespace) -> Arrival:
    if args.rate is not None and args.storm:
        raise ValueError("--rate and --storm are two different arrival models: pick one")
    if args.rate is not None:
        if args.rate == "max":
            return Rate(None)
        rate = float(args.rate)
        if rate <= 0:
            raise ValueError("--rate must be positive (or 'max')")
        return Rate(rate)
    if args.storm:
        return Storm(args.storm_window, args.periodic)
    if args.periodic is not None:
        return Periodic(args.periodic)
    return Storm(args.storm_window)


def _fleet(args: argparse.Namespace, reactor: Any) -> Fleet:
    template: Template = load_csv(args.csv) if args.csv else builtin_template()
    listen = _listen_address(args.connreq_listen) if args.connreq_listen else None
    advertise = args.connreq_host
    if listen is not None and advertise is None and ipaddress.ip_address(listen[0]).is_unspecified:
        advertise = _route_to(args.acs)
    common: dict[str, Any] = {
        "template": template,
        "cafile": args.cafile,
        "insecure": args.insecure,
        "client_cert": args.client_cert,
        "client_key": args.client_key,
        "basic": args.basic,
        "concurrency": args.concurrency,
        "connection": args.connection,
        "arrival": _arrival(args),
        "behaviour": Behaviour(
            reboot_delay=args.reboot_delay,
            transfer_time=args.transfer_time,
            jitter=args.jitter,
            fetch=args.fetch,
            fail_fraction=args.fail_fraction,
        ),
        "bootstrap": not args.no_bootstrap,
        "connreq_listen": listen,
        "connreq_host": advertise,
        "connect_timeout": args.connect_timeout,
        "request_timeout": args.request_timeout,
        "seed": args.seed,
        "reuse_nonce": args.reuse_nonce,
        "tls_resume": args.tls_resume,
    }
    if args.credentials_csv:
        with open(args.credentials_csv, encoding="utf-8-sig") as f:
            rows: dict[str, Credentials] = read_credentials_csv(f.read())
        if args.devices is not None:
            rows = dict(list(rows.items())[: args.devices])
        return Fleet.from_device_ids(reactor, args.acs, rows, **common)
    if args.password_template is None:
        raise ValueError("give --password-template or --credentials-csv")
    source = credential_templates(
        args.username_template,
        args.password_template,
        args.cr_username_template,
        args.cr_password_template,
    )
    return Fleet(
        reactor,
        args.acs,
        devices=args.devices if args.devices is not None else 1,
        credentials=source,
        serial_prefix=args.serial_prefix,
        first_index=args.first_index,
        **common,
    )


def _write_credentials(fleet: Fleet, path: str) -> None:
    text = fleet.credentials_csv()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _progress_line(fleet: Fleet, stats: FleetStats, now: float) -> str:
    elapsed = max(now - stats.started, 1e-9)
    failed = sum(stats.failures.values())
    top = ", ".join(f"{r} {n}" for r, n in stats.failures.most_common(2))
    return (
        f"{elapsed:7.1f} s  {stats.sessions} sessions  {stats.sessions / elapsed:7.1f}/s  "
        f"in flight {fleet.active} (+{fleet.queued} queued)  failures {failed}"
        + (f" ({top})" if top else "")
    )


def _summary(fleet: Fleet, stats: FleetStats, now: float) -> dict[str, Any]:
    summary = stats.summary(now)
    summary["devices"] = len(fleet.devices)
    summary["memory_per_device_bytes"] = round(fleet.memory_per_device())
    summary["template"] = {
        "source": fleet.template.source,
        "parameters": len(fleet.template.params),
    }
    return summary


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    lat = summary["latency"]
    lines = [
        f"devices: {summary['devices']} ({summary['template']['source']}, "
        f"{summary['template']['parameters']} parameters shared)",
        f"sessions: {summary['sessions']} ({summary['completed']} completed, "
        f"{summary['failed']} failed) in {summary['elapsed']:.1f} s, "
        f"{summary['sessions_per_second']}/s",
    ]
    if summary["failures"]:
        lines.append("failures: " + ", ".join(f"{r}: {n}" for r, n in summary["failures"].items()))
    lines.append(
        f"latency: p50 {lat['p50'] * 1000:.1f} ms, p90 {lat['p90'] * 1000:.1f} ms, "
        f"p99 {lat['p99'] * 1000:.1f} ms, max {lat['max'] * 1000:.1f} ms"
    )
    if summary["rpcs"]:
        lines.append(
            "ACS requests answered: " + ", ".join(f"{m} {n}" for m, n in summary["rpcs"].items())
        )
    if summary["faults"]:
        lines.append(
            "faults answered: " + ", ".join(f"{m} {n}" for m, n in summary["faults"].items())
        )
    lines.append(f"memory per device: {summary['memory_per_device_bytes'] / 1024:.1f} KiB")
    out.write("\n".join(lines) + "\n")


async def _run(reactor: Any, args: argparse.Namespace, fleet: Fleet) -> int:
    from twisted.internet.task import LoopingCall

    tty = sys.stderr.isatty()
    interrupted = [0]

    def on_signal(signum: int, frame: Any) -> None:
        interrupted[0] += 1
        if interrupted[0] == 1:
            reactor.callFromThread(fleet.interrupt)
        else:
            reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    await fleet.start()
    if fleet.listener is not None:
        sys.stderr.write(f"connection requests: {fleet.listener.base_url}/cr/...\n")

    last = [0.0]

    def progress() -> None:
        now = reactor.seconds()
        line = _progress_line(fleet, fleet.stats, now)
        if tty:
            sys.stderr.write("\r" + line + "\x1b[K")
        elif now - last[0] >= 10:
            sys.stderr.write(line + "\n")
            last[0] = now
        sys.stderr.flush()

    ticker = LoopingCall(progress)
    ticker.clock = reactor
    if not args.quiet:
        ticker.start(1.0, now=False)

    changes = None
    if args.value_change_rate > 0:
        import random

        rng = random.Random(args.seed)
        name = args.value_change_param or _default_change_param(fleet.template)
        counter = [0]

        def change() -> None:
            counter[0] += 1
            device = fleet.devices[rng.randrange(len(fleet.devices))]
            try:
                fleet.value_change(device, name, f"sim-{counter[0]}")
            except KeyError:
                pass

        changes = LoopingCall(change)
        changes.clock = reactor
        changes.start(1 / args.value_change_rate, now=False)

    try:
        stats = await fleet.run_sessions(count=args.sessions, duration=args.duration)
    finally:
        if ticker.running:
            ticker.stop()
        if changes is not None and changes.running:
            changes.stop()
        await fleet.stop()
    if not args.quiet:
        sys.stderr.write(
            ("\r" + _progress_line(fleet, stats, reactor.seconds()) + "\n") if tty else ""
        )
    summary = _summary(fleet, stats, reactor.seconds())
    _print_summary(summary, sys.stdout)
    if args.json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0 if stats.completed or not stats.sessions else 1


def _default_change_param(template: Template) -> str:
    for name in (
        f"{template.root}.WiFi.SSID.1.SSID",
        f"{template.root}.LANDevice.1.WLANConfiguration.1.SSID",
        f"{template.root}.DeviceInfo.ProvisioningCode",
    ):
        if name in template.params:
            return name
    return template.forced[0]


def _start_logging(verbose: int) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    level = LogLevel.warn if verbose == 0 else LogLevel.info if verbose == 1 else LogLevel.debug
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    try:
        fleet = _fleet(args, reactor)
        if args.write_credentials:
            _write_credentials(fleet, args.write_credentials)
            sys.stderr.write(
                f"wrote the credentials of {len(fleet.devices)} devices to "
                f"{args.write_credentials}\n"
            )
    except (ValueError, OSError, TemplateError) as e:
        sys.stderr.write(f"python -m cwmpgw.sim: {e}\n")
        return 2
    if args.write_only:
        return 0
    _start_logging(args.verbose)

    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    code: list[int] = []

    async def body(reactor: Any) -> None:
        code.append(await _run(reactor, args, fleet))

    try:
        react(lambda r: Deferred.fromCoroutine(body(r)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return code[0] if code else 1


if __name__ == "__main__":
    sys.exit(main())
