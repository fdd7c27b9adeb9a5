"""The autograd graph of one evaluation of a Program, with every node named by op, module path and source line.

One forward runs with the leaves as fresh ``requires_grad`` tensors under two observers:

* forward pre-/post-hooks on every submodule of ``program.module`` keep the current module path;
* a ``TorchDispatchMode`` sees every aten (or ``torch.library``) op below autograd with its real output tensors.
  Their ``grad_fn`` is set once the op has returned through autograd, so each recorded output is resolved at the
  entry of the next op (or at the end of the forward): ``output.grad_fn`` is the autograd node the op made.

A custom ``autograd.Function`` runs its forward under no-grad, so its inner ops make no nodes; the op that
produced the Function's output carries the Function's own node (``BadGeluBackward``), which is named after the
Function and placed at the ``.apply`` call (module path and source line of the call, read from the stack).

Graph: nodes are autograd nodes (attrs ``kind='node'``, ``name``, ``op``, ``module``, ``source``), leaves
(``kind='leaf'``, named by parameter or input name; an ``AccumulateGrad`` node maps to its leaf through
``.variable``) and outputs (``kind='output'``). Edges follow the gradient: output -> its ``grad_fn`` -> each
``next_functions`` entry -> ... -> leaf.
"""
from __future__ import annotations

import contextlib
import html
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import torch.autograd.forward_ad as fwAD
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradaudit.paths import OWN_DIRS

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_APPLY_CODE = torch.autograd.function.Function.apply.__func__.__code__


def _is_library_frame(frame) -> bool:
    file = frame.f_code.co_filename
    return file.startswith(_TORCH_DIR) or file.startswith(OWN_DIRS) or file.startswith("<frozen")


def _user_frame(frame):
    """The innermost frame of the user's code below gradaudit's call into the case; None when the case is a
    library function itself (``torch.sqrt``): never a frame of whatever called gradaudit (click, pytest)."""
    while frame is not None and _is_library_frame(frame):
        if frame.f_code.co_filename.startswith(OWN_DIRS) and not _is_traced_op_frame(frame):
            return None  # reached gradaudit calling the case: no user code in between
        frame = frame.f_back
    return frame


def _is_traced_op_frame(frame) -> bool:
    """gradaudit's own frames between an op and the user's code: the dispatch and function modes here."""
    return frame.f_code.co_filename == __file__ and frame.f_code.co_name in ("__torch_dispatch__",
                                                                             "__torch_function__")


def _where(frame) -> tuple[str | None, str | None, int | None]:
    if frame is None:
        return None, None, None
    file = frame.f_code.co_filename
    return f"{Path(file).name}:{frame.f_lineno}", file, frame.f_lineno


@dataclass
class FunctionCall:
    """The outermost user ``autograd.Function.apply`` call enclosing an op: class, arguments and call site."""

    cls: type
    args: tuple
    kwargs: dict
    source: str | None
    file: str | None
    line: int | None
    requires_grad: list[bool] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)


def _function_call(frame) -> FunctionCall | None:
    """The outermost ``Function.apply`` frame of a user-defined Function on the stack (not torch's own
    generated Functions for ``torch.library`` ops), with its arguments and the user line that called it."""
    found = None
    while frame is not None:
        if frame.f_code is _APPLY_CODE:
            local = frame.f_locals
            cls = local.get("cls")
            if isinstance(cls, type) and not cls.__module__.startswith("torch"):
                found = frame
        frame = frame.f_back
    if found is None:
        return None
    local = found.f_locals
    args = tuple(local.get("args", ()))
    kwargs = dict(local.get("kwargs", {}) or {})
    source, file, line = _where(_user_frame(found.f_back))
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return FunctionCall(local["cls"], args, kwargs, source, file, line,
                        [t.requires_grad for t in tensors], [t._version for t in tensors])


@dataclass
class OpRecord:
    """One op seen below autograd during the traced forward."""

    index: int
    func: Any  # torch._ops.OpOverload
    name: str  # 'aten.addmm'
    module: str  # module path at the time ('' for the top module or a plain function)
    source: str | None
    file: str | None
    line: int | None
    function: FunctionCall | None
    args: tuple
    kwargs: dict
    outputs: list  # flattened outputs (tensors or other values)
    arg_requires_grad: list[bool]  # per tensor argument (in tree_flatten order)
    arg_versions: list[int]
    grad_enabled: bool
    direct: bool  # called straight from user code (not from inside torch)

    @property
    def mutable(self) -> bool:
        return bool(getattr(self.func, "_schema", None) is not None and self.func._schema.is_mutable)

    @property
    def is_view(self) -> bool:
        return bool(getattr(self.func, "is_view", False))


@dataclass
class NodeInfo:
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
        return self.category in ("function", "custom_op")


class ModuleTracker:
    """Forward pre-/post-hooks on every submodule: ``current`` is the dotted path of the innermost module whose
    forward is running ('' for the top module)."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.module, self.stack, self.handles = module, [], []

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else ""

    def __enter__(self) -> "ModuleTracker":
        if self.module is not None:
            for name, sub in self.module.named_modules():
                self.handles.append(sub.register_forward_pre_hook(lambda m, a, name=name: self.stack.append(name)))
                self.handles.append(sub.register_forward_hook(lambda m, a, o: self._pop(), always_call=True))
        return self

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _op_name(func) -> str:
    name = str(func)
    for suffix in (".default", ".Tensor", ".Scalar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Recorder(TorchDispatchMode):
    def __init__(self, tracker: ModuleTracker, tangents: bool) -> None:
        super().__init__()
        self.tracker, self.tangents = tracker, tangents
        self.ops: list[OpRecord] = []
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # outputs whose grad_fn is not known yet
        self.pending_tangent: list[tuple[int, int, torch.Tensor]] = []
        self.resolved: dict[tuple[int, int], tuple[Any, int]] = {}  # (op, pos) -> (node, output_nr)
        self.tangent_of: dict[tuple[int, int], torch.Tensor] = {}

    def resolve(self, final: bool = False) -> None:
        keep = []
        for i, pos, tensor in self.pending:
            node = tensor.grad_fn
            if node is not None:
                self.resolved[(i, pos)] = (node, tensor.output_nr)
                if self.tangents:
                    self.pending_tangent.append((i, pos, tensor))
            elif not final and len(self.ops) - i < 4096:
                keep.append((i, pos, tensor))
        self.pending = keep
        if self.tangents and final:  # unpack_dual works above autograd only: after the forward
            keep = []
            for i, pos, tensor in self.pending_tangent:
                tangent = fwAD.unpack_dual(tensor).tangent
                if tangent is not None:
                    self.tangent_of[(i, pos)] = tangent.detach().clone()
                elif not final:
                    keep.append((i, pos, tensor))
            self.pending_tangent = keep

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.resolve()
        out = func(*args, **kwargs)
        frame = sys._getframe(1)
        user = _user_frame(frame)
        source, file, line = _where(user)
        direct = False
        caller = frame
        while caller is not None and caller.f_code.co_filename.startswith(OWN_DIRS):
            caller = caller.f_back
        if caller is not None and caller is user:
            direct = True
        flat_args = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        flat_out = tree_flatten(out)[0]
        record = OpRecord(len(self.ops), func, _op_name(func), self.tracker.current, source, file, line,
                          _function_call(frame), args, kwargs, flat_out,
                          [a.requires_grad for a in flat_args], [a._version for a in flat_args],
                          torch.is_grad_enabled(), direct)
        for pos, value in enumerate(flat_out):
            if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                self.pending.append((record.index, pos, value))
        self.ops.append(record)
        return out


class _DetachWatcher(TorchFunctionMode):
    """User-level ``detach`` calls on tensors that carry a gradient (the dispatch mode also sees torch's own)."""

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker, self.calls = tracker, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.detach, torch.detach, torch.Tensor.detach_) and args and \
                isinstance(args[0], torch.Tensor) and args[0].requires_grad and torch.is_grad_enabled():
            user = _user_frame(sys._getframe(1))
            if user is not None and _function_call(sys._getframe(1)) is None:
                source, file, line = _where(user)
                self.calls.append({"module": self.tracker.current, "source": source, "file": file, "line": line})
        return func(*args, **(kwargs or {}))


@dataclass
class Trace:
    """One traced forward: the leaf tensors used, the outputs, the ops, the nodes and the graph."""

    values: list[torch.Tensor]
    leaf_names: list[str]
    outputs: list[torch.Tensor]
    output_names: list[str]
    ops: list[OpRecord]
    infos: dict[str, NodeInfo]
    id_of: dict[Any, str]  # autograd node -> graph id
    graph: nx.DiGraph
    tangents: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    detaches: list[dict] = field(default_factory=list)  # user detach() calls (when traced with watch_detach)

    def info(self, node_id: str) -> NodeInfo:
        return self.infos[node_id]

    def leaf_id(self, name: str) -> str | None:
        node_id = f"leaf:{name}"
        return node_id if node_id in self.infos else None


def _leaf_values(program, values=None) -> list[torch.Tensor]:
    source = values if values is not None else [leaf.value for leaf in program.leaves]
    return [v.detach().clone().requires_grad_() for v in source]


def trace_program(program, values: list[torch.Tensor] | None = None, *, tangents: list | None = None,
                  module_hooks: bool = True, watch_detach: bool = False) -> Trace:
    """Run one forward of ``program`` under the recorder and build the graph. ``values`` are the leaf tensors
    to use (fresh ``requires_grad`` clones of the program's leaves by default; given ones are used as they are,
    so the caller can differentiate with respect to them). With ``tangents`` the forward runs in forward-mode
    AD (the leaves made dual with these tangents; None for a zero tangent) and the tangent of every recorded
    output is kept in ``trace.tangents``."""
    values = _leaf_values(program) if values is None else values
    tracker = ModuleTracker(getattr(program, "module", None) if module_hooks else None)
    recorder = _Recorder(tracker, tangents is not None)
    with torch.enable_grad(), tracker:
        if tangents is not None:
            with fwAD.dual_level():
                duals = [v if t is None else fwAD.make_dual(v, t) for v, t in zip(values, tangents)]
                with recorder:
                    outputs = program(duals)
                recorder.resolve()
                recorder.resolve(final=True)
        else:
            watcher = _DetachWatcher(tracker) if watch_detach else contextlib.nullcontext()
            with watcher, recorder:
                outputs = program(values)
            recorder.resolve(final=True)
    names = [leaf.name for leaf in program.leaves]
    output_names = list(getattr(program, "output_names", [f"out[{i}]" for i in range(len(outputs))]))
    infos, id_of, graph = _build(recorder, values, names, outputs, output_names)
    return Trace(values, names, outputs, output_names, recorder.ops, infos, id_of, graph, recorder.tangent_of,
                 watcher.calls if watch_detach and tangents is None else [])


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


def _build(recorder: _Recorder, values, names, outputs, output_names):
    infos: dict[str, NodeInfo] = {}
    id_of: dict[Any, str] = {}
    leaf_ids = {id(v): i for i, v in enumerate(values)}
    first_record: dict[Any, OpRecord] = {}
    producers: dict[Any, list] = {}
    for (i, pos), (node, output_nr) in sorted(recorder.resolved.items()):
        first_record.setdefault(node, recorder.ops[i])
        if first_record[node] is recorder.ops[i] or first_record[node].function is not None:
            taken = {nr for _, _, nr in producers.get(node, [])}
            if output_nr not in taken:
                producers.setdefault(node, []).append((i, pos, output_nr))

    graph = nx.DiGraph()

    def add_leaf(index: int) -> str:
        node_id = f"leaf:{names[index]}"
        if node_id not in infos:
            infos[node_id] = NodeInfo(node_id, "leaf", names[index], op="AccumulateGrad", category="leaf",
                                      leaf_index=index)
            graph.add_node(node_id)
        return node_id

    def ident(node) -> str | None:
        if node is None:
            return None
        if node in id_of:
            return id_of[node]
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in leaf_ids:
            node_id = add_leaf(leaf_ids[id(variable)])
            infos[node_id].node = node
        else:
            node_id = f"n{len(id_of)}"
            info = _node_info(node_id, node, first_record.get(node))
            info.producers = producers.get(node, [])
            infos[node_id] = info
            graph.add_node(node_id)
        id_of[node] = node_id
        return node_id

    for i in range(len(values)):
        add_leaf(i)
    stack = []
    for name, out in zip(output_names, outputs):
        out_id = f"out:{name}"
        infos[out_id] = NodeInfo(out_id, "output", name, category="output")
        graph.add_node(out_id)
        target = None
        if out.grad_fn is not None:
            target = ident(out.grad_fn)
            stack.append(out.grad_fn)
        elif id(out) in leaf_ids:
            target = add_leaf(leaf_ids[id(out)])
        if target is not None:
            graph.add_edge(out_id, target, input=0)
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        source = ident(node)
        for k, (child, _) in enumerate(getattr(node, "next_functions", ()) or ()):
            if child is None:
                continue
            target = ident(child)
            if not graph.has_edge(source, target):
                graph.add_edge(source, target, input=k)
            stack.append(child)
    for node_id, info in infos.items():
        graph.nodes[node_id].update(_attributes(info))
    return infos, id_of, graph


def _attributes(info: NodeInfo) -> dict:
    return {"kind": info.kind, "name": info.name, "op": info.op or "", "module": info.module or "",
            "source": info.source or "", "file": info.file or "", "line": info.line or 0,
            "category": info.category}


def build_graph(program) -> nx.DiGraph:
    """The autograd graph of one forward of an eager Program (see the module docstring for its shape)."""
    return trace_program(program).graph


# ------------------------------------------------------------------------------------------------ export
def _clean(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy whose attributes GraphML can hold (str/int/float/bool, no None)."""
    out = nx.DiGraph()
    for node, data in graph.nodes(data=True):
        out.add_node(node, **{k: ("" if v is None else v if isinstance(v, (str, int, float, bool)) else str(v))
                              for k, v in data.items()})
    for a, b, data in graph.edges(data=True):
        out.add_edge(a, b, **{k: ("" if v is None else v if isinstance(v, (str, int, float, bool)) else str(v))
                              for k, v in data.items()})
    return out


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
    best = None
    for node, data in graph.nodes(data=True):
        if data.get("kind") == "output" and nx.has_path(graph, node, culprit):
            path = nx.shortest_path(graph, node, culprit)
            if best is None or len(path) < len(best):
                best = path
    for node in best or [culprit]:
        graph.nodes[node]["on_path"] = True
    for a, b in zip(best or [], (best or [])[1:]):
        graph.edges[a, b]["on_path"] = True
    return best or [culprit]


def _label(data: dict) -> list[str]:
    lines = [str(data.get("name", ""))]
    op, module, source = data.get("op"), data.get("module"), data.get("source")
    if data.get("kind") == "node" and op:
        lines.append(str(op))
    where = " ".join(x for x in (module, source) if x)
    if where:
        lines.append(where)
    return lines


def to_dot(graph: nx.DiGraph, culprit: str | None = None) -> str:
    """Graphviz DOT text (written here: no pygraphviz needed); the culprit is filled red, its path orange."""
    if culprit is not None:
        mark_culprit(graph, culprit)

    def quote(text: str) -> str:
        return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph autograd {", "  rankdir=TB;", '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for node, data in graph.nodes(data=True):
        style = {"output": 'shape=ellipse, style=filled, fillcolor="#dde7f5"',
                 "leaf": 'shape=box, style="rounded,filled", fillcolor="#e5f2e0"'}.get(data.get("kind"),
                                                                                     'style=filled, fillcolor="#f4f4f4"')
        if data.get("culprit"):
            style = 'style=filled, fillcolor="#e74c3c", fontcolor=white, penwidth=2'
        elif data.get("on_path"):
            style += ', color="#e67e22", penwidth=2'
        label = "\\n".join(x.replace("\\", "\\\\").replace('"', '\\"') for x in _label(data))
        lines.append(f'  {quote(node)} [label="{label}", {style}];')
    for a, b, data in graph.edges(data=True):
        extra = ' [color="#e67e22", penwidth=2]' if data.get("on_path") else ""
        lines.append(f"  {quote(a)} -> {quote(b)}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layers(graph: nx.DiGraph) -> dict[str, int]:
    """Longest-path depth from the outputs; leaves go to the bottom layer."""
    depth: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        depth[node] = 1 + max((depth[p] for p in preds), default=-1)
    bottom = max(depth.values(), default=0)
    for node, data in graph.nodes(data=True):
        if data.get("kind") == "leaf":
            depth[node] = bottom + 1 if any(d == bottom and graph.nodes[n].get("kind") != "leaf"
                                            for n, d in depth.items()) else bottom
    return depth


def to_svg(graph: nx.DiGraph, culprit: str | None = None, title: str | None = None) -> str:
    """A self-drawn layered picture: outputs on top, leaves at the bottom, one row per longest-path depth;
    the culprit filled red with its path from the output in orange."""
    if culprit is not None:
        mark_culprit(graph, culprit)
    depth = _layers(graph) if graph.number_of_nodes() else {}
    rows: dict[int, list[str]] = {}
    for node in graph.nodes:
        rows.setdefault(depth[node], []).append(node)
    # order each row by the mean position of its parents (one sweep) so edges cross less
    position: dict[str, float] = {}
    for level in sorted(rows):
        row = rows[level]
        row.sort(key=lambda n: (sum(position.get(p, 0) for p in graph.predecessors(n)) /
                                max(1, graph.in_degree(n)), n))
        for k, node in enumerate(row):
            position[node] = k / max(1, len(row) - 1) if len(row) > 1 else 0.5
    box_w, box_h, gap_x, gap_y, margin = 190, 46, 24, 40, 20
    widest = max((len(r) for r in rows.values()), default=1)
    width = margin * 2 + widest * (box_w + gap_x)
    top = margin + (24 if title else 0)
    height = top + margin + len(rows) * (box_h + gap_y)
    centre: dict[str, tuple[float, float]] = {}
    for level, row in rows.items():
        row_width = len(row) * (box_w + gap_x) - gap_x
        x0 = (width - row_width) / 2
        for k, node in enumerate(row):
            centre[node] = (x0 + k * (box_w + gap_x) + box_w / 2, top + level * (box_h + gap_y) + box_h / 2)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#888"/></marker>'
           '<marker id="arrow-hot" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#e67e22"/></marker></defs>',
           f'<rect width="100%" height="100%" fill="white"/>']
    if title:
        out.append(f'<text x="{margin}" y="{margin + 6}" font-size="14" font-weight="bold">{html.escape(title)}</text>')
    for a, b, data in graph.edges(data=True):
        (x1, y1), (x2, y2) = centre[a], centre[b]
        hot = data.get("on_path")
        out.append(f'<line x1="{x1:.1f}" y1="{y1 + box_h / 2:.1f}" x2="{x2:.1f}" y2="{y2 - box_h / 2:.1f}" '
                   f'stroke="{"#e67e22" if hot else "#aaa"}" stroke-width="{2.5 if hot else 1}" '
                   f'marker-end="url(#{"arrow-hot" if hot else "arrow"})"/>')
    for node, data in graph.nodes(data=True):
        x, y = centre[node]
        kind = data.get("kind")
        fill = {"output": "#dde7f5", "leaf": "#e5f2e0"}.get(kind, "#f4f4f4")
        stroke, text_colour, stroke_width = "#666", "#222", 1
        if data.get("culprit"):
            fill, stroke, text_colour, stroke_width = "#e74c3c", "#922", "white", 3
        elif data.get("on_path"):
            stroke, stroke_width = "#e67e22", 2.5
        radius = 18 if kind == "output" else 6
        tooltip = html.escape(" | ".join(str(data.get(k, "")) for k in ("name", "op", "module", "source")))
        out.append(f'<g><title>{tooltip}</title><rect x="{x - box_w / 2:.1f}" y="{y - box_h / 2:.1f}" '
                   f'width="{box_w}" height="{box_h}" rx="{radius}" fill="{fill}" stroke="{stroke}" '
                   f'stroke-width="{stroke_width}"/>')
        lines = _label(data)[:3]
        for k, line in enumerate(lines):
            text = line if len(line) <= 30 else line[:28] + "…"
            dy = (k - (len(lines) - 1) / 2) * 13 + 4
            weight = ' font-weight="bold"' if k == 0 else ""
            out.append(f'<text x="{x:.1f}" y="{y + dy:.1f}" font-size="{11 if k == 0 else 9.5}" '
                       f'text-anchor="middle" fill="{text_colour}"{weight}>{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


FORMATS = ("graphml", "dot", "svg")


def format_of(path: str | os.PathLike, format: str | None = None) -> str:
    if format:
        return format
    suffix = Path(path).suffix.lower().lstrip(".")
    suffix = {"gv": "dot", "xml": "graphml"}.get(suffix, suffix)
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the graph format from {str(path)!r}; use .graphml, .dot or .svg")
    return suffix


def write_graph(graph: nx.DiGraph, path: str | os.PathLike, format: str | None = None,
                culprit: str | None = None, title: str | None = None) -> str:
    """Write the graph as GraphML, DOT or SVG (from the suffix unless ``format`` is given), the culprit
    highlighted; returns the format written."""
    format = format_of(path, format)
    mark_culprit(graph, culprit)
    if format == "graphml":
        nx.write_graphml(_clean(graph), str(path))
    elif format == "dot":
        Path(path).write_text(to_dot(graph))
    else:
        Path(path).write_text(to_svg(graph, title=title))
    return format
