"""``gradaudit suite ZOO``: audit a zoo of cases across backends and orders (exit 0 all pass or skip, 1 a case
failed or errored, 2 the suite could not run or audited nothing, 130 interrupted: workers killed at once, the
finished records kept in the results directory and the reports)."""
from __future__ import annotations

import json
import time
from typing import Callable

import click

from gradaudit.cli.common import (OutputPath, dtype_option, json_option, logger, seed_option, tolerance_options,
                                  verbosity_options)
from gradaudit.errors import AuditError
from gradaudit.registry import REFERENCE
from gradaudit.renderers.printable import printable, printable_tree
from gradaudit.cli.exits import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEM, fail, interrupted,
                                 real_interrupts, write_outputs)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AuditError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise AuditError(f"no {what} given")
    return values


def _plain_table(records: list[dict]) -> str:
    """The suite as plain text, nothing cut (for output that is not a terminal)."""
    from gradaudit.renderers.text import suite_table

    return suite_table(records)


def _progress_line(quiet: bool) -> Callable[[dict, int, int], None]:
    """What the runner calls after each record: one line on stderr, none with ``-q``."""
    started = time.monotonic()

    def progress(record: dict, done: int, total: int) -> None:
        """``[done/total, seconds since the start] status case backend order``, and the reason of a failure or
        error."""
        logger.debug("record %s", record)
        if quiet:
            return
        resumed = " (stored)" if record.get("resumed") else ""
        reason = f": {record.get('reason')}" if record.get("status") in ("fail", "error") else ""
        click.echo(printable(f"[{done}/{total}, {time.monotonic() - started:.0f} s] {record.get('status'):5} "
                             f"{record.get('case')} "
                             f"{record.get('backend')} o{record.get('order')}{resumed}{reason}"), err=True)
    return progress


def _summary(records: list[dict], counts: dict, to_stderr: bool, quiet: bool) -> None:
    """The table of cases by backend and order (not with ``-q``), then the counts line. Names and reasons come
    from the user's code and from stored records: their control characters are shown escaped."""
    records = printable_tree(records)
    if not quiet:  # a rich table on a terminal, plain text (nothing cut) when piped
        from rich.console import Console

        console = Console(stderr=to_stderr, highlight=False)
        if console.is_terminal:
            from gradaudit.renderers.rich import suite_table

            console.print(suite_table(records))
        else:
            click.echo(_plain_table(records), err=to_stderr)
    click.echo(f"{len(records)} results: {counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip, "
               f"{counts['error']} error", err=to_stderr)


@click.command("suite")
@click.argument("zoo")
@click.option("--backends", "backend_list", default=REFERENCE, show_default=True,
              help="Comma-separated backends (eager,xla,onnx).")
@click.option("--orders", "order_list", default="1,2", show_default=True, help="Comma-separated orders (1,2).")
@click.option("--executor", type=click.Choice(["local", "serial", "ray"]), default="local", show_default=True,
              help="local: a pool of worker processes; serial: one at a time; ray: tasks on a Ray cluster.")
@click.option("--address", default=None, help="Ray cluster address (executor ray; default: a local instance).")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Jobs at once (default: CPU count; on Ray: the cluster's CPUs).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Seconds per case and backend before its worker is killed.")
@click.option("--results-dir", type=click.Path(file_okay=False), default=None,
              help="Store each record here; a re-run skips records already done.")
@json_option("all records as JSON")
@click.option("--junit", "junit_path", type=OutputPath(), default=None, help="Write JUnit XML to PATH.")
@click.option("--html", "html_path", type=OutputPath(), default=None, help="Write a static HTML report to PATH.")
@click.option("--markdown", "markdown_path", type=OutputPath(), default=None,
              help="With --compare: write the cross-backend report (cases by category, localized ops, repros "
                   "under PATH's stem + '-repros/') to PATH.")
@click.option("--only", default=None, help="Only cases whose name contains SUBSTRING (comma-separated: any).")
@click.option("--compare", is_flag=True, default=False,
              help="Compare each case on each backend against eager float64 on CPU (eager is the reference: "
                   "audited only when it is the one backend listed).")
@click.option("--shard", default=None, metavar="K/N",
              help="Only the K-th of N equal, deterministic slices of the selected cases (1 <= K <= N).")
@click.option("--jobs-per-worker", type=click.IntRange(1, 100000), default=1, show_default=True,
              help="Jobs run in turn by one worker process (a worker's start costs seconds).")
@seed_option
@tolerance_options
@dtype_option("Cast floating inputs and parameters (default: keep the zoo's float64).")
@verbosity_options
def suite_command(zoo: str, backend_list: str, order_list: str, executor: str, address: str | None,
                  workers: int | None, timeout: float, results_dir: str | None, json_path: str | None,
                  junit_path: str | None, html_path: str | None, markdown_path: str | None, only: str | None,
                  compare: bool,
                  shard: str | None, jobs_per_worker: int, seed: int, dtype: str | None, quiet: bool,
                  verbose: int, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Audit every case of ZOO (a registered zoo such as torch.nn, or path/to/file.py:NAME) on each backend.

    -q prints no progress lines and no table, only the counts and errors."""
    from gradaudit.suite.runner import SuiteInterrupted, run_suite
    from gradaudit.suite.summary import summary_counts

    backends = [b.strip() for b in backend_list.split(",") if b.strip()]
    outputs = (json_path, junit_path, html_path)
    sigint = None
    try:
        orders = _int_list(order_list, "orders")
        if markdown_path and not compare:
            raise AuditError("--markdown writes the cross-backend report: it needs --compare")
        logger.info("suite %s on %s, orders %s, executor %s%s", zoo, ", ".join(backends), orders, executor,
                    ", compared against eager float64" if compare else "")
        with real_interrupts() as sigint:
            records = run_suite(zoo, backends, orders, executor=executor, workers=workers, timeout=timeout,
                                results_dir=results_dir, address=address, progress=_progress_line(quiet),
                                only=only, seed=seed, dtype=dtype, compare=compare, shard=shard,
                                jobs_per_worker=jobs_per_worker, rtol=rtol, atol=atol)
    except AuditError as exc:
        fail(str(exc))
    except SystemExit as exc:  # nothing of gradaudit exits in there: the zoo's own code did
        fail(f"loading the zoo {zoo} exited (SystemExit: {exc.code!r})")
    except SuiteInterrupted as stop:  # the workers are dead already; keep what finished
        try:
            write_reports(stop.records, zoo, backends, orders, *outputs, results_dir=results_dir)
        except OSError:
            pass  # the results directory still has them
        where = f" (in {results_dir})" if results_dir else ""
        how = "terminated" if sigint is not None and sigint.terminated else "interrupted"
        interrupted(f"{how}; {len(stop.records)} of {stop.total} results finished and kept{where}",
                    sigint.exit_code if sigint is not None else EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if sigint is None or sigint.is_set():
            interrupted("terminated" if sigint is not None and sigint.terminated else "interrupted",
                        sigint.exit_code if sigint is not None else EXIT_INTERRUPTED)
        fail(f"loading the zoo {zoo} raised KeyboardInterrupt (the zoo's own: only Ctrl-C is an interruption)")

    counts = summary_counts(records)
    audited = counts["pass"] + counts["fail"]
    code = EXIT_PROBLEM if counts["fail"] or counts["error"] else EXIT_OK
    with write_outputs(code if audited else EXIT_ERROR):
        write_reports(records, zoo, backends, orders, *outputs, results_dir=results_dir)
        if markdown_path:
            import sys

            from gradaudit.suite.crossreport import write_markdown

            write_markdown(records, markdown_path, zoo, backends, dtype, " ".join(["gradaudit"] + sys.argv[1:]))
        _summary(records, counts, to_stderr=json_path == "-", quiet=quiet)
        if not audited:
            click.echo(f"gradaudit: error: nothing was audited ({counts['error']} errors, {counts['skip']} "
                       "skipped)", err=True)


def write_reports(records: list[dict], zoo: str, backends: list[str], orders: list[int], json_path: str | None,
                  junit_path: str | None, html_path: str | None, results_dir: str | None = None) -> None:
    """The JSON, JUnit and HTML reports asked for (a write error propagates to ``write_outputs``: exit 2)."""
    # (the renderers take the records as data; each is imported only when its report is asked for)
    if json_path == "-":
        click.echo(json.dumps({"zoo": zoo, "backends": backends, "orders": orders, "records": records}, default=str))
    elif json_path:
        from gradaudit.renderers.json import write_json

        write_json(records, json_path, zoo=zoo, backends=backends, orders=orders)
    if junit_path:
        from gradaudit.renderers.junit import write_junit

        write_junit(records, junit_path)
    if html_path:
        from gradaudit.renderers.html import write_html

        write_html(records, html_path, results_dir=results_dir)
