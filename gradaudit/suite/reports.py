"""Reports of audit suites: a summary matrix (rich or plain text), JSON, JUnit XML for CI systems, and a static
HTML page. One place to import them from; the writers live in :mod:`gradaudit.renderers`, the matrix and the
counts in :mod:`gradaudit.suite.summary`.

Every function takes records as :class:`~gradaudit.suite.records.SuiteRecord` or as their dicts::

    {"case": "nn.Linear", "backend": "eager", "order": 1, "status": "pass" | "fail" | "skip" | "error",
     "reason": "one line: why it was skipped, errored or failed", "report": Report.to_dict() or None,
     "seconds": 0.8}

Missing keys are tolerated (a record without ``status`` counts as an error).
"""
from __future__ import annotations

from gradaudit.renderers.html import write_html
from gradaudit.renderers.json import read_json, write_json
from gradaudit.renderers.junit import write_junit
from gradaudit.renderers.rich import suite_table as summary_table
from gradaudit.renderers.text import check_line as _check_line, finding_lines as _finding_lines, render_dict
from gradaudit.renderers.text import suite_table as summary_text
from gradaudit.report import Check, Finding
from gradaudit.suite.records import STATUSES
from gradaudit.suite.summary import short_reason, summary_counts


def report_text(report: dict, max_checks: int = 12) -> str:
    """The plain text of a ``Report.to_dict()`` (what ``str(report)`` prints)."""
    return render_dict(report, max_checks=max_checks)


def finding_lines(finding: dict) -> list[str]:
    """A finding's dict as readable lines (see :func:`gradaudit.renderers.text.finding_lines`)."""
    return _finding_lines(Finding.from_dict(finding))


def check_line(check: dict) -> str:
    """A check's dict in one sentence (see :func:`gradaudit.renderers.text.check_line`)."""
    return _check_line(Check.from_dict(check))


__all__ = ["STATUSES", "summary_counts", "summary_table", "summary_text", "write_json", "read_json", "write_junit",
           "write_html", "short_reason", "finding_lines", "check_line", "report_text"]
