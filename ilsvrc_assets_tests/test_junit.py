import xml.etree.ElementTree as ET

from ilsvrc_assets import fileio, junit
from ilsvrc_assets.junit import CheckOutcome

OUTCOMES = [
    CheckOutcome("synsets", "one_thousand_synsets", True, "1000 synsets"),
    CheckOutcome("dataset_manifest", "every_shard_present", False, "validation-00003-of-00004: missing"),
    CheckOutcome("dataset_manifest", "records_parse", False, error="step dataset_manifest failed: disk gone"),
]


def test_one_test_case_per_check_with_failures_and_errors_apart(tmp_path):
    path = tmp_path / "reports" / "checks.xml"
    junit.write_report(path, OUTCOMES, "audit_outputs", 12.5)
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    (suite,) = root
    assert suite.get("name") == "audit_outputs" and suite.get("time") == "12.500"
    cases = {(c.get("classname"), c.get("name")): c for c in suite}
    assert list(cases) == [(o.asset, o.check) for o in OUTCOMES]
    passed, failed, errored = cases.values()
    assert passed.find("failure") is None and passed.find("system-out").text == "1000 synsets"
    assert failed.find("failure").get("message") == "validation-00003-of-00004: missing"
    assert failed.find("error") is None and errored.find("failure") is None
    assert "disk gone" in errored.find("error").get("message")
    assert not [p for p in path.parent.iterdir() if fileio.is_temp_path(p)]


def test_a_description_with_control_characters_still_makes_valid_xml():
    outcome = CheckOutcome("validation_tree", "matches", False, "bad name 'a\x00b\x1b' <&>")
    root = ET.fromstring(junit.report([outcome], "audit_outputs", 0.0))
    message = root.find("testsuite/testcase/failure").get("message")
    assert message == "bad name 'a\ufffdb\ufffd' <&>"


def test_a_warning_is_reported_but_is_not_a_failure():
    outcome = CheckOutcome(
        "bounding_boxes", "boxes_are_valid", False, "no boxes in this source", warning=True
    )
    assert not outcome.failed
    root = ET.fromstring(junit.report([outcome], "audit_outputs", 1.0))
    assert root.get("failures") == "0" and root.get("errors") == "0"
    case = root.find("testsuite/testcase")
    assert case.find("failure") is None and case.find("system-out").text == "WARNING: no boxes in this source"
