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


def render(report, stderr: bool, verbose: bool = False, quiet: bool = False) -> None:
    """Print the report on stdout (or stderr): the rich layout on a terminal, the plain text (never truncated)
    when piped or redirected. ``verbose`` lists every check; ``quiet`` prints the verdict line only."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if console.is_terminal:
        from gradaudit.renderers.rich import render_rich

        render_rich(report, console, verbose=verbose, quiet=quiet)
    else:
        from gradaudit.renderers.text import render_text

        click.echo(render_text(report, verbose=verbose, quiet=quiet, max_checks=None), err=stderr)


def exit_code_of(report, allow_skip: bool) -> int:
    """1 for a problem found; 0 for a pass, unless a requested order could not run at all (then the pass is
    partial: exit 2, or 0 with ``--allow-skip``)."""
    if not report.ok:
        return EXIT_PROBLEM
    return EXIT_ERROR if orders_not_run(report) and not allow_skip else EXIT_OK


def finish(report, target: str, json_path: str | None, verbose: bool, allow_skip: bool = False,
           quiet: bool = False) -> None:
    """Write the report (file, stdout) and exit with its code; write errors are exit 2, a closed pipe is not."""
    report.target = target
    code = exit_code_of(report, allow_skip)
    with write_outputs(code):
        if json_path and json_path != "-":
            write_text_file(json_path, report.to_json() + "\n")
        if json_path == "-":
            click.echo(report.to_json())
        render(report, stderr=json_path == "-", verbose=verbose, quiet=quiet)
        if code == EXIT_ERROR:
            missing = "; ".join(f"order {order} could not run ({why})" for order, why in orders_not_run(report))
            click.echo(f"gradaudit: error: {missing}; --allow-skip accepts the partial audit", err=True)
