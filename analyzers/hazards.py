"""Static hazards: what one traced forward and its autograd graph show without any numerics.

Each hazard is a ``Finding(kind="hazard", severity="warning")`` with ``details["hazard"]`` one of
``no_gradient`` (a parameter or input the outputs do not depend on: dead, or cut off by ``detach``/no-grad),
``nondifferentiable_op`` (argmax, round, sign, floor, an integer cast... applied to a tensor that carries a
gradient: the gradient stops there or is zero), ``once_differentiable`` (a custom Function whose backward
raises on double backward), ``inplace_on_saved`` (a tensor saved for backward was modified in place: backward
will raise) and ``nondeterministic_backward_op`` (an op whose CUDA backward uses atomic adds; only for CUDA).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx
import torch
from torch.utils._pytree import tree_flatten

from gradaudit.core.kinds import FaultKind, Severity
from gradaudit.report import Finding
from gradaudit.analyzers.graph import NodeInfo
from gradaudit.analyzers.trace import OpRecord, Trace, trace_program

if TYPE_CHECKING:
    from gradaudit.backends.base import Program

# ops whose result is integer, or whose derivative is zero almost everywhere: a gradient does not get through
NONDIFFERENTIABLE_OPS = {
    "aten.argmax", "aten.argmin", "aten.argsort", "aten.round", "aten.round.decimals", "aten.sign", "aten.sgn",
    "aten.floor", "aten.ceil", "aten.trunc", "aten.fix", "aten.floor_divide", "aten.bucketize",
    "aten.searchsorted", "aten.heaviside", "aten.signbit",
}
REENTRANT_CHECKPOINT = "CheckpointFunctionBackward"  # torch.utils.checkpoint's node with use_reentrant=True
_CASTS = {"aten._to_copy", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.to", "aten.type_as"}
# autograd nodes whose CUDA backward accumulates with atomics (results vary from run to run)
NONDETERMINISTIC_CUDA_BACKWARD = {
    "IndexAddBackward0", "IndexSelectBackward0", "GatherBackward0", "EmbeddingBackward0",
    "EmbeddingBagBackward0", "IndexBackward0", "IndexPutBackward0", "ScatterAddBackward0",
    "ScatterReduceBackward0", "UpsampleBilinear2DBackward0", "UpsampleBilinear2DAaBackward0",
    "UpsampleBicubic2DBackward0", "UpsampleTrilinear3DBackward0", "UpsampleLinear1DBackward0",
    "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0", "AdaptiveMaxPool2DBackward0",
    "AvgPool3DBackward0", "MaxPool3DWithIndicesBackward0", "FractionalMaxPool2DBackward0",
    "GridSampler2DBackward0", "GridSampler3DBackward0", "ReflectionPad1DBackward0", "ReflectionPad2DBackward0",
    "ReflectionPad3DBackward0", "ReplicationPad1DBackward0", "ReplicationPad2DBackward0",
    "ReplicationPad3DBackward0", "NllLoss2DBackward0", "CtcLossBackward0", "CumsumBackward0",
    "PutBackward0", "TakeBackward0", "HistcBackward0", "EmbeddingDenseBackward0",
}


def _hazard(hazard: str, message: str, info: NodeInfo | None = None, *, wrt: str | None = None,
            where: tuple[str | None, str | None, str | None] = (None, None, None), **details) -> Finding:
    """A hazard warning, placed at a graph node (``info``) or at ``where`` = (op, module, source)."""
    node = info.name if info is not None and info.kind == "node" else None
    op, module, source = (info.op, info.module, info.source) if info is not None else where
    return Finding(FaultKind.HAZARD, message, wrt=wrt, node=node, op=op, module=module or None, source=source,
                   severity=Severity.WARNING, details={"hazard": hazard, **details})


def _where(module: str | None, source: str | None) -> str:
    parts = [f"module {module}" if module else "", f"at {source}" if source else ""]
    return " ".join(p for p in parts if p) or "in the top-level code"


def find_hazards(trace: Trace, device: str = "cpu", leaf_kinds: dict[str, str] | None = None) -> list[Finding]:
    """All static hazards of one traced forward (``device`` decides which ops are nondeterministic there;
    ``leaf_kinds`` names each leaf 'parameter' or 'input' in the messages)."""
    return (_unreached_leaves(trace, leaf_kinds or {}) + _nondifferentiable_ops(trace) + _detaches(trace)
            + _node_hazards(trace, device))


def _unreached_leaves(trace: Trace, leaf_kinds: dict[str, str]) -> list[Finding]:
    """Leaves that no output depends on. Behind a reentrant checkpoint (``checkpoint(use_reentrant=True)``, HF's
    gradient checkpointing) the graph has no edges to what the checkpointed code used: its backward runs that
    code again with grad on. A leaf an op used there is not called dead."""
    graph, reached = trace.graph, set()
    for node, data in graph.nodes(data=True):
        if data.get("kind") == "output":
            reached.add(node)
            reached.update(nx.descendants(graph, node))
    recomputed = set()
    if any(graph.nodes[node].get("name") == REENTRANT_CHECKPOINT for node in reached):
        used = {id(t) for record in trace.ops for t in tree_flatten((record.args, record.kwargs))[0]
                if isinstance(t, torch.Tensor) and not record.grad_enabled}
        recomputed = {name for name, value in zip(trace.leaf_names, trace.values) if id(value) in used}
    findings = []
    for name in trace.leaf_names:
        if f"leaf:{name}" not in reached and name not in recomputed:
            kind = leaf_kinds.get(name, "leaf")
            findings.append(_hazard("no_gradient", f"{kind} {name} receives no gradient: no output depends on it "
                                    "through autograd (unused, detached, or computed under no_grad)", wrt=name,
                                    leaf_kind=kind))
    return findings


def _casts_to_integer(record: OpRecord) -> bool:
    if record.name not in _CASTS:
        return False
    dtype = record.kwargs.get("dtype") or next((a for a in record.args if isinstance(a, torch.dtype)), None)
    return isinstance(dtype, torch.dtype) and not (dtype.is_floating_point or dtype.is_complex)


def _nondifferentiable_ops(trace: Trace) -> list[Finding]:
    """Non-differentiable ops applied to tensors that carry a gradient, outside custom Functions."""
    findings = []
    for record in trace.ops:
        if record.function is not None or not record.grad_enabled or not any(record.arg_requires_grad):
            continue
        name, cast_to_int = record.name, _casts_to_integer(record)
        if name not in NONDIFFERENTIABLE_OPS and not cast_to_int:
            continue
        what = "an integer cast" if cast_to_int else name
        effect = ("the gradient is cut here" if cast_to_int or name.startswith(("aten.arg", "aten.bucket",
                  "aten.search", "aten.signbit")) else "its derivative is zero almost everywhere")
        finding = _hazard("nondifferentiable_op", f"{what} on a tensor that carries a gradient "
                                                  f"({_where(record.module, record.source)}): {effect}",
                          where=(name, record.module, record.source), op=name, index=record.index)
        findings.append(finding)
    return findings


def _detaches(trace: Trace) -> list[Finding]:
    """The user's own ``detach()`` calls on tensors that carry a gradient (traced with ``watch_detach``)."""
    findings = []
    for call in trace.detaches:
        finding = _hazard("nondifferentiable_op", f"detach() on a tensor that carries a gradient "
                                                  f"({_where(call['module'], call['source'])}): the gradient is cut here",
                          where=("detach", call["module"], call["source"]), op="detach")
        findings.append(finding)
    return findings


def _node_hazards(trace: Trace, device: str) -> list[Finding]:
    """once_differentiable Functions, tensors saved for backward modified in place, CUDA atomics."""
    findings = []
    for info in trace.infos.values():
        if info.kind != "node" or info.node is None:
            continue
        forward_cls = getattr(info.node, "_forward_cls", None)
        if isinstance(forward_cls, type) and _once_differentiable(forward_cls):
            findings.append(_hazard("once_differentiable",
                                    f"custom Function {forward_cls.__name__} is @once_differentiable: its backward "
                                    f"cannot be differentiated (order-2 checks and double backward raise)", info))
        if _saved_modified(info.node):
            findings.append(_hazard("inplace_on_saved",
                                    f"{info.name} saved a tensor for backward that was later modified in place "
                                    f"({_where(info.module, info.source)}): backward will raise", info))
        if device.startswith("cuda") and info.name in NONDETERMINISTIC_CUDA_BACKWARD:
            findings.append(_hazard("nondeterministic_backward_op",
                                    f"{info.name} accumulates with atomic adds on CUDA: its gradients may differ "
                                    f"between runs ({_where(info.module, info.source)})", info))
    return findings


def _once_differentiable(cls: type) -> bool:
    backward = getattr(cls, "backward", None)
    wrapped = getattr(backward, "__wrapped__", None)
    code = getattr(backward, "__code__", None)
    return wrapped is not None and code is not None and code.co_filename.endswith(
        ("autograd/function.py", "autograd\\function.py"))


def _saved_modified(node) -> bool:
    """Unpacking a saved tensor checks its version counter; a mismatch raises."""
    names = [n for n in dir(node) if n.startswith("_saved_")]
    if hasattr(node, "saved_tensors"):
        names.append("saved_tensors")
    for name in names:
        try:
            getattr(node, name)
        except RuntimeError as exc:
            if "modified by an inplace operation" in str(exc):
                return True
        except Exception:
            continue
    return False


def static_findings(program: Program) -> list[Finding]:
    """Static hazards of a loaded eager Program (for ``gradaudit run --static-only``): one traced forward,
    no numerics."""
    trace = trace_program(program, watch_detach=True)
    kinds = {leaf.name: leaf.kind for leaf in program.leaves}
    return find_hazards(trace, str(program.device), kinds)
