"""Analyzers: tracing one forward (``trace``), its autograd graph (``graph``) and pictures of it (``render``),
localization of failed checks (``localize``), divergence between backends (``divergence``) and static hazards
(``hazards``)."""
from gradaudit.analyzers.hazards import find_hazards, static_findings
from gradaudit.analyzers.localize import localize, locate
from gradaudit.analyzers.render import render_svg, to_dot, to_svg, write_graph
from gradaudit.analyzers.trace import build_graph, trace_program

__all__ = ["build_graph", "trace_program", "write_graph", "render_svg", "to_dot", "to_svg", "localize", "locate",
           "static_findings", "find_hazards"]
