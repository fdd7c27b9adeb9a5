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
    """The verdict line, PASS in green or FAIL in red."""
    line = plain.verdict_line(report)
    word = "PASS" if report.ok else "FAIL"
    styled = Text(line)
    start = line.index(word)
    styled.stylize("bold green" if report.ok else "bold red", start, start + len(word))
    return styled


NARROWEST_NAME = 6  # a name column may fold down to this many characters


def column_widths(checks: list[Check]) -> list[int]:
    """The width of each column's widest cell, header included."""
    return [max([len(header)] + [len(cell(c)) for c in checks]) for header, cell, _ in plain.check_columns(checks)]


def checks_table(checks: list[Check]) -> Table:
    """The checks as a table: number columns whole (no wrapping, as wide as their widest cell), names fold."""
    columns = plain.check_columns(checks)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0))
    for (header, _, numeric), width in zip(columns, column_widths(checks)):
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric,
                         min_width=width if numeric else None, overflow="fold")
    status = [header for header, _, _ in columns].index("status")
    for check in checks:
        cells = [Text(cell(check)) for _, cell, _ in columns]
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


def render_rich(report: Report, console: Console, verbose: bool = False, quiet: bool = False) -> None:
    """Print the report on ``console``: verdict, then (unless ``quiet``) checks, findings, skips and counts."""
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
    for skipped in plain.skipped_lines(report):
        console.print(Text(skipped, style="dim"))
    if plain.stats_line(report):
        console.print(Text(plain.stats_line(report), style="dim"))
