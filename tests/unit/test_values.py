"""CWMP data types: every accepted spelling, every bound, and round trips."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp.values import TYPES, UNKNOWN_TIME, check_value, normalise_type, xsi_type

BOUNDS = {
    "xsd:int": (-(2**31), 2**31 - 1),
    "xsd:unsignedInt": (0, 2**32 - 1),
    "xsd:long": (-(2**63), 2**63 - 1),
    "xsd:unsignedLong": (0, 2**64 - 1),
}


class TypeNameTests(SynchronousTestCase):
    def test_spellings(self) -> None:
        cases = {
            "unsignedInt": ("xsd:unsignedInt", None),
            "xsd:unsignedInt": ("xsd:unsignedInt", None),
            " xsd:unsignedint ": ("xsd:unsignedInt", None),
            "string": ("xsd:string", None),
            "string(64)": ("xsd:string", 64),
            "xsd:string( 16 )": ("xsd:string", 16),
            "base64": ("xsd:base64", None),
            "xsd:base64Binary": ("xsd:base64", None),
            "soap-enc:base64": ("xsd:base64", None),
            "base64(256)": ("xsd:base64", 256),
            "hexBinary(8)": ("xsd:hexBinary", 8),
            "dateTime": ("xsd:dateTime", None),
            "boolean": ("xsd:boolean", None),
            "long": ("xsd:long", None),
            "unsignedLong": ("xsd:unsignedLong", None),
            "int": ("xsd:int", None),
        }
        for spelling, expected in cases.items():
            self.assertEqual(normalise_type(spelling), expected, spelling)
        for canonical in TYPES:
            self.assertEqual(normalise_type(canonical), (canonical, None))

    def test_unknown_types(self) -> None:
        for bad in ("float", "xsd:decimal", "int(4)", "boolean(1)", "", "string(", "string(-1)"):
            with self.assertRaises(ValueError, msg=bad):
                normalise_type(bad)
        with self.assertRaises(ValueError):
            normalise_type(5)  # type: ignore[arg-type]
        with self.assertRaisesRegex(ValueError, "unknown type 'float'"):
            check_value("float", 1)

    def test_xsi_type(self) -> None:
        self.assertEqual(xsi_type("unsignedInt"), "xsd:unsignedInt")
        self.assertEqual(xsi_type("string(64)"), "xsd:string")
        # xsd:base64 does not exist in the XSD namespace; base64Binary is its name there.
        self.assertEqual(xsi_type("xsd:base64"), "xsd:base64Binary")


class BooleanTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        for value, text in [
            (True, "true"),
            (False, "false"),
            ("true", "true"),
            ("false", "false"),
            ("1", "true"),
            ("0", "false"),
            (" TRUE ", "true"),
            (1, "true"),
            (0, "false"),
        ]:
            self.assertEqual(check_value("xsd:boolean", value), text, repr(value))

    def test_digits(self) -> None:
        self.assertEqual(check_value("boolean", True, boolean_digits=True), "1")
        self.assertEqual(check_value("boolean", "false", boolean_digits=True), "0")

    def test_rejected(self) -> None:
        for value in (2, -1, "yes", "", None, 1.0, [], "truee"):
            with self.assertRaisesRegex(ValueError, "^boolean: ", msg=repr(value)):
                check_value("boolean", value)


class IntegerTests(SynchronousTestCase):
    def test_bounds_exactly(self) -> None:
        for type_, (low, high) in BOUNDS.items():
            self.assertEqual(check_value(type_, low), str(low))
            self.assertEqual(check_value(type_, high), str(high))
            for outside in (low - 1, high + 1):
                with self.assertRaisesRegex(ValueError, "out of range", msg=f"{type_} {outside}"):
                    check_value(type_, outside)

    @given(st.sampled_from(sorted(BOUNDS)), st.data())
    def test_in_range_round_trip(self, type_: str, data: st.DataObject) -> None:
        low, high = BOUNDS[type_]
        number = data.draw(st.integers(low, high))
        text = check_value(type_, number)
        self.assertEqual(int(text), number)
        # The text form is accepted too and gives the same wire text.
        self.assertEqual(check_value(type_, text), text)
        self.assertEqual(check_value(type_, f" +{number} " if number >= 0 else text), text)

    @given(st.sampled_from(sorted(BOUNDS)), st.data())
    def test_out_of_range(self, type_: str, data: st.DataObject) -> None:
        low, high = BOUNDS[type_]
        number = data.draw(st.integers(max_value=low - 1) | st.integers(min_value=high + 1))
        with self.assertRaises(ValueError):
            check_value(type_, number)
        with self.assertRaises(ValueError):
            check_value(type_, str(number))

    def test_not_integers(self) -> None:
        # Python's int() would take "1_000" and Arabic-Indic digits; the wire must not.
        for value in (True, 1.0, 1.5, "1.0", "1_000", "\u0661\u0662", "0x10", "", " ", None):
            with self.assertRaises(ValueError, msg=repr(value)):
                check_value("xsd:int", value)
        self.assertEqual(check_value("unsignedInt", "007"), "7")
        self.assertEqual(check_value("unsignedInt", "-0"), "0")


class DateTimeTests(SynchronousTestCase):
    def test_strings(self) -> None:
        cases = {
            "2025-05-25T22:24:29Z": "2025-05-25T22:24:29Z",
            "2025-05-25T22:24:29.123Z": "2025-05-25T22:24:29Z",
            "2025-05-25T22:24:29+02:00": "2025-05-25T22:24:29+02:00",
            "2025-05-25T22:24:29.5-05:30": "2025-05-25T22:24:29-05:30",
            "2025-05-25T22:24:29+00:00": "2025-05-25T22:24:29Z",
            UNKNOWN_TIME: UNKNOWN_TIME,
            "0001-01-01T00:00:00+01:00": "0001-01-01T00:00:00+01:00",
        }
        for value, text in cases.items():
            self.assertEqual(check_value("dateTime", value), text, value)

    def test_rejected(self) -> None:
        for value in (
            "2025-05-25T22:24:29",  # no zone: ambiguous
            "2025-05-25",
            "2025-02-30T00:00:00Z",
            "2025-05-25T24:00:00Z",
            "2025-05-25 22:24:29Z",
            "0000-01-01T00:00:00Z",
            "2025-05-25T22:24:29+15:00",
            "20250525T222429Z",
            1716675869,
            None,
        ):
            with self.assertRaisesRegex(ValueError, "^dateTime: ", msg=repr(value)):
                check_value("xsd:dateTime", value)

    def test_datetime_objects(self) -> None:
        moment = datetime(2025, 5, 25, 22, 24, 29, 987654, tzinfo=UTC)
        self.assertEqual(check_value("dateTime", moment), "2025-05-25T22:24:29Z")
        plus2 = timezone(timedelta(hours=2))
        self.assertEqual(
            check_value("dateTime", moment.replace(tzinfo=plus2)), "2025-05-25T22:24:29+02:00"
        )
        with self.assertRaisesRegex(ValueError, "time zone"):
            check_value("dateTime", datetime(2025, 1, 1))

    @given(
        st.datetimes(
            min_value=datetime(1, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7, minutes=-30))]),
        )
    )
    def test_round_trip(self, moment: datetime) -> None:
        text = check_value("dateTime", moment)
        self.assertNotIn(".", text)
        self.assertEqual(datetime.fromisoformat(text), moment.replace(microsecond=0))
        self.assertEqual(check_value("dateTime", text), text)


class BinaryTests(SynchronousTestCase):
    def test_base64(self) -> None:
        self.assertEqual(check_value("base64", "aGVsbG8="), "aGVsbG8=")
        self.assertEqual(check_value("base64", "aGVs\r\nbG8="), "aGVsbG8=")
        self.assertEqual(check_value("base64", b"hello"), "aGVsbG8=")
        self.assertEqual(check_value("base64", ""), "")
        for bad in ("aGVsbG8", "a$==", "é", 5):
            with self.assertRaisesRegex(ValueError, "^base64: ", msg=repr(bad)):
                check_value("base64", bad)

    def test_binary_lengths_count_decoded_bytes(self) -> None:
        self.assertEqual(check_value("base64(5)", "aGVsbG8="), "aGVsbG8=")
        with self.assertRaisesRegex(ValueError, "6 bytes, more than the maximum 5"):
            check_value("base64", b"hello!", max_length=5)
        self.assertEqual(check_value("hexBinary(2)", "0aFF"), "0aFF")
        with self.assertRaisesRegex(ValueError, "3 bytes"):
            check_value("hexBinary(2)", "0aFF00")

    def test_hex(self) -> None:
        self.assertEqual(check_value("hexBinary", " 0aFF "), "0aFF")
        self.assertEqual(check_value("hexBinary", b"\x0a\xff"), "0AFF")
        for bad in ("0aF", "zz", 10):
            with self.assertRaisesRegex(ValueError, "^hexBinary: ", msg=repr(bad)):
                check_value("hexBinary", bad)

    @given(st.binary(max_size=64))
    def test_round_trips(self, raw: bytes) -> None:
        encoded = check_value("base64", raw)
        self.assertEqual(base64.b64decode(encoded, validate=True), raw)
        self.assertEqual(check_value("base64", encoded), encoded)
        self.assertEqual(bytes.fromhex(check_value("hexBinary", raw)), raw)


class StringTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        self.assertEqual(check_value("string", "MyNet"), "MyNet")
        self.assertEqual(check_value("string", " a\tb\r\nc "), " a\tb\r\nc ")
        self.assertEqual(check_value("string", ""), "")
        self.assertEqual(check_value("string", 42), "42")
        self.assertEqual(check_value("string", "\u00e9\u4e2d"), "\u00e9\u4e2d")

    def test_control_characters(self) -> None:
        for bad in ("a\x00b", "\x07", "x\x1b[0m", "\ud800", "\uffff"):
            with self.assertRaisesRegex(ValueError, "cannot be sent", msg=repr(bad)):
                check_value("string", bad)

    def test_lengths(self) -> None:
        self.assertEqual(check_value("string(3)", "abc"), "abc")
        with self.assertRaisesRegex(ValueError, "4 characters, more than the maximum 3"):
            check_value("string(3)", "abcd")
        with self.assertRaisesRegex(ValueError, "maximum 2"):
            check_value("string(3)", "abc", max_length=2)  # the smaller limit wins
        with self.assertRaisesRegex(ValueError, "maximum 3"):
            check_value("string(3)", "abcd", max_length=10)
        with self.assertRaisesRegex(ValueError, "max_length"):
            check_value("string", "a", max_length=-1)

    def test_not_strings(self) -> None:
        for bad in (True, 1.5, None, b"x", ["a"]):
            with self.assertRaisesRegex(ValueError, "^string: expected a string", msg=repr(bad)):
                check_value("string", bad)

    @given(
        st.text(
            st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
            max_size=50,
        )
    )
    def test_round_trip(self, text: str) -> None:
        self.assertEqual(check_value("string", text), text)
        self.assertEqual(check_value(f"string({len(text)})", text), text)
