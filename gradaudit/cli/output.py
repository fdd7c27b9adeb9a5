"""What a command prints and how it exits: the progress bar, the rendered report, the JSON file, the exit code."""
from __future__ import annotations

from contextlib import contextmanager

import click

from gradaudit.outcome import EXIT_ERROR, EXIT_OK, EXIT_PROBLEM, orders_not_run, write_outputs, write_text_file


@contextmanager
def progress_bar(enabled: bool):
    """A rich progress bar on stderr for interactive runs; nothing when piped."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("auditing", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)
        yield update


def render(report, stderr: bool, verbose: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from gradaudit.report import fmt

    console = Console(stderr=stderr, highlight=False)
    verdict = "[green]PASS[/green]" if report.ok else "[red]FAIL[/red]"
    shown = report.checks if verbose else [c for c in report.checks if c.status != "pass"]
    passed = sum(c.status == "pass" for c in report.checks)
    not_run = "".join(f"; order {order} not checked ({why})" for order, why in orders_not_run(report))
    console.print(f"{verdict} {report.target}  {report.backend}/{report.device} {report.dtype}  seed {report.seed}: "
                  f"{passed}/{len(report.checks)} checks passed{not_run}", soft_wrap=True)
    if shown:
        table = Table(show_edge=False, pad_edge=False)
        by_backend = any(c.backend for c in shown)
        for column in ("backend",) * by_backend + ("ord", "wrt", "method", "status", "|err|", "error bar", "worst",
                                                   "analytical", "numerical"):
            table.add_column(column, justify="right" if column in ("|err|", "error bar") else "left")
        for c in shown:
            style = {"pass": "green", "fail": "red"}.get(c.status, "yellow")
            table.add_row(*(c.backend or "",) * by_backend, str(c.order), c.wrt, c.method, f"[{style}]{c.status}[/{style}]", fmt(c.max_abs_err),
                          fmt(c.tolerance), "" if c.worst_index is None else str(c.worst_index),
                          fmt(c.analytical), fmt(c.numerical))
        console.print(table)
    for f in report.findings:
        colour = "red" if f.severity == "error" else "yellow"
        console.print(f"[{colour}]{f.kind}[/{colour}]: {f.message}")
        where = ", ".join(f"{k} {getattr(f, k)}" for k in ("node", "op", "module", "source") if getattr(f, k))
        if where:
            console.print(f"    at {where}")
    for s in report.skipped:
        console.print(f"[dim]skipped {s['what']}: {s['reason']}[/dim]")
    st = report.stats
    console.print(f"[dim]{st.get('seconds', 0):.2f}s, {st.get('forward_evals', 0)} forward / "
                  f"{st.get('backward_evals', 0)} backward evaluations, {st.get('compilations', 0)} compilations[/dim]")


def exit_code_of(report, allow_skip: bool) -> int:
    """1 for a problem found; 0 for a pass, unless a requested order could not run at all (then the pass is
    partial: exit 2, or 0 with ``--allow-skip``)."""
    if not report.ok:
        return EXIT_PROBLEM
    return EXIT_ERROR if orders_not_run(report) and not allow_skip else EXIT_OK


def finish(report, target: str, json_path: str | None, verbose: bool, allow_skip: bool = False) -> None:
    """Write the report (file, stdout) and exit with its code; write errors are exit 2, a closed pipe is not."""
    report.target = target
    code = exit_code_of(report, allow_skip)
    with write_outputs(code):
        if json_path and json_path != "-":
            write_text_file(json_path, report.to_json() + "\n")
        if json_path == "-":
            click.echo(report.to_json())
        render(report, stderr=json_path == "-", verbose=verbose)
        if code == EXIT_ERROR:
            missing = "; ".join(f"order {order} could not run ({why})" for order, why in orders_not_run(report))
            click.echo(f"gradaudit: error: {missing}; --allow-skip accepts the partial audit", err=True)
