"""``gradaudit graph TARGET --out FILE``: the autograd graph of a case, its culprit highlighted.

``static_findings`` (re-exported) serves ``gradaudit run --static-only``. Exit codes are ``gradaudit run``'s: the
verdict of the audit (0 or 1), 2 when it could not run (or the file cannot be written), 130 on Ctrl-C. Drawing the
graph is an optional phase: a crash there is a note on stderr and the verdict stands.
"""
from __future__ import annotations

from typing import Any

import click

from gradaudit.cli.common import (OutputPath, load_case, log_verdict, logger, order_option, seed_option,
                                  target_argument, traceback_option, verbosity_options)
from gradaudit.errors import AuditError
from gradaudit.outcome import EXIT_OK, EXIT_PROBLEM, command_outcome, write_outputs

__all__ = ["draw", "graph_command", "static_findings"]

# gradaudit.analyzers.render.FORMATS, written out: the analyzers import torch, which --help must not
# (tests/test_startup.py checks that the two agree).
FORMATS = ("graphml", "dot", "svg", "png")


def static_findings(program: Any) -> list:
    """The hazard scan's findings (``gradaudit.analyzers.hazards.static_findings``, imported on first use)."""
    from gradaudit.analyzers.hazards import static_findings as scan

    return scan(program)


def draw(case: Any, report: Any, seed: int) -> tuple:
    """(graph, culprit id, culprit lines): the traced graph of the case with the first localized fault."""
    from gradaudit.analyzers.localize import LOCALIZED_KINDS, apply, locate
    from gradaudit.analyzers.trace import trace_program
    from gradaudit.registry import usable_backend

    culprit, graph, lines = None, None, []
    with usable_backend("eager").load(case) as program:
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


@click.command("graph")
@target_argument
@click.option("--out", "out", type=OutputPath(), required=True, help="Output file: .graphml, .dot or .svg.")
@click.option("--format", "format", type=click.Choice(FORMATS), default=None,
              help="Graph format (default: from the suffix of --out).")
@order_option
@seed_option
@traceback_option
@verbosity_options
def graph_command(target: str, out: str, format: str | None, order: int, seed: int, show_traceback: bool,
                  quiet: bool, verbose: int) -> None:
    """Write the autograd graph of TARGET (GraphML, DOT or SVG, from the suffix of --out unless --format says);
    a failed check is localized and its culprit node highlighted."""
    import gradaudit
    from gradaudit.analyzers.render import format_of, write_graph
    from gradaudit.pipeline import optional_phase

    with command_outcome(show_traceback):
        try:
            format = format_of(out, format)
        except ValueError as exc:
            raise AuditError(str(exc)) from None
        case = load_case(target)
        report = gradaudit.check(case, backend="eager", order=order, seed=seed, localize=False)
        log_verdict(report)
        failures: list[dict] = []
        drawn = optional_phase("graph export", lambda: draw(case, report, seed), failures)
    with write_outputs(EXIT_OK if report.ok else EXIT_PROBLEM):
        if drawn is None:
            click.echo(f"gradaudit: note: graph export {failures[0]['reason'].split(';')[0]}; no graph written, "
                       f"the verdict stands ({'PASS' if report.ok else 'FAIL'})", err=True)
            return
        graph, culprit, lines = drawn
        title = f"{case.label}: " + ("; ".join(lines) if lines else "PASS" if report.ok else "FAIL, not localized")
        write_graph(graph, out, format, culprit, title=title)
        nodes = sum(1 for _, d in graph.nodes(data=True) if d.get("kind") == "node")
        click.echo(f"wrote {out} ({format}, {nodes} autograd nodes)")
        for line in [] if quiet else lines:
            click.echo(line)
