"""The CWMP XML layer in-process: what one session costs in cwmpgw.cwmp.soap.

    python bench/cwmpxml.py [--rounds 7] [--seconds 0.3]

The five XML operations of a session, each timed alone in this process (no HTTP, no
Redis): parsing the Inform (a session parses it twice: the unauthenticated 401 round trip,
then authenticated), building the InformResponse, building the GetParameterValues request
(as the gateway does, through cwmpgw.cwmp.rpc.build; soap.get_parameter_values is also
timed), and parsing the GetParameterValuesResponse. The messages are the simulator's: the
Inform of the built-in TR-181 tree (its forced-inform parameters), and a response of
DeviceInfo's values.

Each operation is timed in ``--rounds`` rounds of about ``--seconds`` each, the operations
taking turns within a round so that a busy neighbour slows them alike; the best round is
reported (the least disturbed), with the median beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from common import report

NS = "urn:dslforum-org:cwmp-1-2"
CONTENT_TYPE = 'text/xml; charset="utf-8"'


def messages() -> tuple[bytes, bytes, list[str]]:
    """(an Inform, a GetParameterValuesResponse, the names that request asks for)."""
    from cwmpgw.cwmp.messages import DeviceId
    from cwmpgw.sim import cwmp
    from cwmpgw.sim.datamodel import builtin_template

    template = builtin_template()
    inform_params = [
        (name, template.params[name].value or "value", template.params[name].type)
        for name in template.forced
        if name in template.params and not name.endswith(".ConnReqJabberID")
    ]
    # The simulator's values are placeholders; a CPE's are longer.
    inform_params = [
        (n, "http://192.0.2.17:7547/cr-4f2a9c" if n.endswith("URL") else v, t)
        for n, v, t in inform_params
    ]
    inform = cwmp.inform(
        NS,
        "1",
        DeviceId("Example Networks", "00D09E", "HGW-4000", "EXN0123456789"),
        [("1 BOOT", ""), ("2 PERIODIC", "")],
        current_time="2025-01-01T12:00:00Z",
        retry_count=0,
        parameters=inform_params,
        supported_versions="1.0,1.1,1.2,1.3,1.4",
    )
    info = [n for n in template.params if n.startswith(template.root + ".DeviceInfo.")][:12]
    response = cwmp.parameter_values_response(
        NS,
        "acs-1",
        [(n, template.params[n].value or "1", template.params[n].type) for n in info],
    )
    return inform, response, info


def operations() -> dict[str, Callable[[], object]]:
    from cwmpgw.cwmp import rpc, soap

    inform, response, names = messages()
    gpv_args = {"parameter_names": names[:3]}
    return {
        f"parse Inform ({len(inform)} B)": lambda: soap.parse_envelope(
            inform, content_type=CONTENT_TYPE, max_elements=20000
        ),
        f"parse GPV response ({len(response)} B)": lambda: soap.parse_envelope(
            response, content_type=CONTENT_TYPE, max_elements=20000
        ),
        "build InformResponse": lambda: soap.inform_response(
            NS, "1", use_cwmp_version="1.2", hold_requests=False
        ),
        "build GPV (rpc.build)": lambda: rpc.build(NS, "acs-1", "GetParameterValues", gpv_args),
        "build GPV (soap.get_parameter_values)": lambda: soap.get_parameter_values(
            NS, "acs-1", names[:3]
        ),
    }


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call of ``fn``, over about ``seconds``."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / n
        n = max(n * 2, int(n * seconds / max(elapsed, 1e-9) * 1.1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    ops = operations()
    for fn in ops.values():  # warm-up (lru caches, lxml's first parser use)
        per_call(fn, 0.05)
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(args.rounds):
        for name, fn in ops.items():
            times[name].append(per_call(fn, args.seconds) * 1e6)
    best = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [(name, f"{best[name]:7.2f} µs (median {median[name]:.2f})") for name in ops]
    session = 2 * best[next(iter(ops))] + sum(list(best.values())[1:4])
    rows.append(("per session (2 Informs, 3 others)", f"{session:7.2f} µs"))
    report(
        "xml",
        rows,
        {
            "rounds": args.rounds,
            "best_us": {k: round(v, 2) for k, v in best.items()},
            "median_us": {k: round(v, 2) for k, v in median.items()},
            "session_us": round(session, 2),
        },
    )


if __name__ == "__main__":
    main()
