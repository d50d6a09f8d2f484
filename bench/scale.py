"""1 vs 2 gateway worker processes: what a second worker adds.

    python bench/scale.py [--pairs 2] [--devices 200] [--rounds 4]

Runs bench/sessions.py alternately with ``--workers 1`` and ``--workers 2`` and compares
them. On a machine with a core for each worker and more for the simulator, the figure is
the wall rate of 2 workers over that of 1 (target, issue: >= 1.8x). When the simulator
needs one of the cores (two cores in all), the wall rate is the simulator's and says
nothing; what still says something is the gateway CPU per session, which a worker pays
whatever runs beside it. Workers share nothing but Redis, so with a free core each, 2
workers serve ``2 x cpu(1 worker) / cpu(2 workers)`` times the sessions of one: that
projection is printed too, labelled as such. On two cores both workers share one, so
their per-session CPU includes contention (context switches, caches) that separate cores
would not have: the projection is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import ROOT, report


def one_run(workers: int, devices: int, rounds: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sessions.py"),
            *("--workers", str(workers), "--devices", str(devices), "--rounds", str(rounds)),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    data: dict[str, Any] = json.loads(line[len("BENCH ") :])
    if data["failures"]:
        raise SystemExit(f"sessions failed with {workers} worker(s): {data['failures']}")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="alternating 1/2-worker runs")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for _ in range(args.pairs):
        for workers in (1, 2):
            runs[workers].append(one_run(workers, args.devices, args.rounds))

    def ms_per_session(data: dict[str, Any]) -> float:
        return 1000.0 * data["gateway_cpu_s"] / data["sessions"]

    cpu = {w: statistics.median(ms_per_session(d) for d in runs[w]) for w in (1, 2)}
    wall = {w: statistics.median(d["gateway_wall_rate"] for d in runs[w]) for w in (1, 2)}
    projected = 2 * cpu[1] / cpu[2]
    cores = os.cpu_count() or 1
    rows: list[tuple[str, Any]] = [
        ("runs (alternating)", f"{args.pairs} x (1 worker, 2 workers)"),
        ("gateway CPU per session, 1 worker", f"{cpu[1]:.2f} ms (median)"),
        ("gateway CPU per session, 2 workers", f"{cpu[2]:.2f} ms (median)"),
        ("wall rate 1 / 2 workers", f"{wall[1]:.0f}/s / {wall[2]:.0f}/s"),
        (
            "measured scale (wall rate)",
            f"{wall[2] / wall[1]:.2f}x"
            + ("" if cores >= 4 else f" (capped: {cores} cores, the simulator needs one)"),
        ),
        ("projected scale, a core per worker", f"{projected:.2f}x (target >= 1.8)"),
    ]
    report(
        "scale",
        rows,
        {
            "cpu_ms_per_session": {str(w): round(cpu[w], 3) for w in (1, 2)},
            "wall_rate": {str(w): round(wall[w], 1) for w in (1, 2)},
            "measured_scale": round(wall[2] / wall[1], 3),
            "projected_scale": round(projected, 3),
            "pairs": args.pairs,
            "devices": args.devices,
            "rounds": args.rounds,
        },
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
