"""Suite records as JUnit XML, for CI systems (Jenkins, GitLab and the like)."""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable

from gradaudit.renderers import now, write_text
from gradaudit.renderers.text import WHERE_FIELDS, check_line
from gradaudit.report import Check, Report
from gradaudit.lines import first_line, flattened
from gradaudit.suite.records import SuiteRecord
from gradaudit.suite.summary import error_findings, failed_checks, records_of, summary_counts, unique

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: Any) -> str:
    return _XML_INVALID.sub("?", str(text if text is not None else ""))


def failure_message(record: SuiteRecord) -> tuple[str, str, str]:
    """(message, type, body) of a failed record: the first error finding's message and where it is; the body is
    the report's text."""
    errors = error_findings(record.report)
    if errors:
        f = errors[0]
        where = ", ".join(f"{k} {f[k]}" for k in WHERE_FIELDS if f.get(k))
        message = flattened(f.get("message")) + (f" (at {where})" if where else "")
        kind = str(f.get("kind") or "gradient")
    else:
        failed = failed_checks(record.report)
        message = first_line(record.reason) or (check_line(Check.from_dict(failed[0])) if failed else "audit failed")
        kind = "gradient"
    body = Report.from_dict(record.report).text() if record.report else str(record.reason or "")
    return message, kind, body


def _counts(counts: dict) -> dict[str, str]:
    return {"tests": str(counts["total"]), "failures": str(counts["fail"]), "errors": str(counts["error"]),
            "skipped": str(counts["skip"]), "time": f"{counts['seconds']:.3f}"}


def _testcase(suite: ET.Element, record: SuiteRecord) -> None:
    case = ET.SubElement(suite, "testcase", {"classname": _xml(f"gradaudit.{record.backend}"),
                                             "name": _xml(f"{record.case}[order {record.order}]"),
                                             "time": f"{record.seconds:.3f}"})
    if record.status == "fail":
        message, kind, body = failure_message(record)
        ET.SubElement(case, "failure", {"message": _xml(message), "type": _xml(kind)}).text = _xml(body)
    elif record.status == "error":
        reason = first_line(record.reason) or "the audit could not run"
        ET.SubElement(case, "error", {"message": _xml(reason), "type": "error"}).text = _xml(record.reason or reason)
    elif record.status == "skip":
        ET.SubElement(case, "skipped", {"message": _xml(first_line(record.reason) or "skipped")})
    if record.report and record.status != "fail":
        ET.SubElement(case, "system-out").text = _xml(Report.from_dict(record.report).text())


def write_junit(records: Iterable[SuiteRecord | dict], path: str | os.PathLike, name: str = "gradaudit") -> Path:
    """JUnit XML: ``<testsuites>`` with one ``<testsuite name="gradaudit.<backend>">`` per backend and one
    ``<testcase classname="gradaudit.<backend>" name="<case>[order N]" time=...>`` per record, holding
    ``<failure>`` (the first error finding's message and node/module/source; the report's text as body),
    ``<error>`` or ``<skipped>``."""
    typed = records_of(records)
    root = ET.Element("testsuites", {"name": name, **_counts(summary_counts(typed))})
    timestamp = now()
    for backend in unique(r.backend for r in typed):
        mine = [r for r in typed if r.backend == backend]
        suite = ET.SubElement(root, "testsuite", {"name": f"gradaudit.{backend}", **_counts(summary_counts(mine)),
                                                  "timestamp": timestamp})
        for record in mine:
            _testcase(suite, record)
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return write_text(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")
