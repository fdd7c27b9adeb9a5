"""The audit of one Program: probe tests at first and second order, then follow-ups on what fails.

For each group of leaves (``total``: all of them, then each leaf alone) and several signed random directions u,
the numerical J·u (Richardson, with an error bar) is compared with
  * reverse mode: ``<v_k, J·u>`` against ``<v_k^T J, u>`` for several signed random cotangents v_k, and
  * forward mode: the JVP, elementwise.
A failing group is followed up: re-checked at nearby points (a kink at the evaluation point is a
``nondifferentiable_point``, not a faulty backward), else narrowed to its worst element.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from gradaudit.backends.base import Program
from gradaudit.core.differentiate import ForwardFunction, GradientFunction, evaluate, jvp, twice_differentiable_attention, vjps
from gradaudit.errors import AuditError, Unsupported
from gradaudit.outcome import first_line
from gradaudit.core.numerics import (ERROR_BAR_SAFETY, ROUNDING_FACTOR, NumericalDerivative, central_difference,
                       directional_derivative, elementwise_tolerance, eps_of, extrapolated_derivative, inner,
                       is_finite, ladder_top, nonsmooth_evidence, probe_tolerance,
                       rademacher_like, real, relative_floor, rounding_noise, rss_inner, RSS_SAFETY, shifted,
                       step_size, Evaluate)
from gradaudit.report import Check, Finding

Progress = Callable[[str, int, int], None]
WORST_ELEMENT_LEAVES = 3  # failing leaves whose worst element a follow-up searches
RETRY_BAR_LIMIT = 8.0  # a smaller-step retry counts only if its error bar is at most this much wider
# torch's own words for "this op has no second derivative" (not a failure of the user's code).
NO_DOUBLE_BACKWARD = re.compile(r"derivative for \S+ is not implemented|marked with @once_differentiable")
DOMAIN_SHRINKS = 12  # a step that leaves the function's domain is divided by 8 up to this many times

@dataclass
class Settings:
    order: int = 1
    mode: str = "auto"  # auto: probes + follow-ups; fast: probes only; full: full Jacobians
    probes: int = 3  # directions per group, and cotangents per order
    seed: int = 0
    repeats: int = 2  # extra backward passes that measure non-determinism
    per_element_limit: int = 16  # the worst element: every element up to this size, bisection above it
    kink_scan_limit: int = 256  # elements scanned for kinks (one-sided derivatives) per leaf
    full_jacobian_limit: int = 200_000  # full mode refuses Jacobians with more entries than this

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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

    @property
    def failed(self) -> bool:
        return self.excess >= 1.0

    def merge(self, other: "Outcome") -> None:
        tests = self.tests + other.tests
        if other.tests and (other.excess >= self.excess or self.analytical is None):
            self.__dict__.update(other.__dict__)
        self.tests = tests

    def absorb(self, analytical: float, numerical: float, tolerance: float, output: str | None = None,
               cotangent: int | None = None) -> None:
        self.tests += 1
        error = abs(analytical - numerical)
        excess = error / tolerance if math.isfinite(error) else math.inf
        if excess >= self.excess or self.analytical is None:
            self.excess, self.abs_err, self.tolerance = excess, error, tolerance
            self.rel_err = error / max(abs(numerical), 1e-300)
            self.analytical, self.numerical, self.output, self.cotangent = analytical, numerical, output, cotangent


@dataclass
class Group:
    name: str  # 'total' or a leaf name
    members: list[int]
    results: dict = field(default_factory=dict)  # method -> Outcome


class Auditor:
    def __init__(self, program: Program, settings: Settings, progress: Progress | None = None,
                 numeric: Program | None = None, model_error: float = 0.0) -> None:
        """``program`` gives the analytical side (torch autograd); ``numeric``, when given, is a backend without
        autograd (an exported graph in a runtime) whose finite differences are judged against it."""
        self.program, self.settings, self.progress = program, settings, progress
        self.model_error = model_error  # see numerics.model_error_of
        self.numeric = numeric if numeric is not None else program
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.x = [leaf.value for leaf in program.leaves]
        self.names = [leaf.name for leaf in program.leaves]
        self.dtype = self.numeric.dtype  # the precision finite differences run in sets steps and error bars
        self.eps, self.h = eps_of(self.dtype), step_size(self.dtype)
        self.top = ladder_top(self.dtype)  # the probes' largest step (see numerics.extrapolated_derivative)
        # float64 affords a much smaller retry step than float32 before rounding swamps the quotient.
        self.retry_divisor = 64 if self.eps < 1e-10 else 4
        # Directions are +-scale per element: steps relative to the tensor's size, never below 1.
        # Infinite elements (-inf in an attention mask or a masked softmax input) cannot be moved by a finite
        # step: every direction leaves them where they are, and they do not count in the scale.
        self.movable = [torch.isfinite(x) for x in self.x]
        self.scales = [leaf_scale(x) for x in self.x]
        self.checks: list[Check] = []
        self.findings: list[Finding] = []
        self.skipped: list[dict] = []
        # Forward mode checks the program's own JVPs; against another backend's finite differences a
        # mismatch would be that backend's divergence, which the reverse-mode tests already report.
        self.forward_ad = program.supports_forward_ad and self.numeric is program
        self.noise: list[torch.Tensor] | None = None  # rounding noise of the current order's outputs

    # -- driving ---------------------------------------------------------------------------------------
    def run(self) -> tuple[list[Check], list[Finding], list[dict]]:
        first = ForwardFunction(self.program)
        self._numeric_first = first if self.numeric is self.program else ForwardFunction(self.numeric)
        steps = self._group_count() * self.settings.order
        self._done, self._steps = 0, steps
        self.check_function(first)
        if self.settings.order >= 2:
            if not self.program.supports_double_backward or self.numeric is not self.program:
                self.skipped.append({"what": "order 2", "reason": "the backend has no double backward"})
            else:
                second = GradientFunction(first, self.random_like(evaluate(first, self.x)), self.names)
                try:
                    self.check_function(second)
                except RuntimeError as exc:  # fails at the first double backward, before any check is kept
                    if "not implemented" in str(exc) and "attention" in str(exc):
                        with twice_differentiable_attention(self.skipped):
                            self.check_function(second)
                    elif NO_DOUBLE_BACKWARD.search(str(exc)):
                        self.skipped.append({"what": "order 2", "reason": "torch has no double backward here: "
                                             + first_line(exc)})
                    else:
                        raise AuditError(f"the order-2 check could not run: differentiating the gradient raised "
                                         f"{type(exc).__name__}: {first_line(exc)}") from exc
        return self.checks, self.findings, self.skipped

    def _group_count(self) -> int:
        return len(self.x) + (1 if len(self.x) > 1 else 0)

    def _tick(self, what: str) -> None:
        self._done += 1
        if self.progress:
            self.progress(what, self._done, self._steps)

    def random_like(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [rademacher_like(t, self.generator) for t in tensors]

    def direction(self, members: list[int], x: list[torch.Tensor] | None = None) -> list:
        x = self.x if x is None else x
        return [rademacher_like(x[i], self.generator) * self.scales[i] * self.movable[i] if i in members else None
                for i in range(len(x))]

    def groups(self) -> list[Group]:
        leaves = [Group(name, [i]) for i, name in enumerate(self.names)]
        return ([Group("total", list(range(len(self.names))))] if len(leaves) > 1 else []) + leaves

    # -- one order ---------------------------------------------------------------------------------------
    def check_function(self, f) -> None:
        order = f.order
        outputs = evaluate(f, self.x)
        for name, out in zip(f.output_names, outputs):
            if not torch.isfinite(out).all():  # (order 1's outputs were checked when the program loaded)
                self.skipped.append({"what": f"order {order}", "reason": f"the order-{order - 1} gradient {name} "
                                     "is NaN or Inf at this point, so it cannot be differentiated"})
                return
        self.noise = self.measure_noise(f)
        cotangents = [self.random_like(outputs) for _ in range(self.settings.probes)]
        grads = vjps(f, self.x, cotangents)
        self.check_nondeterminism(f, cotangents[0], grads[0])
        if self.settings.mode == "full":
            self.full_jacobians(f, outputs)
            return
        groups = self.groups()
        for group in groups:
            group.results = self.probe(f, self.x, group.members, cotangents, grads)
            self._tick(f"order {order} wrt {group.name}")
        verdicts = self.follow_up(f, groups, cotangents, grads) if self.settings.mode != "fast" else {}
        for group in groups:
            status, detail = verdicts.get(group.name, ("fail", {}))
            for method, outcome in group.results.items():
                self.checks.append(self.to_check(order, group.name, method, outcome,
                                                 status if outcome.failed else "pass", detail))
        self.summarize(order)

    def follow_up(self, f, groups: list[Group], cotangents, grads) -> dict[str, tuple[str, dict]]:
        """Status and details of the failing groups, worst first. A faulty backward also fails near x, a kink
        does not: once one group is a real fault, the groups failing with it need no nearby re-check. The
        worst element is searched in the few worst leaves only (deep networks fail in dozens of leaves)."""
        failing = sorted((g for g in groups if any(o.failed for o in g.results.values())),
                         key=lambda g: -max(o.excess for o in g.results.values()))
        verdicts, fault_seen, searched = {}, False, 0
        for group in failing:
            kinks = None if fault_seen else self.at_kink(f, group, cotangents)
            if kinks is not None:
                verdicts[group.name] = ("nondifferentiable_point", {"kink_elements": kinks})
                continue
            fault_seen, detail = True, {}
            if len(group.members) == 1 and group.results["reverse"].failed and searched < WORST_ELEMENT_LEAVES:
                searched += 1
                detail = self.worst_element(f, group.members[0], cotangents, grads, group.results)
            verdicts[group.name] = ("fail", detail)
        return verdicts

    def probe(self, f, x, members, cotangents, grads, directions: int | None = None) -> dict[str, Outcome]:
        """Signed random probe tests of one group at point x: reverse, and forward where supported.

        A direction that fails is retried with a smaller step (64x in float64, 4x below): a kink a hair away
        from x (closer than the step) fools the error bar of the first stencil but not the second, while a
        real fault or a kink at x itself fails at both steps."""
        reverse, forward = Outcome(), Outcome()
        for _ in range(directions or self.settings.probes):
            u = self.direction(members, x)
            tangents = self.forward_tangents(f, x, u)
            attempts = []
            numerical, top = self.derivative_in_domain(f, x, u, self.top)
            for h in (top, top / self.retry_divisor):
                if h != top:
                    numerical = extrapolated_derivative(self.numeric_function(f), x, u, h, self.eps, self.noise)
                attempts.append(self.judge(f, numerical, u, cotangents, grads, tangents))
                if not any(o.failed for o in attempts[-1]) or reverse.failed or forward.failed:
                    break  # passed, or the group already failed at both steps: no retry can change that
            # A retry whose error bar is much wider than the first's (rounding dominates at the small step)
            # cannot clear a failure: it would only hide it.
            first_bar = attempts[0][0].tolerance
            usable = [a for a in attempts if a[0].tolerance <= RETRY_BAR_LIMIT * first_bar] or attempts[:1]
            rev, fwd = min(usable, key=lambda pair: max(pair[0].excess, pair[1].excess))
            reverse.merge(rev)
            forward.merge(fwd)
        results = {"reverse": reverse}
        if forward.tests:
            results["forward"] = forward
        return results

    def judge(self, f, numerical: NumericalDerivative, u, cotangents, grads, tangents) -> tuple[Outcome, Outcome]:
        """The reverse-mode (one test per cotangent) and forward-mode outcomes against one numerical J·u."""
        rev, fwd = Outcome(), Outcome()
        for k, (v, g) in enumerate(zip(cotangents, grads)):
            rev.absorb(inner(g, u), inner(v, numerical.value),
                       probe_tolerance(numerical, v, g, u, self.eps, self.model_error, self.noise), cotangent=k)
        if tangents is not None:
            self.compare_forward(f, tangents, numerical, fwd)
        return rev, fwd

    def derivative_in_domain(self, f, x, u, top: float) -> tuple[NumericalDerivative, float]:
        """The numerical J·u with the steps divided by 8 while the largest leaves the function's domain (log at
        1e-12): (derivative, largest step used); still NaN or Inf, the follow-ups classify the failure."""
        values = self.numeric_function(f)
        for _ in range(DOMAIN_SHRINKS):
            if all(is_finite(y) for y in values([shifted(x, u, top), shifted(x, u, -top)])):
                break
            top /= 8
        return extrapolated_derivative(values, x, u, top, self.eps, self.noise), top

    def measure_noise(self, f) -> list[torch.Tensor] | None:
        """The rounding noise of f's outputs near x, along one direction moving every leaf (see
        numerics.rounding_noise), from a generator of its own so the probes stay those of the seed."""
        generator = torch.Generator().manual_seed(self.settings.seed + 7919 * f.order)
        u = [rademacher_like(xi, generator) * s * m for xi, s, m in zip(self.x, self.scales, self.movable)]
        # A short line (steps of sqrt(eps)): long enough for rounding to decorrelate, short enough to rarely
        # reach a jump of a piecewise-constant function (round, floor), which would pass for noise.
        values, delta, noise = self.numeric_function(f), self.eps ** 0.5, None
        for _ in range(DOMAIN_SHRINKS):
            # The line starts next to x, on one side: a kink at x itself must not pass for noise.
            noise = rounding_noise(values, self.x, u, delta) or rounding_noise(values, self.x, u, -delta)
            if noise is not None:
                break
            delta /= 8
        if not isinstance(f, GradientFunction):
            return noise
        # A gradient is computed from the forward's values: it is known no better than eps times them over the
        # leaf's scale, even where it rounds to a constant (tanh saturated to +-1 makes 1 - t^2 exactly 0, and
        # no measurement along a line can see that resolution).
        ingredients = self.eps * sum(float((real(v).double().abs() * real(y).double().abs()).sum())
                                     for v, y in zip(f.cotangent, evaluate(f.inner, self.x)))
        floors = [torch.full(real(xi).shape, ingredients / s, dtype=torch.float64)
                  for xi, s in zip(self.x, self.scales)]
        return floors if noise is None else [torch.maximum(n, fl.to(n.device)) for n, fl in zip(noise, floors)]

    def scalar_noise(self, cotangent) -> list[torch.Tensor] | None:
        """Noise of ``<cotangent, f>``: the outputs' noise under the cotangent's random signs (root-sum-square)."""
        if self.noise is None:
            return None
        return [torch.tensor([rss_inner([real(v) for v in cotangent], self.noise)], dtype=torch.float64)]

    def forward_tangents(self, f, x, u) -> list[torch.Tensor] | None:
        if not self.forward_ad:
            return None
        try:
            return jvp(f, x, u)
        except Unsupported as exc:
            self.forward_ad = False
            self.skipped.append({"what": f"forward-mode AD (order {f.order})", "reason": str(exc)})
            return None

    def compare_forward(self, f, tangents, numerical: NumericalDerivative, outcome: Outcome) -> None:
        tolerances = elementwise_tolerance(numerical, self.eps, self.model_error)
        for name, t, n, tol in zip(f.output_names, tangents, numerical.value, tolerances):
            if n.numel() == 0:
                continue
            # Index on the CPU: a Python index into a device tensor would compile a graph per index on XLA.
            t, n, tol = real(t).double().cpu(), n.cpu(), tol.cpu()
            errors = (t - n).abs() / tol
            worst = int(torch.argmax(errors.flatten()))
            index = list(torch.unravel_index(torch.tensor(worst), n.shape))
            where = f"{name}[{', '.join(str(int(i)) for i in index)}]"
            outcome.absorb(float(t.flatten()[worst]), float(n.flatten()[worst]),
                           float(tol.flatten()[worst]), output=where)

    # -- follow-ups --------------------------------------------------------------------------------------
    def at_kink(self, f, group: Group, cotangents) -> list | None:
        """The kink details if the group fails only because x is a non-differentiable point, else None (a real
        fault). A kink must be shown, not assumed: f must be non-smooth at x along the group's directions
        (one-sided derivatives that differ, diverge, or leave the domain), and the group must pass nearby.
        Failing at exactly one point where f is smooth is a wrong derivative there (a removable singularity
        handled wrongly), not a kink."""
        evidence = self.nonsmooth_at_x(f, group)
        if evidence is None:
            return None
        for _ in range(2):
            nearby = self.nearby_point(f)
            if nearby is None:
                continue  # x sits at the domain's edge on both sides of this shift
            grads = vjps(f, nearby, cotangents)
            # One direction suffices: a faulty backward fails in almost every signed direction.
            if any(o.failed for o in self.probe(f, nearby, group.members, cotangents, grads, 1).values()):
                return None
        return [self.kink_elements(f, i, cotangents[0]) | {"evidence": evidence} for i in group.members]

    def nearby_point(self, f) -> list[torch.Tensor] | None:
        """A random point a few steps from x where f is defined (x + shift, else x - shift), or None."""
        shift = [30 * self.h * s * torch.randn(xi.shape, generator=self.generator,
                                               dtype=real(xi).dtype).to(xi.device).to(xi.dtype)
                 for xi, s in zip(self.x, self.scales)]
        for sign in (1.0, -1.0):
            point = [xi + sign * d for xi, d in zip(self.x, shift)]
            if is_finite(evaluate(f, point)):
                return point
        return None

    def nonsmooth_at_x(self, f, group: Group) -> str | None:
        """Evidence (one line) that f is not differentiable at x along some direction in the group."""
        for _ in range(2):
            u = self.direction(group.members)
            evidence = nonsmooth_evidence(self.numeric_function(f), self.x, u, self.h, self.eps, self.noise)
            if evidence is not None:
                return evidence
        return None

    def kink_elements(self, f, leaf: int, cotangent) -> dict:
        """Elements of a leaf where f is not differentiable: one-sided derivatives that jump, do not converge, or
        leave the domain."""
        name, x = self.names[leaf], self.x[leaf]
        flat = real(x).reshape(-1)
        if flat.numel() > self.settings.kink_scan_limit:
            return {"wrt": name, "elements": None, "note": f"{flat.numel()} elements, too many to scan"}
        scalar, noise = self.scalar(f, cotangent), self.scalar_noise(cotangent)
        # The same test as the evidence for the whole group (numerics.nonsmooth_evidence), one element at a time.
        found = [self.element_index(leaf, j) for j in range(flat.numel())
                 if nonsmooth_evidence(scalar, self.x, self.basis(leaf, j), self.h, self.eps, noise) is not None]
        return {"wrt": name, "elements": found}

    def worst_element(self, f, leaf: int, cotangents, grads, results) -> dict:
        """The element of a failing leaf with the largest analytical-vs-numerical error (all elements when
        the leaf is small, bisection with signed probes when it is large)."""
        k = results["reverse"].cotangent if results["reverse"].failed else 0
        scalar, noise = self.scalar(f, cotangents[k]), self.scalar_noise(cotangents[k])
        gradient = real(grads[k][leaf]).double().reshape(-1)
        count = gradient.numel()

        def excess(test: tuple[float, float, float]) -> float:
            error = abs(test[0] - test[1]) / test[2]
            return error if math.isfinite(error) else math.inf  # a NaN gradient is the worst element

        if count <= self.settings.per_element_limit:
            tests = [self.element_test(scalar, leaf, self.unit(count, j), gradient, noise) for j in range(count)]
            j = max(range(count), key=lambda i: excess(tests[i]))
        else:
            j = self.bisect(scalar, leaf, gradient)
        a, n, tol = self.element_test(scalar, leaf, self.unit(count, j), gradient, noise)
        if math.isfinite(abs(a - n)) and abs(a - n) < tol:
            return {}  # a fault spread thinly over the whole tensor: no single element shows it on its own
        return {"worst_index": self.element_index(leaf, j), "analytical": a, "numerical": n,
                "element_tolerance": tol}

    def bisect(self, scalar, leaf: int, gradient: torch.Tensor) -> int:
        """Halve the candidate elements, following the half with the larger error under fixed random signs.
        Errors add up over disjoint halves, so one difference quotient per level is enough."""
        signs = rademacher_like(gradient, self.generator)

        def error(indices: torch.Tensor) -> float:
            u = torch.zeros_like(gradient)
            u[indices] = signs[indices]
            direction = self.leaf_direction(leaf, u)
            numerical = central_difference(scalar, self.x, direction, self.h)
            error = dot(gradient, u) - float(numerical[0].sum()) / self.scales[leaf]
            return error if math.isfinite(error) else math.inf  # follow a NaN or Inf gradient element

        candidates = torch.arange(gradient.numel())
        candidate_error = error(candidates)
        while candidates.numel() > 1:
            left, right = candidates[:candidates.numel() // 2], candidates[candidates.numel() // 2:]
            left_error = error(left)
            right_error = candidate_error - left_error
            if math.isinf(left_error) or abs(left_error) >= abs(right_error):
                candidates, candidate_error = left, left_error
            else:
                candidates, candidate_error = right, right_error
        return int(candidates[0])

    def leaf_direction(self, leaf: int, u_flat: torch.Tensor) -> list:
        """A direction that moves one leaf along ``u_flat`` (its real view, flattened) by its scale."""
        x = self.x[leaf]
        u = u_flat.to(real(x).dtype).reshape(real(x).shape).to(x.device)
        u = torch.view_as_complex(u.contiguous()) if x.is_complex() else u
        u = u * self.movable[leaf]
        return [u * self.scales[leaf] if i == leaf else None for i in range(len(self.x))]

    def element_test(self, scalar, leaf: int, u_flat: torch.Tensor, gradient: torch.Tensor, noise=None):
        """(analytical, numerical, tolerance) of the derivative of a scalar along a direction in one leaf."""
        numerical = extrapolated_derivative(scalar, self.x, self.leaf_direction(leaf, u_flat), self.top, self.eps,
                                            noise)
        n = float(numerical.value[0].sum()) / self.scales[leaf]
        err = float(numerical.error[0].sum()) / self.scales[leaf]
        a = dot(gradient, u_flat)
        return a, n, RSS_SAFETY * err + relative_floor(self.eps) * (abs(a) + abs(n)) + 1e-300

    @staticmethod
    def unit(count: int, j: int) -> torch.Tensor:
        u = torch.zeros(count, dtype=torch.float64)
        u[j] = 1.0
        return u

    def basis(self, leaf: int, j: int) -> list:
        return self.leaf_direction(leaf, self.unit(real(self.x[leaf]).numel(), j))

    def element_index(self, leaf: int, j: int) -> list[int]:
        shape = real(self.x[leaf]).shape
        if len(shape) == 0:
            return []
        return [int(i) for i in torch.unravel_index(torch.tensor(j), shape)]

    def numeric_function(self, f) -> Evaluate:
        """``points -> [f(z) for z in points]`` evaluated where finite differences run: the audited program
        itself, or the numeric backend with the points moved to its dtype and device (in one batched run
        where it can)."""
        if self.numeric is self.program:
            return lambda points: [evaluate(f, z) for z in points]
        leaves = self.numeric.leaves

        def move(z):
            return [zi.to(dtype=leaf.value.dtype, device=leaf.value.device) for zi, leaf in zip(z, leaves)]
        batch = getattr(self.numeric, "evaluate_batch", None)
        if batch is not None:
            return lambda points: batch([move(z) for z in points])
        return lambda points: [evaluate(self._numeric_first, move(z)) for z in points]

    def scalar(self, f, cotangent) -> Evaluate:
        """``points -> [[<cotangent, f(z)>]]``: the scalar whose partial derivatives are one row of the VJP."""
        values = self.numeric_function(f)

        def function(points):
            return [[torch.as_tensor(sum((real(v).double().cpu() * real(y).double().cpu()).sum()
                                         for v, y in zip(cotangent, outputs))).reshape(1)]
                    for outputs in values(points)]
        return function

    def check_nondeterminism(self, f, cotangent, reference) -> None:
        spread = 0.0
        for again in vjps(f, self.x, [cotangent] * self.settings.repeats):
            for a, b in zip(again, reference):
                if a.numel():
                    spread = max(spread, float((real(a).double() - real(b).double()).abs().max()))
        if spread > 0:
            scale = max(float(real(g).double().abs().max()) for g in reference if g.numel())
            self.findings.append(Finding(
                "nondeterministic_backward", order=f.order, max_abs_err=spread, severity="warning",
                message=f"order-{f.order} gradients differ between identical backward runs by up to "
                        f"{spread:.3g} ({spread / max(scale, 1e-300):.2g} of their largest value)",
                details={"spread": spread, "repeats": self.settings.repeats}))

    # -- full Jacobians (small cases) ----------------------------------------------------------------------
    def full_jacobians(self, f, outputs) -> None:
        rows = sum(real(y).numel() for y in outputs)
        columns = sum(real(x).numel() for x in self.x)
        if rows * columns > self.settings.full_jacobian_limit:
            raise AuditError(f"--mode full needs a {rows}x{columns} Jacobian, more than "
                             f"{self.settings.full_jacobian_limit} entries; use --mode auto")
        basis = []  # one-hot cotangents, one per real output element
        for i, y in enumerate(outputs):
            for j in range(real(y).numel()):
                flat = torch.zeros(real(y).numel(), dtype=real(y).dtype)  # built on the CPU, then moved
                flat[j] = 1
                t = flat.reshape(real(y).shape).to(y.device)
                basis.append((f"{f.output_names[i]}[{j}]",
                              [torch.view_as_complex(t) if y.is_complex() else t if m == i else
                               torch.zeros_like(outputs[m]) for m in range(len(outputs))]))
        rows_analytical = [[real(g).double().cpu().reshape(-1) for g in row]
                           for row in vjps(f, self.x, [c for _, c in basis])]
        for leaf, name in enumerate(self.names):
            outcome, worst = Outcome(), None
            for j in range(real(self.x[leaf]).numel()):
                u = self.basis(leaf, j)
                numerical = directional_derivative(self.numeric_function(f), self.x, u, self.h, self.eps)
                column = torch.cat([real(n).cpu().reshape(-1) for n in numerical.value]) / self.scales[leaf]
                errors = torch.cat([e.cpu().reshape(-1) for e in numerical.error]) / self.scales[leaf]
                for r, (label, _) in enumerate(basis):
                    a = float(rows_analytical[r][leaf][j])
                    n = float(column[r])
                    tol = ERROR_BAR_SAFETY * float(errors[r]) + ROUNDING_FACTOR * self.eps * (abs(a) + abs(n))
                    before = outcome.excess
                    outcome.absorb(a, n, tol + 1e-300, output=label)
                    if outcome.excess > before or worst is None:
                        worst = self.element_index(leaf, j)
            self._tick(f"order {f.order} wrt {name}")
            status = "fail" if outcome.failed else "pass"
            self.checks.append(self.to_check(f.order, name, "full_jacobian", outcome, status,
                                             {"worst_index": worst}))
        self.summarize(f.order)

    # -- results -----------------------------------------------------------------------------------------
    def to_check(self, order, wrt, method, outcome: Outcome, status, detail) -> Check:
        check = Check(order=order, wrt=wrt, method=method, ok=status != "fail", status=status,
                      max_abs_err=outcome.abs_err, max_rel_err=outcome.rel_err, tolerance=outcome.tolerance,
                      analytical=outcome.analytical, numerical=outcome.numerical, probes=outcome.tests,
                      dtype=str(self.dtype).replace("torch.", ""), output=outcome.output)
        if status == "fail" and detail.get("worst_index") is not None:
            check.worst_index = detail["worst_index"]
            if method == "reverse":  # the per-element values say more than the probe's scalars
                check.analytical, check.numerical = detail["analytical"], detail["numerical"]
                check.max_abs_err = abs(detail["analytical"] - detail["numerical"])
                check.max_rel_err = check.max_abs_err / max(abs(detail["numerical"]), 1e-300)
                check.tolerance = detail["element_tolerance"]
        if status == "nondifferentiable_point":
            check.kink_elements = detail["kink_elements"]
        return check

    def summarize(self, order: int) -> None:
        """One finding per (order, method) that failed, naming the most specific failing leaves."""
        mine = [c for c in self.checks if c.order == order]
        for method in dict.fromkeys(c.method for c in mine):
            failing = [c for c in mine if c.method == method and c.status == "fail"]
            if failing:
                self.findings.append(fault_finding(order, method, failing))
        kinks = [c for c in mine if c.status == "nondifferentiable_point" and c.method == "reverse"]
        if kinks:
            self.findings.append(kink_finding(order, kinks))


def leaf_scale(x: torch.Tensor) -> float:
    """The root mean square of a leaf's finite elements, at least 1: probe steps are relative to it. (On the
    CPU: a boolean mask on an XLA tensor would be a data-dependent shape, a CPU fallback.)"""
    values = x.detach().cpu()
    values = real(values[torch.isfinite(values)]).double()
    return max(1.0, float(values.pow(2).mean().sqrt())) if values.numel() else 1.0


def dot(gradient: torch.Tensor, u: torch.Tensor) -> float:
    """``<gradient, u>`` over the elements u moves only: a NaN gradient elsewhere must not leak in (NaN * 0)."""
    u = u.to(gradient.device)
    # torch.where, not boolean indexing: a data-dependent shape would be a CPU fallback on XLA.
    return float(torch.where(u != 0, gradient * u, torch.zeros_like(gradient)).sum())


def fault_finding(order: int, method: str, failing: list[Check]) -> Finding:
    partial = [c for c in failing if c.wrt != "total"] or failing
    worst = max(partial, key=lambda c: c.max_abs_err / max(c.tolerance, 1e-300))
    kind = ("faulty_forward_ad" if method == "forward" else
            "faulty_backward" if order == 1 else "faulty_double_backward")
    what = {"reverse": "reverse-mode gradient", "forward": "forward-mode derivative (JVP)",
            "full_jacobian": "Jacobian"}.get(method, method)
    where = f" at element {worst.worst_index}" if worst.worst_index is not None else ""
    if worst.output:
        where += f" (output {worst.output})"
    others = [c.wrt for c in partial if c is not worst]
    if len(others) > 6:
        others = others[:6] + [f"{len(others) - 6} more"]
    message = (f"order-{order} {what} wrt {worst.wrt} is wrong{where}: analytical {worst.analytical:.6g} vs "
               f"numerical {worst.numerical:.6g} (|err| {worst.max_abs_err:.3g}, error bar {worst.tolerance:.3g})")
    if others:
        message += f"; also wrong wrt {', '.join(others)}"
    return Finding(kind, message, order=order, wrt=worst.wrt, max_abs_err=worst.max_abs_err,
                   details={"method": method, "wrt_all": [c.wrt for c in partial],
                            "worst_index": worst.worst_index, "analytical": worst.analytical,
                            "numerical": worst.numerical, "error_bar": worst.tolerance})


def kink_finding(order: int, checks: list[Check]) -> Finding:
    parts, elements, evidence = [], {}, None
    for check in checks:
        for entry in check.kink_elements or []:
            evidence = evidence or entry.get("evidence")
            if entry["wrt"] in elements:
                continue
            elements[entry["wrt"]] = entry["elements"]
            if entry["elements"]:
                shown = ", ".join(str(e) for e in entry["elements"][:8])
                more = f" and {len(entry['elements']) - 8} more" if len(entry["elements"]) > 8 else ""
                parts.append(f"{entry['wrt']} elements {shown}{more}")
    located = "; ".join(parts) if parts else "not pinned to single input elements"
    wrts = [c.wrt for c in checks if c.wrt != "total"] or [c.wrt for c in checks]
    return Finding("nondifferentiable_point", order=order, wrt=wrts[0], severity="warning",
                   message=f"order-{order} check wrt {', '.join(wrts)} fails only at this point, which is not "
                           f"differentiable: {evidence} ({located}); gradients agree at nearby points",
                   details={"kink_elements": elements, "evidence": evidence})
