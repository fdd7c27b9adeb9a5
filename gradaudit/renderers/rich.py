"""The report on a terminal, with rich: a coloured verdict, a table of checks and the findings.

The words are those of :mod:`gradaudit.renderers.text`; only the layout differs. Numbers are never cut: their
columns do not wrap and are as wide as their widest cell, names fold instead; when even that does not fit the
console, checks are printed one sentence each."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gradaudit.renderers import text as plain
from gradaudit.report import Check, Report

STATUS_STYLE = {"pass": "green", "fail": "red"}  # anything else (nondifferentiable_point): yellow


def verdict(report: Report) -> Text:
    """The verdict line, PASS in green, FAIL in red, NOT CHECKED (static analysis only) in yellow."""
    line = plain.verdict_line(report)
    word = plain.verdict_word(report)
    styled = Text(line)
    start = line.index(word)
    style = {"PASS": "bold green", "FAIL": "bold red"}.get(word, "bold yellow")
    styled.stylize(style, start, start + len(word))
    return styled


NARROWEST_NAME = 6  # a name column may fold down to this many characters


def column_widths(checks: list[Check]) -> list[int]:
    """The width of each column's widest cell, header included."""
    columns = plain.check_columns(checks)
    rows = plain.check_cells(checks, columns)
    return [max([len(header)] + [len(row[i]) for row in rows]) for i, (header, _, _) in enumerate(columns)]


def checks_table(checks: list[Check]) -> Table:
    """The checks as a table: number columns whole (no wrapping, as wide as their widest cell), names fold."""
    columns = plain.check_columns(checks)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0))
    for (header, _, numeric), width in zip(columns, column_widths(checks)):
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric,
                         min_width=width if numeric else None, overflow="fold")
    status = [header for header, _, _ in columns].index("status")
    for check, texts in zip(checks, plain.check_cells(checks, columns)):
        cells = [Text(text) for text in texts]
        cells[status].stylize(STATUS_STYLE.get(check.status, "yellow"))
        table.add_row(*cells)
    return table


def fits(checks: list[Check], width: int) -> bool:
    """Whether the table fits ``width`` with every number whole and names folded no narrower than
    ``NARROWEST_NAME`` (columns are one space apart)."""
    columns = plain.check_columns(checks)
    needed = sum(w if numeric else min(w, NARROWEST_NAME)
                 for (_, _, numeric), w in zip(columns, column_widths(checks)))
    return needed + len(columns) - 1 <= width


def render_rich(report: Report, console: Console, verbose: bool = False, quiet: bool = False,
                show_verdict: bool = True) -> None:
    """Print the report on ``console``: verdict (unless already shown), then (unless ``quiet``) checks, findings,
    skips and counts."""
    if show_verdict:
        console.print(verdict(report), soft_wrap=True)
    if quiet:
        return
    shown = plain.shown_checks(report, verbose)
    if shown:
        if fits(shown, console.width):
            console.print(checks_table(shown))
        else:
            for check in shown:
                console.print(Text(plain.check_line(check)))
    for finding in sorted(report.findings, key=lambda f: f.severity != "error"):
        head, *rest = plain.finding_lines(finding)
        line = Text(head)
        line.stylize("red" if finding.severity == "error" else "yellow", 0, len(plain.finding_head(finding)))
        console.print(line)
        for more in rest:  # indented as a block, so that wrapped lines stay under their finding
            console.print(Padding(Text(more.strip()), (0, 0, 0, 4), expand=False))
    for line in plain.tolerance_lines(report):
        console.print(Text(line))
    for note in plain.precision_lines(report):
        console.print(Text(note, style="yellow"))
    for skipped in plain.skipped_lines(report):
        console.print(Text(skipped, style="dim"))
    if plain.stats_line(report):
        console.print(Text(plain.stats_line(report), style="dim"))


SUITE_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow", "error": "magenta"}


def suite_table(records: list, title: str | None = "gradaudit suite") -> Table:
    """A suite as a rich table: one row per case, one column per backend and order (``eager o1``), each cell
    pass / FAIL / skip / ERROR (coloured) with a short reason, and a totals row."""
    from gradaudit.suite.records import STATUSES
    from gradaudit.suite.summary import (STATUS_SYMBOL, caption, column_label, grid, records_of, short_reason,
                                         summary_counts)

    typed = records_of(records)
    cases, columns, cells = grid(typed)
    counts = summary_counts(typed)
    table = Table(title=title, caption=caption(counts), show_lines=False)
    table.add_column("case", overflow="fold")
    for column in columns:
        table.add_column(column_label(column), overflow="fold")
    for case in cases:
        row = [Text(case)]  # Text, not markup: GELU[tanh] must not read as a style
        for column in columns:
            record = cells.get((case, column))
            if record is None:
                row.append(Text("-", style="dim"))
                continue
            cell = Text(STATUS_SYMBOL[record.status.value], style=SUITE_STYLE[record.status.value])
            reason = short_reason(record)
            if reason:
                cell.append(f" {reason}", style="dim")
            row.append(cell)
        table.add_row(*row)
    totals = [Text("total", style="bold")]
    for column in columns:
        by_status = counts["by_column"].get(column_label(column), {})
        totals.append(Text(" ").join(Text(f"{by_status[s]} {s}", style=SUITE_STYLE[s]) for s in STATUSES
                                     if by_status.get(s)))
    table.add_section()
    table.add_row(*totals)
    return table
