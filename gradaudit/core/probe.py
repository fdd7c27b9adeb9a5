"""The probe test, the one comparison every part of gradaudit makes: along a signed random direction u, the
numerical J·u (Richardson extrapolation with an error bar) against the analytical side,
  * reverse mode: ``<v_k, J·u>`` against ``<v_k^T J, u>`` for each cotangent v_k;
  * forward mode: the JVP along u, elementwise.
The checker runs it on the whole program, the localizer on one op, compare on another backend's numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch

from gradaudit.core.numerics import (FIRST_LEVELS, GRADIENT_NOISE_SAFETY, LADDER_LEVELS, RSS_SAFETY, CotangentRows,
                                     Direction, Evaluate, NumericalDerivative, Tensors, abs_inner, elementwise_tolerance, eps_of,
                                     extrapolated_derivative, flat, is_finite, ladder_steps, ladder_values,
                                     ladder_top, probe_tests, rademacher_like, real, rss_inner, step_size, to_host,
                                     unravel)

RETRY_BAR_LIMIT = 8.0  # a smaller-step retry counts only if its error bar is at most this much wider
DOMAIN_SHRINKS = 12  # a step that leaves the function's domain is divided by 8 up to this many times
NEARBY_STEPS = 30  # a nearby point lies this many finite-difference steps (times the leaf's scale) away
WIDE_LEVELS = 6  # a wide ladder starts this many halvings above the usual top (see Numerics.wide_top)
WIDE_TOP_LIMIT = 0.5  # and at most this far, in units of the leaf's scale


@dataclass
class Outcome:
    """The worst of the tests run for one (order, group, method)."""

    excess: float = 0.0  # |error| / tolerance; 1 or more is a failure
    abs_err: float = 0.0
    rel_err: float = 0.0
    tolerance: float = 0.0
    analytical: float | None = None
    numerical: float | None = None
    output: str | None = None
    cotangent: int | None = None
    tests: int = 0
    resolution: float = math.inf  # the smallest relative error any of the tests would have seen
    # With a user tolerance (--rtol/--atol, see UserTolerance): its absolute bound at the kept test, the size of
    # the compared quantity that rtol multiplies, and which bound the kept test was judged by.
    user_bound: float | None = None
    magnitude: float | None = None
    bound: str = "error_bar"  # "user_tolerance" once a test needed it (passing only within it), or failed both
    user_rel_err: float | None = None  # the largest error over magnitude of the tests (what rtol is compared to)
    tolerances: list[float] = field(default_factory=list)  # reverse mode: the kept direction's, per cotangent

    @property
    def failed(self) -> bool:
        return self.excess >= 1.0

    def merge(self, other: "Outcome") -> None:
        """Keep the worse of the two, counting the tests of both (and the finer resolution)."""
        tests, resolution = self.tests + other.tests, min(self.resolution, other.resolution)
        bound = "user_tolerance" if "user_tolerance" in (self.bound, other.bound) else "error_bar"
        relative = max((r for r in (self.user_rel_err, other.user_rel_err) if r is not None), default=None)
        if other.tests and (other.excess >= self.excess or self.analytical is None):
            self.__dict__.update(other.__dict__)
        self.tests, self.resolution, self.bound, self.user_rel_err = tests, resolution, bound, relative

    def note_user(self, needed: bool, relative: float | None) -> None:
        """Record that a test needed the user's tolerance (it failed its error bar, and the user's bound is
        looser), and its error relative to the size rtol multiplies (the largest is kept)."""
        if needed:
            self.bound = "user_tolerance"
        if relative is not None and (self.user_rel_err is None or not relative <= self.user_rel_err):
            self.user_rel_err = relative  # (a NaN is kept: it is the worst)

    def absorb(self, analytical: float, numerical: float, tolerance: float, output: str | None = None,
               cotangent: int | None = None, resolution: float | None = None,
               user: tuple[float, float] | None = None) -> None:
        """Count one test; keep it if it is the worst so far. ``resolution``: the relative error the test would
        have seen (default: its tolerance over the larger of the two values). ``user``: (bound, magnitude) of the
        user's tolerance: the test passes within the error bar or within that bound."""
        self.tests += 1
        scale = max(abs(analytical), abs(numerical))
        if resolution is None and scale > 0:  # (a vanishing quantity has no relative resolution)
            resolution = tolerance / scale
        self.resolution = min(self.resolution, resolution if resolution is not None else math.inf)
        error = abs(analytical - numerical)
        excess = error / tolerance if math.isfinite(error) else math.inf
        if user is not None:  # judged by the looser bound; the error bar's own excess says if it was needed
            user_excess = error / (user[0] + 1e-300)
            self.note_user(excess >= 1 and user_excess < excess, error / user[1] if user[1] > 0 else None)
            excess = min(excess, user_excess)
        if excess >= self.excess or self.analytical is None:
            self.excess, self.abs_err, self.tolerance = excess, error, tolerance
            self.rel_err = error / max(abs(numerical), 1e-300)
            self.analytical, self.numerical, self.output, self.cotangent = analytical, numerical, output, cotangent
            self.user_bound, self.magnitude = (None, None) if user is None else user


def user_judged(outcome: Outcome, bar_excess: torch.Tensor, errors: torch.Tensor, accepted: torch.Tensor,
                sizes: torch.Tensor) -> torch.Tensor:
    """Elementwise comparisons under the user's tolerance: the excess of each element by the looser of its error
    bar and ``accepted``; ``outcome`` notes whether some element needed the tolerance, and the largest error
    relative to ``sizes`` (what rtol multiplies)."""
    user_excess = errors / accepted
    needed = bool(((bar_excess >= 1) & (user_excess < bar_excess)).any())
    relative = errors / sizes
    outcome.note_user(needed, float(relative[sizes > 0].max()) if bool((sizes > 0).any()) else None)
    return torch.minimum(bar_excess, user_excess)


def leaf_scale(x: torch.Tensor, finite: torch.Tensor | None = None) -> float:
    """The root mean square of a leaf's finite elements, at least 1: probe steps are relative to it. (On the
    CPU: a boolean mask on an XLA tensor would be a data-dependent shape, a CPU fallback.) ``finite``: the
    leaf's ``isfinite`` mask on the CPU, where the caller has it."""
    values = to_host(x)
    finite = torch.isfinite(values) if finite is None else finite
    values = real(values if bool(finite.all()) else values[finite]).double()  # (no copy where all are finite)
    return max(1.0, float(values.pow(2).mean().sqrt())) if values.numel() else 1.0


def dot(gradient: torch.Tensor, u: torch.Tensor) -> float:
    """``<gradient, u>`` over the elements u moves only: a NaN gradient elsewhere must not leak in (NaN * 0)."""
    u = u.to(gradient.device)
    # torch.where, not boolean indexing: a data-dependent shape would be a CPU fallback on XLA.
    return float(torch.where(u != 0, gradient * u, torch.zeros_like(gradient)).sum())


@dataclass
class ProbeSpace:
    """The point x a function is probed at: its leaves, their step scales, the arithmetic's precision, and the one
    random generator every direction, cotangent and nearby point is drawn from (so a seed fixes them all).
    x stays on the program's device; directions, cotangents and every probe's arithmetic live on the CPU and
    cross to the device as data only (a shift, a cotangent), so a compiling backend (XLA) compiles the same few
    graphs whatever the leaves' number and shapes."""

    x: list[torch.Tensor]
    names: list[str]
    dtype: torch.dtype  # the audited precision (the leaves')
    generator: torch.Generator
    # The precision the finite differences really carry: the coarsest on the differentiated path (a float32
    # section inside a float64 model; see core.precision). It sets the steps and the rounding floors.
    arithmetic: torch.dtype | None = None
    # Per leaf, elements never moved (None: all may move): those whose gradient torch defines as zero.
    frozen: list[torch.Tensor | None] | None = None
    eps: float = field(init=False)  # the arithmetic's rounding unit: steps, noise lines, relative floors
    leaf_eps: float = field(init=False)  # the leaves' own: rounding modelled where the noise is measured instead
    h: float = field(init=False)  # the plain central-difference step
    top: float = field(init=False)  # the probes' largest step (see numerics.extrapolated_derivative)
    scales: list[float] = field(init=False)
    movable: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        arithmetic = self.arithmetic or self.dtype
        self.eps, self.h, self.top = eps_of(arithmetic), step_size(arithmetic), ladder_top(arithmetic)
        self.leaf_eps = eps_of(self.dtype)
        # Directions are +-scale per element: steps relative to the tensor's size, never below 1.
        # Infinite elements (-inf in an attention mask) cannot be moved by a finite step: every direction leaves
        # them where they are, and they do not count in the scale.
        self.movable = [torch.isfinite(to_host(x)) for x in self.x]  # (a copy, not a device graph)
        self.scales = [leaf_scale(x, finite) for x, finite in zip(self.x, self.movable)]
        for movable, frozen in zip(self.movable, self.frozen or []):
            if frozen is not None:
                movable &= ~frozen.reshape(movable.shape)

    @classmethod
    def seeded(cls, x: list[torch.Tensor], names: list[str], dtype: torch.dtype, seed: int,
               arithmetic: torch.dtype | None = None,
               frozen: list[torch.Tensor | None] | None = None) -> "ProbeSpace":
        return cls(x, names, dtype, torch.Generator().manual_seed(seed), arithmetic, frozen)

    @property
    def mixed(self) -> bool:
        """Whether the computation drops below the leaves' precision somewhere on the path."""
        return self.eps > self.leaf_eps

    @property
    def retry_divisor(self) -> int:
        """How much smaller a retry's step is: float64 affords a much smaller step before rounding swamps it."""
        return 64 if self.eps < 1e-10 else 4

    def random_like(self, tensors: Tensors) -> list[torch.Tensor]:
        return [rademacher_like(t, self.generator, "cpu") for t in tensors]

    def direction(self, members: list[int], x: list[torch.Tensor] | None = None) -> Direction:
        """Signed random steps of each member leaf's scale (None for the other leaves)."""
        x = self.x if x is None else x
        chosen = set(members)
        parts = [self._signed_step(x[i], i) if i in chosen else None for i in range(len(x))]
        return Direction(parts, list(self.scales), self.movable)

    def _signed_step(self, xi: torch.Tensor, i: int) -> torch.Tensor:
        """+-scale on the leaf's movable elements, 0 elsewhere (products in place: the same numbers)."""
        u = rademacher_like(xi, self.generator, "cpu").mul_(self.scales[i])
        return u if self.all_movable[i] else u.mul_(self.movable[i])

    @cached_property
    def all_movable(self) -> list[bool]:
        return [bool(m.all()) for m in self.movable]

    def left_out(self, leaf: int, j: int | None = None) -> bool:
        """Whether a declaration (``frozen``: an embedding's padding row, a max_norm weight) keeps element j of
        the leaf's real view, or with j None the whole leaf, from moving: the notes, not the checks, speak for it."""
        if self.frozen is None or self.frozen[leaf] is None:
            return False
        movable = self.movable[leaf].reshape(-1)
        if j is None:
            return not bool(movable.any())
        return not bool(movable[j // (real(self.x[leaf]).numel() // max(movable.numel(), 1))])  # (2 per complex)

    def leaf_direction(self, leaf: int, u_flat: torch.Tensor) -> list:
        """A direction that moves one leaf along ``u_flat`` (its real view, flattened) by its scale."""
        x = self.x[leaf]
        u = u_flat.to(real(x).dtype).reshape(real(x).shape)
        u = torch.view_as_complex(u.contiguous()) if x.is_complex() else u
        u = u * self.movable[leaf]
        return [u * self.scales[leaf] if i == leaf else None for i in range(len(self.x))]

    def basis(self, leaf: int, j: int) -> list:
        """The direction of element j (of the leaf's real view) alone."""
        return self.leaf_direction(leaf, unit(real(self.x[leaf]).numel(), j))

    def element_index(self, leaf: int, j: int) -> list[int]:
        """The multi-index of flat element j of a leaf's real view."""
        shape = real(self.x[leaf]).shape
        if len(shape) == 0:
            return []
        return unravel(j, shape)

    def nearby_point(self, defined: Callable[[list[torch.Tensor]], bool]) -> list[torch.Tensor] | None:
        """A random point a few steps from x where the function is ``defined`` (x + shift, else x - shift)."""
        shift = [NEARBY_STEPS * self.h * s * torch.randn(xi.shape, generator=self.generator,
                                                         dtype=real(xi).dtype).to(xi.device).to(xi.dtype)
                 for xi, s in zip(self.x, self.scales)]
        for sign in (1.0, -1.0):
            point = [xi + sign * d for xi, d in zip(self.x, shift)]
            if defined(point):
                return point
        return None


def unit(count: int, j: int) -> torch.Tensor:
    u = torch.zeros(count, dtype=torch.float64)
    u[j] = 1.0
    return u


@dataclass(frozen=True)
class UserTolerance:
    """What the user accepts besides the error bar (``--rtol/--atol``): per Jacobian entry, as ``torch.allclose``,
    ``|analytical - numerical| <= atol + rtol * |numerical|``. A probe compares projections, not entries, so the
    bound is carried onto them: an error of at most that much in every entry, summed under the probe's random
    signs, stays within RSS_SAFETY root-sum-squares of the entries' bounds (or their absolute sum, when smaller).
    The entries' sizes are read off the terms of the two inner products a reverse-mode test compares (the
    numerical J·u against v, the analytical VJP against u), the larger; a sum that cancels out is not held to
    a tighter bound than its terms."""

    rtol: float = 0.0
    atol: float = 0.0

    @classmethod
    def of(cls, rtol: float, atol: float) -> "UserTolerance | None":
        """The tolerance, or None when both are 0 (the error bar alone judges)."""
        return cls(rtol, atol) if rtol > 0 or atol > 0 else None

    def on_probe(self, cotangent: Tensors, numerical: Tensors, gradient: Tensors, u: list) -> tuple[float, float]:
        """(bound, magnitude) for ``<v, J·u>`` against ``<vᵀJ, u>``: magnitude is what rtol multiplies."""
        cotangent = [real(v) for v in cotangent]
        magnitude = max(terms_size(cotangent, numerical), terms_size(gradient, u))
        return self.atol * entries_size(cotangent, u) + self.rtol * magnitude + 1e-300, magnitude

    def on_elements(self, tangent: torch.Tensor, numerical: torch.Tensor, u: list) -> torch.Tensor:
        """Per element of a JVP (each a sum over the direction's entries): atol over those entries, plus rtol
        times the element's size."""
        size = torch.maximum(numerical.abs(), tangent.abs())
        return self.atol * entries_size([torch.ones(1)], u) + self.rtol * size + 1e-300


def norms(tensors: list) -> tuple[float, float]:
    """(L1, L2) norms of a list of tensors (None: zeros)."""
    parts = [real(t).double().reshape(-1) for t in tensors if t is not None]
    return sum(float(p.abs().sum()) for p in parts), sum(float(p.pow(2).sum()) for p in parts) ** 0.5


def terms_size(a: Tensors | list, b: Tensors | list) -> float:
    """The size of the terms of ``<a, b>``: their absolute sum, or RSS_SAFETY root-sum-squares when smaller
    (a sum under random signs)."""
    return min(abs_inner(a, b), RSS_SAFETY * rss_inner(a, b))


def entries_size(cotangent: list, u: list) -> float:
    """The size of ``<v, E·u>`` for E all ones: what an error of 1 in every Jacobian entry adds up to on a probe
    (absolute sum, or RSS_SAFETY root-sum-squares under the random signs when smaller)."""
    (v1, v2), (u1, u2) = norms(cotangent), norms(u)
    return min(v1 * u1, RSS_SAFETY * v2 * u2)


@dataclass
class Analytical:
    """The analytical side at one point: the VJPs ``v_k^T J`` of the cotangents, and (when forward mode runs)
    a function giving the JVP along a direction. In a mixed-precision computation, ``tangent_noise(u, jvp)``:
    the measured rounding spread of that JVP's elements (asked for only where forward mode fails without it)."""

    cotangents: list[Tensors]
    grads: list[Tensors]
    tangents: Callable[[list], Tensors | None] = lambda u: None
    output_names: list[str] = field(default_factory=list)
    tangent_noise: Callable[[list, Tensors], Tensors | None] | None = None

    @cached_property
    def rows(self) -> CotangentRows:
        """The cotangents and gradients as matrices, for every probe test at this point (the gradients' lists
        then view the matrix: whoever holds them holds no second copy)."""
        rows = CotangentRows(self.cotangents, self.grads)
        rows.share_memory(self.grads)
        return rows


@dataclass
class Numerics:
    """Where and how finite differences run: the function's values at a list of points, the rounding noise
    measured at x (or None), and an extra relative error of the model for backends that compute in another
    precision than the analytical side (see numerics.model_error_of).

    ``ladder_start``: where the next probe's Richardson ladder begins. The first starts at the space's top
    step and descends as far as truncation demands (a ReLU transformer: 10-12 levels, two evaluations each);
    the function's curvature along random directions is alike, so later probes start a level above the step
    where the previous one converged, and descend from there."""

    values: Evaluate
    space: ProbeSpace
    noise: Tensors | None = None
    model_error: float = 0.0
    ladder_start: float | None = None
    # In a mixed-precision computation: per cotangent, how far the analytical gradients move when the leaves
    # are jittered at the coarse precision's rounding level (see checks.measure_gradient_noise).
    gradient_noise: list[Tensors] | None = None
    center: Tensors | None = None  # the values at x, where a mixed-precision ladder looks for straddled kinks
    user: UserTolerance | None = None  # what the user accepts besides the error bar (--rtol/--atol)

    @property
    def floor_eps(self) -> float:
        """The eps of the rounding the error model assumes rather than measures: the arithmetic's, except where
        a coarser section sits inside finer leaves, whose noise the measurements carry (the noise line of the
        values, the jitter of the gradients); the leaves' own rounding is then what is left to model."""
        measured = self.noise is not None and self.gradient_noise is not None
        return self.space.leaf_eps if self.space.mixed and measured else self.space.eps

    def derivative(self, x: Tensors, u: list, top: float, first: list[Tensors] | None = None,
                   wide: bool = False) -> NumericalDerivative:
        """J·u by a ladder from ``top`` down. ``wide``: a ladder started far above the usual top, each estimate
        judged against both neighbours (f at x known), so that three levels must agree before a bar is kept."""
        center = None
        if self.space.mixed or wide:  # (f at x is known; at a nearby point it costs one evaluation)
            center = self.value_at(x)
        return extrapolated_derivative(self.values, x, u, top, self.floor_eps, self.noise, first=first,
                                       center=center, levels=LADDER_LEVELS + (WIDE_LEVELS if wide else 0))

    def value_at(self, x: Tensors) -> Tensors:
        """f at x, evaluated once for the space's own point."""
        if x is not self.space.x:
            return self.values([x])[0]
        if self.center is None:
            self.center = self.values([x])[0]
        return self.center

    def derivative_in_domain(self, x: Tensors, u: list, top: float | None = None) -> tuple[NumericalDerivative, float]:
        """The numerical J·u with the steps divided by 8 while the largest leaves the function's domain (log at
        1e-12): (derivative, largest step used); still NaN or Inf, the follow-ups classify the failure.
        ``top``: a wide ladder's first step (see ``wide_top``); the next probes' start is left as it was."""
        wide = top is not None
        top = top if wide else (self.ladder_start or self.space.top)
        for _ in range(DOMAIN_SHRINKS):
            first = self.values_or_none(x, u, ladder_steps(top, FIRST_LEVELS))
            if first is not None and all(is_finite(y) for y in first[:2]):  # (the top level: the domain check)
                numerical = self.derivative(x, u, top, first, wide)
                if not wide:
                    self.ladder_start = min(self.space.top, 2 * numerical.top)
                return numerical, top
            top /= 8
        return self.derivative(x, u, top, wide=wide), top

    def wide_top(self) -> float:
        """Where a leaf probed alone that its usual ladder left unresolved starts its ladder: 2^WIDE_LEVELS above
        the usual top (at most WIDE_TOP_LIMIT of the leaf's scale). A gradient that vanishes beside the
        outputs (a bias deep in a tanh net: 5e-7) is swamped by the outputs' rounding (eps |y| / step) at the
        usual steps, while its truncation stays far below: the ladder then descends to where they meet."""
        return min(WIDE_TOP_LIMIT, self.space.top * 2 ** WIDE_LEVELS)

    def values_or_none(self, x: Tensors, u: list, steps: list[float]) -> list[Tensors] | None:
        """The values at the ladder's points a step away from x, or None where the function refuses them: f ran
        at x, so an error there (BCELoss's "input should be between 0 and 1") is the edge of its domain, like a
        NaN."""
        try:
            return ladder_values(self.values, x, u, steps)
        except Exception:
            return None


def probe_test(numerics: Numerics, analytical: Analytical, x: Tensors, u: list,
               retry: bool = True, top: float | None = None) -> tuple[Outcome, Outcome]:
    """(reverse, forward) outcomes of one direction u at x.

    A direction that fails is retried with a smaller step (64x in float64, 4x below): a kink a hair away from x
    (closer than the step) fools the error bar of the first stencil but not the second, while a real fault or a
    kink at x itself fails at both steps. A retry whose error bar is much wider than the first's (rounding
    dominates at the small step) cannot clear a failure: it would only hide it."""
    tangents = analytical.tangents(u)
    tangent_noise = None

    def judged(numerical: NumericalDerivative) -> tuple[Outcome, Outcome]:
        nonlocal tangent_noise
        outcomes = judge(numerics, analytical, numerical, u, tangents, tangent_noise)
        if outcomes[1].failed and tangent_noise is None and analytical.tangent_noise is not None:
            tangent_noise = analytical.tangent_noise(u, tangents)
            outcomes = judge(numerics, analytical, numerical, u, tangents, tangent_noise)
        return outcomes

    wide = top is not None
    numerical, top = numerics.derivative_in_domain(x, u, top)
    attempts = [judged(numerical)]
    if retry and any(o.failed for o in attempts[0]):
        numerical = numerics.derivative(x, u, top / numerics.space.retry_divisor)
        attempts.append(judged(numerical))
    first_bar = attempts[0][0].tolerance
    # (after a wide ladder, a retry at the usual steps clears a failure only where its bar could have seen the
    # disagreement the wide one saw: the wide ladder is there because the usual bar cannot)
    limit = attempts[0][0].abs_err if wide else RETRY_BAR_LIMIT * first_bar
    usable = [attempts[0]] + [a for a in attempts[1:] if a[0].tolerance <= limit]
    return min(usable, key=lambda pair: max(pair[0].excess, pair[1].excess))


def judge(numerics: Numerics, analytical: Analytical, numerical: NumericalDerivative, u: list,
          tangents: Tensors | None, tangent_noise: Tensors | None = None) -> tuple[Outcome, Outcome]:
    """The reverse-mode (one test per cotangent) and forward-mode outcomes against one numerical J·u
    (``tangent_noise``: the JVP's measured rounding spread, where it was measured)."""
    eps = numerics.floor_eps
    reverse, forward = Outcome(), Outcome()
    tests = probe_tests(analytical.rows, numerical, u, eps, numerics.model_error, numerics.noise)
    for k, (v, g) in enumerate(zip(analytical.cotangents, analytical.grads)):
        a, n, tolerance = tests[k]  # (probe_tolerance's bound, every cotangent at once)
        if numerics.gradient_noise:
            tolerance += GRADIENT_NOISE_SAFETY * rss_inner(numerics.gradient_noise[k], u)
        user = numerics.user.on_probe(v, numerical.value, g, u) if numerics.user else None
        reverse.absorb(a, n, tolerance, cotangent=k, user=user)
        reverse.tolerances.append(tolerance)
    if tangents is not None:
        # (a JVP through the coarse section rounds there too: its eps is the model, and where that fails, the
        # spread measured at jittered points)
        compare_tangents(tangents, numerical, numerics.space.eps, numerics.model_error, analytical.output_names,
                         forward, numerics.user, u, tangent_noise)
    return reverse, forward


def compare_tangents(tangents: Tensors, numerical: NumericalDerivative, eps: float, model_error: float,
                     output_names: list[str], outcome: Outcome, user: UserTolerance | None = None,
                     u: list | None = None, noise: Tensors | None = None) -> None:
    """Forward mode: each output's JVP against the numerical J·u, elementwise; the worst element is kept (the
    error bar or the user's tolerance, whichever is looser, judges each element). ``noise``: the JVP's
    measured rounding spread per element, counted as the VJPs' is."""
    tolerances = elementwise_tolerance(numerical, eps, model_error)
    if noise is not None:
        tolerances = [tol + GRADIENT_NOISE_SAFETY * n.to(tol.device) for tol, n in zip(tolerances, noise)]
    names = output_names or [f"output[{i}]" for i in range(len(tangents))]
    for name, t, n, tol in zip(names, tangents, numerical.value, tolerances):
        if n.numel() == 0:
            continue
        # Index on the CPU: a Python index into a device tensor would compile a graph per index on XLA.
        t, n, tol = real(t).double().cpu(), n.cpu(), tol.cpu()
        errors = (t - n).abs() / tol
        accepted = user.on_elements(t, n, u) if user is not None else None
        if accepted is not None:
            errors = user_judged(outcome, errors, (t - n).abs(), accepted, torch.maximum(t.abs(), n.abs()))
        worst = int(torch.argmax(errors.flatten()))
        index = unravel(worst, n.shape)
        where = f"{name}[{', '.join(str(int(i)) for i in index)}]"
        size = float(n.abs().sum())  # (the whole output's: its worst element may be near 0)
        mine = None if accepted is None else (float(accepted.flatten()[worst]),
                                              float(torch.maximum(t.abs(), n.abs()).flatten()[worst]))
        outcome.absorb(float(t.flatten()[worst]), float(n.flatten()[worst]), float(tol.flatten()[worst]),
                       output=where, resolution=float(tol.sum()) / size if size > 0 else None, user=mine)


def probe_group(numerics: Numerics, analytical: Analytical, x: Tensors, members: list[int],
                directions: int) -> dict[str, Outcome]:
    """Probe tests of one group of leaves along several signed random directions: the worst outcome per method."""
    return probe_group_resolving(numerics, analytical, x, members, directions)[0]


def probe_group_resolving(numerics: Numerics, analytical: Analytical, x: Tensors, members: list[int],
                          directions: int, top: float | None = None) -> tuple[dict[str, Outcome], dict[int, float]]:
    """``probe_group``'s outcomes, and each member's resolution: the smallest relative error in that member's
    gradient that one of the reverse-mode tests would have seen (its error bar over the member's own part of
    ``<g, u>``). Once a direction failed at both steps, later ones skip the retry: no retry can clear the group
    then. Several members share balanced directions (``group_direction``): one probe tests many leaves.
    ``top``: each direction's ladder is a wide one from there (see ``Numerics.wide_top``)."""
    reverse, forward = Outcome(), Outcome()
    resolution = {i: math.inf for i in members}
    for _ in range(directions):
        u = group_direction(numerics.space, analytical, members, x)
        rev, fwd = probe_test(numerics, analytical, x, u, retry=not (reverse.failed or forward.failed), top=top)
        reverse.merge(rev)
        forward.merge(fwd)
        for i in members:  # (each cotangent's bar over the leaf's part of its test: the finest of them)
            parts = leaf_parts(analytical.rows, i, u[i])
            bars = rev.tolerances or [rev.tolerance] * len(parts)
            seen = [bar / part for bar, part in zip(bars, parts) if part > 0]
            resolution[i] = min([resolution[i]] + seen)
    results = {"reverse": reverse, "forward": forward} if forward.tests else {"reverse": reverse}
    return results, resolution


def leaf_parts(rows: CotangentRows, i: int, ui: torch.Tensor) -> list[float]:
    """|<g_k[i], u[i]>| per cotangent, over the elements u moves (see ``dot``): one product, and the masked one
    only where a gradient is not finite (NaN * 0)."""
    gradients, u = rows.leaf(i), flat([ui])
    part = gradients @ u
    if not bool(torch.isfinite(part).all()):
        part = torch.where(u != 0, gradients * u, 0.0).sum(1)
    return part.abs().tolist()


BALANCE_SPREAD = 64.0  # a member's part of a balanced direction is scaled by at most this factor, up or down


def balancing_weights(analytical: Analytical, u: list) -> list[float]:
    """Per-leaf factors that bring each leaf's share of ``<g, u>`` (its absolute size, summed over the
    cotangents: the analytical side tells the scale) down towards the smallest share, by at most
    BALANCE_SPREAD. Without them a leaf with a small gradient (a bias beside large weights) would hide below the
    error bar of the large ones. Shares are only scaled down: no leaf moves further than its own scale, where a
    larger step would cross more kinks (ReLU) than its unbalanced probe does."""
    rows = analytical.rows  # (summed over the cotangents in one product per leaf)
    if isinstance(u, Direction):  # (|u| is the leaf's magnitude wherever it moves: per-leaf sums of |g|)
        ones = rows.leaf_sums(u.movable)[0].sum(0)
        shares = [0.0 if ui is None else float(ones[i]) * m for i, (ui, m) in enumerate(zip(u, u.magnitudes))]
    else:
        shares = [0.0 if ui is None else float((rows.g_abs[:, slice(*rows.columns[i])] @ flat([ui]).abs()).sum())
                  for i, ui in enumerate(u)]
    sizes = [s for s in shares if s > 0 and math.isfinite(s)]
    if len(sizes) < 2:
        return [1.0] * len(u)
    smallest = min(sizes)
    return [min(1.0, max(1 / BALANCE_SPREAD, smallest / s)) if s > 0 and math.isfinite(s) else 1.0
            for s in shares]


def group_direction(space: ProbeSpace, analytical: Analytical, members: list[int], x: Tensors) -> list:
    """A signed random direction moving the members, balanced when there are several (see balancing_weights)."""
    u = space.direction(members, x)
    if len(members) < 2:
        return u
    return u.scaled(balancing_weights(analytical, u))
