"""The functions an audit differentiates, and the three ways to differentiate them with torch.

``ForwardFunction`` is the case itself; ``GradientFunction`` wraps a function into ``x -> d<v, f(x)>/dx``, so
second order is first order applied to a gradient function (reverse over reverse; forward over reverse for JVPs).
"""
from __future__ import annotations

import copy
import re
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
import torch.autograd.forward_ad as fwAD

from gradaudit.errors import Unsupported
from gradaudit.core.kinds import Note

if TYPE_CHECKING:  # the core sees a backend only through the Program interface
    from gradaudit.backends.base import Program, Stats

Tensors = list[torch.Tensor]
# Torch's own words when forward mode cannot run something ("Trying to use forward AD with X that does not
# support it", "You must implement the jvp function ... forward mode AD"; and torch's forward-over-reverse of
# mse_loss writing into an efficient zero tensor, docs/torch-bugs.md): only these mean "skip forward mode".
# C++ custom Functions (torch::autograd::Function, torchvision's ops) have no forward mode at all: "jvp is not
# implemented for the c++ API of custom Function yet".
FORWARD_AD_UNSUPPORTED = re.compile(r"forward (mode )?AD|jvp function|jvp is not implemented"
                                    r"|derivative for .* is not implemented|ZeroTensors are immutable")
# torch.utils.checkpoint(use_reentrant=True) (HF's gradient checkpointing by default) refuses autograd.grad
ONLY_BACKWARD = re.compile(r"incompatible with \.grad\(\)")


class OracleFailure(Exception):
    """An oracle raised: a derivative computed only to be compared (double backward at order 2), not one of the
    primary quantities the case's own code computes (its outputs, its backward). Not the user's failure: the
    caller skips that oracle with a note (``cause`` says why)."""

    def __init__(self, oracle: str, cause: BaseException) -> None:
        super().__init__(f"{oracle}: {type(cause).__name__}: {cause}")
        self.oracle, self.cause = oracle, cause


class ForwardFunction:
    order = 1
    needs_grad = False
    # False once a backward is seen to change what it saved (see checks.reentrancy): every backward pass then
    # gets a forward of its own, on copies of the leaves, so one pass cannot corrupt the next or the point x.
    reentrant = True

    def __init__(self, program: Program) -> None:
        self.program = program
        self.stats: Stats = program.stats
        self.output_names = list(program.output_names)

    def outputs(self, xs: Tensors) -> Tensors:
        return self.program(xs)

    def holding(self) -> AbstractContextManager[None]:
        """Around a forward and the backward passes of its graph: the program keeps the values in its module
        until the block ends, for a backward that calls the module again (``Program.holding_values``)."""
        return self.program.holding_values()


class GradientFunction:
    """``x -> d<cotangent, inner(x)>/dx``, one output per leaf."""

    needs_grad = True

    def __init__(self, inner, cotangent: Tensors, leaf_names: list[str]) -> None:
        self.inner, self.cotangent = inner, cotangent
        self.order = inner.order + 1
        self.stats = inner.stats
        self.output_names = [f"grad[{name}]" for name in leaf_names]

    @property
    def reentrant(self) -> bool:
        return self.inner.reentrant

    def holding(self) -> AbstractContextManager[None]:
        return self.inner.holding()

    def outputs(self, xs: Tensors) -> Tensors:
        xs = [x if x.requires_grad else own_leaf(x, self.reentrant) for x in xs]
        with self.holding():
            ys = self.inner.outputs(xs)
            grads = gradients(ys, xs, self.cotangent, self.stats, create_graph=True)
        if not all(bool(torch.isfinite(y).all()) for y in ys):
            # Outside the function's domain (log at x < 0) its gradient formula may still be finite (1/x):
            # NaN says so, as the function itself does, so that steps stay in the domain at every order.
            grads = [g + float("nan") for g in grads]
        return grads


class CotangentFunction:
    """The backward of ``inner`` at a fixed point x as a function of its cotangent v (grad_output):
    ``v -> d<v, inner(x)>/dx = J(x)^T v``, one output per leaf. Linear in v, so finite differences are
    exact up to rounding; its reverse mode is the part of double backward that gradgradcheck also checks and a
    hold-v-fixed test never sees: a backward that returns its gradients without a graph (computed under
    ``no_grad`` or from detached values) gives 0 there."""

    needs_grad = True

    def __init__(self, gradient: GradientFunction, x: Tensors) -> None:
        self.inner, self.x = gradient.inner, x
        self.order, self.stats = gradient.order, gradient.stats
        self.output_names = gradient.output_names
        self.reentrant = gradient.reentrant

    def holding(self) -> AbstractContextManager[None]:
        return self.inner.holding()

    def at(self, x: Tensors) -> "CotangentFunction":
        """The same backward at another point x."""
        moved = copy.copy(self)
        moved.x = x
        return moved

    def outputs(self, vs: Tensors) -> Tensors:
        xs = [own_leaf(x, self.reentrant) for x in self.x]
        with self.holding():
            return gradients(self.inner.outputs(xs), xs, vs, self.stats, create_graph=True)

    def without_graph(self, vs: Tensors) -> list[str]:
        """The outputs (gradients) at v that are nonzero but carry no graph back to v: computed as constants."""
        with torch.enable_grad():
            grads = self.outputs([v.detach().requires_grad_() for v in vs])
        return [name for name, g in zip(self.output_names, grads) if not g.requires_grad and bool(g.ne(0).any())]


def own_leaf(x: torch.Tensor, shared: bool = True) -> torch.Tensor:
    """x as a leaf that requires grad: sharing x's memory, or (``shared`` False, for a backward that writes into
    what it saved) a copy of it."""
    x = x.detach()
    return (x if shared else x.clone()).requires_grad_()


def _dense(gradient: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if gradient is None:
        return torch.zeros_like(like)
    return gradient.to_dense() if gradient.is_sparse else gradient  # nn.Embedding(sparse=True)


def gradients(ys: Tensors, xs: Tensors, cotangent: Tensors, stats: Stats, create_graph: bool = False) -> Tensors:
    """One backward pass: ``d<cotangent, ys>/dxs``, zeros where an input does not reach the outputs."""
    pairs = [(y, v) for y, v in zip(ys, cotangent) if y.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in xs]
    # The gradient of the scalar <v, y>, not grad(ys, xs, grad_outputs=vs): the same numbers (its backward
    # hands exactly v to each y), but torch checks explicit grad_outputs' shapes with symbolic-shape helpers
    # whose first use imports sympy, 0.5 s of every process's first audit.
    scalar = sum(_inner(y, v) for y, v in pairs)
    try:
        grads = torch.autograd.grad(scalar, xs, retain_graph=True, create_graph=create_graph, allow_unused=True)
    except RuntimeError as exc:
        if not ONLY_BACKWARD.search(str(exc)):
            raise
        grads = accumulated_gradients(scalar, xs, create_graph)
    stats.backward_evals += 1
    return [_dense(g, x) for g, x in zip(grads, xs)]


def accumulated_gradients(scalar: torch.Tensor, xs: Tensors, create_graph: bool) -> list[torch.Tensor | None]:
    """``autograd.grad(scalar, xs)`` for a graph that only ``.backward()`` can run (a reentrant checkpoint runs a
    backward of its own inside): into the leaves' ``.grad``, which is cleared before and after. The leaves are
    the audit's own (``own_leaf``), so no gradient of the user's is touched."""
    saved = [x.grad for x in xs]
    for x in xs:
        x.grad = None
    try:
        scalar.backward(retain_graph=True, create_graph=create_graph)
        return [x.grad for x in xs]
    finally:
        for x, grad in zip(xs, saved):
            x.grad = grad


def _inner(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Re <v, y>, whose gradient with respect to y is v (torch's convention for complex y)."""
    v = v.to(device=y.device, dtype=y.dtype)
    if y.is_complex():
        return (v.conj() * y).real.sum()
    return (v * y).sum()


def evaluate(f, x: Tensors) -> Tensors:
    with torch.set_grad_enabled(f.needs_grad):
        return [y.detach() for y in f.outputs(x)]


def evaluate_batch(program: Program, points: list[Tensors]) -> list[Tensors]:
    """The case's outputs at many points in the program's batches (``Program.evaluate_batch``)."""
    with torch.no_grad():
        return [[y.detach() for y in outputs] for outputs in program.evaluate_batch(points)]


def vjps(f, x: Tensors, cotangents: list[Tensors], oracle: str | None = None) -> list[Tensors]:
    """Reverse mode: one forward, one backward per cotangent (a forward per cotangent, on copies of x, where
    the backward is not reentrant). ``oracle``: what the backward is when it is only an oracle (double backward
    at order 2): an exception there is an :class:`OracleFailure`, never the case's."""
    if not f.reentrant and len(cotangents) > 1:
        return [vjps(f, x, [v], oracle)[0] for v in cotangents]
    with torch.enable_grad(), f.holding():
        xs = [own_leaf(xi, f.reentrant) for xi in x]
        ys = f.outputs(xs)
        try:
            return [[g.detach() for g in gradients(ys, xs, v, f.stats)] for v in cotangents]
        except Exception as exc:
            if oracle is None:
                raise
            raise OracleFailure(oracle, exc) from exc


def jvp(f, x: Tensors, direction: list) -> Tensors:
    """Forward mode (forward over reverse for gradient functions); Unsupported when an op has no formula."""
    # (zeros made on the CPU and handed over as data: on XLA a fill on the device is a graph per shape)
    tangents = [torch.zeros(xi.shape, dtype=xi.dtype).to(xi.device) if ui is None else ui.to(xi.device)
                for xi, ui in zip(x, direction)]
    try:
        # Inputs require grad so that an output which depends on them but lost its tangent (an op without
        # a forward-mode formula drops it silently) is told apart from one that is constant.
        with fwAD.dual_level(), torch.enable_grad():
            xs = [fwAD.make_dual(own_leaf(xi, f.reentrant), ti) for xi, ti in zip(x, tangents)]
            out = []
            for y in f.outputs(xs):
                tangent = fwAD.unpack_dual(y).tangent
                if tangent is None and y.requires_grad:
                    raise Unsupported(f"{_creator(y)} drops the forward-mode tangent (no forward-AD formula)")
                out.append(torch.zeros_like(y) if tangent is None else tangent)
            return [o.detach() for o in out]
    except Unsupported:
        raise
    except Exception as exc:  # a custom Function without jvp, an op without a formula
        if not FORWARD_AD_UNSUPPORTED.search(str(exc)):
            raise  # the user's code failed: the audit could not run, never a skipped capability
        message = str(exc).strip().splitlines()
        raise Unsupported(f"{type(exc).__name__}: {message[0] if message else ''}") from exc


def _creator(tensor: torch.Tensor) -> str:
    node = tensor.grad_fn
    return node.name() if node is not None else "an op"


@contextmanager
def twice_differentiable_attention(skipped: list[Note]) -> Iterator[None]:
    """Fused CPU/CUDA attention kernels have no double backward; where second order meets one, it runs with
    the math kernel, the only one torch can differentiate twice (and the report says so)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    note = Note(what="fused attention kernels at order 2",
                reason="the fused kernel has no double backward; second order ran with the math kernel")
    if note not in skipped:
        skipped.append(note)
    with sdpa_kernel(SDPBackend.MATH):
        yield
