"""Reports of audit suites: a summary matrix, JSON, JUnit XML for CI systems, and a static HTML page.

A suite produces *records*, one per (case, backend, order), each a dict::

    {"case": "nn.Linear", "backend": "eager", "order": 1, "status": "pass" | "fail" | "skip" | "error",
     "reason": "one line: why it was skipped, errored or failed", "report": Report.to_dict() or None,
     "seconds": 0.8}

Missing keys are tolerated (a record without ``status`` counts as an error). Nothing here imports torch.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable

STATUSES = ("pass", "fail", "skip", "error")
STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "magenta"}
STATUS_SYMBOL = {"pass": "pass", "fail": "FAIL", "skip": "skip", "error": "ERROR"}
FAULT_KINDS = ("faulty_backward", "faulty_double_backward", "faulty_forward_ad")

__all__ = ["STATUSES", "summary_counts", "summary_table", "write_json", "read_json", "write_junit",
           "write_html", "short_reason", "finding_lines", "check_line", "report_text"]


# ----------------------------------------------------------------------------------------------- records
def _status(record: dict) -> str:
    status = record.get("status")
    return status if status in STATUSES else "error"


def _order(record: dict) -> int:
    try:
        return int(record.get("order") or 1)
    except (TypeError, ValueError):
        return 1


def _column(record: dict) -> tuple[str, int]:
    return str(record.get("backend") or "?"), _order(record)


def _column_label(column: tuple[str, int]) -> str:
    return f"{column[0]} o{column[1]}"


def _unique(items: Iterable) -> list:
    seen: dict = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _columns(records: list[dict]) -> list[tuple[str, int]]:
    """Backends in the order they first appear, each with its orders ascending."""
    backends = _unique(_column(r)[0] for r in records)
    orders: dict[str, set[int]] = {}
    for r in records:
        backend, order = _column(r)
        orders.setdefault(backend, set()).add(order)
    return [(b, o) for b in backends for o in sorted(orders[b])]


def _grid(records: list[dict]) -> tuple[list[str], list[tuple[str, int]], dict]:
    """Cases (rows, first-seen order), columns, and {(case, column): record}; a later record of the same cell
    (a re-run) replaces an earlier one."""
    cases = _unique(str(r.get("case", "?")) for r in records)
    cells = {(str(r.get("case", "?")), _column(r)): r for r in records}
    return cases, _columns(records), cells


def _one_line(text: Any, limit: int | None = None) -> str:
    line = " ".join(str(text or "").split())
    if limit is not None and len(line) > limit:
        line = line[: max(limit - 1, 0)] + "…"
    return line


def _first_line(text: Any, limit: int | None = None) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return _one_line(lines[0] if lines else "", limit)


def _error_findings(report: dict | None) -> list[dict]:
    if not report:
        return []
    findings = report.get("findings") or []
    errors = [f for f in findings if f.get("severity", "error") == "error"]
    return errors


def _failed_checks(report: dict | None) -> list[dict]:
    if not report:
        return []
    return [c for c in report.get("checks") or [] if not c.get("ok", True)]


def short_reason(record: dict, limit: int = 48) -> str:
    """A few words on why a cell is not a pass: the record's reason, else the first error finding
    (``faulty_backward fc2.bias @ FnBackward``), else the first failing check."""
    status = _status(record)
    if status == "pass":
        return ""
    reason = _first_line(record.get("reason"))
    if not reason and status == "fail":
        errors = _error_findings(record.get("report"))
        if errors:
            f = errors[0]
            where = f.get("node") or f.get("module") or ""
            reason = " ".join(x for x in (f.get("kind"), f.get("wrt"), f"@ {where}" if where else "") if x)
        else:
            failed = _failed_checks(record.get("report"))
            if failed:
                c = failed[0]
                reason = f"order {c.get('order')} {c.get('method')} wrt {c.get('wrt')}"
    return _one_line(reason, limit)


def summary_counts(records: Iterable[dict]) -> dict:
    """``{"total", "pass", "fail", "skip", "error", "cases", "seconds", "by_backend": {backend: {status: n}},
    "by_column": {"eager o1": {status: n}}, "ok"}``. ``ok`` is true when nothing failed or errored."""
    records = list(records)
    counts: dict[str, Any] = {"total": len(records), **{s: 0 for s in STATUSES}}
    by_backend: dict[str, dict[str, int]] = {}
    by_column: dict[str, dict[str, int]] = {}
    seconds = 0.0
    for r in records:
        status = _status(r)
        counts[status] += 1
        backend, _ = _column(r)
        by_backend.setdefault(backend, {s: 0 for s in STATUSES})[status] += 1
        by_column.setdefault(_column_label(_column(r)), {s: 0 for s in STATUSES})[status] += 1
        try:
            value = float(r.get("seconds") or 0.0)
            seconds += value if math.isfinite(value) else 0.0
        except (TypeError, ValueError):
            pass
    counts["cases"] = len(_unique(str(r.get("case", "?")) for r in records))
    counts["seconds"] = round(seconds, 3)
    counts["by_backend"] = by_backend
    counts["by_column"] = by_column
    counts["ok"] = counts["fail"] == 0 and counts["error"] == 0
    return counts


def _counts_line(counts: dict) -> str:
    return ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))


# ----------------------------------------------------------------------------------------------- text
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def finding_lines(finding: dict) -> list[str]:
    """A finding as readable lines: what, with respect to which leaf, the worst element, analytical vs
    numerical (and the error bar), and where (node, op, module, source)."""
    details = finding.get("details") or {}
    head = f"[{finding.get('severity', 'error')}] {finding.get('kind', '?')}"
    facts = []
    if finding.get("order") is not None:
        facts.append(f"order {finding['order']}")
    if finding.get("wrt"):
        facts.append(f"wrt {finding['wrt']}")
    if details.get("method"):
        facts.append(str(details["method"]))
    if facts:
        head += " (" + ", ".join(facts) + ")"
    lines = [f"{head}: {_one_line(finding.get('message'))}"]
    numbers = []
    if details.get("worst_index") is not None:
        numbers.append(f"worst element {details['worst_index']}")
    if details.get("analytical") is not None or details.get("numerical") is not None:
        numbers.append(f"analytical {_fmt(details.get('analytical'))} vs numerical {_fmt(details.get('numerical'))}")
    if details.get("error_bar") is not None:
        numbers.append(f"error bar {_fmt(details['error_bar'])}")
    if finding.get("max_abs_err") is not None:
        numbers.append(f"|err| {_fmt(finding['max_abs_err'])}")
    if numbers:
        lines.append("    " + ", ".join(numbers))
    where = ", ".join(f"{k} {finding[k]}" for k in ("node", "op", "module", "source") if finding.get(k))
    if where:
        lines.append(f"    at {where}")
    also = [w for w in details.get("wrt_all") or [] if w != finding.get("wrt")]
    if also:
        lines.append(f"    also wrong wrt {', '.join(map(str, also))}")
    return lines


def check_line(check: dict) -> str:
    index = "" if check.get("worst_index") is None else f" at {check['worst_index']}"
    backend = f"[{check['backend']}] " if check.get("backend") else ""
    return (f"{backend}order {check.get('order')} {check.get('method')} wrt {check.get('wrt')}{index}: "
            f"{check.get('status', 'fail')}, analytical {_fmt(check.get('analytical'))} vs numerical "
            f"{_fmt(check.get('numerical'))} (|err| {_fmt(check.get('max_abs_err'))}, error bar "
            f"{_fmt(check.get('tolerance'))})")


def report_text(report: dict, max_checks: int = 12) -> str:
    """The readable text of a ``Report.to_dict()``: verdict, findings (errors first), failing checks."""
    checks = report.get("checks") or []
    failed = _failed_checks(report)
    verdict = "PASS" if report.get("ok") else "FAIL"
    orders = sorted({c.get("order") for c in checks if isinstance(c.get("order"), int) and c.get("order") > 0})
    lines = [f"gradaudit {verdict}: {report.get('target', '?')} on {report.get('backend', '?')}/"
             f"{report.get('device', '?')} ({report.get('dtype', '?')}), "
             f"order{'s' if len(orders) > 1 else ''} {', '.join(map(str, orders)) or '-'}, seed "
             f"{report.get('seed', '?')}: {len(failed)} of {len(checks)} checks failed"]
    findings = report.get("findings") or []
    for finding in sorted(findings, key=lambda f: f.get("severity", "error") != "error"):
        lines += ["  " + line for line in finding_lines(finding)]
    if failed:
        lines.append("  failed checks:")
        lines += ["    " + check_line(c) for c in failed[:max_checks]]
        if len(failed) > max_checks:
            lines.append(f"    ... and {len(failed) - max_checks} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- table
def summary_table(records: Iterable[dict], title: str | None = "gradaudit suite"):
    """A ``rich.table.Table``: one row per case, one column per backend and order (``eager o1``), each cell
    pass / FAIL / skip / ERROR (coloured) with a short reason, and a totals row."""
    from rich.table import Table
    from rich.text import Text

    records = list(records)
    cases, columns, cells = _grid(records)
    counts = summary_counts(records)
    table = Table(title=title, caption=f"{counts['total']} results over {counts['cases']} cases: "
                                       f"{_counts_line(counts) or 'nothing run'}, {counts['seconds']:.1f}s",
                  show_lines=False)
    table.add_column("case", no_wrap=True)
    for column in columns:
        table.add_column(_column_label(column), overflow="fold")
    for case in cases:
        row: list[Any] = [Text(case)]  # a plain str is read as rich markup: GELU[tanh] would show as GELU
        for column in columns:
            record = cells.get((case, column))
            if record is None:
                row.append(Text("-", style="dim"))
                continue
            status = _status(record)
            cell = Text(STATUS_SYMBOL[status], style=STATUS_STYLE[status])
            reason = short_reason(record)
            if reason:
                cell.append(f" {reason}", style="dim")
            row.append(cell)
        table.add_row(*row)
    totals: list[Any] = [Text("total", style="bold")]
    for column in columns:
        c = counts["by_column"].get(_column_label(column), {})
        cell = Text()
        for status in STATUSES:
            if c.get(status):
                if cell:
                    cell.append(" ")
                cell.append(f"{c[status]} {status}", style=STATUS_STYLE[status])
        totals.append(cell)
    table.add_section()
    table.add_row(*totals)
    return table


# ----------------------------------------------------------------------------------------------- JSON
def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_json(records: Iterable[dict], path: str | os.PathLike, **meta: Any) -> Path:
    """``{"gradaudit": version, "created": ISO time, **meta, "summary": summary_counts, "records": [...]}``;
    ``path`` ``-`` writes to stdout."""
    from gradaudit import __version__

    records = list(records)
    document = {"gradaudit": __version__, "created": _now(), **_jsonable(meta),
                "summary": summary_counts(records), "records": _jsonable(records)}
    text = json.dumps(document, indent=2)
    if str(path) == "-":
        print(text)
        return Path("-")
    return _write(path, text + "\n")


def read_json(path: str | os.PathLike) -> list[dict]:
    """The records of a file written by :func:`write_json` (or a bare list of records)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return document if isinstance(document, list) else list(document.get("records") or [])


def _now() -> str:
    return _dt.datetime.now().replace(microsecond=0).isoformat()


def _write(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- JUnit
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: Any) -> str:
    return _XML_INVALID.sub("?", str(text if text is not None else ""))


def _seconds(record: dict) -> float:
    try:
        value = float(record.get("seconds") or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


def _failure_message(record: dict) -> tuple[str, str, str]:
    """(message, type, body) of a failed record: the first error finding's message and where it is."""
    report = record.get("report")
    errors = _error_findings(report)
    if errors:
        f = errors[0]
        where = ", ".join(f"{k} {f[k]}" for k in ("node", "op", "module", "source") if f.get(k))
        message = _one_line(f.get("message")) + (f" (at {where})" if where else "")
        kind = str(f.get("kind") or "gradient")
    else:
        failed = _failed_checks(report)
        message = _first_line(record.get("reason")) or (check_line(failed[0]) if failed else "audit failed")
        kind = "gradient"
    body = report_text(report) if report else str(record.get("reason") or "")
    return message, kind, body


def write_junit(records: Iterable[dict], path: str | os.PathLike, name: str = "gradaudit") -> Path:
    """JUnit XML: ``<testsuites>`` with one ``<testsuite name="gradaudit.<backend>">`` per backend and one
    ``<testcase classname="gradaudit.<backend>" name="<case>[order N]" time=...>`` per record, holding
    ``<failure>`` (the first error finding's message and node/module/source; the full text as body),
    ``<error>`` or ``<skipped>``. Plain enough for Jenkins, GitLab and the like."""
    records = list(records)
    counts = summary_counts(records)
    root = ET.Element("testsuites", {"name": name, "tests": str(counts["total"]), "failures": str(counts["fail"]),
                                     "errors": str(counts["error"]), "skipped": str(counts["skip"]),
                                     "time": f"{counts['seconds']:.3f}"})
    timestamp = _now()
    for backend in _unique(_column(r)[0] for r in records):
        mine = [r for r in records if _column(r)[0] == backend]
        c = summary_counts(mine)
        suite = ET.SubElement(root, "testsuite", {
            "name": f"gradaudit.{backend}", "tests": str(c["total"]), "failures": str(c["fail"]),
            "errors": str(c["error"]), "skipped": str(c["skip"]), "time": f"{c['seconds']:.3f}",
            "timestamp": timestamp})
        for r in mine:
            status = _status(r)
            case = ET.SubElement(suite, "testcase", {
                "classname": _xml(f"gradaudit.{backend}"),
                "name": _xml(f"{r.get('case', '?')}[order {_order(r)}]"),
                "time": f"{_seconds(r):.3f}"})
            if status == "fail":
                message, kind, body = _failure_message(r)
                failure = ET.SubElement(case, "failure", {"message": _xml(message), "type": _xml(kind)})
                failure.text = _xml(body)
            elif status == "error":
                reason = _first_line(r.get("reason")) or "the audit could not run"
                error = ET.SubElement(case, "error", {"message": _xml(reason), "type": "error"})
                error.text = _xml(r.get("reason") or reason)
            elif status == "skip":
                ET.SubElement(case, "skipped", {"message": _xml(_first_line(r.get("reason")) or "skipped")})
            report = r.get("report")
            if report and status != "fail":
                out = ET.SubElement(case, "system-out")
                out.text = _xml(report_text(report))
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return _write(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n")


# ----------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}h3{font-size:1em;margin:.6em 0}
table{border-collapse:collapse;margin:.4em 0 1em 0;font-size:.9em}
th,td{border:1px solid #d0d0d5;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#e3f6e5;color:#135f1c}.fail{background:#fde2e1;color:#8e1410;font-weight:600}
.skip{background:#fdf5d8;color:#6b5400}.error{background:#f1e1f7;color:#66127f;font-weight:600}
.none{color:#999}.reason{font-weight:normal;font-size:.85em;opacity:.85}
a{color:inherit}code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
details{border:1px solid #e0e0e5;border-radius:4px;margin:.4em 0;padding:.3em .6em}
details>summary{cursor:pointer}.badge{display:inline-block;padding:0 .4em;border-radius:3px;margin-right:.4em}
.msg{white-space:pre-wrap}.graph{max-width:100%;overflow:auto;border:1px solid #eee;margin:.4em 0}
.graph img{max-width:100%}.meta{color:#555;font-size:.9em}pre{white-space:pre-wrap;margin:.3em 0}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _anchors(cases: list[str]) -> dict[str, str]:
    """A distinct, URL-safe id per case (``case-nn.Linear``; a suffix where two names slug alike)."""
    anchors: dict[str, str] = {}
    used: set[str] = set()
    for case in cases:
        slug = "case-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", case).strip("-") or "x")
        anchor, n = slug, 1
        while anchor in used:
            n += 1
            anchor = f"{slug}-{n}"
        used.add(anchor)
        anchors[case] = anchor
    return anchors


def _svg_picture(details: dict, base: Path | None) -> str:
    """A localization picture as an ``<img>`` with a base64 ``data:`` URI: inline (the page stays one
    self-contained file) and inert (an SVG shown through ``<img>`` runs no scripts)."""
    svg = details.get("graph_svg_text")
    source = "inline"
    if not svg and details.get("graph_svg"):
        source = str(details["graph_svg"])
        candidates = [Path(source)]
        if base is not None and not Path(source).is_absolute():
            candidates.append(base / source)
        for candidate in candidates:
            try:
                svg = candidate.read_text(encoding="utf-8")
                break
            except OSError:
                continue
        else:
            return f'<p class="meta">localization picture not found: <code>{_e(source)}</code></p>'
    if not svg:
        return ""
    data = base64.b64encode(str(svg).encode("utf-8")).decode("ascii")
    return (f'<div class="graph"><img alt="autograd graph, culprit highlighted ({_e(source)})" '
            f'src="data:image/svg+xml;base64,{data}"></div>')


def _findings_html(findings: list[dict], base: Path | None) -> str:
    if not findings:
        return ""
    rows = []
    pictures = []
    for f in findings:
        d = f.get("details") or {}
        severity = f.get("severity", "error")
        cls = "fail" if severity == "error" else "skip"
        worst = d.get("worst_index")
        analytical = "" if d.get("analytical") is None and d.get("numerical") is None else \
            f"{_fmt(d.get('analytical'))} vs {_fmt(d.get('numerical'))}"
        rows.append(
            f"<tr><td class=\"{cls}\">{_e(f.get('kind'))}<br><span class=\"reason\">{_e(severity)}</span></td>"
            f"<td>{_e(f.get('order') if f.get('order') is not None else '')}</td><td>{_e(f.get('wrt') or '')}</td>"
            f"<td class=\"msg\">{_e(f.get('message'))}</td><td class=\"mono\">{_e(f.get('node') or '')}</td>"
            f"<td class=\"mono\">{_e(f.get('op') or '')}</td><td class=\"mono\">{_e(f.get('module') or '')}</td>"
            f"<td class=\"mono\">{_e(f.get('source') or '')}</td>"
            f"<td class=\"mono\">{_e('' if worst is None else worst)}</td>"
            f"<td class=\"num\">{_e(analytical)}</td><td class=\"num\">{_e(_fmt(d.get('error_bar')) if d.get('error_bar') is not None else '')}</td></tr>")
        picture = _svg_picture(d, base)
        if picture:
            pictures.append(f"<p class=\"meta\">{_e(f.get('kind'))} at {_e(f.get('node') or '?')}:</p>{picture}")
    return ("<h3>Findings</h3><table><tr><th>kind</th><th>order</th><th>wrt</th><th>message</th><th>node</th>"
            "<th>op</th><th>module</th><th>source</th><th>worst index</th><th>analytical vs numerical</th>"
            "<th>error bar</th></tr>" + "".join(rows) + "</table>" + "".join(pictures))


def _checks_html(checks: list[dict]) -> str:
    if not checks:
        return ""
    rows = "".join(
        f"<tr><td>{_e(c.get('order'))}</td><td>{_e(c.get('wrt'))}</td><td>{_e(c.get('method'))}</td>"
        f"<td class=\"{'skip' if c.get('status') == 'nondifferentiable_point' else 'fail'}\">{_e(c.get('status', 'fail'))}</td>"
        f"<td class=\"num\">{_e(_fmt(c.get('max_abs_err')))}</td><td class=\"num\">{_e(_fmt(c.get('tolerance')))}</td>"
        f"<td class=\"mono\">{_e('' if c.get('worst_index') is None else c.get('worst_index'))}</td>"
        f"<td class=\"num\">{_e(_fmt(c.get('analytical')))}</td><td class=\"num\">{_e(_fmt(c.get('numerical')))}</td></tr>"
        for c in checks)
    return ("<h3>Failing checks</h3><table><tr><th>order</th><th>wrt</th><th>method</th><th>status</th>"
            "<th>|err|</th><th>error bar</th><th>worst index</th><th>analytical</th><th>numerical</th></tr>"
            + rows + "</table>")


def _record_html(record: dict, base: Path | None) -> str:
    status = _status(record)
    report = record.get("report") or None
    head = (f"<span class=\"badge {status}\">{_e(STATUS_SYMBOL[status])}</span>"
            f"<b>{_e(record.get('backend', '?'))}</b> order {_e(_order(record))}"
            f" <span class=\"meta\">{_seconds(record):.2f}s</span>")
    reason = _first_line(record.get("reason"))
    if reason:
        head += f" <span class=\"reason\">{_e(reason)}</span>"
    body = []
    if reason and status == "error" and str(record.get("reason", "")).strip() != reason:
        body.append(f"<pre>{_e(record.get('reason'))}</pre>")
    if report:
        stats = report.get("stats") or {}
        body.append(f"<p class=\"meta\">{_e(report.get('target'))} on {_e(report.get('backend'))}/"
                    f"{_e(report.get('device'))} ({_e(report.get('dtype'))}), seed {_e(report.get('seed'))}; "
                    f"{len(report.get('checks') or [])} checks; {_e(stats.get('forward_evals', 0))} forward / "
                    f"{_e(stats.get('backward_evals', 0))} backward evaluations</p>")
        body.append(_findings_html(report.get("findings") or [], base))
        body.append(_checks_html(_failed_checks(report)))
        skipped = report.get("skipped") or []
        if skipped:
            body.append("<h3>Not checked</h3><ul>" + "".join(
                f"<li>{_e(s.get('what'))}: {_e(s.get('reason'))}</li>" for s in skipped) + "</ul>")
    opened = " open" if status in ("fail", "error") else ""
    return f"<details{opened}><summary>{head}</summary>{''.join(body)}</details>"


def write_html(records: Iterable[dict], path: str | os.PathLike, title: str = "gradaudit suite report") -> Path:
    """One static, self-contained HTML page (inline CSS, no scripts): the summary matrix (cases x backends x
    orders, cells linking to the cases), then one section per case with each backend's and order's findings
    (kind, message, node, op, module, source, worst index, analytical vs numerical), failing checks and
    localization pictures (``details["graph_svg"]`` path or ``details["graph_svg_text"]``, embedded inline).
    Every piece of text is HTML-escaped."""
    from gradaudit import __version__

    records = list(records)
    path = Path(path)
    base = path.parent.resolve() if str(path) else None
    cases, columns, cells = _grid(records)
    counts = summary_counts(records)
    anchors = _anchors(cases)
    header = "".join(f"<th>{_e(_column_label(c))}</th>" for c in columns)
    rows = []
    for case in cases:
        tds = [f"<th><a href=\"#{_e(anchors[case])}\">{_e(case)}</a></th>"]
        for column in columns:
            r = cells.get((case, column))
            if r is None:
                tds.append("<td class=\"none\">-</td>")
                continue
            status = _status(r)
            reason = short_reason(r, limit=60)
            title_attr = _first_line(r.get("reason")) or reason
            tds.append(f"<td class=\"{status}\" title=\"{_e(title_attr)}\"><a href=\"#{_e(anchors[case])}\">"
                       f"{_e(STATUS_SYMBOL[status])}</a>"
                       + (f"<br><span class=\"reason\">{_e(reason)}</span>" if reason else "") + "</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    totals = ["<th>total</th>"]
    for column in columns:
        c = counts["by_column"].get(_column_label(column), {})
        totals.append("<td>" + " ".join(f"<span class=\"badge {s}\">{c[s]} {s}</span>" for s in STATUSES
                                        if c.get(s)) + "</td>")
    rows.append("<tr>" + "".join(totals) + "</tr>")
    sections = []
    for case in cases:
        mine = [cells[(case, column)] for column in columns if (case, column) in cells]
        worst = next((s for s in ("error", "fail", "skip", "pass") if any(_status(r) == s for r in mine)), "pass")
        sections.append(f"<section id=\"{_e(anchors[case])}\"><h2><span class=\"badge {worst}\">"
                        f"{_e(STATUS_SYMBOL[worst])}</span>{_e(case)}</h2>"
                        + "".join(_record_html(r, base) for r in mine) + "</section>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><h1>{_e(title)}</h1>
<p class="meta">gradaudit {_e(__version__)}, {_e(_now())}: {counts['total']} results over {counts['cases']} cases —
{_e(_counts_line(counts) or 'nothing run')}, {counts['seconds']:.1f}s of audits.</p>
<h2>Summary</h2>
<table class="summary"><tr><th>case</th>{header}</tr>
{chr(10).join(rows)}
</table>
<h2>Cases</h2>
{chr(10).join(sections)}
</body></html>
"""
    return _write(path, page)
