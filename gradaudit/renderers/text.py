"""The plain-text report: ``str(report)``, the CLI when its output is not a terminal, suite records and pytest
failure messages. Nothing is ever truncated: a number or a name is printed whole, however long the line."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable

from gradaudit.outcome import orders_not_run

if TYPE_CHECKING:  # (the report's classes are only read here: report.py renders through this module)
    from gradaudit.report import Check, Finding, Report

WHERE_FIELDS = ("node", "op", "module", "source")


def fmt(value: Any) -> str:
    """A number in 4 significant digits (``3.185e-10``), ``-`` for None; anything else as its text."""
    if value is None:
        return "-"
    if str(value) in NONFINITE:  # (a JSON report carries them as the strings 'nan', 'inf', '-inf')
        return NONFINITE[str(value)]
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


NONFINITE = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def fmt_precise(value: Any) -> str:
    """A number in 6 significant digits, for the analytical and numerical values of a finding."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return fmt(value)


def where(finding: Finding) -> str:
    """``node BadGeluBackward, op BadGelu, module act, source bad_gelu.py:35`` (the fields that are known)."""
    return ", ".join(f"{name} {getattr(finding, name)}" for name in WHERE_FIELDS if getattr(finding, name))


def verdict_word(report: Report) -> str:
    """PASS or FAIL; ``NOT CHECKED`` for a static-only audit that found nothing to fail on (no gradient was
    checked: a PASS would read as "the gradients are right")."""
    if not report.ok:
        return "FAIL"
    return "NOT CHECKED" if report.settings.get("static_only") else "PASS"


def static_only_line(report: Report) -> str:
    """The verdict line of ``--static-only``: the hazards found, and that no gradient was checked."""
    hazards = sum(1 for f in report.findings if f.kind == "hazard")
    found = f"{hazards} hazard{'s' if hazards != 1 else ''} found" if hazards else "no hazards found"
    return (f"gradaudit {verdict_word(report)}: {report.target} on {report.backend}/{report.device} "
            f"({report.dtype}), static analysis only: {found}; no gradient was checked")


def verdict_line(report: Report) -> str:
    """One line: the verdict, what was audited where, and how many checks failed (or which orders did not run)."""
    if report.settings.get("static_only"):
        return static_only_line(report)
    checks = report.checks
    failed = len(report.failed_checks)
    orders = sorted({c.order for c in checks if isinstance(c.order, int) and c.order > 0})
    counted = f"{failed} of {len(checks)} checks failed" if failed else f"{len(checks)} checks passed"
    not_run = "".join(f"; order {order} not checked ({why})" for order, why in orders_not_run(report))
    verdict = "PASS" + coarse_resolution(report) if report.ok else "FAIL"
    return (f"gradaudit {verdict}: {report.target} {audited_where(report)}, "
            f"order{'s' if len(orders) > 1 else ''} {', '.join(map(str, orders)) or '-'}, "
            f"seed {report.seed}: {counted}{not_run}")


def audited_where(report: Report) -> str:
    """``on eager/cpu (float64)``; for ``compare``: ``on xla, onnx against eager/cpu/float64 (dtype as given)``."""
    reference = (report.settings or {}).get("reference")
    if not reference:
        return f"on {report.backend}/{report.device} ({report.dtype})"
    dtype = "dtype as given" if report.dtype == "as given" else f"cast to {report.dtype}"
    return f"on {report.backend.replace(',', ', ')} against {reference} ({dtype})"


# The relative resolution a check in each dtype is expected to reach: 1e-6 in float64 (the checker's target for
# every leaf); in the lower precisions, 128 rounding units (the parity bound at the gradients' largest element).
EXPECTED_RESOLUTION = {"float64": 1e-6, "complex128": 1e-6, "float32": 128 * 2.0 ** -23,
                       "complex64": 128 * 2.0 ** -23, "float16": 128 * 2.0 ** -10, "bfloat16": 128 * 2.0 ** -7}


def coarse_resolution(report: Report) -> str:
    """`` (resolution 3e-04 on 12 tensors: float32 section at input_layernorm)`` when passing checks resolve
    less finely than the audited dtype allows; "" otherwise."""
    coarse = [c for c in report.checks if c.ok and c.resolution is not None and c.wrt != "total"
              and c.resolution > EXPECTED_RESOLUTION.get(c.dtype or report.dtype, 1e-6)]
    if not coarse:
        return ""
    worst = max(coarse, key=lambda c: c.resolution)
    tensors = len({(c.backend, c.wrt) for c in coarse})
    why = "; ".join(precision_words(note) for note in report.precision[:2]) or unresolved_words(worst)
    more = f" and {len(report.precision) - 2} more" if len(report.precision) > 2 else ""
    return (f" (resolution {worst.resolution:.1g} on {tensors} tensor{'s' if tensors > 1 else ''}"
            f"{': ' + why + more if why else ''})")


def unresolved_words(check) -> str:
    """Why a check with no precision note resolves coarsely, in a few words: a gradient that its error bar cannot
    tell from 0 (a conv bias before train-mode BatchNorm: exactly 0, computed as ~1e-15) is named as that, with the
    bar it was held to, rather than left as a relative resolution above 1; a small one is named."""
    if check.resolution >= 1 and check.tolerance is not None:
        return f"{check.wrt}'s gradient is 0 to within its error bar, {check.tolerance:.1g}"
    return f"coarsest at {check.wrt}"


def precision_words(note: dict) -> str:
    """``float32 section at input_layernorm`` / ``float32 loss``: a precision note in a few words."""
    if note.get("what") == "output":
        return f"{note.get('dtype')} {note.get('output') or 'output'}"
    if note.get("what") == "shadow":  # (the reference a low-precision program is judged against)
        return f"{note.get('dtype')} shadow (the case refused float64)"
    at = note.get("at") or note.get("source") or note.get("op")  # ('' is the top module: its line says more)
    return f"{note.get('dtype')} section" + (f" at {at}" if at else "")


def precision_lines(report: Report) -> list[str]:
    """One line per place where the computation runs below the audited precision."""
    lines = []
    for note in report.precision:
        facts = [f"{k} {note[k]}" for k in ("op", "source") if note.get(k)]
        lines.append(f"precision: {precision_words(note)}" + (f" ({', '.join(facts)})" if facts else ""))
    return lines


def finding_head(finding: Finding) -> str:
    """``[error] faulty_backward (order 1, wrt fc2.bias, reverse)``."""
    facts = []
    if finding.order is not None:
        facts.append(f"order {finding.order}")
    if finding.wrt:
        facts.append(f"wrt {finding.wrt}")
    if (finding.details or {}).get("method"):
        facts.append(str(finding.details["method"]))
    return f"[{finding.severity}] {finding.kind}" + (f" ({', '.join(facts)})" if facts else "")


def finding_lines(finding: Finding) -> list[str]:
    """A finding as readable lines: what and with respect to which leaf, the worst element, analytical vs
    numerical with the error bar, and where (node, op, module, source)."""
    details = finding.details or {}
    message = " ".join(str(finding.message or "").split())
    lines = [f"{finding_head(finding)}: {message}"]
    numbers = []
    if details.get("worst_index") is not None:
        numbers.append(f"worst element {details['worst_index']}")
    if details.get("analytical") is not None or details.get("numerical") is not None:
        numbers.append(f"analytical {fmt_precise(details.get('analytical'))} vs numerical "
                       f"{fmt_precise(details.get('numerical'))}")
    finite = lambda value: isinstance(value, (int, float)) and math.isfinite(value)  # noqa: E731 (NaN: in the message)
    if finite(details.get("error_bar")):
        numbers.append(f"error bar {fmt_precise(details['error_bar'])}")
    if finite(finding.max_abs_err):
        numbers.append(f"|err| {fmt_precise(finding.max_abs_err)}")
    if numbers:
        lines.append("    " + ", ".join(numbers))
    if where(finding):
        lines.append(f"    at {where(finding)}")
    if not_localized(finding):
        lines.append(f"    not localized: {not_localized(finding)}")
    also = [str(w) for w in details.get("wrt_all") or [] if w != finding.wrt]
    if also and "also wrong wrt" not in message:
        lines.append(f"    also wrong wrt {', '.join(also)}")
    return lines


def not_localized(finding: Finding) -> str | None:
    """Why localization named no node for this finding (one line), or None (it did, or it did not run)."""
    localization = (finding.details or {}).get("localization")
    if not isinstance(localization, dict) or finding.node:
        return None
    why = localization.get("not_localized") or localization.get("error")
    return " ".join(str(why).split()) if why else None


def compared_names(check: Check) -> tuple[str, str]:
    """What a check's two values are: the backend's vs eager float64's for a parity check (``compare``), the
    analytical vs the numerical gradient for the others."""
    if str(check.method).endswith("_parity"):
        return (check.backend or "backend"), "reference"
    return "analytical", "numerical"


def check_line(check: Check) -> str:
    """One check in a sentence: ``order 1 reverse wrt fc2.bias at [1]: fail, analytical ... (|err| ...)``."""
    index = "" if check.worst_index is None else f" at {check.worst_index}"
    backend = f"[{check.backend}] " if check.backend else ""
    got, expected = compared_names(check)
    return (f"{backend}order {check.order} {check.method} wrt {check.wrt}{index}: {check.status}, {got} "
            f"{fmt(check.analytical)} vs {expected} {fmt(check.numerical)} (|err| {fmt(check.max_abs_err)}, "
            f"relative {fmt(check.max_rel_err)}, error bar {fmt(check.tolerance)}"
            + ("" if check.resolution is None else f", resolution {check.resolution:.1g}") + ")")


# The columns of the checks table: header, the cell of a check, and whether the column holds numbers (numbers
# are right-aligned and never folded by the rich renderer).
CHECK_COLUMNS: tuple[tuple[str, Callable[[Check], str], bool], ...] = (
    ("ord", lambda c: str(c.order), True),
    ("wrt", lambda c: str(c.wrt), False),
    ("method", lambda c: str(c.method), False),
    ("status", lambda c: str(c.status), False),
    ("|err|", lambda c: fmt(c.max_abs_err), True),
    ("error bar", lambda c: fmt(c.tolerance), True),
    ("worst", lambda c: "" if c.worst_index is None else str(c.worst_index), True),
    ("analytical", lambda c: fmt(c.analytical), True),
    ("numerical", lambda c: fmt(c.numerical), True),
)
BACKEND_COLUMN: tuple[str, Callable[[Check], str], bool] = ("backend", lambda c: c.backend or "", False)


# The relative error the check could have seen (one digit: it is an order of magnitude).
RESOLUTION_COLUMN: tuple[str, Callable[[Check], str], bool] = (
    "resol.", lambda c: "" if c.resolution is None else f"{c.resolution:.0e}", True)


# The relative error |err| / |numerical| (the plain table's; the rich table keeps to 80 columns without it).
RELATIVE_COLUMN: tuple[str, Callable[[Check], str], bool] = ("rel. err", lambda c: fmt(c.max_rel_err), True)


# In a table with parity checks (``compare``) the two value columns hold a backend's and the reference's values
# on those rows: their headers say both meanings.
PARITY_VALUE_COLUMNS: tuple[tuple[str, Callable[[Check], str], bool], ...] = (
    ("analytical|backend", lambda c: fmt(c.analytical), True),
    ("numerical|reference", lambda c: fmt(c.numerical), True),
)


def check_columns(checks: Iterable[Check], relative: bool = False) -> tuple:
    """The columns for these checks: a backend column first in cross-backend reports, the relative error after
    |err| when ``relative``, a resolution column last where checks have one."""
    checks = list(checks)
    values = PARITY_VALUE_COLUMNS if any(compared_names(c)[1] == "reference" for c in checks) else CHECK_COLUMNS[7:]
    columns = CHECK_COLUMNS[:5] + ((RELATIVE_COLUMN,) if relative else ()) + CHECK_COLUMNS[5:7] + values
    return (((BACKEND_COLUMN,) if any(c.backend for c in checks) else ()) + columns
            + ((RESOLUTION_COLUMN,) if any(c.resolution is not None for c in checks) else ()))


def shown_checks(report: Report, verbose: bool) -> list[Check]:
    """Every check when verbose, else those that did not pass."""
    return list(report.checks) if verbose else [c for c in report.checks if c.status != "pass"]


# The columns whose numbers a leaf covered by a passing aggregate shares with it (measured once, for ``total``).
AGGREGATE_COLUMNS = {"|err|", "rel. err", "error bar", "worst", "analytical", "numerical", "analytical|backend",
                     "numerical|reference"}


def covered_by_total(checks: list[Check]) -> set[int]:
    """The positions of passing leaf checks whose numbers are their passing ``total`` check's (a passing
    aggregate probe covers its leaves; nothing was measured for each of them alone)."""
    def numbers(c: Check) -> tuple:
        return c.order, c.method, c.backend, c.max_abs_err, c.tolerance, c.analytical, c.numerical
    totals = {numbers(c) for c in checks if c.wrt == "total" and c.ok}
    return {i for i, c in enumerate(checks) if c.wrt != "total" and c.ok and numbers(c) in totals}


def check_cells(checks: list[Check], columns: tuple) -> list[list[str]]:
    """Each check's cells; a leaf covered by its ``total`` says ``via total`` instead of repeating its numbers."""
    covered = covered_by_total(checks)
    rows = []
    for i, check in enumerate(checks):
        cells = [cell(check) for _, cell, _ in columns]
        if i in covered:
            shared = [j for j, (header, _, _) in enumerate(columns) if header in AGGREGATE_COLUMNS]
            for j in shared:
                cells[j] = ""
            cells[shared[0]] = "via total"
        rows.append(cells)
    return rows


def checks_table(checks: list[Check], indent: str = "  ") -> list[str]:
    """An aligned plain table, each column as wide as its widest cell (nothing cut)."""
    columns = check_columns(checks, relative=True)
    rows = [[header for header, _, _ in columns]] + check_cells(checks, columns)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        cells = [text.rjust(w) if numeric else text.ljust(w) for text, w, (_, _, numeric) in zip(row, widths, columns)]
        return (indent + "  ".join(cells)).rstrip()
    return [line(row) for row in rows]


def tolerance_lines(report: Report) -> list[str]:
    """``3 checks passed within --rtol 1e-05 (not within their error bars): worst ...``: which checks only the
    user's tolerance accepted, and how far off the worst of them is; nothing without --rtol/--atol."""
    rtol, atol = (report.settings or {}).get("rtol") or 0, (report.settings or {}).get("atol") or 0
    accepted = [c for c in report.checks if c.ok and c.bound == "user_tolerance"]
    if not accepted:
        return []
    given = " ".join(f"--{name} {value:g}" for name, value in (("rtol", rtol), ("atol", atol)) if value)
    worst = max(accepted, key=lambda c: c.user_rel_err or 0.0)
    count = f"{len(accepted)} check{'s' if len(accepted) > 1 else ''}"
    relative = "" if worst.user_rel_err is None else f"relative error up to {worst.user_rel_err:.3g} "
    bars = "their error bars" if len(accepted) > 1 else "its error bar"
    return [f"{count} passed within {given} (not within {bars}): {relative}(order {worst.order} "
            f"{worst.method} wrt {worst.wrt}, error bar {worst.tolerance:.3g})"]


def skipped_lines(report: Report) -> list[str]:
    """``skipped forward-mode AD (order 1): why``, one per capability the case lacked; ``note ...`` for an entry
    that says how the audit ran rather than what it left out (``"note": true``: a backend's compile count)."""
    return [f"{'note' if s.get('note') else 'skipped'} {s.get('what')}: {s.get('reason')}" for s in report.skipped]


def stats_line(report: Report) -> str:
    """Time and evaluation counts, or "" when the report has no stats."""
    st = report.stats
    if not st:
        return ""
    compilations = st.get("compilations", 0)
    return (f"{float(st.get('seconds', 0) or 0):.2f}s, {st.get('forward_evals', 0)} forward / "
            f"{st.get('backward_evals', 0)} backward evaluations, {compilations} "
            f"compilation{'' if compilations == 1 else 's'}")


def render_text(report: Report, verbose: bool = False, quiet: bool = False, max_checks: int | None = 12) -> str:
    """The plain-text report: the verdict line; then (unless ``quiet``) findings, errors first, the checks that
    did not pass (every check when ``verbose``; at most ``max_checks`` rows, None for all), what was skipped,
    and the counts."""
    lines = [verdict_line(report)]
    if quiet:
        return lines[0]
    for finding in sorted(report.findings, key=lambda f: f.severity != "error"):
        lines += ["  " + line for line in finding_lines(finding)]
    shown = shown_checks(report, verbose)
    if shown:
        if verbose:
            lines.append("  checks:")
        else:
            lines.append("  failed checks:" if not any(c.ok for c in shown) else "  checks that did not pass:")
        limit = len(shown) if max_checks is None else max_checks
        lines += checks_table(shown[:limit], indent="    ")
        if len(shown) > limit:
            lines.append(f"    ... and {len(shown) - limit} more")
    lines += ["  " + line for line in tolerance_lines(report)]
    lines += ["  " + line for line in precision_lines(report)]
    lines += ["  " + line for line in skipped_lines(report)]
    if stats_line(report):
        lines.append("  " + stats_line(report))
    return "\n".join(lines)


def suite_table(records: list) -> str:
    """A suite as plain text: one row per case, one column per backend and order (``eager o1``), each cell a
    status; the counts; then one line per record that did not pass, with its whole reason."""
    from gradaudit.suite.summary import STATUS_SYMBOL, caption, column_label, grid, records_of, summary_counts

    typed = records_of(records)
    cases, columns, cells = grid(typed)
    rows = [["case"] + [column_label(c) for c in columns]]
    rows += [[case] + [STATUS_SYMBOL[cells[(case, c)].status.value] if (case, c) in cells else "-" for c in columns]
             for case in cases]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(caption(summary_counts(typed)))
    lines += [f"{STATUS_SYMBOL[r.status.value]} {r.case} {r.backend} o{r.order}: {r.reason or short_why(r)}"
              for r in typed if r.status != "pass"]
    return "\n".join(lines)


def short_why(record) -> str:
    """Why a record without a reason did not pass (its first error finding or failed check)."""
    from gradaudit.suite.summary import short_reason

    return short_reason(record, limit=None) or "-"
