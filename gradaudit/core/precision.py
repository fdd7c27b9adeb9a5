"""The precision a computation really runs at, seen in one forward.

A float64 audit of real code is often not float64 throughout: Llama's RMSNorm and T5's layer norm compute their
variance in float32 (``h.to(torch.float32)``), causal-LM losses upcast only to float32 (``logits.float()``),
fused kernels cast to float32 inside. Finite differences through such a section carry float32 rounding, and an
error model built on float64's eps raises false alarms there, or hides bugs behind bars it cannot explain.

One forward runs under a ``TorchDispatchMode`` that sees every aten op below autograd with its inputs and
outputs. An op on the differentiated path (an input requires grad) whose floating output is coarser than the
finest precision among its path inputs is where the precision drops; its module path (forward hooks) and the
user's source line are kept. The coarsest floating dtype on the path, the outputs' included, is the precision
the numerics must assume (``Precision.dtype``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gradaudit.paths import is_own_file

MAX_DROPS = 16  # distinct places named (a deep model repeats the same norm in every layer)
_TORCH_DIR = torch.__file__.rsplit("/", 1)[0]


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a complex dtype's parts (float64 for complex128); real dtypes are their own."""
    return {torch.complex128: torch.float64, torch.complex64: torch.float32,
            torch.complex32: torch.float16}.get(dtype, dtype)


def resolution_of(dtype: torch.dtype) -> float:
    """The rounding unit of a floating dtype (complex: of its parts)."""
    return torch.finfo(real_dtype(dtype)).eps


def coarsest(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """The floating dtype with the largest rounding unit (bfloat16 over float16 over float32 over float64)."""
    return max(dtypes, key=resolution_of)


@dataclass(frozen=True)
class Drop:
    """One place where the computation leaves the audited precision: an op inside the forward (``section``)
    or an output of the program (``output``; a one-element output is named a loss)."""

    dtype: str  # 'float32'
    what: str = "section"  # section | output
    at: str | None = None  # the module path ('' is the top module)
    op: str | None = None  # 'aten._to_copy'
    source: str | None = None  # the user's 'file.py:41'
    output: str | None = None  # for outputs: 'loss' or 'output out[0]'

    def to_note(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Precision:
    """The audited precision, the coarsest one on the differentiated path, and where it drops."""

    audited: torch.dtype
    dtype: torch.dtype  # the coarsest floating dtype on the path (== audited where nothing drops)
    drops: list[Drop] = field(default_factory=list)

    @property
    def mixed(self) -> bool:
        return resolution_of(self.dtype) > resolution_of(self.audited)

    def notes(self) -> list[dict]:
        return [d.to_note() for d in self.drops]


def _floating(value) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def _user_source() -> str | None:
    """``file.py:41`` of the innermost frame outside torch and gradaudit (the user's line that ran the op)."""
    frame = sys._getframe(2)
    while frame is not None:
        file = frame.f_code.co_filename
        if not (file.startswith(_TORCH_DIR) or file.startswith("<") or is_own_file(file)):
            return f"{file.rsplit('/', 1)[-1]}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _op_name(func) -> str:
    name = str(func)
    return name[: -len(".default")] if name.endswith(".default") else name


class _PrecisionWatch(TorchDispatchMode):
    """Records the floating dtypes produced on the differentiated path, and the ops where they get coarser."""

    def __init__(self, module_path: Callable[[], str | None]) -> None:
        super().__init__()
        self.module_path = module_path
        self.dtypes: set[torch.dtype] = set()
        self.drops: dict[tuple, Drop] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        on_path = [a for a in tree_flatten((args, kwargs))[0] if _floating(a) and a.requires_grad]
        if on_path:
            produced = [o.dtype for o in tree_flatten(out)[0] if _floating(o)]
            self.dtypes.update(produced)
            finest = min((resolution_of(a.dtype) for a in on_path))
            coarser = [d for d in produced if resolution_of(d) > finest]
            if coarser and len(self.drops) < MAX_DROPS:
                drop = Drop(str(coarsest(coarser)).replace("torch.", ""), at=self.module_path(),
                            op=_op_name(func), source=_user_source())
                self.drops.setdefault((drop.dtype, drop.at, drop.op, drop.source), drop)
        return out


class _ModulePath:
    """The dotted path of the innermost module whose forward runs (forward pre-/post-hooks)."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.module, self.stack, self.handles = module, [], []

    def current(self) -> str | None:
        return self.stack[-1] if self.stack else None

    def __enter__(self) -> "_ModulePath":
        for name, sub in self.module.named_modules() if self.module is not None else ():
            self.handles.append(sub.register_forward_pre_hook(lambda m, a, name=name: self._push(name)))
            self.handles.append(sub.register_forward_hook(lambda m, a, o: self._pop(), always_call=True))
        return self

    def _push(self, name: str) -> None:  # (hooks returning None leave the module's arguments and output alone)
        self.stack.append(name)

    def _pop(self) -> None:
        if self.stack:
            self.stack.pop()

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def output_drops(outputs: Sequence[torch.Tensor], names: Sequence[str], audited: torch.dtype) -> list[Drop]:
    """Outputs rounded coarser than the audited precision (a float32 loss in a float64 audit)."""
    drops = []
    for name, y in zip(names, outputs):
        if _floating(y) and resolution_of(y.dtype) > resolution_of(audited):
            what = "loss" if y.numel() == 1 else f"output {name}"
            drops.append(Drop(str(real_dtype(y.dtype)).replace("torch.", ""), what="output", output=what))
    return drops


def detect_precision(forward: Callable[[list[torch.Tensor]], list[torch.Tensor]], leaves: Sequence[torch.Tensor],
                     output_names: Sequence[str] = (), module: torch.nn.Module | None = None) -> Precision:
    """Run ``forward`` once at ``leaves`` (fresh tensors requiring grad) and report the coarsest precision on the
    differentiated path, with the places it drops (outputs first). The audited precision is the leaves' finest
    floating dtype."""
    floating = [x for x in leaves if _floating(x)]
    audited = min((real_dtype(x.dtype) for x in floating), key=resolution_of, default=torch.float64)
    xs = [x.detach().requires_grad_() if _floating(x) else x for x in leaves]
    with torch.enable_grad(), _ModulePath(module) as path, _PrecisionWatch(path.current) as watch:
        outputs = forward(xs)
    differentiable = [y for y in outputs if _floating(y) and y.requires_grad]
    drops = output_drops(outputs, output_names or [f"output[{i}]" for i in range(len(outputs))], audited)
    dtypes = [audited] + [real_dtype(d) for d in watch.dtypes] + [real_dtype(y.dtype) for y in differentiable]
    return Precision(audited, coarsest(dtypes), drops + list(watch.drops.values()))


class _WithoutDownCasts(TorchDispatchMode):
    """Runs every op that asks for a floating dtype coarser than its finest floating input (``h.to(float32)``,
    ``softmax(..., dtype=float32)``, ``logits.float()``) at that input's dtype instead: the program's function
    with its float32 sections computed in float64."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        wanted = kwargs.get("dtype")
        if isinstance(wanted, torch.dtype) and wanted.is_floating_point:
            inputs = [a.dtype for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor) and a.is_floating_point()]
            finest = min(inputs, key=resolution_of, default=wanted)
            if resolution_of(finest) < resolution_of(wanted):
                kwargs = {**kwargs, "dtype": finest}
        return func(*args, **kwargs)


def without_down_casts(values: Callable[[list], list], x: list,
                       eps: float) -> tuple[Callable[[list], list], bool]:
    """``values`` (points -> the function's values at each) run with the computation's down-casts removed, where
    that is the same function at ``x`` up to the coarse precision's rounding (``eps``); else ``values`` itself
    (a kernel that refuses float64, a forward that branches on its dtype). Also: whether the casts were removed
    (the values then carry the leaves' precision, not the coarse one).

    Why: finite differences through a float32 section see its rounding steps, so a float64 audit resolved only
    ~1e-4 there (a 1e-4 rotate_half error behind Llama's float32 RMSNorm passed). Autograd differentiates a cast
    as the identity: the function the analytical gradients are exact for is the one without the cast, which
    runs at float64's noise. The analytical side still rounds in float32; its measured spread
    (checks.measure_gradient_noise) covers that."""
    def run(points: list) -> list:
        with _WithoutDownCasts():
            return values(points)
    try:
        promoted, plain = run([x])[0], values([x])[0]
    except Exception:  # (the plain forward ran at x: the promoted one is what failed)
        return values, False
    if all(_alike(a, b, eps) for a, b in zip(promoted, plain)):
        return run, True
    return values, False


SAME_FUNCTION_UNITS = 1e3  # rounding units of the coarse precision two runs of one function stay within


def _alike(promoted: torch.Tensor, plain: torch.Tensor, eps: float) -> bool:
    """Whether two runs' outputs are the same values up to ``SAME_FUNCTION_UNITS`` roundings of their scale."""
    if promoted.shape != plain.shape:
        return False
    a, b = (torch.view_as_real(t) if t.is_complex() else t for t in (promoted, plain))
    a, b = a.double(), b.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return bool(torch.equal(torch.isfinite(a), torch.isfinite(b)))
    scale = float(b.abs().max()) if b.numel() else 0.0
    return b.numel() == 0 or float((a - b).abs().max()) <= SAME_FUNCTION_UNITS * eps * max(scale, 1e-300)
