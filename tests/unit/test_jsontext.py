"""cwmpgw.jsontext writes exactly what json.dumps writes; an event encoded around its
pre-encoded data is the same text as the event encoded whole."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.bus.events import Event, device_ref
from cwmpgw.jsontext import compact, value_pair
from cwmpgw.tasks.model import Task
from cwmpgw.tasks.rules import task_event, task_to_json

# Any text, lone surrogates included (json.dumps writes them; so must we).
TEXT = st.text(st.characters(codec=None))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


class CompactTests(SynchronousTestCase):
    @given(JSON_VALUES)
    def test_same_text_as_json_dumps(self, value: Any) -> None:
        self.assertEqual(
            compact(value), json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        )

    def test_what_json_cannot_encode_is_refused_alike(self) -> None:
        with self.assertRaises(TypeError):
            compact({"a": object()})
        with self.assertRaises(TypeError):
            compact({(1, 2): "tuple key"})


class ValuePairTests(SynchronousTestCase):
    @given(TEXT, TEXT)
    def test_same_text_as_json_dumps(self, value: str, type_: str) -> None:
        self.assertEqual(value_pair(value, type_), json.dumps([value, type_]))

    def test_not_text_falls_back_to_json_dumps(self) -> None:
        self.assertEqual(value_pair(None, "xsd:int"), '[null, "xsd:int"]')  # type: ignore[arg-type]


class EncodeWithTests(SynchronousTestCase):
    def test_task_event_around_the_stored_text(self) -> None:
        task = Task(
            id="t1",
            device_id="00D09E-Router-SN1",
            type="GetParameterValues",
            args={"parameter_names": ["Device.DeviceInfo."]},
            status="done",
            created=1.5,
            updated=2.25,
            expires=9.0,
            result={"parameters": {"Device.X": {"value": "é\u2028", "type": "xsd:string"}}},
        )
        text = task_to_json(task)
        spliced = task_event(task, "node-1", text)
        whole = Event(
            type=spliced.type,
            ts=spliced.ts,
            node=spliced.node,
            data=spliced.data,
            device=spliced.device,
            id=spliced.id,
        )
        self.assertEqual(spliced.to_json(), whole.to_json())
        self.assertEqual(json.loads(spliced.to_json())["data"], task.to_dict())

    def test_encoded_once(self) -> None:
        event = Event(type="inform", ts=1.0, node="n", data={"a": 1}, device=device_ref("d"))
        self.assertIs(event.encode_with('{"a":1}'), event)
        # Already encoded: a second text does not replace the first.
        event.encode_with('{"a":2}')
        self.assertEqual(json.loads(event.to_json())["data"], {"a": 1})
