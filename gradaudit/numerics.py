"""The math core: numerical directional derivatives with an error bar, and the tolerances built on them.

Everything works on lists of tensors (one per leaf or output). Complex tensors are handled through their real
views, which matches torch's convention: for a complex output y and cotangent v, ``grad(y, x, v)`` is the
real gradient of ``<view_as_real(v), view_as_real(y)>`` read back as a complex tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Tensors = list[torch.Tensor]

# The numerical error estimate is a difference of two estimates; allow a few times it before calling a mismatch.
ERROR_BAR_SAFETY = 4.0
# Rounding noise in an output element, as a multiple of eps times its output tensor's largest magnitude.
ROUNDING_FLOOR = 16.0
# Rounding in analytical gradients: a generous multiple of eps times the magnitude of the summed terms.
ROUNDING_FACTOR = 64.0


def real(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def inner(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    """Real inner product of two lists of tensors (None stands for zeros)."""
    total = 0.0
    for x, y in zip(a, b):
        if x is not None and y is not None:
            total += float((real(x).double() * real(y).double()).sum())
    return total


def abs_inner(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    total = 0.0
    for x, y in zip(a, b):
        if x is not None and y is not None:
            total += float((real(x).double().abs() * real(y).double().abs()).sum())
    return total


def eps_of(dtype: torch.dtype) -> float:
    if dtype.is_complex:
        dtype = torch.float64 if dtype == torch.complex128 else torch.float32
    return torch.finfo(dtype).eps


def step_size(dtype: torch.dtype) -> float:
    """Central differences balance truncation (h^2) against rounding (eps/h): h ~ eps^(1/3)."""
    return 2.0 * eps_of(dtype) ** (1.0 / 3.0)


def shifted(x: Tensors, direction: Sequence[torch.Tensor | None], t: float) -> Tensors:
    return [xi if ui is None else xi + t * ui for xi, ui in zip(x, direction)]


@dataclass
class NumericalDerivative:
    """A directional derivative J·u (real views of the outputs) with an elementwise error bar."""

    value: Tensors
    error: Tensors


# Functions are evaluated at many points at once: a backend that can batch (an exported graph in a runtime)
# serves all the points of one derivative in one run.
Evaluate = Callable[[list[Tensors]], list[Tensors]]


def _quotient(plus: Tensors, minus: Tensors, h: float, eps: float) -> tuple[Tensors, Tensors]:
    plus = [real(t).double() for t in plus]
    minus = [real(t).double() for t in minus]
    quotient = [(p - m) / (2 * h) for p, m in zip(plus, minus)]
    # Rounding error of an output element is relative to the terms summed into it, not to the element: an
    # entry that cancels to ~0 (the gradient of a bias before batch norm) still carries the noise of the
    # computation's scale, taken as the largest output magnitude.
    magnitudes = [p.abs() + m.abs() for p, m in zip(plus, minus)]
    scale = max((float(m.max()) for m in magnitudes if m.numel()), default=0.0)
    rounding = [eps * (m + ROUNDING_FLOOR * scale) / (2 * h) for m in magnitudes]
    return quotient, rounding


def central_difference(f: Evaluate, x: Tensors, u, h: float) -> Tensors:
    """One central difference quotient, no error bar: for cheap comparisons of large errors."""
    plus, minus = f([shifted(x, u, h), shifted(x, u, -h)])
    return _quotient(plus, minus, h, 0.0)[0]


def directional_derivative(f: Evaluate, x: Tensors, u, h: float, eps: float) -> NumericalDerivative:
    """Richardson extrapolation of central differences at h and h/2; their disagreement (which holds both the
    truncation and the rounding error of this evaluation) plus a rounding floor is the error bar."""
    plus, minus, plus_half, minus_half = f([shifted(x, u, h), shifted(x, u, -h),
                                            shifted(x, u, h / 2), shifted(x, u, -h / 2)])
    coarse, _ = _quotient(plus, minus, h, eps)
    fine, rounding = _quotient(plus_half, minus_half, h / 2, eps)
    value = [(4 * b - a) / 3 for a, b in zip(coarse, fine)]
    error = [(b - a).abs() + 4 * r for a, b, r in zip(coarse, fine, rounding)]
    return NumericalDerivative(value, error)


def one_sided_derivatives(f: Evaluate, x: Tensors, u, h: float) -> tuple[float, float]:
    """Forward and backward difference quotients of a scalar-valued f: they differ at a kink."""
    here, ahead, behind = (float(real(y[0]).double().sum()) for y in f([x, shifted(x, u, h), shifted(x, u, -h)]))
    return (ahead - here) / h, (here - behind) / h


def probe_tolerance(numerical: NumericalDerivative, cotangent: Tensors, gradient: Sequence, direction: Sequence,
                    eps: float, model_error: float = 0.0) -> float:
    """How far ``<gradient, direction>`` may sit from ``<cotangent, J·u>`` before it is a real mismatch.
    ``model_error`` is the relative error a backend's approximations of elementary functions add (0 where
    they are accurate to rounding)."""
    numerical_error = abs_inner([real(v) for v in cotangent], numerical.error)
    magnitude = abs_inner(gradient, direction) + abs_inner([real(v) for v in cotangent], numerical.value)
    return ERROR_BAR_SAFETY * numerical_error + (ROUNDING_FACTOR * eps + model_error) * magnitude + 1e-300


def elementwise_tolerance(numerical: NumericalDerivative, eps: float, model_error: float = 0.0) -> Tensors:
    """Per-output tolerance for comparing a forward-mode J·u with the numerical one."""
    scale = max((float(v.abs().mean()) for v in numerical.value if v.numel()), default=0.0)
    return [ERROR_BAR_SAFETY * e + (ROUNDING_FACTOR * eps + model_error) * (v.abs() + scale) + 1e-300
            for v, e in zip(numerical.value, numerical.error)]


def model_error_of(drift: float, eps: float) -> float:
    """A backend whose forward drifts from float64 eager by more than rounding approximates some elementary
    function (XLA's float64 erf to ~1e-8): its derivatives then differ from the exact formulas by more than
    the drift itself (the approximation's error oscillates). sqrt(drift) bounds that and stays far below the
    percent-level errors of real faults."""
    return drift ** 0.5 if drift > ROUNDING_FACTOR * eps else 0.0


def rademacher_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random signs (+-1; on real and imaginary parts for complex tensors), drawn on the CPU from a seeded
    generator so that every backend sees the same probes."""
    shape = real(tensor).shape
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).double() * 2 - 1
    signs = signs.to(tensor.device)
    if tensor.is_complex():
        return torch.view_as_complex(signs.to(real(tensor).dtype).contiguous())
    return signs.to(tensor.dtype)
