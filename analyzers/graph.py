"""The autograd graph of one traced forward, with every node named by op, module path and source line.

Nodes are autograd nodes (attrs ``kind='node'``, ``name``, ``op``, ``module``, ``source``), leaves
(``kind='leaf'``, named by parameter or input name; an ``AccumulateGrad`` node maps to its leaf through
``.variable``) and outputs (``kind='output'``). Edges follow the gradient: output -> its ``grad_fn`` -> each
``next_functions`` entry -> ... -> leaf.

:mod:`gradaudit.analyzers.trace` records the forward and calls :func:`graph_of`; :mod:`gradaudit.analyzers.render`
draws the graph; ``trace.build_graph`` traces a program and returns its graph (trace imports this module, never
the other way round).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

if TYPE_CHECKING:
    from gradaudit.analyzers.trace import FunctionCall, OpRecord

__all__ = ["NodeInfo", "graph_of", "mark_culprit", "culprit_path"]


@dataclass
class NodeInfo:
    """One node of the graph: an autograd node, a leaf or an output, with the op that made it and where."""

    id: str
    kind: str  # 'node' | 'leaf' | 'output'
    name: str
    node: Any = None  # the autograd Node (None for outputs)
    op: str | None = None
    module: str | None = None
    source: str | None = None
    file: str | None = None
    line: int | None = None
    category: str = "unknown"  # 'op' (aten/prims) | 'custom_op' | 'function' | 'unknown' | 'leaf' | 'output'
    record: OpRecord | None = None  # the op that produced it
    function: FunctionCall | None = None  # for custom Functions: the .apply call
    producers: list = field(default_factory=list)  # (op index, output position, output_nr)
    leaf_index: int | None = None

    @property
    def custom(self) -> bool:
        """A custom ``autograd.Function`` or a ``torch.library`` op: the user's code, not torch's."""
        return self.category in ("function", "custom_op")


def _node_info(node_id: str, node, record: OpRecord | None) -> NodeInfo:
    info = NodeInfo(node_id, "node", node.name(), node)
    if record is None:
        return info
    info.record = record
    info.module, info.source, info.file, info.line = record.module, record.source, record.file, record.line
    info.op, info.category = record.name, ("op" if record.name.split(".")[0] in ("aten", "prims") else "custom_op")
    forward_cls = getattr(node, "_forward_cls", None)
    if isinstance(forward_cls, type):
        if forward_cls.__module__.startswith("torch._library"):
            info.category = "custom_op"
        else:
            info.op, info.category = forward_cls.__name__, "function"
            call = record.function
            if call is not None and call.cls is forward_cls:
                info.function = call
                info.source, info.file, info.line = call.source, call.file, call.line
    return info


def _producers(resolved: dict, ops: list[OpRecord]) -> tuple[dict, dict]:
    """For each autograd node: the first op whose output carries it, and the (op index, output position,
    output_nr) of the outputs that carry it (one per output_nr, all from that first op). A custom Function's
    output may be carried by several ops of its forward (``out = empty_like(x)`` then ``out.copy_(...)``): the
    last of them made its value, so that one is kept."""
    first_record: dict[Any, OpRecord] = {}
    producers: dict[Any, dict] = {}  # node -> {output_nr: (op index, output position, output_nr)}
    for (i, pos), (node, output_nr) in sorted(resolved.items()):
        first_record.setdefault(node, ops[i])
        in_function = first_record[node].function is not None
        if first_record[node] is ops[i] or in_function:
            taken = producers.setdefault(node, {})
            if output_nr not in taken or in_function:
                taken[output_nr] = (i, pos, output_nr)
    return first_record, {node: list(taken.values()) for node, taken in producers.items()}


class _GraphBuilder:
    """Walks ``next_functions`` from the outputs' ``grad_fn`` down to the leaves, giving each node an id."""

    def __init__(self, resolved: dict, ops: list[OpRecord], values: list, names: list[str]) -> None:
        self.names = names
        self.leaf_ids = {id(v): i for i, v in enumerate(values)}
        self.first_record, self.producers = _producers(resolved, ops)
        self.infos: dict[str, NodeInfo] = {}
        self.id_of: dict[Any, str] = {}  # autograd node -> graph id
        self.graph = nx.DiGraph()

    def add_leaf(self, index: int) -> str:
        """The graph id of the leaf at ``index``, added on first use."""
        node_id = f"leaf:{self.names[index]}"
        if node_id not in self.infos:
            self.infos[node_id] = NodeInfo(node_id, "leaf", self.names[index], op="AccumulateGrad",
                                           category="leaf", leaf_index=index)
            self.graph.add_node(node_id)
        return node_id

    def ident(self, node) -> str:
        """The graph id of an autograd node, added on first sight (an ``AccumulateGrad`` is its leaf)."""
        if node in self.id_of:
            return self.id_of[node]
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in self.leaf_ids:
            node_id = self.add_leaf(self.leaf_ids[id(variable)])
            self.infos[node_id].node = node
        else:
            node_id = f"n{len(self.id_of)}"
            info = _node_info(node_id, node, self.first_record.get(node))
            info.producers = self.producers.get(node, [])
            self.infos[node_id] = info
            self.graph.add_node(node_id)
        self.id_of[node] = node_id
        return node_id

    def add_output(self, name: str, out) -> None:
        """An output node, with an edge to its ``grad_fn`` (or to the leaf it is)."""
        out_id = f"out:{name}"
        self.infos[out_id] = NodeInfo(out_id, "output", name, category="output")
        self.graph.add_node(out_id)
        target = None
        if out.grad_fn is not None:
            target = self.ident(out.grad_fn)
        elif id(out) in self.leaf_ids:
            target = self.add_leaf(self.leaf_ids[id(out)])
        if target is not None:
            self.graph.add_edge(out_id, target, input=0)

    def walk(self, roots: list) -> None:
        """Add every node reachable through ``next_functions`` from ``roots``, edges labelled by input slot."""
        stack, seen = list(roots), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            source = self.ident(node)
            for k, (child, _) in enumerate(getattr(node, "next_functions", ()) or ()):
                if child is None:
                    continue
                target = self.ident(child)
                if not self.graph.has_edge(source, target):
                    self.graph.add_edge(source, target, input=k)
                stack.append(child)


def graph_of(resolved: dict, ops: list[OpRecord], values: list, names: list[str], outputs: list,
             output_names: list[str]) -> tuple[dict[str, NodeInfo], dict[Any, str], nx.DiGraph]:
    """The graph of one traced forward: ``resolved`` maps (op index, output position) to (autograd node,
    output_nr), ``ops`` are the recorded ops, ``values``/``names`` the leaves. Returns the node infos by id,
    the id of each autograd node, and the graph (node attributes as in the module docstring)."""
    builder = _GraphBuilder(resolved, ops, values, names)
    for i in range(len(values)):
        builder.add_leaf(i)
    for name, out in zip(output_names, outputs):
        builder.add_output(name, out)
    builder.walk([out.grad_fn for out in outputs if out.grad_fn is not None])
    for node_id, info in builder.infos.items():
        builder.graph.nodes[node_id].update(_attributes(info))
    return builder.infos, builder.id_of, builder.graph


def _attributes(info: NodeInfo) -> dict:
    return {"kind": info.kind, "name": info.name, "op": info.op or "", "module": info.module or "",
            "source": info.source or "", "file": info.file or "", "line": info.line or 0,
            "category": info.category}


def _graphml_value(value: Any) -> str | int | float | bool:
    return "" if value is None else value if isinstance(value, (str, int, float, bool)) else str(value)


def _clean(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy whose attributes GraphML can hold (str/int/float/bool, no None)."""
    out = nx.DiGraph()
    for node, data in graph.nodes(data=True):
        out.add_node(node, **{k: _graphml_value(v) for k, v in data.items()})
    for a, b, data in graph.edges(data=True):
        out.add_edge(a, b, **{k: _graphml_value(v) for k, v in data.items()})
    return out


def culprit_path(graph: nx.DiGraph, culprit: str) -> list[str]:
    """The shortest path from an output down to ``culprit`` (just ``[culprit]`` when no output reaches it)."""
    best = None
    for node, data in graph.nodes(data=True):
        if data.get("kind") == "output" and nx.has_path(graph, node, culprit):
            path = nx.shortest_path(graph, node, culprit)
            if best is None or len(path) < len(best):
                best = path
    return best or [culprit]


def mark_culprit(graph: nx.DiGraph, culprit: str | None) -> list[str]:
    """Set ``culprit=True`` on the culprit and ``on_path=True`` on the nodes and edges from an output to it;
    returns that path."""
    for node in graph.nodes:
        graph.nodes[node]["culprit"] = node == culprit
        graph.nodes[node]["on_path"] = False
    for a, b in graph.edges:
        graph.edges[a, b]["on_path"] = False
    if culprit is None or culprit not in graph:
        return []
    path = culprit_path(graph, culprit)
    for node in path:
        graph.nodes[node]["on_path"] = True
    for a, b in zip(path, path[1:]):
        graph.edges[a, b]["on_path"] = True
    return path
