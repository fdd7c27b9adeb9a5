"""What a command prints and how it exits: the progress bar, the rendered report, the JSON file, the exit code."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable

import click

from gradaudit.outcome import orders_not_run
from gradaudit.renderers.printable import printable, printable_tree
from gradaudit.cli.exits import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEM, EXIT_TERMINATED, fail,
                                 interrupted, write_outputs, write_text_file)


@contextmanager
def progress_bar(enabled: bool):
    """A rich progress bar on stderr for interactive runs; nothing when piped."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    name = TextColumn("{task.description}", markup=False)  # a parameter named "w[/]" is text, not markup
    with Progress(name, BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("auditing", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=printable(what), completed=done, total=total)
        yield update


class PlainProgress:
    """Progress for runs whose stderr is not a terminal (a CI log), once the run has taken ``after`` seconds (a
    quick run, or one that fails at once, keeps its one line): then a line per phase, and at most one progress
    line per ``every`` seconds, each with the time since the start (``gradaudit: [31 s] the checks``)."""

    def __init__(self, after: float = 30.0, every: float = 15.0) -> None:
        self.started = time.monotonic()
        self.last: float | None = None  # when the last line was printed
        self.after, self.every = after, every

    def _line(self, text: str) -> None:
        now = time.monotonic()
        if now - self.started < self.after:
            return
        self.last = now
        try:
            click.echo(printable(f"gradaudit: [{now - self.started:.0f} s] {text}"), err=True)
        except OSError:  # stderr is gone: progress is no reason to stop
            pass

    def phase(self, name: str) -> None:
        """A phase starts."""
        self._line(name)

    def progress(self, what: str, done: int, total: int) -> None:
        """A step done: said when ``every`` seconds passed since the last line, or for the last step."""
        if done == total or self.last is None or time.monotonic() - self.last >= self.every:
            self._line(f"{what} ({done}/{total})" if done <= total else f"{what} (step {done})")


@contextmanager
def progress_reporters(stderr_is_terminal: bool, quiet: bool):
    """(on_progress, on_phase) for the supervisor: a rich bar on a terminal, plain lines otherwise, nothing
    with ``-q``."""
    if quiet:
        yield None, None
    elif stderr_is_terminal:
        with progress_bar(True) as update:
            yield update, logged_phase(None)
    else:
        plain = PlainProgress()
        yield plain.progress, logged_phase(plain.phase)


def logged_phase(then: Callable[[str], None] | None) -> Callable[[str], None]:
    """A phase callback that logs each phase the worker starts (``-v``: info), then calls ``then``."""
    from gradaudit.cli.common import logger

    def phase(name: str) -> None:
        logger.info("phase: %s", name)
        if then is not None:
            then(name)
    return phase


def terminal_copy(report):
    """The report with every text in it (names, messages: the user's code's) made printable: an escape
    sequence or a newline in a case name is shown as ``\\x1b`` or ``\\n``, never obeyed."""
    from gradaudit.report import Report

    return Report.from_dict(printable_tree(report.to_dict()))


def render(report, stderr: bool, verbose: bool = False, quiet: bool = False, verdict_shown: bool = False) -> None:
    """Print the report on stdout (or stderr): the rich layout on a terminal, the plain text (never truncated)
    when piped or redirected. ``verbose`` lists every check; ``quiet`` prints the verdict line only;
    ``verdict_shown``: the verdict line was printed already (:func:`render_verdict`), print the rest."""
    from rich.console import Console

    if quiet and verdict_shown:
        return
    report = terminal_copy(report)
    console = Console(stderr=stderr, highlight=False)
    if console.is_terminal:
        from gradaudit.renderers.rich import render_rich

        render_rich(report, console, verbose=verbose, quiet=quiet, show_verdict=not verdict_shown)
    else:
        from gradaudit.renderers.text import render_text

        lines = render_text(report, verbose=verbose, quiet=quiet, max_checks=None).split("\n")
        rest = lines[1:] if verdict_shown else lines
        if rest:
            click.echo("\n".join(rest), err=stderr)


def render_verdict(report, stderr: bool) -> None:
    """Print the verdict line alone (the rest follows once the optional phases are done)."""
    from rich.console import Console

    report = terminal_copy(report)
    console = Console(stderr=stderr, highlight=False)
    if console.is_terminal:
        from gradaudit.renderers.rich import verdict

        console.print(verdict(report), soft_wrap=True)
    else:
        from gradaudit.renderers.text import verdict_line

        click.echo(verdict_line(report), err=stderr)


def exit_code_of(report, allow_skip: bool) -> int:
    """1 for a problem found; 0 for a pass, unless a requested order could not run at all (then the pass is
    partial: exit 2, or 0 with ``--allow-skip``)."""
    if not report.ok:
        return EXIT_PROBLEM
    return EXIT_ERROR if orders_not_run(report) and not allow_skip else EXIT_OK


def finish(report, target: str, json_path: str | None, verbose: bool, allow_skip: bool = False,
           quiet: bool = False, verdict_shown: bool = False, code: int | None = None) -> None:
    """Write the report (file, stdout) and exit with its code (``code`` overrides it: an interrupted audit);
    write errors are exit 2, a closed pipe is not."""
    report.target = target
    code = exit_code_of(report, allow_skip) if code is None else code
    with write_outputs(code):
        if json_path and json_path != "-":
            write_text_file(json_path, report.to_json() + "\n")
        if json_path == "-":
            click.echo(report.to_json())
        render(report, stderr=json_path == "-", verbose=verbose, quiet=quiet, verdict_shown=verdict_shown)
        if code == EXIT_ERROR:
            missing = "; ".join(f"order {order} could not run ({why})" for order, why in orders_not_run(report))
            click.echo(f"gradaudit: error: {missing}; --allow-skip accepts the partial audit", err=True)


def audit_in_worker(command: str, target: str, options: dict[str, Any], limits: Any, json_path: str | None,
                    verbose: int, quiet: bool, show_traceback: bool, allow_skip: bool) -> None:
    """Run ``gradaudit.check`` (``command`` "run") or ``gradaudit.compare`` ("compare") on TARGET in a
    supervised worker process (``gradaudit.cli.supervisor``), print the verdict as soon as it is known, then
    the complete report, and exit with the contract's code."""
    from gradaudit.cli.common import log_verdict
    from gradaudit.cli.supervisor import supervise

    request = {"command": command, "target": target, "options": options,
               "verbosity": -1 if quiet else verbose, "traceback": show_traceback, "sys_path": sys.path}
    shown = []

    def on_verdict(report: Any) -> None:
        report.target = target
        with write_outputs(exit_code_of(report, allow_skip), leave=False):
            if json_path and json_path != "-":
                write_text_file(json_path, report.to_json() + "\n")
            if json_path != "-":
                render_verdict(report, stderr=False)
                shown.append(True)

    with progress_reporters(sys.stderr.isatty(), quiet) as (progress, phase):
        outcome = supervise(request, limits, on_verdict, progress, phase)
    stopped = {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}.get(outcome.stopped_by)
    if outcome.report is None and stopped is not None:
        interrupted(outcome.stopped_by, stopped)
    if outcome.error is not None:
        fail(outcome.error)
    log_verdict(outcome.report)
    if stopped is not None:
        click.echo(f"gradaudit: {outcome.stopped_by}; the report holds what was finished", err=True)
    finish(outcome.report, target, json_path, verbose > 0, allow_skip, quiet=quiet, verdict_shown=bool(shown),
           code=stopped)
