"""The README's event reference names every event type the gateway publishes."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.bus.events import EVENT_TYPES
from tests.support.paths import REPO


class ReadmeEventsTests(SynchronousTestCase):
    def test_every_event_type_is_documented(self) -> None:
        text = (REPO / "README.md").read_text()
        table = text[text.index("## Events") :]
        self.assertEqual(sorted(t for t in EVENT_TYPES if f"`{t}`" not in table), [])
