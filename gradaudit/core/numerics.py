"""The math core: numerical directional derivatives with an error bar, and the tolerances built on them.

Everything works on lists of tensors (one per leaf or output). Complex tensors are handled through their real
views, which matches torch's convention: for a complex output y and cotangent v, ``grad(y, x, v)`` is the
real gradient of ``<view_as_real(v), view_as_real(y)>`` read back as a complex tensor.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import torch

Tensors = list[torch.Tensor]

# The numerical error estimate is a difference of two estimates; allow a few times it before calling a mismatch.
ERROR_BAR_SAFETY = 4.0
# Rounding noise in an output element, as a multiple of eps times its output tensor's largest magnitude.
ROUNDING_FLOOR = 16.0
# Rounding in analytical gradients: a generous multiple of eps times the magnitude of the summed terms.
ROUNDING_FACTOR = 64.0
# The smallest relative disagreement called a fault. torch's formulas carry regularizers (1e-12 added to a
# denominator in one derivative and clamped in the next, as binary_cross_entropy's) that make correct first and
# second derivatives differ by ~1e-11 relative: real, and nothing a user can act on. Faults of 1e-8 stay visible.
# It is relative to each term of an inner product: summed under the probe's random signs (see probe_tolerance).
RELATIVE_FLOOR = 1e-10
# Standard deviation of the Richardson value (4 q(h/2) - q(h)) / 3, in units of (output noise) / h.
RICHARDSON_NOISE = 2.0
# Points along a line for the noise measurement: their 4th differences give 4 samples of the noise.
NOISE_POINTS = 8
# Levels of the Richardson ladder (steps top / 2^k): at most 2 evaluations per level. Smooth directions stop
# after three; a direction that moves many ReLU units (an aggregate probe of a whole transformer) converges only
# some 10 levels down, and with fewer levels its error bar stayed at ~1e-2 relative.
LADDER_LEVELS = 13
# A sum of per-element errors under random signs (Rademacher cotangents drawn independently of the errors)
# stays within this many times their root-sum-square (Hoeffding: probability below 1e-5).
RSS_SAFETY = 5.0
# Rounding of an analytical derivative, in units of the noise of the values it is the derivative of.
ANALYTICAL_NOISE = 16.0
# The measured rounding noise of analytical gradients through a coarser section (checks.measure_gradient_noise)
# counts this many times, summed under the probe's random signs.
GRADIENT_NOISE_SAFETY = 3.0


def real(tensor: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(tensor.resolve_conj()) if tensor.is_complex() else tensor


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy. Complex tensors travel as their real view: torch-xla 2.9's device-to-host copy of a
    complex tensor drops the imaginary parts (docs/crossbackend), while the real view copies correctly."""
    tensor = tensor.detach()
    if tensor.is_complex() and tensor.device.type != "cpu":
        return torch.view_as_complex(torch.view_as_real(tensor.resolve_conj()).cpu())
    return tensor.cpu()


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


def unravel(flat: int, shape: Sequence[int]) -> list[int]:
    """The multi-index of flat element ``flat`` in a tensor of ``shape`` (row-major), in plain Python:
    ``torch.unravel_index`` checks its arguments with symbolic-shape helpers whose first use imports sympy
    (0.5 s of a process's first audit)."""
    index = []
    for size in reversed(shape):
        flat, position = divmod(flat, size)
        index.append(position)
    return index[::-1]


def eps_of(dtype: torch.dtype) -> float:
    if dtype.is_complex:
        dtype = {torch.complex128: torch.float64, torch.complex32: torch.float16}.get(dtype, torch.float32)
    return torch.finfo(dtype).eps


def step_size(dtype: torch.dtype) -> float:
    """Central differences balance truncation (h^2) against rounding (eps/h): h ~ eps^(1/3)."""
    return 2.0 * eps_of(dtype) ** (1.0 / 3.0)


def shifted(x: Tensors, direction: Sequence[torch.Tensor | None], t: float) -> Tensors:
    """x + t u, computed on the CPU (where probe directions live: see probe.ProbeSpace) and handed to x's device
    as data: on a compiling backend (XLA) the sum on the device would be a graph of its own for every pattern
    of shifted leaves."""
    return [xi if ui is None else _shifted_leaf(xi, ui, t) for xi, ui in zip(x, direction)]


def _shifted_leaf(xi: torch.Tensor, ui: torch.Tensor, t: float) -> torch.Tensor:
    if xi.device.type == "cpu" and ui.device.type == "cpu":  # (the same sum, without the moves' calls)
        moved = xi.detach() + t * ui
        return moved.requires_grad_() if xi.requires_grad else moved
    return on_device_of(to_host(xi) + t * ui.cpu(), xi)


def on_device_of(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a CPU tensor) on ``like``'s device, keeping ``like``'s ``requires_grad``."""
    moved = value.to(like.device) if like.device.type != "cpu" else value
    return moved.requires_grad_() if like.requires_grad and not moved.requires_grad else moved


@dataclass
class NumericalDerivative:
    """A directional derivative J·u (real views of the outputs) with an elementwise error bar."""

    value: Tensors
    error: Tensors
    top: float = 0.0  # the largest step the estimate and its error bar were made from (0: not from a ladder)


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
    plus, minus = f(shifted_points(x, u, [h, -h]))
    return _quotient(plus, minus, h, 0.0)[0]


def directional_derivative(f: Evaluate, x: Tensors, u, h: float, eps: float) -> NumericalDerivative:
    """Richardson extrapolation of central differences at h and h/2; their disagreement (which holds both the
    truncation and the rounding error of this evaluation) plus a rounding floor is the error bar. (The
    localizer's and full mode's two-step estimate; probes use ``extrapolated_derivative``.)"""
    plus, minus, plus_half, minus_half = values_along(f, x, u, [h, -h, h / 2, -h / 2])
    coarse, _ = _quotient(plus, minus, h, eps)
    fine, rounding = _quotient(plus_half, minus_half, h / 2, eps)
    value = [(4 * b - a) / 3 for a, b in zip(coarse, fine)]
    error = [(b - a).abs() + 4 * r for a, b, r in zip(coarse, fine, rounding)]
    return NumericalDerivative(value, error)


def ladder_top(dtype: torch.dtype) -> float:
    """The largest step of the Richardson ladder. Truncation of an extrapolated central difference (s^4) meets
    rounding (eps/s) at s ~ eps^(1/5) for a function curved on the scale of its inputs; many are much flatter
    along a probe (a deep network's response to one bias), where larger steps cut rounding further. The
    ladder starts above, at eps^(1/7), and descends as far as truncation demands."""
    return eps_of(dtype) ** (1 / 7)


# The ladder's first levels, evaluated in one call (a backend that batches runs them together): every ladder
# needs at least three (two extrapolations, whose difference is the first error bar).
FIRST_LEVELS = 3


def ladder_steps(top: float, levels: int) -> list[float]:
    """The ladder's steps: top / 2^k."""
    return [top / 2 ** k for k in range(levels)]


def ladder_shifts(steps: Sequence[float]) -> list[float]:
    """The ladder's shifts: +s and -s for each step s, in that order."""
    return [sign * s for s in steps for sign in (1.0, -1.0)]


def ladder_values(f: Evaluate, x: Tensors, u, steps: Sequence[float]) -> list[Tensors]:
    """f at x + t u for the ladder's shifts t (see ``values_along``)."""
    return values_along(f, x, u, ladder_shifts(steps))


def values_along(f: Evaluate, x: Tensors, u, ts: Sequence[float], before: Tensors | None = None) -> list[Tensors]:
    """``f(shifted_points(x, u, ts))`` (after f at ``before``, where given, in the same call). Where large leaves
    are shifted into reused buffers and f evaluates one point after the other (not a batching backend's
    ``batched`` evaluator), the points go to f a pair at a time through the same two buffers per leaf: a line
    of 8 points in 8 fresh full-size buffers cost 2.9 of an 11 s audit of a 21 M-parameter MLP in page faults.
    The numbers are the same; an output that shares a buffer's memory (f returning a view of its input) is
    copied before the buffer is reused."""
    head = [before] if before is not None else []
    if getattr(f, "batched", False) or len(ts) <= PAIR or not any(_buffered(xi, ui) for xi, ui in zip(x, u)):
        return f(head + shifted_points(x, u, ts))
    outputs: list[Tensors] = []
    for start in range(0, len(ts), PAIR):
        points = shifted_points(x, u, ts[start:start + PAIR])
        buffers = {_memory(zi) for point in points for zi, xi in zip(point, x) if zi is not xi}
        values = f((head if start == 0 else []) + points)
        outputs += [[y.clone() if _memory(y) in buffers else y for y in value] for value in values]
    return outputs


def _memory(tensor: torch.Tensor) -> int | None:
    """Where a strided tensor's memory starts (None for a sparse one, which has no single storage)."""
    return tensor.untyped_storage().data_ptr() if tensor.layout == torch.strided else None


PAIR = 2  # points per call where large leaves are shifted into reused buffers


def batching(evaluate: Evaluate, batched: bool = True) -> Evaluate:
    """``evaluate`` marked as running many points at once (a backend's batch), which ``values_along`` hands
    every point in one call."""
    evaluate.batched = batched  # type: ignore[attr-defined]
    return evaluate


def _buffered(xi: torch.Tensor, ui: torch.Tensor | None) -> bool:
    """Whether ``shifted_points`` shifts this leaf into reused buffers."""
    return ui is not None and _batch_shiftable(xi, ui) and xi.numel() >= REUSED_SHIFT_ELEMENTS


BATCHED_SHIFT_DTYPES = (torch.float64, torch.float32, torch.complex128, torch.complex64)


def shifted_points(x: Tensors, direction: Sequence[torch.Tensor | None], ts: Sequence[float]) -> list[Tensors]:
    """``[shifted(x, direction, t) for t in ts]``, each contiguous CPU leaf's products and sums in two ops
    instead of two per point (the same numbers: t in the leaf's precision, as a Python scalar is). Each point is
    then copied out on its own: a slice of the batch would carry a storage offset, which ``as_strided`` (and
    ``as_strided_scatter``) read as an absolute position, so every point would read the first one's values."""
    columns = []
    for xi, ui in zip(x, direction):
        if ui is None:
            columns.append([xi] * len(ts))
        elif not _batch_shiftable(xi, ui):
            columns.append([_shifted_leaf(xi, ui, t) for t in ts])
        elif xi.numel() >= REUSED_SHIFT_ELEMENTS:
            columns.append(_shifted_into_buffers(xi, ui, ts))
        else:
            t = torch.tensor(ts, dtype=real(ui).dtype).reshape(-1, *[1] * ui.dim())
            columns.append([point.clone() for point in (xi.detach() + t * ui).unbind(0)])
    return [list(point) for point in zip(*columns)]


def _batch_shiftable(xi: torch.Tensor, ui: torch.Tensor) -> bool:
    return (xi.device.type == "cpu" and ui.device.type == "cpu" and not xi.requires_grad
            and ui.dtype in BATCHED_SHIFT_DTYPES and xi.dtype == ui.dtype and xi.is_contiguous())


# Leaves from this size on are shifted into buffers kept from one call to the next: a fresh full-size tensor per
# point costs its page faults (16.8 M elements: 879 -> 115 ms per ladder level).
REUSED_SHIFT_ELEMENTS = 1 << 16
_SHIFT_BUFFERS: dict[int, list[torch.Tensor]] = {}  # id(leaf) -> its buffers, dropped with the leaf


def _shifted_into_buffers(xi: torch.Tensor, ui: torch.Tensor, ts: Sequence[float]) -> list[torch.Tensor]:
    """x + t u for each t, in buffers of x's own (each a tensor of its own, offset 0), as ``xi + t * ui``
    computes them (the product in the leaf's precision, then the sum). A point is valid until the next call
    for the same leaf: every caller evaluates its points, and copies what it keeps, before asking for more."""
    buffers = _SHIFT_BUFFERS.get(id(xi))
    if buffers is None:  # (keyed by identity: a tensor's == is elementwise, so it cannot key a WeakKeyDictionary)
        buffers = _SHIFT_BUFFERS[id(xi)] = []
        weakref.finalize(xi, _SHIFT_BUFFERS.pop, id(xi), None)
    elif buffers[0].shape != xi.shape or buffers[0].dtype != xi.dtype:  # (resized in place since)
        buffers.clear()
    while len(buffers) < len(ts):
        buffers.append(torch.empty_like(xi, memory_format=torch.contiguous_format))
    detached, done = xi.detach(), set()
    for j, t in enumerate(ts):
        if j in done:
            continue
        torch.mul(ui, torch.tensor(t, dtype=real(ui).dtype), out=buffers[j])
        # x - t u is x + (-t) u exactly (a product's sign flips exactly): a pair shares its product.
        pair = next((k for k in range(j + 1, len(ts)) if ts[k] == -t and k not in done), None)
        if pair is not None:
            torch.sub(detached, buffers[j], out=buffers[pair])
            done.add(pair)
        buffers[j].add_(detached)
    return buffers[:len(ts)]


def extrapolated_derivative(f: Evaluate, x: Tensors, u, top: float, eps: float, noise: Tensors | None = None,
                            levels: int = LADDER_LEVELS, first: list[Tensors] | None = None,
                            center: Tensors | None = None) -> NumericalDerivative:
    """J·u from a ladder of central differences at steps top / 2^k, extrapolated (Richardson) pairwise:
    R_k = (4 D_(k+1) - D_k) / 3. The error bar of R_k is what the arithmetic shows: its distance from the
    coarser R_(k-1) (truncation, about 15x the error of R_k where the ladder converges) plus the rounding of
    its own quotients (measured noise and eps of the values, over the smaller step). The ladder starts large,
    where rounding is small, and goes down a level (two more evaluations) while truncation still outweighs
    rounding; the estimate with the smallest bar is kept. A smooth direction stops after three levels with a
    bar near the arithmetic's limit; a strongly curved or kinked one goes down to steps where it converges.
    ``first``: f at the first FIRST_LEVELS levels' points when the caller has them (``ladder_values``).

    ``center``: f(x), given where the steps are large (those of a float32 section's ladder) and may straddle a
    kink (ReLU) close to x: there the central differences of several levels agree on the average of the two
    one-sided slopes. Each R_k is then judged only once R_(k+1) is known, by its distance to both neighbours,
    and an element whose one-sided slopes differ by a gap that does not shrink with the step (see
    ``straddled_kinks``) carries that gap in its bar. On a smooth direction this costs one level."""
    steps = ladder_steps(top, levels)
    ladder = Ladder(steps, eps, noise, center)
    ladder.add(list(first) if first is not None else ladder_values(f, x, u, steps[:FIRST_LEVELS]))
    best, lag = None, 0 if center is None else 1
    for k in range(1, levels - 1):
        if ladder.depth < k + 2:
            ladder.add(ladder_values(f, x, u, [steps[ladder.depth]]))
        if k < 1 + lag:
            continue
        j = k - lag  # the estimate judged: R_j, against R_(j-1) (and R_k = R_(j+1) where kinks may be straddled)
        value, truncation = ladder.estimate(j, lag)
        error = truncation + ladder.roundings[j + 1]
        total = float(error.sum())
        if best is None or total < best[0] or not math.isfinite(best[0]):
            best = (total, ladder.derivative(value, error, steps[j - 1]))
        if float(truncation.sum()) <= ladder.rounding_sums[j + 1]:
            break  # rounding has caught up with truncation: a smaller step no longer helps
    return best[1]


class Ladder:
    """The levels of a Richardson ladder, with every output's real view end to end in one float64 vector (a
    small op per level, not one per output): each level's central difference quotient, the rounding floor of
    its step (the outputs' eps over the step, plus the measured noise), and, where f(x) is known, the one-sided
    slopes' gap. Levels evaluated together (the first ones) are computed together."""

    def __init__(self, steps: list[float], eps: float, noise: Tensors | None, center: Tensors | None) -> None:
        self.steps, self.eps = steps, eps
        self.scaled_noise = None if noise is None else RICHARDSON_NOISE * flat(noise)
        self.twice_center = None if center is None else 2 * flat(center)
        self.quotients: list[torch.Tensor] = []
        self.roundings: list[torch.Tensor] = []
        self.rounding_sums: list[float] = []
        self.gaps: list[torch.Tensor] = []
        self.extrapolations: list[torch.Tensor] = []  # R_k = (4 D_(k+1) - D_k) / 3
        self.shapes: list[torch.Size] = []

    @property
    def depth(self) -> int:
        return len(self.quotients)

    def add(self, points: list[Tensors]) -> None:
        """The levels of ``points`` (x + s u, x - s u for each next step s, as ``ladder_shifts`` orders them)."""
        if not self.shapes:
            self.shapes = [real(t).shape for t in points[0]]
            self.output_eps = self.eps_of_outputs(points[0])
        both = torch.stack([flat(point) for point in points])
        plus, minus = both[0::2], both[1::2]
        s = torch.tensor(self.steps[self.depth:self.depth + len(plus)], dtype=torch.float64).unsqueeze(1)
        quotients = (plus - minus) / (2 * s)
        floor = self.output_eps * (plus.abs() + minus.abs()) / s
        if self.scaled_noise is not None:
            floor = floor + self.scaled_noise / s
        if self.twice_center is not None:  # |D+(s) - D-(s)|: s |f''| where f is smooth, the slope's jump at a kink
            self.gaps += list(((plus + minus - self.twice_center).abs() / s).unbind(0))
        previous = self.quotients[-1:]
        self.quotients += list(quotients.unbind(0))
        self.roundings += list(floor.unbind(0))
        self.rounding_sums += floor.sum(1).tolist()
        rows = torch.stack(previous + list(quotients.unbind(0)))
        if len(rows) > 1:
            self.extrapolations += list(((4 * rows[1:] - rows[:-1]) / 3).unbind(0))

    def eps_of_outputs(self, outputs: Tensors) -> float | torch.Tensor:
        """The rounding unit of each element: the arithmetic's, or an output's own where it is rounded coarser
        than the leaves (x.to(torch.bfloat16))."""
        each = [max(self.eps, eps_of(t.dtype)) if t.is_floating_point() or t.is_complex() else self.eps
                for t in outputs]
        if all(e == self.eps for e in each):
            return self.eps
        return torch.cat([torch.full((real(t).numel(),), e, dtype=torch.float64) for e, t in zip(each, outputs)])

    def estimate(self, j: int, lag: int) -> tuple[torch.Tensor, torch.Tensor]:
        """R_j and its truncation error: its distance from R_(j-1), and with ``lag``, from R_(j+1) too, plus
        the straddled kinks' share (see ``straddled_kinks``)."""
        value = self.extrapolations[j]
        truncation = (value - self.extrapolations[j - 1]).abs()
        if lag:
            kinks = straddled_kinks([self.gaps[j]], [self.gaps[j + 1]])[0]
            truncation = torch.maximum(truncation, (value - self.extrapolations[j + 1]).abs()) + kinks
        return value, truncation

    def derivative(self, value: torch.Tensor, error: torch.Tensor, top: float) -> NumericalDerivative:
        """The estimate, split back into one tensor per output (their real views' shapes)."""
        sizes = [math.prod(shape) for shape in self.shapes]
        split = lambda t: [part.reshape(shape) for part, shape in zip(t.split(sizes), self.shapes)]  # noqa: E731
        return NumericalDerivative(split(value), split(error), top)


def straddled_kinks(coarse: Tensors, fine: Tensors) -> Tensors:
    """Half the one-sided slopes' gap at the finer of two steps (s, s/2), where it does not shrink with the step
    as a smooth function's does (halving): a kink lies between the points and the central difference is the
    average of its two slopes, off by up to half their gap. Zero elsewhere."""
    return [torch.where(b > 0.75 * a, b / 2, torch.zeros_like(b)) for a, b in zip(coarse, fine)]


def is_finite(tensors: Tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def rounding_noise(f: Evaluate, x: Tensors, u, delta: float) -> Tensors | None:
    """The rounding noise of each output element near x, measured rather than assumed: outputs along a short
    line from x (x + k delta u, k = 1..8), whose 4th differences cancel the smooth part (delta^4 times the 4th
    derivative) and leave the noise (variance 70 sigma^2). A model of magnitudes misses it where an output is
    computed from nearly cancelling larger numbers (1 - tanh^2 far out, second derivatives). None where the line
    leaves the domain."""
    outputs = values_along(f, x, u, [k * delta for k in range(1, NOISE_POINTS + 1)])
    noise = []
    for i in range(len(outputs[0])):
        line = torch.stack([real(out[i]).double().cpu() for out in outputs])  # no device graphs to compile
        fourth = line[:-4] - 4 * line[1:-3] + 6 * line[2:-2] - 4 * line[3:-1] + line[4:]
        if not torch.isfinite(fourth).all():
            return None
        noise.append((fourth.pow(2).mean(0) / 70).sqrt())
    return noise


# A jump or a growth of one-sided derivatives counts when over this many noise levels and not shrinking.
NONSMOOTH_MARGIN = 16.0


def nonsmooth_evidence(f: Evaluate, x: Tensors, u, h: float, eps: float, noise: Tensors | None) -> str | None:
    """Why f is not differentiable at x along u, or None where it is smooth there.

    One-sided difference quotients D+(s), D-(s) at s = h, h/2, h/4, per output element. A smooth f has
    D+(s) - D-(s) = s f'' and D(s) converging linearly, so both halve with s. At a kink the jump stays; at a
    jump of f, or where the derivative is infinite, jumps or steps grow; where the domain ends, one side is
    NaN or Inf."""
    steps = (h, h / 2, h / 4)
    outputs = values_along(f, x, u, [*steps, *(-s for s in steps)], before=x)
    here, ahead, behind = outputs[0], outputs[1:4], outputs[4:7]
    for i in range(len(here)):
        center = real(here[i]).double().cpu()
        sides = [[real(y[i]).double().cpu() for y in side] for side in (ahead, behind)]
        if not all(bool(torch.isfinite(v).all()) for side in sides for v in side):
            return "the function is undefined (NaN or Inf) on one side of this point"
        level = eps * center.abs() + (0.0 if noise is None else noise[i].cpu())
        threshold = NONSMOOTH_MARGIN * level / steps[-1]
        plus = [(a - center) / s for a, s in zip(sides[0], steps)]
        minus = [(center - b) / s for b, s in zip(sides[1], steps)]
        jumps = [(p - m).abs() for p, m in zip(plus, minus)]
        if bool(((jumps[2] > threshold) & (jumps[2] > 0.75 * jumps[1])).any()):
            return "one-sided derivatives differ and the gap does not shrink with the step (a kink)"
        for d in (plus, minus):
            late, early = (d[2] - d[1]).abs(), (d[1] - d[0]).abs()
            if bool(((late > threshold) & (late > 0.75 * early)).any()):
                return "one-sided derivatives do not converge as the step shrinks (an infinite derivative or a jump)"
    return None


def probe_tolerance(numerical: NumericalDerivative, cotangent: Tensors, gradient: Sequence, direction: Sequence,
                    eps: float, model_error: float = 0.0, noise: Tensors | None = None,
                    gradient_noise: Sequence[torch.Tensor] | None = None) -> float:
    """How far ``<gradient, direction>`` may sit from ``<cotangent, J·u>`` before it is a real mismatch: the
    numerical error bars summed under the cotangent's random signs, the analytical side's rounding (relative
    to the result, and from the measured noise of the values it differentiates), and ``model_error``, the
    relative error a backend's approximations of elementary functions add (0 where they are accurate).

    The relative floor bounds an error of each term of the two inner products; under the independent random
    signs of u and v their sum stays within RSS_SAFETY root-sum-squares of the terms (Hoeffding), which for an
    aggregate of N terms is about sqrt(N) / 6 times below their absolute sum (400x for a 6 M-parameter model;
    the absolute sum is kept where it is the smaller bound, in small cases).

    ``gradient_noise``: the measured spread of the analytical gradient's elements (mixed precision), summed
    under the direction's random signs like the numerical error bars."""
    cotangent = [real(v) for v in cotangent]
    numerical_error = rss_inner(cotangent, numerical.error)
    analytical_error = ANALYTICAL_NOISE * rss_inner(cotangent, noise) if noise is not None else 0.0
    if gradient_noise is not None:
        analytical_error += GRADIENT_NOISE_SAFETY * rss_inner(gradient_noise, direction)
    magnitude = abs_inner(gradient, direction) + abs_inner(cotangent, numerical.value)
    spread = RSS_SAFETY * (rss_inner(gradient, direction) + rss_inner(cotangent, numerical.value))
    return (RSS_SAFETY * numerical_error + analytical_error + relative_floor(eps) * min(magnitude, spread)
            + model_error * magnitude + 1e-300)


def relative_floor(eps: float) -> float:
    return max(ROUNDING_FACTOR * eps, RELATIVE_FLOOR)


def rss_inner(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> float:
    """sqrt(sum (a_i b_i)^2): the spread of sum(s_i a_i b_i) under independent random signs s_i (None stands
    for zeros)."""
    total = 0.0
    for x, y in zip(a, b):
        if x is not None and y is not None:
            total += float((real(x).double().cpu() * real(y).double().cpu()).pow(2).sum())
    return total ** 0.5


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors' real views, in float64 on the CPU, end to end in one vector."""
    parts = [real(t).detach().double().cpu().reshape(-1) for t in tensors]
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def stacked_rows(rows: list[Tensors]) -> torch.Tensor:
    """``torch.stack([flat(row) for row in rows])``, each leaf copied once into its place."""
    sizes = [real(t).numel() for t in rows[0]]
    out = torch.empty(len(rows), sum(sizes), dtype=torch.float64)
    for k, row in enumerate(rows):
        start = 0
        for t, size in zip(row, sizes):
            t = real(t).detach()
            out[k, start:start + size].view(t.shape).copy_(t)  # (a transposed weight's gradient: no copy first)
            start += size
    return out


class CotangentRows:
    """The cotangents v_k and their gradients v_k^T J as the rows of two matrices (outputs' and leaves' real
    views end to end), so that a probe test's inner products over every cotangent, output and leaf are a few
    matrix-vector products instead of a few small ops per tensor and cotangent (most of a tiny audit's time).
    Made once per analytical point; the products are those of :func:`probe_tolerance`, summed in another order."""

    def __init__(self, cotangents: list[Tensors], grads: list[Tensors]) -> None:
        self.v = stacked_rows(cotangents)
        self.g = stacked_rows(grads)
        self.v2, self.v_abs = self.v * self.v, self.v.abs()
        sizes = [real(t).numel() for t in grads[0]]
        ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
        self.columns = [(end - size, end) for size, end in zip(sizes, ends)]  # each leaf's columns in g
        self._sums: tuple[list, torch.Tensor, torch.Tensor] | None = None

    def share_memory(self, grads: list[Tensors]) -> None:
        """Points each float64 (complex128) gradient in ``grads``, in place, at its own columns of g (the same
        numbers), so that one copy of the gradients is kept, not two (168 MB on a 21 M-parameter model)."""
        for k, row in enumerate(grads):
            for i, t in enumerate(row):
                if t.dtype in (torch.float64, torch.complex128) and t.layout == torch.strided and t.device.type == "cpu":
                    view = self.leaf(i)[k].view(real(t).shape)
                    row[i] = torch.view_as_complex(view) if t.is_complex() else view

    @cached_property
    def g_abs(self) -> torch.Tensor:
        return self.g.abs()

    def leaf(self, i: int) -> torch.Tensor:
        """Leaf i's columns of g (a view)."""
        return self.g[:, slice(*self.columns[i])]

    def leaf_sums(self, movable: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cotangent and leaf, the sums of |g| and of g^2 over the leaf's movable elements ([K, leaves] each):
        what every signed direction of the form +-c_i there (``Direction``) needs of g, computed once per point."""
        if self._sums is None or self._sums[0] is not movable:
            ones, squares = [], []
            for i, mask in enumerate(movable):
                g = self.leaf(i)
                if not bool(mask.all()):
                    if g.shape[1] == 2 * mask.numel():  # (a complex leaf: its real view's two parts)
                        mask = mask.unsqueeze(-1).expand(*mask.shape, 2)
                    g = torch.where(mask.reshape(1, -1), g, 0.0)
                ones.append(torch.linalg.vector_norm(g, 1, dim=1))
                squares.append(torch.linalg.vector_norm(g, 2, dim=1) ** 2)
            self._sums = (movable, torch.stack(ones, 1), torch.stack(squares, 1))
        return self._sums[1], self._sums[2]

    def analytical(self, direction: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``<g_k, u>`` for every cotangent k over the leaves the direction moves (leaf by leaf: no copy of g or
        of u)."""
        total = torch.zeros(len(self.g), dtype=torch.float64)
        for i, u in enumerate(direction):
            if u is not None:
                total += self.leaf(i) @ flat([u])
        return total

    def moved(self, direction: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the gradients' columns of the leaves the direction moves, the direction there): leaves it leaves
        alone (None) do not count, as in :func:`inner` (a NaN gradient there must not leak in)."""
        moved = [i for i, u in enumerate(direction) if u is not None]
        if len(moved) == len(direction):
            return self.g, flat(direction)
        g = torch.cat([self.g[:, slice(*self.columns[i])] for i in moved], dim=1)
        return g, flat([direction[i] for i in moved])


class Direction(list):
    """A probe direction (one tensor per leaf, None for a leaf it leaves alone) whose leaf i is +-magnitudes[i]
    on the elements ``movable[i]`` allows and 0 elsewhere: the sums of |g u| and (g u)^2 a probe test needs are
    then per-leaf sums of g, made once per point (``CotangentRows.leaf_sums``), not products over every
    parameter per probe."""

    def __init__(self, parts: list, magnitudes: list[float], movable: list[torch.Tensor]) -> None:
        super().__init__(parts)
        self.magnitudes, self.movable = magnitudes, movable

    def scaled(self, weights: list[float]) -> "Direction":
        """The direction with leaf i's part times weights[i] (in place: its tensors are its own)."""
        for ui, w in zip(self, weights):
            if ui is not None and w != 1.0:
                ui.mul_(w)
        return Direction(list(self), [m * w for m, w in zip(self.magnitudes, weights)], self.movable)

    def coefficients(self) -> torch.Tensor:
        return torch.tensor([m if u is not None else 0.0 for u, m in zip(self, self.magnitudes)], dtype=torch.float64)


def gradient_terms(rows: CotangentRows, direction: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cotangent, the absolute sum and the root-sum-square of the terms of ``<g_k, u>``."""
    if isinstance(direction, Direction):
        ones, squares = rows.leaf_sums(direction.movable)
        c = direction.coefficients()
        return ones @ c, (squares @ (c * c)).sqrt()
    g, u = rows.moved(direction)
    return g.abs() @ u.abs(), ((g * g) @ (u * u)).sqrt()


def probe_tests(rows: CotangentRows, numerical: NumericalDerivative, direction: Sequence[torch.Tensor | None],
                eps: float, model_error: float = 0.0, noise: Tensors | None = None) -> list[tuple[float, float, float]]:
    """(``<g_k, u>``, ``<v_k, J·u>``, tolerance) for every cotangent k at once: :func:`probe_tolerance`'s bound,
    without its ``gradient_noise`` term (the caller adds it where it is measured)."""
    value, error = flat(numerical.value), flat(numerical.error)
    analytical, numeric = rows.analytical(direction), rows.v @ value
    numerical_error = (rows.v2 @ (error * error)).sqrt()
    analytical_error = ANALYTICAL_NOISE * (rows.v2 @ flat(noise).pow(2)).sqrt() if noise is not None else 0.0
    gradient_abs, gradient_rss = gradient_terms(rows, direction)
    magnitude = gradient_abs + rows.v_abs @ value.abs()
    spread = RSS_SAFETY * (gradient_rss + (rows.v2 @ (value * value)).sqrt())
    floor = relative_floor(eps) * torch.minimum(magnitude, spread)
    tolerance = RSS_SAFETY * numerical_error + analytical_error + floor + model_error * magnitude + 1e-300
    return list(zip(analytical.tolist(), numeric.tolist(), tolerance.tolist()))


def elementwise_tolerance(numerical: NumericalDerivative, eps: float, model_error: float = 0.0) -> Tensors:
    """Per-output tolerance for comparing a forward-mode J·u with the numerical one."""
    scale = max((float(v.abs().mean()) for v in numerical.value if v.numel()), default=0.0)
    return [ERROR_BAR_SAFETY * e + (relative_floor(eps) + model_error) * (v.abs() + scale) + 1e-300
            for v, e in zip(numerical.value, numerical.error)]


def model_error_of(drift: float, eps: float) -> float:
    """A backend whose forward drifts from float64 eager by more than rounding approximates some elementary
    function (XLA's float64 erf to ~1e-8): its derivatives then differ from the exact formulas by more than
    the drift itself (the approximation's error oscillates). sqrt(drift) bounds that and stays far below the
    percent-level errors of real faults. A drift beyond sqrt(eps) is no approximation but a forward that
    computes something else (reported as a divergence): it must not widen the gradient checks."""
    return drift ** 0.5 if ROUNDING_FACTOR * eps < drift <= eps ** 0.5 else 0.0


def rademacher_like(tensor: torch.Tensor, generator: torch.Generator,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Random signs (+-1; on real and imaginary parts for complex tensors), drawn on the CPU from a seeded
    generator so that every backend sees the same probes; placed on ``device`` (default: the tensor's)."""
    shape = real(tensor).shape
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).double().mul_(2).sub_(1)
    signs = signs.to(tensor.device if device is None else device)
    if tensor.is_complex():
        return torch.view_as_complex(signs.to(real(tensor).dtype).contiguous())
    return signs.to(tensor.dtype)
