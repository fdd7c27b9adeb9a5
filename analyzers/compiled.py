"""Where does compiled code part from eager? The op (or fused segment) of dynamo's graph whose compiled forward
or gradient differs from eager float64 when that piece is compiled alone, with a standalone repro.

A compiled program's traced forward runs eagerly (dynamo steps aside under a dispatch mode), so the node-by-node
comparison of :mod:`gradaudit.analyzers.divergence` would compare eager with eager. Instead, each graph dynamo
captured (``backends.compile.GraphCapture``) is evaluated eagerly node by node at the inputs of its last call,
then pieces of it are compiled again with the same compiler and checked at those values:

1. prefixes of the graph with every intermediate value as an output (a divergence, once created, stays visible
   in a longer prefix, so a binary search finds the first op whose forward or backward diverges);
2. where materializing every value hides it (a fusion-only bug), prefixes with their last value as the only
   output, searched the same way;
3. then the shortest segment ending at that op that still diverges on its own: the op alone, or the fused
   segment that is needed.

A piece diverges when its compiled outputs (forward) or input gradients for a seeded cotangent (backward)
differ from eager float64 by more than rounding (``ROUNDING_FACTOR`` eps of the program's dtype), and by more
than ten times what eager itself loses in that dtype.
"""
from __future__ import annotations

import math
import os
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
import torch.fx

from gradaudit.analyzers.divergence import Divergence, _floating_tensors, _relative_gap
from gradaudit.core.numerics import ROUNDING_FACTOR, eps_of
from gradaudit.paths import OWN_DIRS

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
SEGMENT_TRIES = 6  # how far back from the diverging op the search looks for the shortest diverging segment


def _clone(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def _is_floating(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


class GraphPieces:
    """One captured graph evaluated eagerly node by node at recorded inputs, and pieces cut out of it."""

    def __init__(self, gm: torch.fx.GraphModule, inputs: list, requires_grad: list[bool]) -> None:
        self.gm = gm
        self.nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
        self.values: dict[torch.fx.Node, Any] = {}
        self.requires_grad: dict[torch.fx.Node, bool] = {}
        self._interpret(inputs, requires_grad)
        self.candidates = [i for i, n in enumerate(self.nodes) if _is_floating(self.values.get(n))]
        self.outputs = [n for n in gm.graph.find_nodes(op="output")[0].all_input_nodes if n in self.values]

    def _interpret(self, inputs: list, requires_grad: list[bool]) -> None:
        """Every node's value (detached copies) and whether it depends on an input that requires grad."""
        values, flags = self.values, self.requires_grad

        class Recording(torch.fx.Interpreter):
            def run_node(self, node):
                value = super().run_node(node)
                values[node] = _clone(value)
                flags[node] = isinstance(value, torch.Tensor) and value.requires_grad
                return value

        leaves = [_clone(v).requires_grad_() if flag and _is_floating(v) else _clone(v)
                  for v, flag in zip(inputs, requires_grad)]
        with torch.enable_grad():
            Recording(self.gm).run(*leaves)

    def piece(self, start: int, end: int, outputs: list[torch.fx.Node]) -> tuple[torch.fx.GraphModule, list, list]:
        """``nodes[start..end]`` as a graph module of its own; its inputs (the values it reads from outside,
        at the recorded point) and which of them require grad."""
        graph, env, inputs, flags = torch.fx.Graph(), {}, [], []
        for node in self.nodes[start:end + 1]:
            for used in node.all_input_nodes:
                if used not in env:
                    env[used] = graph.placeholder(f"arg{len(inputs)}")
                    inputs.append(self.values[used])
                    flags.append(self.requires_grad.get(used, False))
            env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(tuple(env[n] for n in outputs))
        return torch.fx.GraphModule(self.gm, graph), inputs, flags

    def has_tensor_inputs_only(self, start: int, end: int) -> bool:
        """Whether a piece reads only tensors and plain values from outside (a tuple-valued op, such as a
        split, cannot start a piece: its parts are what the piece would need)."""
        inside = set(self.nodes[start:end + 1])
        return all(not isinstance(self.values.get(u), (tuple, list))
                   for n in inside for u in n.all_input_nodes if u not in inside)


@dataclass
class PieceResult:
    """How one compiled piece compares with eager float64 (relative gaps), and eager's own in that dtype."""

    forward_gap: float
    backward_gap: float
    eager_forward_gap: float
    eager_backward_gap: float
    node_name: str | None  # the eager autograd node of the piece's last output

    def gap(self, phase: str) -> tuple[float, float]:
        """(compiled gap, eager's own gap) for 'forward' or 'backward'."""
        if phase == "forward":
            return self.forward_gap, self.eager_forward_gap
        return self.backward_gap, self.eager_backward_gap


def _run(fn, inputs: list, flags: list[bool], dtype: torch.dtype | None, seed: int) -> tuple[list, list, str | None]:
    """Outputs and input gradients (seeded Gaussian cotangent) of a piece, inputs cast to ``dtype`` when given."""
    cast = (lambda v: v.to(dtype) if _is_floating(v) else v) if dtype is not None else (lambda v: v)
    xs = [cast(_clone(v)).requires_grad_() if flag else cast(_clone(v)) for v, flag in zip(inputs, flags)]
    with torch.enable_grad():
        outs = [o for o in torch.utils._pytree.tree_leaves(fn(*xs)) if _is_floating(o)]
    wrt = [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]
    pairs = [(o, v) for o, v in zip(outs, _cotangents(outs, seed)) if o.requires_grad]
    grads = []
    if pairs and wrt:
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [v for _, v in pairs], allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    node = outs[-1].grad_fn.name() if outs and outs[-1].grad_fn is not None else None
    return [o.detach() for o in outs], [g.detach() for g in grads], node


def _cotangents(outs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.dtype) for o in outs]


def _gap(got: list, expected: list) -> float:
    """Relative gap of two lists of tensors; infinite where one is finite and the other not (NaN compares
    as nothing in a maximum)."""
    got, expected = _floating_tensors(got), _floating_tensors(expected)
    for a, b in zip(got, expected):
        if a.shape == b.shape and not torch.equal(torch.isfinite(a), torch.isfinite(b)):
            return math.inf
    finite = [(a.nan_to_num(), b.nan_to_num()) for a, b in zip(got, expected)]
    return _relative_gap([a for a, _ in finite], [b for _, b in finite])


def compare_piece(gm: torch.fx.GraphModule, inputs: list, flags: list[bool], program, seed: int) -> PieceResult:
    """Compile the piece alone as ``program`` compiles (its ``compile_alone`` under its ``compile_settings``)
    and hold it, and eager in the program's dtype, against eager float64."""
    reference = _run(gm, inputs, flags, torch.float64, seed)
    eager = reference if program.dtype == torch.float64 else _run(gm, inputs, flags, None, seed)
    with program.compile_settings():
        compiled = _run(program.compile_alone(gm), inputs, flags, None, seed)
    return PieceResult(_gap(compiled[0], reference[0]), _gap(compiled[1], reference[1]),
                       _gap(eager[0], reference[0]), _gap(eager[1], reference[1]), reference[2])


@dataclass
class Found:
    """A diverging piece: ``nodes[start..end]`` of one captured graph, and how it compared."""

    pieces: GraphPieces
    start: int
    end: int
    result: PieceResult
    where: str  # which of the captured graphs
    compiles: int = 0
    method: str = ""

    @property
    def segment(self) -> list[torch.fx.Node]:
        return self.pieces.nodes[self.start:self.end + 1]


@dataclass
class PieceSearch:
    """The search of one captured graph for the piece that creates a divergence (see the module docstring)."""

    pieces: GraphPieces
    program: Any  # the compiled program: how to compile a piece alone, its dtype
    phase: str
    seed: int
    compiles: int = 0
    results: dict = field(default_factory=dict)

    def check(self, start: int, end: int, outputs: list[torch.fx.Node]) -> PieceResult:
        self.compiles += 1
        gm, inputs, flags = self.pieces.piece(start, end, outputs)
        return compare_piece(gm, inputs, flags, self.program, self.seed)

    def diverges(self, result: PieceResult) -> bool:
        gap, eager_gap = result.gap(self.phase)
        return gap > max(ROUNDING_FACTOR * eps_of(self.program.dtype), 10 * eager_gap)

    def first(self, outputs_of) -> tuple[int, PieceResult] | None:
        """The first candidate end (binary search; the last one must diverge) whose prefix diverges, with the
        outputs ``outputs_of(position)`` names."""
        ends = self.pieces.candidates
        last = self.check(0, ends[-1], outputs_of(len(ends) - 1))
        if not self.diverges(last):
            return None
        low, high, found = 0, len(ends) - 1, last
        while low < high:
            middle = (low + high) // 2
            result = self.check(0, ends[middle], outputs_of(middle))
            if self.diverges(result):
                high, found = middle, result
            else:
                low = middle + 1
        return ends[high], found

    def run(self) -> tuple[int, int, PieceResult, str] | None:
        """(start, end, result, method) of the shortest diverging piece found, or None."""
        nodes, ends = self.pieces.nodes, self.pieces.candidates
        if not ends:
            return None
        hit = self.first(lambda i: [nodes[j] for j in ends[:i + 1]])
        method = "prefixes with every value as an output"
        if hit is None:  # materializing every value changed what the compiler fuses
            hit = self.first(lambda i: [nodes[ends[i]]])
            method = "prefixes with their last value as output (fusion-dependent)"
        if hit is None:
            return None
        end, result = hit
        for start in range(end, max(end - SEGMENT_TRIES, -1), -1):
            if not self.pieces.has_tensor_inputs_only(start, end):
                continue
            alone = self.check(start, end, [nodes[end]])
            if self.diverges(alone):
                return start, end, alone, method + ("; the op alone" if start == end else "; the fused segment")
        return 0, end, result, method + "; the whole prefix (no shorter segment diverges alone)"


def _captured(program) -> list:
    """(index, graph) of the graphs the program compiled with grad that ran in one fresh evaluation at the
    leaves, each with its inputs there."""
    capture = program.capture
    values = [leaf.value.detach().clone().requires_grad_() for leaf in program.leaves]
    with capture.recording_inputs(), torch.enable_grad():
        for graph in capture.graphs:
            graph.inputs = None
        program(values)
    return [(i, g) for i, g in enumerate(capture.graphs) if g.grad_enabled and g.inputs is not None]


def locate_compiled_divergence(program, phase: str, seed: int = 0) -> Divergence | None:
    """The op (or fused segment) where ``program`` (a ``backends.compile.CompileProgram``) parts from eager in
    ``phase`` ('forward' or 'backward'), named with its module path and source line, with a standalone repro
    in ``details``; None when no piece of any captured graph diverges alone."""
    graphs = _captured(program)
    for index, graph in graphs:
        pieces = GraphPieces(graph.module, graph.inputs, [bool(f) for f in graph.requires_grad])
        search = PieceSearch(pieces, program, phase, seed)
        hit = search.run()
        if hit is None:
            continue
        start, end, result, method = hit
        where = f"graph {index + 1} of {len(program.capture.graphs)}" if len(graphs) > 1 else "graph"
        found = Found(pieces, start, end, result, where, search.compiles, method)
        return describe(found, program, phase)
    return None


# ------------------------------------------------------------------------------------------------ naming
def op_name(node: torch.fx.Node) -> str:
    """'gelu', 'mylib.softsign', 'view': what a node of dynamo's graph calls."""
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        name = str(target)
        return name[:-len(".default")] if name.endswith(".default") else name
    if node.op == "call_function":
        return getattr(target, "__name__", str(target))
    return str(target)


_PATH_PARTS = [(re.compile(r"getattr\((.*), '([^']*)'\)$"), r"\1.\2"),
               (re.compile(r"(.*)\._modules\['([^']*)'\]$"), r"\1.\2")]


def module_path(node: torch.fx.Node, module: torch.nn.Module | None) -> str | None:
    """The module path of the innermost module a node ran in ('' for the top module), from dynamo's
    ``nn_module_stack``: by identity where the program's module has it, else from dynamo's source string."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None if module is None else ""
    key, (source, _) = list(stack.items())[-1]
    names = {str(id(m)): name for name, m in module.named_modules()} if module is not None else {}
    if key in names:
        return names[key]
    changed = True
    while changed:
        changed = False
        for pattern, replacement in _PATH_PARTS:
            new = pattern.sub(replacement, source)
            changed, source = changed or new != source, new
    return source.split("module", 1)[-1].lstrip(".") if "L['self']" in source else source


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def user_source(node: torch.fx.Node) -> str | None:
    """``file.py:LINE`` of the innermost frame of the user's code in a node's stack trace."""
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    for file, line in reversed(frames):
        if not file.startswith((_TORCH_DIR, "<")) and not file.startswith(OWN_DIRS):
            return f"{Path(file).name}:{line}"
    return None


def describe(found: Found, program, phase: str) -> Divergence:
    """The Divergence of a found piece: named after its last op, with the segment, the method and a repro
    (run once here to confirm that it shows the divergence)."""
    last = found.segment[-1]
    gap, eager_gap = found.result.gap(phase)
    tolerance = max(ROUNDING_FACTOR * eps_of(program.dtype), 10 * eager_gap)
    gm, inputs, flags = found.pieces.piece(found.start, found.end, [last])
    code = repro(gm, inputs, flags, program.compiler, program.mode)
    details = {
        "localization": {"method": f"dynamo's {found.where} recompiled piece by piece against eager "
                                   f"float64 ({found.method})", "phase": phase, "relative_gap": gap,
                         "tolerance": tolerance, "compilations": found.compiles,
                         "segment": [op_name(n) for n in found.segment]},
        "repro": code,
        "repro_confirmed": confirm_repro(code, phase, tolerance, program.compile_settings),
    }
    return Divergence(module_path(last, program.module), found.result.node_name, op_name(last), user_source(last),
                      gap, tolerance, details)


# ------------------------------------------------------------------------------------------------ repro
_TORCH_NAMESPACES = ("aten", "prims", "higher_order", "_c10d_functional", "inductor", "quantized")


def _tensor_expression(value: torch.Tensor, requires_grad: bool) -> str:
    shape, dtype = tuple(value.shape), str(value.dtype)
    if value.is_floating_point():
        positive = value.numel() > 0 and bool((value > 0).all())
        made = f"torch.rand({shape}, dtype={dtype}) + 0.5" if positive else f"torch.randn({shape}, dtype={dtype})"
        return f"({made}).requires_grad_()" if requires_grad else made
    if value.numel() <= 64:  # indices, labels, masks: their values are the case's structure, kept as they are
        return f"torch.tensor({value.tolist()}, dtype={dtype})"
    if value.dtype == torch.bool:
        return f"torch.rand({shape}) > 0.5"
    high = int(value.max()) + 1 if value.numel() else 1
    return f"torch.randint({int(value.min()) if value.numel() else 0}, {high}, {shape}, dtype={dtype})"


def repro(gm: torch.fx.GraphModule, inputs: list, flags: list[bool], compiler: str, mode: str | None) -> str:
    """A standalone script: the piece as a function, random inputs of the same shapes, and the largest
    relative differences of its compiled forward and gradients from eager in the same dtype."""
    body = gm.code.strip().replace("def forward(self, ", "def f(").replace("def forward(self)", "def f()")
    namespaces = sorted({str(n.target).split(".")[0] for n in gm.graph.nodes
                         if isinstance(n.target, torch._ops.OpOverload)} - set(_TORCH_NAMESPACES))
    args = ",\n        ".join(_tensor_expression(v, flag) if isinstance(v, torch.Tensor) else repr(v)
                              for v, flag in zip(inputs, flags))
    mode_arg = f", mode={mode!r}" if mode else ""
    lines = ["import torch"]
    lines += [f"# torch.ops.{ns} is registered by your code: import it first" for ns in namespaces]
    lines += [body, "", "torch.manual_seed(0)", f"args = [{args}]",
              f"compiled = torch.compile(f, backend={compiler!r}{mode_arg}, dynamic=False)",
              "expected, got = f(*args), compiled(*args)",
              "rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()",
              "forward_gap = max(rel(a, b) for a, b in zip(got, expected))",
              "wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]",
              "v = [torch.randn_like(e) for e in expected]",
              "grads = lambda outs: torch.autograd.grad(outs, wrt, v, allow_unused=True, materialize_grads=True)",
              "backward_gap = max(rel(a, b) for a, b in zip(grads(got), grads(expected))) if wrt else 0.0",
              "print(f'forward: {forward_gap:.3g}  gradient: {backward_gap:.3g} (relative, compiled vs eager)')"]
    return "\n".join(lines) + "\n"


def confirm_repro(code: str, phase: str, tolerance: float, settings: Callable[[], ContextManager]) -> bool | str:
    """Run the repro (quietly) in a namespace of its own: True when it shows the divergence, False when its
    random inputs do not, or why it could not run."""
    import contextlib
    import io

    module = types.ModuleType("gradaudit_repro")  # dynamo looks the function's module up in sys.modules
    sys.modules[module.__name__] = module
    try:
        with contextlib.redirect_stdout(io.StringIO()), settings():
            exec(compile(code, "<gradaudit repro>", "exec"), module.__dict__)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    finally:
        del sys.modules[module.__name__]
    gap = module.__dict__["forward_gap" if phase == "forward" else "backward_gap"]
    return bool(gap > tolerance) or bool(math.isnan(gap))
