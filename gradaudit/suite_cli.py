"""``gradaudit suite ZOO``: audit a zoo of cases across backends and orders (exit 0 all pass or skip, 1 a case
failed or errored, 2 the suite could not run)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import AuditError

EXIT_OK, EXIT_PROBLEM, EXIT_ERROR = 0, 1, 2


def _fail(message: str) -> None:
    click.echo(f"gradaudit: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AuditError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise AuditError(f"no {what} given")
    return values


def _reports_module():
    try:
        from . import suite_reports
    except ImportError:
        return None
    return suite_reports


def _plain_table(records: list[dict]) -> str:
    columns = []
    for r in records:
        column = (r.get("backend"), r.get("order"))
        if column not in columns:
            columns.append(column)
    cases = list(dict.fromkeys(r.get("case") for r in records))
    cells = {(r.get("case"), (r.get("backend"), r.get("order"))): r for r in records}
    width = max([len("case")] + [len(str(c)) for c in cases])
    lines = [f"{'case':<{width}}  " + "  ".join(f"{b} o{o}".ljust(10) for b, o in columns)]
    for case in cases:
        row = [str(cells[(case, col)].get("status", "-")) if (case, col) in cells else "-" for col in columns]
        lines.append(f"{str(case):<{width}}  " + "  ".join(cell.ljust(10) for cell in row))
    for r in records:
        if r.get("status") in ("fail", "error"):
            lines.append(f"{r.get('status').upper()} {r.get('case')} {r.get('backend')} o{r.get('order')}: "
                         f"{r.get('reason')}")
    return "\n".join(lines)


@click.command("suite")
@click.argument("zoo")
@click.option("--backends", "backend_list", default="eager", show_default=True,
              help="Comma-separated backends (eager,xla,onnx).")
@click.option("--orders", "order_list", default="1,2", show_default=True, help="Comma-separated orders (1,2).")
@click.option("--executor", type=click.Choice(["local", "serial", "ray"]), default="local", show_default=True,
              help="local: a pool of worker processes; serial: one at a time; ray: tasks on a Ray cluster.")
@click.option("--address", default=None, help="Ray cluster address (executor ray; default: a local instance).")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Jobs at once (default: CPU count; on Ray: the cluster's CPUs).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
              help="Seconds per case and backend before its worker is killed.")
@click.option("--results-dir", default=None, help="Store each record here; a re-run skips records already done.")
@click.option("--json", "json_path", default=None, help="Write all records as JSON to PATH ('-' for stdout).")
@click.option("--junit", "junit_path", default=None, help="Write JUnit XML to PATH.")
@click.option("--html", "html_path", default=None, help="Write a static HTML report to PATH.")
@click.option("--only", default=None, help="Only cases whose name contains SUBSTRING (comma-separated: any).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random probes.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]), default=None,
              help="Cast floating inputs and parameters (default: keep the zoo's float64).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def suite_command(zoo, backend_list, order_list, executor, address, workers, timeout, results_dir, json_path,
                  junit_path, html_path, only, seed, dtype, quiet) -> None:
    """Audit every case of ZOO (a registered zoo such as torch.nn, or path/to/file.py:NAME) on each backend."""
    from .suite import run_suite, summary_counts

    backends = [b.strip() for b in backend_list.split(",") if b.strip()]

    def progress(record: dict, done: int, total: int) -> None:
        if quiet:
            return
        resumed = " (stored)" if record.get("resumed") else ""
        reason = f": {record.get('reason')}" if record.get("status") in ("fail", "error") else ""
        click.echo(f"[{done}/{total}] {record.get('status'):5} {record.get('case')} {record.get('backend')} "
                   f"o{record.get('order')}{resumed}{reason}", err=True)

    try:
        orders = _int_list(order_list, "orders")
        records = run_suite(zoo, backends, orders, executor=executor, workers=workers, timeout=timeout,
                            results_dir=results_dir, address=address, progress=progress, only=only, seed=seed,
                            dtype=dtype)
    except AuditError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted")

    reports = _reports_module()
    to_stdout = json_path == "-"
    try:
        if json_path:
            document = {"zoo": zoo, "backends": backends, "orders": orders, "records": records}
            if to_stdout:
                click.echo(json.dumps(document, default=str))
            elif reports is not None and hasattr(reports, "write_json"):
                reports.write_json(records, json_path, zoo=zoo, backends=backends, orders=orders)
            else:
                Path(json_path).write_text(json.dumps(document, indent=1, default=str) + "\n")
        if junit_path:
            if reports is None:
                _fail("JUnit output needs gradaudit.suite_reports, which is not installed")
            reports.write_junit(records, junit_path)
        if html_path:
            if reports is None:
                _fail("HTML output needs gradaudit.suite_reports, which is not installed")
            reports.write_html(records, html_path)
    except OSError as exc:
        _fail(f"cannot write a report: {exc.strerror or exc}")

    counts = summary_counts(records)
    if reports is not None:
        from rich.console import Console

        Console(stderr=to_stdout, highlight=False, width=max(100, Console().width)).print(
            reports.summary_table(records))
    else:
        click.echo(_plain_table(records), err=to_stdout)
    click.echo(f"{len(records)} results: {counts['pass']} pass, {counts['fail']} fail, {counts['skip']} skip, "
               f"{counts['error']} error", err=to_stdout)
    sys.exit(EXIT_PROBLEM if counts["fail"] or counts["error"] else EXIT_OK)
