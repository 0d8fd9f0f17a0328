"""The dataset's checks as a JUnit XML report, the test-result format every CI system shows.

One ``<testcase>`` per check evaluation: ``classname`` is the asset, ``name`` the check; a check
that did not pass carries a ``<failure>`` with the check's description, and a check that could
not be evaluated at all (its step raised) an ``<error>``. Plain library, standard library only;
``ilsvrc-assets check --junit-xml PATH`` writes it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ilsvrc_assets import fileio

# Characters XML 1.0 cannot hold at all (control characters other than tab and newlines):
# a description quoting a corrupt file's bytes must not make the report unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass(frozen=True)
class CheckOutcome:
    """How one check came out: passed, failed (with why), or not evaluated (``error`` says why)."""

    asset: str  # the asset key as the UI shows it, e.g. "dataset_manifest"
    check: str  # the check's name, e.g. "every_shard_present"
    passed: bool
    description: str = ""
    error: str | None = None  # set when the check could not run: neither passed nor failed
    # Did not pass with severity WARN: shown, but not a failure (e.g. "no boxes in this source").
    warning: bool = False

    @property
    def failed(self) -> bool:
        return not self.passed and self.error is None and not self.warning


def _text(value: str) -> str:
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", value)


def report(outcomes: Sequence[CheckOutcome], suite: str, seconds: float) -> bytes:
    """The JUnit XML document (UTF-8) for ``outcomes``, in one test suite named ``suite``."""
    counts = {
        "tests": str(len(outcomes)),
        "failures": str(sum(o.failed for o in outcomes)),
        "errors": str(sum(o.error is not None for o in outcomes)),
        "skipped": "0",
        "time": f"{seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": "ilsvrc-assets check", **counts})
    suite_element = ET.SubElement(root, "testsuite", {"name": suite, **counts})
    for outcome in outcomes:
        case = ET.SubElement(suite_element, "testcase", {"classname": outcome.asset, "name": outcome.check})
        if outcome.error is not None:
            ET.SubElement(case, "error", {"message": _text(outcome.error)}).text = _text(outcome.error)
        elif outcome.warning:
            ET.SubElement(case, "system-out").text = _text(f"WARNING: {outcome.description}")
        elif not outcome.passed:
            description = outcome.description or "the check did not pass"
            ET.SubElement(case, "failure", {"message": _text(description)}).text = _text(description)
        elif outcome.description:
            ET.SubElement(case, "system-out").text = _text(outcome.description)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_report(path: Path, outcomes: Sequence[CheckOutcome], suite: str, seconds: float) -> None:
    """Write :func:`report` to ``path`` atomically: a CI job never reads half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_bytes(path, report(outcomes, suite, seconds))
