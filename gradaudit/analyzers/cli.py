"""``gradaudit graph TARGET --out FILE``: the autograd graph of a case, its culprit highlighted.

The main CLI registers it with ``main.add_command(graph_command)``; ``static_findings`` serves
``gradaudit run --static-only``.
"""
from __future__ import annotations

import sys

import click

from ..errors import AuditError
from .graph import FORMATS, format_of, trace_program, write_graph
from .hazards import static_findings
from .localize import LOCALIZED_KINDS, apply, locate

__all__ = ["graph_command", "static_findings"]


def _graph(target: str, out: str, format: str | None, order: int, seed: int) -> None:
    """Write the autograd graph of TARGET (GraphML, DOT or SVG, from the suffix of --out unless --format says);
    a failed check is localized and its culprit node highlighted."""
    import gradaudit
    from ..case import load_target
    from ..registry import usable_backend

    try:
        format = format_of(out, format)
        case = load_target(target)
        report = gradaudit.check(case, backend="eager", order=order, seed=seed, localize=False)
        backend = usable_backend("eager")
        culprit, graph, lines = None, None, []
        with backend.load(case) as program:
            for finding in report.findings:
                if finding.kind in LOCALIZED_KINDS and culprit is None:
                    result = locate(program, finding, seed)
                    apply(finding, result)
                    if result.culprit is not None:
                        culprit, graph = result.culprit, result.trace.graph
                        lines.append(f"culprit: {finding.node} ({finding.op}) module {finding.module or '-'} "
                                     f"at {finding.source or '?'} [{finding.kind}, wrt {finding.wrt}]")
            if graph is None:
                graph = trace_program(program).graph
        title = f"{case.label}: " + ("; ".join(lines) if lines else "PASS" if report.ok else "FAIL, not localized")
        write_graph(graph, out, format, culprit, title=title)
    except AuditError as exc:
        click.echo(f"gradaudit: error: {exc}", err=True)
        sys.exit(2)
    except ValueError as exc:
        click.echo(f"gradaudit: error: {exc}", err=True)
        sys.exit(2)
    nodes = sum(1 for _, d in graph.nodes(data=True) if d.get("kind") == "node")
    click.echo(f"wrote {out} ({format}, {nodes} autograd nodes)")
    for line in lines:
        click.echo(line)
    sys.exit(0 if report.ok else 1)


graph_command = click.command("graph")(
    click.argument("target")(
        click.option("--out", "out", required=True, help="Output file: .graphml, .dot or .svg.")(
            click.option("--format", "format", type=click.Choice(FORMATS), default=None,
                         help="Graph format (default: from the suffix of --out).")(
                click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
                             help="2 checks (and localizes) first and second order.")(
                    click.option("--seed", type=int, default=0, show_default=True, help="Seed of the probes.")(
                        _graph))))))
