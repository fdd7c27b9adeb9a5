"""Local probe tests: one autograd node as a function of its recorded forward inputs, checked in isolation by the
checker's probe test (``core.probe``). The localizer uses them to tell candidate nodes apart and, at order 2 and
where re-runs diverge, to find the culprit node by node."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradaudit.analyzers.trace import NodeInfo
from gradaudit.backends.base import Stats
from gradaudit.case import is_differentiable
from gradaudit.core.differentiate import gradients
from gradaudit.core.followups import nonsmooth_at_x
from gradaudit.core.numerics import is_finite, rademacher_like, real
from gradaudit.core.probe import Analytical, Numerics, ProbeSpace, probe_group


def at_points(f: Callable) -> Callable:
    """A one-point function as the many-point evaluator the numerics take."""
    return lambda points: [f(z) for z in points]


@dataclass
class LocalResult:
    failed: bool
    excess: float
    analytical: float | None = None
    numerical: float | None = None
    tolerance: float | None = None
    kink: bool = False

    def to_dict(self) -> dict:
        return {"failed": self.failed, "excess": self.excess, "analytical": self.analytical,
                "numerical": self.numerical, "error_bar": self.tolerance, "kink": self.kink}


def _recorded_inputs(args, kwargs, versions: list[int], requires_grad: list[bool]):
    """(flat inputs, spec, positions of the differentiable ones) of a recorded call; None when an input was
    changed in place since (its version moved) or nothing is differentiable."""
    flat, spec = tree_flatten((args, kwargs))
    tensors = [(k, v) for k, v in enumerate(flat) if isinstance(v, torch.Tensor)]
    if [v._version for _, v in tensors] != versions:
        return None
    positions = [k for (k, v), rg in zip(tensors, requires_grad) if rg and is_differentiable(v)]
    return (flat, spec, positions) if positions else None


def local_function(info: NodeInfo) -> tuple[Callable, list[torch.Tensor]] | None:
    """The node as a function of its differentiable forward inputs, and the recorded inputs; None when the node
    cannot be evaluated in isolation (inputs changed in place since, or not recorded)."""
    if info.function is not None:
        call = info.function
        recorded = _recorded_inputs(call.args, call.kwargs, call.versions, call.requires_grad)
        cls, all_outputs = call.cls, True
        invoke = lambda a, kw: cls.apply(*a, **kw)
    elif info.record is not None and info.category in ("op", "custom_op"):
        record = info.record
        recorded = _recorded_inputs(record.args, record.kwargs, record.arg_versions, record.arg_requires_grad)
        mutable, func, all_outputs = record.mutable, record.func, info.category == "custom_op"
        invoke = lambda a, kw: func(*a, **kw)
        if mutable:
            base = invoke
            invoke = lambda a, kw: base(*[x.clone() if isinstance(x, torch.Tensor) else x for x in a], **kw)
    else:
        return None
    if recorded is None:
        return None
    flat, spec, positions = recorded
    constants = [v.detach() if isinstance(v, torch.Tensor) else v for v in flat]

    def fn(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        values = list(constants)
        for k, x in zip(positions, xs):
            values[k] = x
        args, kwargs = tree_unflatten(values, spec)
        outs = [o for o in tree_flatten(invoke(args, kwargs))[0] if is_differentiable(o)]
        return outs if all_outputs else outs[:1]

    return fn, [flat[k].detach().clone() for k in positions]


def _backward_function(fn: Callable, n_inputs: int) -> Callable:
    """(a, g) -> J(a)^T g with create_graph: the node's backward as a function of inputs and incoming grad."""
    def backward(zs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [z if z.requires_grad else z.detach().requires_grad_() for z in zs[:n_inputs]]
        return gradients(fn(xs), xs, zs[n_inputs:], Stats(), create_graph=True)
    return backward


def local_probe(fn: Callable, xs: list[torch.Tensor], test: str, generator: torch.Generator,
                probes: int = 2, nearby: bool = True) -> LocalResult:
    """The checker's probe test (``core.probe``) on one node in isolation: ``reverse`` (VJP vs finite
    differences), ``forward`` (JVP vs finite differences, elementwise), ``double`` or ``double_forward`` (the
    same on the node's backward B(a, g)). A failure where the function is provably non-smooth (a kink) is
    re-checked at a nearby point; passing there marks a kink, not a fault. Where it is smooth (a removable
    singularity such as sinc's at 0) a failure is the node's, however close the points nearby pass."""
    if test in ("double", "double_forward"):
        with torch.enable_grad():
            outs = fn([x.detach().requires_grad_() for x in xs])
        gs = [rademacher_like(o.detach(), generator) for o in outs]
        fn, xs = _backward_function(fn, len(xs)), list(xs) + gs
        test = "forward" if test == "double_forward" else "reverse"
    dtype = min((real(x).dtype for x in xs), key=lambda d: torch.finfo(d).bits)
    space = ProbeSpace(list(xs), [f"input {i}" for i in range(len(xs))], dtype, generator)

    def evaluate(zs):
        with torch.enable_grad():
            return [o.detach() for o in fn([z.detach().requires_grad_() for z in zs])]
    numerics = Numerics(at_points(evaluate), space)
    members = list(range(len(xs)))

    def at(point) -> tuple[LocalResult, Analytical]:
        analytical = _local_analytical(fn, point, generator, forward=test == "forward")
        outcome = probe_group(numerics, analytical, point, members, probes)[
            "forward" if test == "forward" else "reverse"]
        return LocalResult(outcome.failed, outcome.excess, outcome.analytical, outcome.numerical,
                           outcome.tolerance), analytical

    result, analytical = at(xs)
    if result.failed and nearby and nonsmooth_at_x(numerics, analytical, members) is not None:
        shifted = space.nearby_point(lambda point: is_finite(evaluate(point)))
        if shifted is not None and not at(shifted)[0].failed:
            result.failed, result.kink = False, True
    return result


def _local_analytical(fn: Callable, point: list[torch.Tensor], generator: torch.Generator,
                      forward: bool) -> Analytical:
    """The analytical side of a node's function at a point: one VJP, and JVPs when the test is forward mode."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() for x in point]
        outs = fn(leaves)
        w = [rademacher_like(o.detach(), generator) for o in outs]
        pairs = [(o, v) for o, v in zip(outs, w) if o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], leaves, [v for _, v in pairs],
                                    allow_unused=True) if pairs else [None] * len(leaves)
        grads = [torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, leaves)]

    def tangents(u: list) -> list[torch.Tensor]:
        with fwAD.dual_level(), torch.enable_grad():
            duals = [fwAD.make_dual(x.detach().requires_grad_(), t if t is not None else torch.zeros_like(x))
                     for x, t in zip(point, u)]
            outs = fn(duals)
            found = [fwAD.unpack_dual(o).tangent for o in outs]
            return [torch.zeros_like(o) if t is None else t.detach() for t, o in zip(found, outs)]
    return Analytical([w], [grads], tangents if forward else (lambda u: None))


