"""The layer rule of docs/architecture.md, enforced: which package may import which.

Every ``import`` of a ``cwmpgw`` module, at module scope or inside a function, is an
edge from the importing package to the imported one; an edge the table does not allow
fails, and so does a cycle between packages.
"""

from __future__ import annotations

import ast

from twisted.trial.unittest import SynchronousTestCase

from tests.support.paths import REPO

ROOT = REPO / "cwmpgw"

# Package (or top-level module) → what it may import besides itself. Lowest layer first.
ALLOWED: dict[str, set[str]] = {
    # The sans-IO CWMP codec and session machine: nothing of ours.
    "cwmp": set(),
    "logs": set(),
    # Deferreds waiting for one thing to happen (whenReady, whenDrained …).
    "waiters": set(),
    "config": {"cwmp"},
    # HTTP pieces shared by the server and the clients (the hardened site, Digest).
    "web": set(),
    # XMPP shared by the gateway and the simulator's CPEs (Annex K): the client, the stanza.
    "xmpp": set(),
    # Timeouts of one length on one reactor timer (the guard, the connreq client).
    "timeouts": set(),
    # Redis availability: every Redis user goes through it.
    "availability": {"timeouts", "waiters"},
    # The txredisapi pool with the lean command path (imported by the Redis part only).
    "redisclient": set(),
    # The garbage collector's threshold while a gateway runs.
    "collector": set(),
    # JSON text encoded without per-call setup (events, tasks, parameter values).
    "jsontext": set(),
    "bus": {"availability", "config", "jsontext", "waiters"},
    "store": {"availability", "bus", "cwmp", "jsontext", "waiters"},
    # Live sessions and the seam the ACS asks in its turn (the task layer plugs in).
    "sessions": {"cwmp"},
    "metrics": {"bus"},
    # The edges and the domains: none imports another edge.
    "acs": {"availability", "bus", "cwmp", "logs", "sessions", "store", "web"},
    "tasks": {"availability", "bus", "cwmp", "jsontext", "logs", "sessions", "store"},
    "provision": {"bus", "config", "cwmp", "sessions", "store", "web"},
    "connreq": {"availability", "bus", "config", "logs", "store", "timeouts", "web", "xmpp"},
    # Inventory, bulk tasks, profiles: over the stores and the task service.
    "fleet": {"availability", "bus", "config", "connreq", "cwmp", "sessions", "store", "tasks"},
    # Files the gateway serves and receives, and firmware campaigns.
    "files": {"availability", "bus", "connreq", "cwmp", "fleet", "store", "tasks", "web"},
    "nbi": {
        "availability",
        "bus",
        "config",
        "connreq",
        "files",
        "fleet",
        "store",
        "tasks",
        "web",
    },
    # The simulator is a CPE: it shares only the codec-free pieces, never the ACS.
    "sim": {"cwmp", "web", "xmpp"},
    # The composition and the entry points.
    "workers": {"config"},
    "app": {
        "waiters",
        "redisclient",
        "acs",
        "availability",
        "bus",
        "config",
        "connreq",
        "files",
        "fleet",
        "metrics",
        "nbi",
        "provision",
        "sessions",
        "store",
        "tasks",
        "web",
        "workers",
        "xmpp",
    },
    "service": {
        "acs",
        "collector",
        "app",
        "availability",
        "bus",
        "config",
        "connreq",
        "files",
        "fleet",
        "metrics",
        "nbi",
        "provision",
        "store",
        "tasks",
        "workers",
    },
    "worker": {"config", "service"},
    "tap": {"config", "service"},
    # The credentials command (import, rotate): a tool beside the gateway.
    "credentials": {"config", "provision", "store", "web"},
}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cwmpgw" or len(parts) < 2 or parts[1] == "__init__":
        return None
    return parts[1]


def import_edges() -> dict[str, set[str]]:
    """Package → the other cwmpgw packages its modules import."""
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        source = _package(".".join(relative.parts))
        if source is None:
            continue
        targets = edges.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                target = _package(name)
                if target is not None and target != source:
                    targets.add(target)
    return edges


class LayerRuleTests(SynchronousTestCase):
    def test_every_package_is_in_the_table(self) -> None:
        self.assertEqual(sorted(set(import_edges()) - set(ALLOWED)), [])

    def test_imports_follow_the_table(self) -> None:
        broken = {
            f"{source} -> {target}"
            for source, targets in import_edges().items()
            for target in targets
            if target not in ALLOWED.get(source, set())
        }
        self.assertEqual(sorted(broken), [])

    def test_the_table_has_no_cycle(self) -> None:
        # Depth-first: a package reached again while its own imports are open is a cycle.
        state: dict[str, str] = {}

        def visit(package: str, path: tuple[str, ...]) -> None:
            state[package] = "open"
            for target in sorted(ALLOWED.get(package, set())):
                self.assertNotEqual(state.get(target), "open", " -> ".join((*path, target)))
                if target not in state:
                    visit(target, (*path, target))
            state[package] = "done"

        for package in sorted(ALLOWED):
            if package not in state:
                visit(package, (package,))

    def test_the_rule_sees_imports_inside_functions(self) -> None:
        # tap imports the composition root lazily (twistd installs its reactor first).
        self.assertIn("service", import_edges()["tap"])
