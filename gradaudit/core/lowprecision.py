"""The noise of a low-precision program's own gradients, measured rather than modelled.

A bf16/fp16/fp32 program's gradients are compared with its float64 shadow's at the very same leaf values (the
low-precision leaves cast up), so what separates them is the arithmetic alone. How much of that a correct
program shows is measured, not assumed: the leaves are jittered by a few units of their dtype's rounding, and at
each jittered point the program's gradients are compared with the float64 ones again. Rounding errors change
from point to point (the spread is the precision's noise); a wrong formula does not (a bias). A gradient element
fails when its typical error (the median over the points, so that one rounding coincidence at a ReLU or max tie
cannot fail it) exceeds ``NOISE_FACTOR`` times the measured spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from gradaudit.core.numerics import eps_of, real

Tensors = list[torch.Tensor]
GradientsAt = Callable[[Tensors], tuple[Tensors, Tensors]]  # leaves -> (native gradients, float64 gradients)

JITTERS = 4  # jittered points besides the audited one
JITTER_UNITS = (1.0, 4.0)  # each element moves by a random 1..4 rounding units of its dtype, either sign
# An error up to this many times the measured spread is the precision's: a median of 5 errors against a spread
# estimated from 5 points, over thousands of elements, stays below 4 on correct code (torch.nn zoo, op database,
# fused kernels in bf16 and fp16); the planted faults of tests/test_low_precision.py sit at 15x and more.
NOISE_FACTOR = 8.0
# Floors under the measured spread: the final rounding of each gradient element (half a unit, taken as one),
# and the forward's own error at the point (constants and buffers rounded to the low dtype move the function).
ULP_FLOOR = 1.0
DRIFT_FLOOR = 2.0


def jittered(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` moved by a random 1..4 rounding units of its dtype per element, either sign, rounded back to its
    dtype (zeros stay zero: a relative move)."""
    shape = real(x).shape if x.is_complex() else x.shape
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).double() * 2 - 1
    units = torch.empty(shape, dtype=torch.float64).uniform_(*JITTER_UNITS, generator=generator)
    factor = (1 + signs * units * eps_of(x.dtype)).to(x.device)
    if x.is_complex():
        factor = factor[..., 0]
    return (x.to(torch.complex128 if x.is_complex() else torch.float64) * factor).to(x.dtype)


@dataclass
class NoiseMeasurement:
    """The audited point's gradients and the errors of the native ones at every point (the audited one first):
    ``errors[i]`` is a (points, elements) float64 tensor for leaf ``i``."""

    native: Tensors
    reference: Tensors
    errors: Tensors

    @property
    def points(self) -> int:
        return self.errors[0].shape[0] if self.errors else 0

    def typical_error(self, leaf: int) -> torch.Tensor:
        """Per element, the median of |error| over the points (a coincidence at one point does not count)."""
        return self.errors[leaf].abs().median(dim=0).values

    def spread(self, leaf: int) -> torch.Tensor:
        """Per element, the measured noise: the spread of the errors over the points, floored by the tensor's
        root-mean-square spread (five points can underestimate one element's noise; a bias never spreads)."""
        errors = torch.nan_to_num(self.errors[leaf], posinf=0.0, neginf=0.0)  # (an overflow is no spread)
        own = errors.std(dim=0, correction=0) if errors.shape[0] > 1 else torch.zeros_like(errors[0])
        return torch.clamp(own, min=float(own.pow(2).mean().sqrt()) if own.numel() else 0.0)


def flat(tensor: torch.Tensor) -> torch.Tensor:
    """float64, flat, on the CPU; complex as its real view; NaN and infinities kept."""
    return real(tensor).detach().to("cpu", torch.float64).reshape(-1)


def difference(native: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """native - reference, flat float64; NaN on both sides and the same infinity agree (0), a NaN or an
    infinity on one side only is an infinite error."""
    a, b = flat(native), flat(reference)
    if a.numel() != b.numel():  # (another shape: the check fails on form)
        return torch.full_like(b, math.inf)
    agree = (torch.isnan(a) & torch.isnan(b)) | (torch.isinf(a) & (a == b))
    return torch.nan_to_num(torch.where(agree, torch.zeros_like(a), a - b), nan=math.inf)


def measure_noise(gradients_at: GradientsAt, leaves: Tensors, seed: int, jitters: int = JITTERS) -> NoiseMeasurement:
    """The native and float64 gradients at ``leaves`` and at ``jitters`` jittered copies of them."""
    generator = torch.Generator().manual_seed(seed)
    native, reference = gradients_at(leaves)
    errors = [[difference(a, b)] for a, b in zip(native, reference)]
    for _ in range(jitters):
        moved_native, moved_reference = gradients_at([jittered(x, generator) for x in leaves])
        for per_leaf, a, b in zip(errors, moved_native, moved_reference):
            per_leaf.append(difference(a, b))
    stacked = [torch.stack(e) for e in errors]
    return NoiseMeasurement(native, reference, stacked)


def tolerance(measured: NoiseMeasurement, leaf: int, eps: float, drift: float) -> torch.Tensor:
    """Per element: ``NOISE_FACTOR`` times the measured spread, over the floors (one rounding unit of the
    element; the forward's drift times the element and the tensor's largest gradient)."""
    size = torch.nan_to_num(flat(measured.reference[leaf]).abs(), nan=0.0, posinf=0.0, neginf=0.0)
    largest = float(size.max()) if size.numel() else 0.0
    floor = ULP_FLOOR * eps * size + DRIFT_FLOOR * drift * (size + largest)
    return NOISE_FACTOR * measured.spread(leaf) + floor


def ratio_to_noise(error: float, spread: float) -> float:
    """How many times the measured noise an error is (infinite over a spread of zero)."""
    return error / spread if spread > 0 else (math.inf if error > 0 else 0.0)
