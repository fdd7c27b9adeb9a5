"""Suite records as one static, self-contained HTML page, from the jinja2 template ``templates/suite.html.j2``
(autoescaped: every piece of text from a record is escaped; no scripts, pictures inline as ``data:`` URIs)."""
from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any, Iterable

from gradaudit.renderers import now, write_text
from gradaudit.renderers.text import fmt_precise
from gradaudit.suite.records import SuiteRecord, first_line
from gradaudit.suite.summary import (STATUS_SYMBOL, caption, column_label, failed_checks, grid, records_of,
                                     short_reason, summary_counts, worst_status)

TEMPLATES = Path(__file__).parent / "templates"


def _environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["num"] = fmt_precise  # 6 significant digits, "-" for None
    return environment


def anchors(cases: list[str]) -> dict[str, str]:
    """A distinct, URL-safe id per case (``case-nn.Linear``; a suffix where two names slug alike)."""
    found: dict[str, str] = {}
    used: set[str] = set()
    for case in cases:
        slug = "case-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", case).strip("-") or "x")
        anchor, n = slug, 1
        while anchor in used:
            n += 1
            anchor = f"{slug}-{n}"
        used.add(anchor)
        found[case] = anchor
    return found


def picture(details: dict, base: Path | None) -> dict | None:
    """A localization picture (``graph_svg_text``, or the file ``graph_svg``) as ``{"data": base64 SVG,
    "source"}``; ``{"missing": path}`` where the file cannot be read; None where there is none. Shown through
    ``<img>``, an SVG runs no scripts."""
    svg, source = details.get("graph_svg_text"), "inline"
    if not svg and details.get("graph_svg"):
        source = str(details["graph_svg"])
        candidates = [Path(source)] + ([base / source] if base is not None and not Path(source).is_absolute() else [])
        for candidate in candidates:
            try:
                svg = candidate.read_text(encoding="utf-8")
                break
            except OSError:
                continue
        else:
            return {"missing": source}
    if not svg:
        return None
    return {"data": base64.b64encode(str(svg).encode("utf-8")).decode("ascii"), "source": source}


def _cell_view(record: SuiteRecord | None) -> dict[str, str] | None:
    """A cell of the summary matrix: status, and a short reason (the full first line as its tooltip)."""
    if record is None:
        return None
    reason = short_reason(record, limit=60)
    return {"status": record.status.value, "symbol": STATUS_SYMBOL[record.status.value], "reason": reason,
            "title": first_line(record.reason) or reason}


def _record_view(record: SuiteRecord, base: Path | None) -> dict[str, Any]:
    """What the template shows of one record."""
    report = record.report or {}
    reason = first_line(record.reason)
    findings = [{**f, "details": f.get("details") or {}, "picture": picture(f.get("details") or {}, base)}
                for f in report.get("findings") or []]
    return {"status": record.status.value, "symbol": STATUS_SYMBOL[record.status.value], "backend": record.backend,
            "order": record.order, "seconds": f"{record.seconds:.2f}", "reason": reason,
            "full_reason": record.reason if record.status == "error" and str(record.reason or "").strip() != reason
            else None, "report": report or None, "findings": findings, "failed_checks": failed_checks(report),
            "skipped": report.get("skipped") or [], "open": record.status in ("fail", "error")}


def page_view(records: list[SuiteRecord], title: str, base: Path | None) -> dict[str, Any]:
    """Everything the template needs: the summary matrix, the totals and one section per case."""
    from gradaudit import __version__

    cases, columns, cells = grid(records)
    counts = summary_counts(records)
    ids = anchors(cases)
    rows = [{"case": case, "anchor": ids[case], "cells": [_cell_view(cells.get((case, c))) for c in columns]}
            for case in cases]
    sections = []
    for case in cases:
        mine = [cells[(case, c)] for c in columns if (case, c) in cells]
        worst = worst_status(mine)
        sections.append({"case": case, "anchor": ids[case], "status": worst, "symbol": STATUS_SYMBOL[worst],
                         "records": [_record_view(r, base) for r in mine]})
    return {"title": title, "version": __version__, "created": now(), "caption": caption(counts),
            "columns": [column_label(c) for c in columns], "rows": rows, "sections": sections,
            "totals": [counts["by_column"].get(column_label(c), {}) for c in columns], "counts": counts}


def write_html(records: Iterable[SuiteRecord | dict], path: str | os.PathLike,
               title: str = "gradaudit suite report") -> Path:
    """One static, self-contained HTML page: the summary matrix (cases x backends x orders, cells linking to the
    cases), then one section per case with each backend's and order's findings (kind, message, node, op, module,
    source, worst index, analytical vs numerical, error bar), failing checks and localization pictures
    (``details["graph_svg"]`` path or ``details["graph_svg_text"]``, embedded inline)."""
    path = Path(path)
    base = path.parent.resolve() if str(path) else None
    page = _environment().get_template("suite.html.j2").render(page_view(records_of(records), title, base))
    return write_text(path, page)
