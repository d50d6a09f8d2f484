"""GenieACS-compatible device ids."""

from __future__ import annotations

import re
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp.deviceid import device_id, escape_id_part
from cwmpgw.cwmp.messages import DeviceId
from tests.support.paths import DATA

SAFE = re.compile(r"[A-Za-z0-9_%]*")


class DeviceIdTests(SynchronousTestCase):
    def test_protocol_examples(self) -> None:
        cases = [
            (
                DeviceId("Huawei", "00259E", "EG8145V5", "48575443A94196A5"),
                "00259E-EG8145V5-48575443A94196A5",
            ),
            (
                DeviceId("Nokia", "9075BC", "G-1425G-A", "ALCLFC265D6F"),
                "9075BC-G%2D1425G%2DA-ALCLFC265D6F",
            ),
            (
                DeviceId("ZTE", "C0B101", "ZXHN H199A", "ZTEYH86LCN10105"),
                "C0B101-ZXHN%20H199A-ZTEYH86LCN10105",
            ),
            (
                DeviceId("TP-Link", "9CA2F4", "EC220_G5_V3", "22275K2000315"),
                "9CA2F4-EC220_G5_V3-22275K2000315",
            ),
        ]
        for device, expected in cases:
            self.assertEqual(device_id(device), expected)

    def test_sample_dumps_are_named_by_device_id(self) -> None:
        names = {p.name for p in DATA.glob("*.csv")}
        self.assertIn(
            "device-" + device_id(DeviceId("", "9CA2F4", "EC220_G5_V3", "22275K2000315")) + ".csv",
            names,
        )
        self.assertIn(
            "data_model_"
            + device_id(DeviceId("", "202BC1", "BM632w", "8KA8WA1151100043"))
            + ".csv",
            names,
        )

    def test_empty_product_class(self) -> None:
        self.assertEqual(device_id(DeviceId("M", "00259E", "", "S N")), "00259E-S%20N")

    def test_escaping(self) -> None:
        self.assertEqual(escape_id_part(""), "")
        self.assertEqual(escape_id_part("aZ09_"), "aZ09_")
        self.assertEqual(escape_id_part("a.b~c"), "a%2Eb%7Ec")
        self.assertEqual(escape_id_part("%"), "%25")
        self.assertEqual(escape_id_part("é"), "%C3%A9")  # every UTF-8 byte
        self.assertEqual(escape_id_part("٣"), "%D9%A3")  # a non-ASCII digit is not [0-9]
        self.assertEqual(escape_id_part("😀"), "%F0%9F%98%80")

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_output_alphabet_and_reversible(self, s: str) -> None:
        escaped = escape_id_part(s)
        self.assertIsNotNone(SAFE.fullmatch(escaped))
        # Reversible, hence injective: distinct parts never share an id.
        self.assertEqual(unquote(escaped, errors="strict"), s)

    @settings(max_examples=200, deadline=None)
    @given(st.text(), st.text())
    def test_injective(self, a: str, b: str) -> None:
        if a != b:
            self.assertNotEqual(escape_id_part(a), escape_id_part(b))

    @settings(max_examples=200, deadline=None)
    @given(st.tuples(st.text(), st.text(), st.text()), st.tuples(st.text(), st.text(), st.text()))
    def test_device_ids_injective(self, x: tuple[str, str, str], y: tuple[str, str, str]) -> None:
        first, second = DeviceId("", *x), DeviceId("", *y)
        if x != y:
            self.assertNotEqual(device_id(first), device_id(second))
        self.assertIsNotNone(re.fullmatch(r"[A-Za-z0-9_%-]+", device_id(first)))
