"""Analyzers: the autograd graph (``graph``), localization of failed checks (``localize``), static hazards
(``hazards``) and the ``gradaudit graph`` command (``cli``)."""
from gradaudit.analyzers.graph import build_graph, to_dot, to_svg, trace_program, write_graph
from gradaudit.analyzers.hazards import find_hazards, static_findings
from gradaudit.analyzers.localize import localize, locate

__all__ = ["build_graph", "trace_program", "write_graph", "to_dot", "to_svg", "localize", "locate",
           "static_findings", "find_hazards"]
