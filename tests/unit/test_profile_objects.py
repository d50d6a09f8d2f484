"""Objects to exist in a profile: parsing and the data-model check, the RPCs of
:class:`ProfileRun`, and the simulator's AddObject on a table its dump has no instance of."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp.datamodel import DataModelError, standard_model
from cwmpgw.fleet.profiles import ProfileError, ProfileRun, parse_profile
from cwmpgw.sim.datamodel import DeviceModel, load_csv
from tests.support.paths import DATA

TABLE = "Device.NAT.PortMapping."
MAPPING = {
    "path": "NAT.PortMapping.",
    "match": {"ExternalPort": 8080, "Protocol": "TCP"},
    "values": {"InternalPort": 80, "Enable": True},
}


def _run(profile_body: dict[str, Any]) -> ProfileRun:
    profile = parse_profile("p", profile_body)
    return ProfileRun(profile.values_for("Device"), profile.objects_for("Device"), "key-1")


def _row(n: int, name: str, value: str) -> dict[str, str]:
    return {"name": f"{TABLE}{n}.{name}", "value": value, "type": "xsd:string"}


class ParsingTests(SynchronousTestCase):
    def test_an_object_is_typed_by_the_model(self) -> None:
        profile = parse_profile("p", {"objects": [MAPPING]})
        self.assertEqual(profile.parameters, ())
        (obj,) = profile.objects
        self.assertEqual(
            obj.match,
            (("ExternalPort", "8080", "xsd:unsignedInt"), ("Protocol", "TCP", "xsd:string")),
        )
        self.assertEqual(
            obj.values,
            (("InternalPort", "80", "xsd:unsignedInt"), ("Enable", "true", "xsd:boolean")),
        )
        self.assertEqual(profile.objects_for("Device")[0][0], TABLE)
        self.assertEqual(
            profile.objects_for("InternetGatewayDevice")[0][0],
            "InternetGatewayDevice.NAT.PortMapping.",
        )
        absolute = parse_profile("q", {"objects": [{**MAPPING, "path": TABLE}]})
        self.assertEqual(absolute.objects_for("InternetGatewayDevice"), [])
        self.assertEqual(profile.to_dict()["objects"][0]["path"], "NAT.PortMapping.")

    def test_refusals(self) -> None:
        cases = {
            "not a table": ({**MAPPING, "path": "Device.NAT."}, True),
            "an instance": ({**MAPPING, "path": "Device.WiFi.SSID.1."}, True),
            "unknown child": ({**MAPPING, "path": "Device.NAT.PortMaping."}, False),
            "no dot": ({**MAPPING, "path": "Device.NAT.PortMapping"}, False),
            "read-only": ({**MAPPING, "values": {"Status": "Enabled"}}, True),
            "closed": ({**MAPPING, "values": {"Colour": "red"}}, True),
            "range": ({**MAPPING, "match": {"ExternalPort": 70000}}, True),
            "no match": ({**MAPPING, "match": {}}, False),
            "both": ({**MAPPING, "values": {"Protocol": "UDP"}}, False),
            "absolute name": ({**MAPPING, "values": {"Device.NAT.X": "1"}}, False),
            "field": ({**MAPPING, "colour": "red"}, False),
        }
        for what, (obj, data_model) in cases.items():
            with self.assertRaises(ProfileError, msg=what) as caught:
                parse_profile("p", {"objects": [obj]})
            self.assertEqual(caught.exception.data_model, data_model, what)
            self.assertTrue(caught.exception.path.startswith("objects[0]"), what)
        with self.assertRaises(ProfileError):
            parse_profile("p", {"parameters": [], "objects": []})
        # A vendor table passes unchecked.
        parse_profile("p", {"objects": [{"path": "Device.X_ACME_Rules.", "match": {"Id": "1"}}]})

    def test_the_model_knows_tables(self) -> None:
        model = standard_model()
        self.assertEqual(model.table(TABLE), TABLE)
        self.assertIsNone(model.table("Device.X_ACME_Rules."))
        with self.assertRaises(DataModelError):
            model.table("Device.ManagementServer.")


class RunTests(SynchronousTestCase):
    def test_no_instance_adds_one_and_sets_match_and_values(self) -> None:
        run = _run(
            {"parameters": [{"name": "Time.NTPServer1", "value": "ntp"}], "objects": [MAPPING]}
        )
        self.assertEqual(run.next_call()[0], "SetParameterValues")  # type: ignore[index]
        run.on_result({"status": 0})
        self.assertEqual(run.next_call(), ("GetParameterValues", {"parameter_names": [TABLE]}))
        # Another mapping (same port, UDP) does not match.
        run.on_result({"parameters": [_row(1, "ExternalPort", "8080"), _row(1, "Protocol", "UDP")]})
        self.assertEqual(
            run.next_call(), ("AddObject", {"object_name": TABLE, "parameter_key": "key-1"})
        )
        run.on_result({"instance_number": 2, "status": 0})
        method, args = run.next_call()  # type: ignore[misc]
        self.assertEqual(method, "SetParameterValues")
        self.assertEqual(
            [(p["name"], p["value"]) for p in args["parameters"]],
            [
                (f"{TABLE}2.ExternalPort", "8080"),
                (f"{TABLE}2.Protocol", "TCP"),
                (f"{TABLE}2.InternalPort", "80"),
                (f"{TABLE}2.Enable", "true"),
            ],
        )
        self.assertFalse(run.done)
        run.on_result({"status": 1})
        self.assertTrue(run.done)
        self.assertIsNone(run.next_call())
        self.assertEqual(run.status, 1)
        self.assertEqual(run.objects, [{"path": TABLE, "instance": 2, "created": True}])
        self.assertEqual(len(run.set), 5)

    def test_a_matching_instance_gets_only_the_values_that_differ(self) -> None:
        run = _run({"objects": [MAPPING]})
        self.assertEqual(run.next_call()[0], "GetParameterValues")  # type: ignore[index]
        run.on_result(
            {
                "parameters": [
                    _row(3, "ExternalPort", "8080"),
                    _row(3, "Protocol", "TCP"),
                    _row(3, "InternalPort", "81"),
                    _row(3, "Enable", "1"),  # true, as a CPE may say it
                ]
            }
        )
        self.assertEqual(
            run.next_call(),
            (
                "SetParameterValues",
                {
                    "parameters": [
                        {"name": f"{TABLE}3.InternalPort", "value": "80", "type": "xsd:unsignedInt"}
                    ],
                    "parameter_key": "key-1",
                },
            ),
        )
        run.on_result({"status": 0})
        self.assertTrue(run.done)
        self.assertEqual(run.objects, [{"path": TABLE, "instance": 3, "created": False}])

    def test_a_matching_instance_as_wanted_needs_nothing_more(self) -> None:
        run = _run({"objects": [MAPPING]})
        run.on_result(
            {
                "parameters": [
                    _row(3, "ExternalPort", "8080"),
                    _row(3, "Protocol", "TCP"),
                    _row(3, "InternalPort", "80"),
                    _row(3, "Enable", "true"),
                ]
            }
        )
        self.assertTrue(run.done)
        self.assertEqual(run.set, [])


class SimulatorTests(SynchronousTestCase):
    def test_add_object_on_a_standard_table_the_dump_does_not_show(self) -> None:
        model = DeviceModel(load_csv(str(DATA / "device-9CA2F4-EC220_G5_V3-22275K2000315.csv")))
        self.assertTrue(model.is_object(TABLE))
        self.assertEqual(model.leaves(TABLE), [])  # an empty table: GetParameterValues is []
        self.assertFalse(model.is_object("Device.NoSuchTable."))
        self.assertEqual((model.add_object(TABLE), model.add_object(TABLE)), (1, 2))
        param = model.param(f"{TABLE}2.ExternalPort")
        assert param is not None
        self.assertEqual((param.value, param.type, param.writable), ("0", "xsd:unsignedInt", True))
        model.reset(None)
        self.assertEqual(model.leaves(TABLE), [])
