"""The inventory query over a million devices: how long one page takes.

Loads N device records into a throwaway redis-server through the gateway's own
``record_inform`` script (so the indexes are exactly what the gateway keeps), tags a
share of them with the ``change_tags`` script, then times pages of typical queries with
the ``GET /devices`` script. Prints the figures; asserts nothing.

    python bench/inventory.py [N]        # default 1000000
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

import redis
from tests.redis_server import RedisServer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.fleet import inventory
from cwmpgw.fleet.selector import parse_selector
from cwmpgw.store import redis as store
from cwmpgw.store.interfaces import InformRecord

PREFIX = "bench:"
NOW = 1_750_000_000.0
OUIS = [f"{i:06X}" for i in range(0x100000, 0x100000 + 40)]
CLASSES = [f"Model{i}" for i in range(25)]
VERSIONS = [f"{a}.{b}.{c}" for a in range(3) for b in range(4) for c in range(5)]


class Capture:
    """Stands in for the Redis client: keeps what the store would send."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[str]]] = []

    def eval(self, script: str, keys: list[str], args: list[str]) -> Any:
        self.calls.append((script, keys, args))
        return Deferred()  # never fires: nothing here waits for the answer


def load(r: redis.Redis, n: int) -> None:
    rng = random.Random(1)
    capture = Capture()
    devices = store.RedisDeviceStore(capture, PREFIX)
    scripts: dict[str, Any] = {}
    pipe = r.pipeline(transaction=False)
    started = time.perf_counter()
    for i in range(n):
        oui, pc = rng.choice(OUIS), rng.choice(CLASSES)
        device_id = f"{oui}-{pc}-SN{i:08d}"
        ts = NOW - rng.expovariate(1 / 40000)
        source = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        devices.record_inform(
            InformRecord(
                device_id=device_id,
                device=DeviceId("Vendor", oui, pc, f"SN{i:08d}"),
                ts=ts,
                source=source,
                cwmp_version="1.0",
                namespace="urn:dslforum-org:cwmp-1-0",
                events=(EventStruct("2 PERIODIC", ""),),
                parameters=(
                    ParameterValue("Device.DeviceInfo.SoftwareVersion", rng.choice(VERSIONS)),
                    ParameterValue("Device.DeviceInfo.HardwareVersion", rng.choice(("v1", "v2"))),
                ),
            )
        )
        tags = [t for t, p in (("pilot", 0.01), ("north", 0.3), ("vip", 0.05)) if rng.random() < p]
        if tags:
            devices.change_tags(device_id, tags, [])
        for script, keys, args in capture.calls:
            if script not in scripts:
                scripts[script] = r.register_script(script)
            scripts[script](keys=keys, args=args, client=pipe)
        capture.calls.clear()
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    print(f"loaded {n} devices in {time.perf_counter() - started:.1f} s")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    server = RedisServer()
    server.start()
    try:
        r = redis.Redis(host=server.host, port=server.port, decode_responses=True)
        load(r, n)
        info = r.info("memory")
        print(f"redis used_memory: {info['used_memory'] / 2**20:.0f} MiB")
        clock = Clock()
        clock.advance(NOW)
        inv = inventory.RedisInventory(None, PREFIX, clock=clock, online_window=7200)
        query = r.register_script(inventory._QUERY)
        cases = [
            ("every device", {}),
            ("oui", {"oui": OUIS[3]}),
            (
                "oui + product_class + software_version",
                {"oui": OUIS[3], "product_class": CLASSES[4], "software_version": VERSIONS[7]},
            ),
            ("tag pilot (1 %)", {"tags": ["pilot"]}),
            ("tag north + online", {"tags": ["north"], "online": True}),
            ("online", {"online": True}),
            ("silent for a week (rare)", {"not_informed_within": 7 * 86400}),
            ("source 10.1.0.0/16", {"source": "10.1.0.0/16"}),
            (
                "software_version in 3 + not vip",
                {"software_version": VERSIONS[:3], "not_tags": ["vip"]},
            ),
            (
                "oui + parameter equality",
                {"oui": OUIS[5], "parameters": {"Device.DeviceInfo.HardwareVersion": "v2"}},
            ),
            ("tag pilot + oui (very selective)", {"tags": ["pilot"], "oui": OUIS[7]}),
        ]
        print(f"{'query':42} {'page':>5} {'first page ms':>14} {'all pages':>10} {'total ms':>9}")
        for name, sel in cases:
            spec = inv._spec(parse_selector(sel))
            import json

            args = [PREFIX, json.dumps(spec), "", "100", str(inventory.DEFAULT_BUDGET), "1"]
            t0 = time.perf_counter()
            reply = query(keys=[], args=args)
            first = (time.perf_counter() - t0) * 1000
            found = (len(reply) - 1) // 2
            # Walk the whole result (ids only, 1000 a page), for the total.
            t0 = time.perf_counter()
            cursor, total, pages = "", 0, 0
            while True:
                reply = query(
                    keys=[],
                    args=[
                        PREFIX,
                        json.dumps(spec),
                        cursor,
                        "1000",
                        str(inventory.DEFAULT_BUDGET),
                        "0",
                    ],
                )
                total += len(reply) - 1
                pages += 1
                cursor = reply[0]
                if not cursor or pages > 5000:
                    break
            whole = (time.perf_counter() - t0) * 1000
            print(f"{name:42} {found:5d} {first:14.2f} {total:10d} {whole:9.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
