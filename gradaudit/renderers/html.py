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
from gradaudit.lines import first_line
from gradaudit.suite.records import SuiteRecord
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


MAX_PICTURE_BYTES = 8 << 20  # a localization picture is kilobytes; anything this large is not one


def picture(details: dict, roots: list[Path] | None) -> dict | None:
    """A localization picture as ``{"data": base64 SVG, "source"}``: the worker's ``graph_svg_text``, or the file
    ``graph_svg`` names when it is an SVG inside one of ``roots`` (the report's folder, the results directory);
    any other file is never read (a shared results directory must not leak ``/etc/shadow`` into a published
    page): ``{"missing": path, "why": ...}``. None where there is none. Shown through ``<img>``, an SVG runs no
    scripts."""
    svg, source = details.get("graph_svg_text"), "inline"
    if not svg and details.get("graph_svg"):
        source = str(details["graph_svg"])
        svg, why = _read_svg(source, roots or [])
        if svg is None:
            return {"missing": source, "why": why}
    if not svg:
        return None
    return {"data": base64.b64encode(str(svg).encode("utf-8")).decode("ascii"), "source": source}


def _read_svg(source: str, roots: list[Path]) -> tuple[str | None, str]:
    """(the SVG text, "") of a picture file inside one of ``roots``, or (None, why it was not read)."""
    relative = not Path(source).is_absolute()
    candidates = [root / source for root in roots] if relative else [Path(source)]
    for candidate in candidates:
        try:
            real = candidate.resolve(strict=True)  # symlinks followed: a link out of the folder is outside
        except (OSError, RuntimeError):
            continue
        if not any(real.is_relative_to(root) for root in roots):
            return None, "outside the report's and the results' folders: not read"
        if real.suffix.lower() != ".svg" or not real.is_file() or real.stat().st_size > MAX_PICTURE_BYTES:
            return None, "not an SVG file: not read"
        try:
            text = real.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None, "cannot be read"
        return (text, "") if "<svg" in text[:4096] else (None, "not an SVG file: not read")
    return None, "not found"


def _cell_view(record: SuiteRecord | None) -> dict[str, str] | None:
    """A cell of the summary matrix: status, and a short reason (the full first line as its tooltip)."""
    if record is None:
        return None
    reason = short_reason(record, limit=60)
    return {"status": record.status.value, "symbol": STATUS_SYMBOL[record.status.value], "reason": reason,
            "title": first_line(record.reason) or reason}


def _record_view(record: SuiteRecord, roots: list[Path]) -> dict[str, Any]:
    """What the template shows of one record."""
    report = record.report or {}
    reason = first_line(record.reason)
    findings = [{**f, "details": f.get("details") or {}, "picture": picture(f.get("details") or {}, roots)}
                for f in report.get("findings") or []]
    return {"status": record.status.value, "symbol": STATUS_SYMBOL[record.status.value], "backend": record.backend,
            "order": record.order, "seconds": f"{record.seconds:.2f}", "reason": reason,
            "full_reason": record.reason if record.status == "error" and str(record.reason or "").strip() != reason
            else None, "report": report or None, "findings": findings, "failed_checks": failed_checks(report),
            "skipped": report.get("skipped") or [], "open": record.status in ("fail", "error")}


def page_view(records: list[SuiteRecord], title: str, roots: list[Path]) -> dict[str, Any]:
    """Everything the template needs: the summary matrix, the totals and one section per case."""
    from gradaudit._version import __version__

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
                         "records": [_record_view(r, roots) for r in mine]})
    return {"title": title, "version": __version__, "created": now(), "caption": caption(counts),
            "columns": [column_label(c) for c in columns], "rows": rows, "sections": sections,
            "totals": [counts["by_column"].get(column_label(c), {}) for c in columns], "counts": counts}


def write_html(records: Iterable[SuiteRecord | dict], path: str | os.PathLike,
               title: str = "gradaudit suite report", results_dir: str | os.PathLike | None = None) -> Path:
    """One static, self-contained HTML page: the summary matrix (cases x backends x orders, cells linking to the
    cases), then one section per case with each backend's and order's findings (kind, message, node, op, module,
    source, worst index, analytical vs numerical, error bar), failing checks and localization pictures
    (``details["graph_svg_text"]``, or an SVG file ``details["graph_svg"]`` inside the report's folder or
    ``results_dir``, embedded inline; any other file is named, never read)."""
    path = Path(path)
    roots = [path.parent.resolve()] + ([Path(results_dir).resolve()] if results_dir is not None else [])
    page = _environment().get_template("suite.html.j2").render(page_view(records_of(records), title, roots))
    return write_text(path, page)
