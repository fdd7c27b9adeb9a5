"""Tracing one forward of a Program: every op below autograd, with its module path, source line and the autograd
node it made.

One forward runs with the leaves as fresh ``requires_grad`` tensors under two observers:

* forward pre-/post-hooks on every submodule of ``program.module`` keep the current module path;
* a ``TorchDispatchMode`` sees every aten (or ``torch.library``) op below autograd with its real output tensors.
  Their ``grad_fn`` is set once the op has returned through autograd, so each recorded output is resolved at the
  entry of the next op (or at the end of the forward): ``output.grad_fn`` is the autograd node the op made.

A custom ``autograd.Function`` runs its forward under no-grad, so its inner ops make no nodes; the op that
produced the Function's output carries the Function's own node (``BadGeluBackward``), which is named after the
Function and placed at the ``.apply`` call (module path and source line of the call, read from the stack).

The recorded ops become the autograd graph of :mod:`gradaudit.analyzers.graph`; a :class:`Trace` holds both.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch
import torch.autograd.forward_ad as fwAD
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gradaudit.analyzers.graph import NodeInfo, graph_of
from gradaudit.paths import OWN_DIRS

if TYPE_CHECKING:
    from gradaudit.backends.base import Program

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
        """The op writes into one of its arguments (``add_``, ``copy_``)."""
        return bool(getattr(self.func, "_schema", None) is not None and self.func._schema.is_mutable)

    @property
    def is_view(self) -> bool:
        """The op returns a view of its input (``view``, ``t``, ``select``)."""
        return bool(getattr(self.func, "is_view", False))


class ModuleTracker:
    """Forward pre-/post-hooks on every submodule: ``current`` is the dotted path of the innermost module whose
    forward is running ('' for the top module)."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.module, self.stack, self.handles = module, [], []

    @property
    def current(self) -> str:
        """The dotted path of the module whose forward is running now."""
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
    """'aten.addmm' for ``aten.addmm.default``: the overload name dropped where it is the usual one."""
    name = str(func)
    for suffix in (".default", ".Tensor", ".Scalar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Recorder(TorchDispatchMode):
    """Records every op below autograd (:class:`OpRecord`) and, once known, the autograd node of each output."""

    def __init__(self, tracker: ModuleTracker, tangents: bool) -> None:
        super().__init__()
        self.tracker, self.tangents = tracker, tangents
        self.ops: list[OpRecord] = []
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # outputs whose grad_fn is not known yet
        self.pending_tangent: list[tuple[int, int, torch.Tensor]] = []
        self.resolved: dict[tuple[int, int], tuple[Any, int]] = {}  # (op, pos) -> (node, output_nr)
        self.tangent_of: dict[tuple[int, int], torch.Tensor] = {}

    def resolve(self, final: bool = False) -> None:
        """Map the pending outputs whose ``grad_fn`` is now set to their node (``final``: after the forward,
        drop the rest, and read the forward-mode tangents)."""
        keep = []
        for i, pos, tensor in self.pending:
            try:
                node = tensor.grad_fn
            except RuntimeError:  # a no_grad view whose base was since written with grad on: torch refuses
                continue  # to say (torchdiffeq's adjoint solver makes them); it has no node of ours either
            if node is not None:
                self.resolved[(i, pos)] = (node, tensor.output_nr)
                if self.tangents:
                    self.pending_tangent.append((i, pos, tensor))
            elif not final and len(self.ops) - i < 4096:
                keep.append((i, pos, tensor))
        self.pending = keep
        if self.tangents and final:  # unpack_dual works above autograd only: after the forward
            for i, pos, tensor in self.pending_tangent:
                tangent = fwAD.unpack_dual(tensor).tangent
                if tangent is not None:
                    self.tangent_of[(i, pos)] = tangent.detach().clone()
            self.pending_tangent = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.resolve()
        out = func(*args, **kwargs)
        frame = sys._getframe(1)
        user = _user_frame(frame)
        source, file, line = _where(user)
        caller = frame  # the first frame outside gradaudit: the user's when the user called the op directly
        while caller is not None and caller.f_code.co_filename.startswith(OWN_DIRS):
            caller = caller.f_back
        direct = caller is not None and caller is user
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
        """What is known about one graph node."""
        return self.infos[node_id]

    def leaf_id(self, name: str) -> str | None:
        """The graph id of the leaf named ``name`` ('fc1.weight', 'args[0]'), or None."""
        node_id = f"leaf:{name}"
        return node_id if node_id in self.infos else None


def _leaf_values(program: Program, values=None) -> list[torch.Tensor]:
    source = values if values is not None else [leaf.value for leaf in program.leaves]
    return [v.detach().clone().requires_grad_() for v in source]


def trace_program(program: Program, values: list[torch.Tensor] | None = None, *, tangents: list | None = None,
                  module_hooks: bool = True, watch_detach: bool = False) -> Trace:
    """Run one forward of ``program`` under the recorder and build the graph. ``values`` are the leaf tensors
    to use (fresh ``requires_grad`` clones of the program's leaves by default; given ones are used as they are,
    so the caller can differentiate with respect to them). With ``tangents`` the forward runs in forward-mode
    AD (the leaves made dual with these tangents; None for a zero tangent) and the tangent of every recorded
    output is kept in ``trace.tangents``."""
    values = _leaf_values(program) if values is None else values
    tracker = ModuleTracker(program.module if module_hooks else None)  # None for a function: no module paths
    recorder = _Recorder(tracker, tangents is not None)
    watcher = _DetachWatcher(tracker) if watch_detach and tangents is None else None
    with torch.enable_grad(), tracker:
        if tangents is not None:
            with fwAD.dual_level():
                duals = [v if t is None else fwAD.make_dual(v, t) for v, t in zip(values, tangents)]
                with recorder:
                    outputs = program(duals)
                recorder.resolve()
                recorder.resolve(final=True)
        else:
            with watcher or contextlib.nullcontext(), recorder:
                outputs = program(values)
            recorder.resolve(final=True)
    names = [leaf.name for leaf in program.leaves]
    output_names = list(program.output_names)
    infos, id_of, graph = graph_of(recorder.resolved, recorder.ops, values, names, outputs, output_names)
    return Trace(values, names, outputs, output_names, recorder.ops, infos, id_of, graph, recorder.tangent_of,
                 watcher.calls if watcher is not None else [])


def build_graph(program: Program) -> nx.DiGraph:
    """The autograd graph of one forward of an eager Program (see :mod:`gradaudit.analyzers.graph` for its
    shape)."""
    return trace_program(program).graph
