"""``gradaudit graph TARGET --out FILE``: the autograd graph of a case, its culprit highlighted.

Exit codes are ``gradaudit run``'s: the verdict of the audit (0 or 1), 2 when it could not run (or the file
cannot be written), 130 on Ctrl-C, 143 on SIGTERM. The audit and the drawing run in the supervised worker
(``gradaudit.cli.supervisor``); drawing the graph is an optional phase after the verdict: a crash or hang there
is a note on stderr and the verdict stands.
"""
from __future__ import annotations

import sys
from typing import Any

import click

from gradaudit.cli.common import (OutputPath, log_verdict, logger, order_option, seed_option, target_argument,
                                  timeout_options, traceback_option, verbosity_options)
from gradaudit.cli.supervisor import Limits, supervise
from gradaudit.errors import AuditError
from gradaudit.registry import REFERENCE
from gradaudit.cli.exits import (EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEM, EXIT_TERMINATED, fail, interrupted,
                                 write_outputs)

FORMATS = ("graphml", "dot", "svg", "png")  # (gradaudit.analyzers.render.FORMATS, without importing torch)

__all__ = ["checked_format", "draw", "graph_command", "static_findings", "write_drawn"]


def __getattr__(name: str) -> Any:
    if name == "static_findings":  # (serves ``gradaudit run --static-only``; imports torch)
        from gradaudit.analyzers.hazards import static_findings

        return static_findings
    raise AttributeError(name)


def checked_format(out: str, format: str | None) -> str:
    """The format to write (``format``, else the suffix of ``out``), or an AuditError naming the problem."""
    from gradaudit.analyzers.render import format_of

    try:
        return format_of(out, format)
    except ValueError as exc:
        raise AuditError(str(exc)) from None


def draw(case: Any, report: Any, seed: int) -> tuple:
    """(graph, culprit id, culprit lines): the traced graph of the case with the first localized fault."""
    from gradaudit.analyzers.localize import LOCALIZED_KINDS, apply, locate
    from gradaudit.analyzers.trace import trace_program
    from gradaudit.registry import reference_backend

    culprit, graph, lines = None, None, []
    with reference_backend().load(case) as program:
        for finding in report.findings:
            if finding.kind in LOCALIZED_KINDS and culprit is None:
                logger.info("localizing %s wrt %s", finding.kind, finding.wrt)
                result = locate(program, finding, seed)
                apply(finding, result)
                if result.culprit is not None:
                    culprit, graph = result.culprit, result.trace.graph
                    lines.append(f"culprit: {finding.node} ({finding.op}) module {finding.module or '-'} "
                                 f"at {finding.source or '?'} [{finding.kind}, wrt {finding.wrt}]")
        if graph is None:
            logger.info("tracing the autograd graph")
            graph = trace_program(program).graph
    return graph, culprit, lines


def write_drawn(case: Any, report: Any, drawn: tuple, request: dict) -> dict:
    """Write what :func:`draw` drew to ``request["out"]`` (in the worker): the lines the command prints. Failing
    to write the file is an AuditError, which the worker reports as the audit's error (exit 2)."""
    from gradaudit.analyzers.render import write_graph

    graph, culprit, lines = drawn
    title = f"{case.label}: " + ("; ".join(lines) if lines else "PASS" if report.ok else "FAIL, not localized")
    try:
        write_graph(graph, request["out"], request["format"], culprit, title=title)
    except OSError as exc:
        raise AuditError(f"cannot write {exc.filename or request['out']}: {exc.strerror or exc}") from None
    nodes = sum(1 for _, d in graph.nodes(data=True) if d.get("kind") == "node")
    return {"wrote": f"wrote {request['out']} ({request['format']}, {nodes} autograd nodes)", "lines": lines}


@click.command("graph")
@target_argument
@click.option("--out", "out", type=OutputPath(), required=True, help="Output file: .graphml, .dot or .svg.")
@click.option("--format", "format", type=click.Choice(FORMATS), default=None,
              help="Graph format (default: from the suffix of --out).")
@order_option
@seed_option
@traceback_option
@verbosity_options
@timeout_options
def graph_command(target: str, out: str, format: str | None, order: int, seed: int, show_traceback: bool,
                  quiet: bool, verbose: int, timeout: float, phase_timeout: float | None) -> None:
    """Write the autograd graph of TARGET (GraphML, DOT or SVG, from the suffix of --out unless --format says);
    a failed check is localized and its culprit node highlighted."""
    request = {"command": "graph", "target": target, "options": {"backend": REFERENCE, "order": order, "seed": seed,
                                                                 "localize": False},
               "graph": {"out": out, "format": format}, "verbosity": -1 if quiet else verbose,
               "traceback": show_traceback, "sys_path": sys.path}
    outcome = supervise(request, Limits(timeout, phase_timeout), on_verdict=lambda report: None)
    stopped = {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}.get(outcome.stopped_by)
    if stopped is not None:
        interrupted(outcome.stopped_by, stopped)
    if outcome.error is not None:
        fail(outcome.error)
    report = outcome.report
    log_verdict(report)
    written = outcome.more.get("graph")
    with write_outputs(EXIT_OK if report.ok else EXIT_PROBLEM):
        if not written:
            lost = [note for note in report.skipped if note.get("reason", "").endswith("stand without it")]
            unreached = (f"was not reached ({lost[-1]['what']} {lost[-1]['reason'].split(';')[0]})" if lost
                         else "gave nothing")
            why = next((note["reason"] for note in lost if note.get("what") == "graph export"), unreached)
            click.echo(f"gradaudit: note: graph export {why.split(';')[0]}; no graph written, the verdict stands "
                       f"({'PASS' if report.ok else 'FAIL'})", err=True)
            return
        click.echo(written["wrote"])
        for line in [] if quiet else written["lines"]:
            click.echo(line)
