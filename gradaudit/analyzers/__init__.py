"""Analyzers: the autograd graph (``graph``), localization of failed checks (``localize``), static hazards
(``hazards``) and the ``gradaudit graph`` command (``cli``)."""
from .graph import build_graph, to_dot, to_svg, trace_program, write_graph
from .hazards import find_hazards, static_findings
from .localize import localize, locate

__all__ = ["build_graph", "trace_program", "write_graph", "to_dot", "to_svg", "localize", "locate",
           "static_findings", "find_hazards"]
