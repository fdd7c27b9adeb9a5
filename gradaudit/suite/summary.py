"""A suite's records as a matrix (cases by backend and order) and in numbers: what every suite report shows.

Records may be :class:`~gradaudit.suite.records.SuiteRecord` or their dicts (read back from JSON, hand-written:
missing keys are tolerated, a record without a known status counts as an error)."""
from __future__ import annotations

from typing import Any, Iterable

from gradaudit.lines import first_line, flattened
from gradaudit.suite.records import STATUSES, SuiteRecord, as_record

STATUS_SYMBOL = {"pass": "pass", "fail": "FAIL", "skip": "skip", "error": "ERROR"}
Column = tuple[str, int]  # (backend, order)


def records_of(records: Iterable[SuiteRecord | dict]) -> list[SuiteRecord]:
    """Typed records, whatever was given."""
    return [as_record(r) for r in records]


def column_label(column: Column) -> str:
    """``eager o1``."""
    return f"{column[0]} o{column[1]}"


def unique(items: Iterable) -> list:
    """The items in the order they first appear, each once."""
    return list(dict.fromkeys(items))


def columns(records: list[SuiteRecord]) -> list[Column]:
    """Backends in the order they first appear, each with its orders ascending."""
    orders: dict[str, set[int]] = {}
    for r in records:
        orders.setdefault(r.backend, set()).add(r.order)
    return [(b, o) for b in orders for o in sorted(orders[b])]


def grid(records: list[SuiteRecord]) -> tuple[list[str], list[Column], dict[tuple[str, Column], SuiteRecord]]:
    """Cases (rows, first-seen order), columns, and {(case, column): record}; a later record of the same cell
    (a re-run) replaces an earlier one."""
    cells = {(r.case, (r.backend, r.order)): r for r in records}
    return unique(r.case for r in records), columns(records), cells


def summary_counts(records: Iterable[SuiteRecord | dict]) -> dict[str, Any]:
    """``{"total", "pass", "fail", "skip", "error", "cases", "seconds", "by_backend": {backend: {status: n}},
    "by_column": {"eager o1": {status: n}}, "ok"}``. ``ok`` is true when nothing failed or errored."""
    typed = records_of(records)
    counts: dict[str, Any] = {"total": len(typed), **{s: 0 for s in STATUSES}}
    by_backend: dict[str, dict[str, int]] = {}
    by_column: dict[str, dict[str, int]] = {}
    for r in typed:
        status = r.status.value
        counts[status] += 1
        by_backend.setdefault(r.backend, {s: 0 for s in STATUSES})[status] += 1
        by_column.setdefault(column_label((r.backend, r.order)), {s: 0 for s in STATUSES})[status] += 1
    counts["cases"] = len(unique(r.case for r in typed))
    counts["seconds"] = round(sum(r.seconds for r in typed), 3)
    counts["by_backend"] = by_backend
    counts["by_column"] = by_column
    counts["ok"] = counts["fail"] == 0 and counts["error"] == 0
    return counts


def counts_line(counts: dict) -> str:
    """``1 pass, 2 fail, 2 skip`` (statuses that occur)."""
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))


def caption(counts: dict) -> str:
    """``6 results over 2 cases: 1 pass, 2 fail, 2 skip, 1 error, 4.8s``."""
    return (f"{counts['total']} results over {counts['cases']} cases: {counts_line(counts) or 'nothing run'}, "
            f"{counts['seconds']:.1f}s")


def error_findings(report: dict | None) -> list[dict]:
    """The findings of a report's dict that fail it (severity error)."""
    return [f for f in (report or {}).get("findings") or [] if f.get("severity", "error") == "error"]


def failed_checks(report: dict | None) -> list[dict]:
    """The checks of a report's dict that failed."""
    return [c for c in (report or {}).get("checks") or [] if not c.get("ok", True)]


def short_reason(record: SuiteRecord | dict, limit: int = 48) -> str:
    """A few words on why a cell is not a pass: the record's reason, else the first error finding
    (``faulty_backward fc2.bias @ FnBackward``), else the first failing check."""
    record = as_record(record)
    if record.status == "pass":
        return ""
    reason = first_line(record.reason)
    if not reason and record.status == "fail":
        errors, failed = error_findings(record.report), failed_checks(record.report)
        if errors:
            f = errors[0]
            where = f.get("node") or f.get("module") or ""
            reason = " ".join(x for x in (f.get("kind"), f.get("wrt"), f"@ {where}" if where else "") if x)
        elif failed:
            c = failed[0]
            reason = f"order {c.get('order')} {c.get('method')} wrt {c.get('wrt')}"
    return flattened(reason, limit)


def worst_status(records: list[SuiteRecord]) -> str:
    """The status a case's row shows: error over fail over skip over pass."""
    return next((s for s in ("error", "fail", "skip", "pass") if any(r.status == s for r in records)), "pass")
