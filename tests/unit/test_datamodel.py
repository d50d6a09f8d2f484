"""The data-model check (cwmp/datamodel.py), its use at task submission, and profiles'
parsing: what is refused because it is known to be wrong, and what passes unchecked."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp.datamodel import DataModel, DataModelError, standard_model
from cwmpgw.fleet.profiles import ProfileError, parse_profile
from cwmpgw.tasks.model import DataModelRefusal, TaskError
from cwmpgw.tasks.rules import build_task
from tests.support.paths import DATA, REPO


class DataModelTests(SynchronousTestCase):
    model = standard_model()

    def refused(self, name: str, value: object, type_: str | None = None) -> str:
        with self.assertRaises(DataModelError) as caught:
            self.model.check(name, value, type_)
        return str(caught.exception)

    def test_known_parameters_are_typed_and_checked(self) -> None:
        checked = self.model.check("Device.ManagementServer.PeriodicInformInterval", 300)
        self.assertEqual(
            (checked.type, checked.value, checked.unchecked), ("xsd:unsignedInt", "300", "")
        )
        tr098 = self.model.check("InternetGatewayDevice.LANDevice.1.WLANConfiguration.2.SSID", "g")
        self.assertEqual(tr098.type, "xsd:string")
        alias = self.model.check("Device.WiFi.SSID.[guest].SSID", "g")
        self.assertEqual(alias.unchecked, "")
        boolean = self.model.check("Device.ManagementServer.PeriodicInformEnable", "1")
        self.assertEqual(boolean.value, "true")

    def test_what_is_known_to_be_wrong_is_refused(self) -> None:
        self.assertIn("read-only", self.refused("Device.DeviceInfo.SoftwareVersion", "1"))
        self.assertIn(
            "Device.ManagementServer. has no Bogus",
            self.refused("Device.ManagementServer.Bogus", "1"),
        )
        self.assertIn(
            "is xsd:unsignedInt, not xsd:string",
            self.refused("Device.ManagementServer.PeriodicInformInterval", "1", "string"),
        )
        self.assertIn("out of range", self.refused("Device.ManagementServer.STUNServerPort", 70000))
        self.assertIn(
            "out of range", self.refused("Device.ManagementServer.PeriodicInformInterval", 0)
        )
        self.assertIn("maximum 32", self.refused("Device.WiFi.SSID.1.SSID", "x" * 33))
        self.assertIn(
            "boolean", self.refused("Device.ManagementServer.PeriodicInformEnable", "yes")
        )
        self.assertIn("not an instance number", self.refused("Device.WiFi.SSID.one.SSID", "x"))
        self.assertIn("not a parameter", self.refused("Device.WiFi", "x"))
        self.assertIn("not a parameter", self.refused("Device.WiFi.SSID.1", "x"))
        self.assertIn("has no Foo", self.refused("InternetGatewayDevice.Time.Foo", "x"))

    def test_what_the_model_cannot_judge_passes_unchecked(self) -> None:
        for name, why in (
            ("Device.X_ACME_Thing.Enable", "vendor extension"),
            ("Device.WiFi.SSID.1.X_TP_Band", "vendor extension"),
            ("Device.Services.VoiceService.1.Enable", "not in the gateway's data model"),
            ("Device.DeviceInfo.NewInSomeVersion", "not in the gateway's data model"),
            ("Acme.Root.Value", "outside the TR-181 and TR-098 roots"),
            # Read-only in one CPE's dump, read-write in TR-181: only the standard refuses.
            ("Device.DHCPv4.Client.1.Interface", "known from a CPE's report"),
            ("Device.IP.Interface.1.LowerLayers", "known from a CPE's report"),
        ):
            checked = self.model.check(name, "v")
            self.assertIn(why, checked.unchecked, name)
            self.assertEqual(checked.type, "xsd:string")

    def test_the_dumps_it_was_derived_from_pass(self) -> None:
        """Every writable parameter of the two real CPEs' dumps is accepted as they type it."""
        import csv

        for path in sorted(DATA.glob("*.csv")):
            with open(path, encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    name = row["Parameter"]
                    if row["Object"] == "true" or row["Writable"] != "true":
                        continue
                    if not name.startswith(("Device.", "InternetGatewayDevice.")):
                        continue
                    spec = self.model.parameter(name)
                    if spec is not None and row.get("Value type"):
                        self.assertTrue(spec.writable, name)

    def test_the_description_parses_and_names_what_it_is(self) -> None:
        text = (REPO / "cwmpgw" / "cwmp" / "datamodel.tsv").read_text()
        self.assertIn("DERIVED, not the Broadband Forum's XML", text)
        self.assertGreater(len(self.model), 500)
        small = DataModel.parse("Device.A.\tobject\tclosed\nDevice.A.B\tunsignedInt[1:9]\trw\n")
        self.assertEqual(small.check("Device.A.B", 5).value, "5")
        with self.assertRaises(DataModelError):
            small.check("Device.A.C", 5)


class SubmissionTests(SynchronousTestCase):
    def build(self, parameters: list[dict[str, object]]) -> dict[str, object]:
        task = build_task(
            "dev-1",
            "SetParameterValues",
            {"parameters": parameters},
            now=1.0,
            expires_in=None,
            default_expiry=60,
            gpv_batch=10,
        )
        return task.args

    def test_a_refusal_names_the_entry_and_the_reason(self) -> None:
        with self.assertRaises(DataModelRefusal) as caught:
            self.build(
                [
                    {"name": "Device.WiFi.SSID.1.SSID", "value": "ok"},
                    {"name": "Device.DeviceInfo.UpTime", "value": "1"},
                ]
            )
        self.assertEqual(caught.exception.path, "args.parameters[1]")
        self.assertEqual(str(caught.exception), "Device.DeviceInfo.UpTime: read-only")
        self.assertIsInstance(caught.exception, TaskError)

    def test_an_entry_without_a_type_gets_the_models(self) -> None:
        args = self.build(
            [
                {"name": "Device.ManagementServer.PeriodicInformInterval", "value": "60"},
                {"name": "Device.X_ACME_Level", "value": "3"},
            ]
        )
        self.assertEqual(
            args["parameters"],
            [
                {
                    "name": "Device.ManagementServer.PeriodicInformInterval",
                    "value": "60",
                    "type": "xsd:unsignedInt",
                },
                {"name": "Device.X_ACME_Level", "value": "3"},
            ],
        )


class ProfileParsingTests(SynchronousTestCase):
    def test_relative_names_are_checked_against_both_roots(self) -> None:
        profile = parse_profile(
            "p",
            {"parameters": [{"name": "ManagementServer.PeriodicInformInterval", "value": 60}]},
        )
        self.assertEqual(
            profile.parameters,
            (("ManagementServer.PeriodicInformInterval", "60", "xsd:unsignedInt"),),
        )
        self.assertEqual(
            profile.values_for("InternetGatewayDevice")[0]["name"],
            "InternetGatewayDevice.ManagementServer.PeriodicInformInterval",
        )
        absolute = parse_profile(
            "q", {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "x"}]}
        )
        self.assertEqual(absolute.values_for("InternetGatewayDevice"), [])
        self.assertEqual(len(absolute.values_for("Device")), 1)

    def test_refusals(self) -> None:
        cases = {
            "read-only": ({"parameters": [{"name": "DeviceInfo.UpTime", "value": 1}]}, True),
            "empty": ({"parameters": []}, False),
            "when": (
                {"when": "sometimes", "parameters": [{"name": "Time.NTPServer1", "value": "a"}]},
                False,
            ),
            "selector": (
                {
                    "selector": {"colour": "red"},
                    "parameters": [{"name": "Time.NTPServer1", "value": "a"}],
                },
                False,
            ),
            "twice": (
                {
                    "parameters": [
                        {"name": "Time.NTPServer1", "value": "a"},
                        {"name": "Time.NTPServer1", "value": "b"},
                    ]
                },
                False,
            ),
            "field": ({"parameters": [{"name": "Time.NTPServer1", "value": "a"}], "x": 1}, False),
        }
        for what, (body, data_model) in cases.items():
            with self.assertRaises(ProfileError, msg=what) as caught:
                parse_profile("p", body)
            self.assertEqual(caught.exception.data_model, data_model, what)
        with self.assertRaises(ProfileError):
            parse_profile("bad name", {"parameters": [{"name": "Time.NTPServer1", "value": "a"}]})
