"""The audit of one Program: probe tests at first and second order, then follow-ups on what fails.

For each group of leaves (``total``: all of them, then each leaf alone) and several signed random directions u,
the probe test (``core.probe``) compares the numerical J·u with reverse mode and, where it runs, forward mode.
A failing group is followed up (``core.followups``): re-checked at nearby points (a kink at the evaluation point
is a ``nondifferentiable_point``, not a faulty backward), else narrowed to its worst element. The checking modes
(probe, full Jacobian) are functions of one signature: an ``OrderState`` in, checks out.
"""
from __future__ import annotations

import math
import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from gradaudit.core.differentiate import (CotangentFunction, ForwardFunction, GradientFunction, OracleFailure,
                                          evaluate, evaluate_batch, gradients, jvp, own_leaf,
                                          twice_differentiable_attention, vjps)
from gradaudit.core.findings import (graphless_backward, nondeterminism_finding, nonreentrant_finding,
                                     order_findings, to_check)
from gradaudit.core.followups import at_kink, worst_element
from gradaudit.core.kinds import CheckStatus, Method, Note
from gradaudit.core.numerics import (ERROR_BAR_SAFETY, GRADIENT_NOISE_SAFETY, ROUNDING_FACTOR, RSS_SAFETY, Evaluate,
                                     Tensors, batching, directional_derivative, on_device_of, rademacher_like, real,
                                     rounding_noise, rss_inner, to_host)
from gradaudit.core.precision import (Precision, coarsest, detect_precision, resolution_of,
                                      without_down_casts)
from gradaudit.core.probe import (DOMAIN_SHRINKS, Analytical, Numerics, Outcome, ProbeSpace, UserTolerance,
                                  probe_group_resolving)
from gradaudit.errors import AuditError, BackendFailure, Unsupported, backend_failure
from gradaudit.outcome import first_line, raised_in_users_code, users_own_exception, where_it_happened
from gradaudit.report import Check, Finding

if TYPE_CHECKING:  # the core sees a backend only through the Program interface
    from gradaudit.backends.base import Program

Progress = Callable[[str, int, int], None]
WORST_ELEMENT_LEAVES = 3  # failing leaves whose worst element a follow-up searches
# An aggregate probe covers a leaf only if a relative error this large in the leaf's gradient would have failed
# it; otherwise the leaf is probed in a smaller group (down to alone), as it was before aggregation.
RESOLUTION = 1e-6
# A leaf probed alone is probed once more along a wide ladder unless it is resolved this many times finer than
# the target: an error of RESOLUTION then fails its test by that margin, not by a coin's toss at the edge of its
# error bar. (Aggregates are held to the target itself: a margin there splits every large model's groups.)
RESOLUTION_MARGIN = 4.0
MODEL_ERROR_MARGIN = 64  # on a backend less accurate than eager float64, resolve down to this many model errors
# torch's own words for "this op has no second derivative" (not a failure of the user's code).
NO_DOUBLE_BACKWARD = re.compile(r"derivative for \S+ is not implemented|marked with @once_differentiable")


@dataclass
class Settings:
    """How an audit runs; ``gradaudit.check``'s options."""

    order: int = 1
    mode: str = "auto"  # auto: probes + follow-ups; fast: probes only; full: full Jacobians
    probes: int = 3  # directions per group, and cotangents per order
    seed: int = 0
    repeats: int = 2  # extra backward passes that measure non-determinism
    per_element_limit: int = 16  # the worst element: every element up to this size, bisection above it
    kink_scan_limit: int = 256  # elements scanned for kinks (one-sided derivatives) per leaf
    full_jacobian_limit: int = 200_000  # full mode refuses Jacobians with more entries than this
    batch: bool = False  # run each probe's points in one call where the program batches (eager: vmap)
    # What the user accepts besides the error bar (--rtol/--atol; 0: the error bar alone): see probe.UserTolerance.
    rtol: float = 0.0
    atol: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Group:
    name: str  # 'total' or a leaf name
    members: list[int]
    results: dict = field(default_factory=dict)  # method -> Outcome
    resolution: dict = field(default_factory=dict)  # member -> smallest relative gradient error it would see


@dataclass
class OrderState:
    """One order's function f at x, ready to check: its numerics, the analytical side, the settings."""

    f: ForwardFunction | GradientFunction
    numerics: Numerics
    analytical: Analytical
    analytical_at: Callable[[list[torch.Tensor]], Analytical]  # the analytical side at another point
    settings: Settings
    tick: Callable[[str], None]

    @property
    def space(self) -> ProbeSpace:
        return self.numerics.space

    @property
    def dtype_name(self) -> str:
        return str(self.space.dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------------ the modes
def probe_mode(state: OrderState) -> list[Check]:
    """Signed random probe tests, then follow-ups on the failing groups (unless mode is fast).

    Several leaves are probed together first (``total``, with balanced directions: each leaf weighs about the
    same). A passing aggregate covers its leaves; a failing one is split in halves, down to the leaves that
    fail on their own, so a correct model costs a few probes whatever its number of parameter tensors."""
    space, order = state.space, state.f.order
    # (a leaf none of whose elements may move, a max_norm embedding's weight, is in the notes, not the checks;
    # an order where that is every leaf stops in Auditor.check_order, before any evaluation)
    members = [i for i in range(len(space.names)) if not space.left_out(i)]
    if len(members) == 1:
        groups = [probed_group(state, space.names[members[0]], members)]
    else:
        total = probed_group(state, "total", members)
        groups = [total] + split_failures(state, total)
    verdicts = follow_up(state, groups) if state.settings.mode != "fast" else {}
    checks = []
    for group in groups:
        status, detail = verdicts.get(group.name, (CheckStatus.FAIL, {}))
        for method, outcome in group.results.items():
            check = to_check(order, group.name, method, outcome, status if outcome.failed else CheckStatus.PASS,
                             detail, state.dtype_name)
            if method == Method.REVERSE and len(group.members) == 1:  # a leaf's own share of the probe
                check.resolution = finite_or_none(group.resolution.get(group.members[0], check.resolution))
            checks.append(check)
    return checks


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def probed_group(state: OrderState, name: str, members: list[int]) -> Group:
    """A group with the outcomes of its probe tests, and its members' resolution. A leaf probed alone that its
    probes left coarser than the target is probed once more along a wide ladder (``Numerics.wide_top``): the
    best step the arithmetic allows, whose resolution is what the leaf reports."""
    results, resolution = probe_group_resolving(state.numerics, state.analytical, state.space.x, members,
                                                state.settings.probes)
    group = Group(name, members, results, resolution)
    if len(members) == 1 and not failed(group) and not excused(state, members[0], resolution[members[0]],
                                                               RESOLUTION_MARGIN):
        wide, finer = probe_group_resolving(state.numerics, state.analytical, state.space.x, members,
                                            WIDE_DIRECTIONS, top=state.numerics.wide_top())
        for method, outcome in wide.items():
            results.setdefault(method, Outcome()).merge(outcome)
        resolution[members[0]] = min(resolution[members[0]], finer[members[0]])
    state.tick(f"order {state.f.order} wrt {name}")
    return group


def failed(group: Group) -> bool:
    return any(o.failed for o in group.results.values())


def excused(state: OrderState, leaf: int, resolution: float, margin: float = 1.0) -> bool:
    """Whether a leaf resolved this coarsely may stay where it is (no smaller group, no wider ladder): it meets
    the target (``margin`` times finer), or it is within the aggregate limit and probing it alone could not do
    SPLIT_GAIN better (the floor of ``resolution_floor``)."""
    if resolution <= resolution_target(state) / margin:
        return True
    return resolution <= aggregate_limit(state) and resolution <= SPLIT_GAIN * resolution_floor(state, leaf)


# No leaf passes inside a group that could not see a relative error this large in its gradient: it is probed in
# smaller groups, down to alone, whatever that costs.
AGGREGATE_LIMIT = 1e-4


def aggregate_limit(state: OrderState) -> float:
    return max(AGGREGATE_LIMIT, resolution_target(state))


def accuracy_bound(state: OrderState, group: Group, members: set[int]) -> bool:
    """Whether the backend's own accuracy, not the group's other leaves, may be what bounds ``members``' resolution
    (a model error, or a section coarser than the leaves), and each of them is within the aggregate limit."""
    if state.numerics.model_error <= 0 and not state.space.mixed:
        return False
    return all(group.resolution.get(i, math.inf) <= aggregate_limit(state) for i in members)


def split_failures(state: OrderState, group: Group) -> list[Group]:
    """One group per leaf, by the resolution rule: each leaf ends resolved to ``resolution_target`` (a relative
    error that large in its gradient would have failed its group), or probed alone at the best step the
    arithmetic allows (``probed_group``), or, within AGGREGATE_LIMIT, where no smaller group could resolve it
    better (``excused``, ``accuracy_bound``). A failing aggregate is split in halves, down to the leaves that
    fail. One too coarse for some of its leaves (a gradient that vanishes beside the others) keeps the leaves it
    resolves and probes the coarse ones again together, without the leaves that swamped them; where that
    resolves them no better, each alone. (7 exactly-zero gradients among EfficientNet's 96 tensors, a conv bias
    before train-mode BatchNorm: halving probed every half that held one, 7 levels down; 1087 -> 409
    evaluations.) Halves again where every leaf is coarse."""
    names = state.space.names
    broken = failed(group)
    coarse = {i for i in group.members if not excused(state, i, group.resolution.get(i, math.inf))}
    if len(group.members) == 1 or not (broken or coarse):
        return [leaf_of(group, i, names) for i in group.members]
    halves = [group.members[:len(group.members) // 2], group.members[len(group.members) // 2:]]
    if broken or len(coarse) == len(group.members):
        groups, parts, extracted = [], halves, False
    else:  # only the coarse leaves need a smaller group: the others are resolved here (see the docstring)
        groups = [leaf_of(group, i, names) for i in group.members if i not in coarse]
        parts, extracted = [[i for i in group.members if i in coarse]], True
    for part in parts:
        name = names[part[0]] if len(part) == 1 else f"{len(part)} leaves from {names[part[0]]}"
        sub = probed_group(state, name, part)
        unsplit = set(part) & coarse
        if not broken and not sharper(group, sub, unsplit):
            if accuracy_bound(state, sub, unsplit):
                groups += [leaf_of(sub, i, names) for i in part]  # as resolved as they can be
                continue
            if extracted and len(part) > 1:  # together, without the leaves that swamped them, no better: alone
                groups += [leaf_of(sub, i, names) if excused(state, i, sub.resolution.get(i, math.inf))
                           else probed_group(state, names[i], [i]) for i in part]
                continue
        groups += split_failures(state, sub)
    return sorted(groups, key=lambda leaf: leaf.members[0])  # (each group here is one leaf)


# A smaller group is probed only where it could resolve a leaf at least this many times more finely.
SPLIT_GAIN = 2.0
WIDE_DIRECTIONS = 1  # directions of a leaf's wide ladder (one test sees a relative error of the whole gradient)


def resolution_floor(state: OrderState, leaf: int) -> float:
    """What no group can resolve below for ``leaf``, even probed alone: the parts of a probe's error bar that do
    not shrink with the group, over the expected size of the leaf's part of <g, u> (its gradient's norm times
    its step scale, under random signs). Those parts are the analytical gradients' measured rounding spread
    (a float32 section) and the values' measured noise over the ladder's largest step (a lower bound: the ladder
    descends below it). Where they dominate, splitting costs probes and resolves no better (a float64 model
    with a float32 RMSNorm on XLA: 121 -> 520 evaluations)."""
    numerics, scale = state.numerics, state.space.scales[leaf]
    step = numerics.ladder_start or state.space.top
    floors = []
    for k, (v, g) in enumerate(zip(state.analytical.cotangents, state.analytical.grads)):
        part = float(real(g[leaf]).double().norm()) * scale
        bar = 0.0
        if numerics.gradient_noise is not None:
            bar += GRADIENT_NOISE_SAFETY * float(real(numerics.gradient_noise[k][leaf]).double().norm()) * scale
        if numerics.noise is not None:
            bar += RSS_SAFETY * rss_inner([real(t) for t in v], numerics.noise) / step
        floors.append(bar / part if part > 0 else math.inf)
    return min(floors, default=0.0)


def leaf_of(group: Group, leaf: int, names: list[str]) -> Group:
    """Leaf ``leaf`` covered by ``group``'s probes: their outcomes, and the leaf's resolution in them."""
    return Group(names[leaf], [leaf], group.results, {leaf: group.resolution.get(leaf, math.inf)})


def sharper(parent: Group, half: Group, members: set[int]) -> bool:
    """Whether probing ``half`` alone resolved its coarse ``members`` at least twice as finely as ``parent``
    did, or failed. Where it did not, the backend's own accuracy (its model error) bounds what any group
    resolves, not the other leaves' share of the probe: smaller groups would only cost more probes (a ReLU
    transformer on XLA: 1541 forward evaluations splitting down to single tensors that resolve no better)."""
    if any(o.failed for o in half.results.values()):
        return True
    worst = lambda group: max((group.resolution.get(i, math.inf) for i in members), default=0.0)  # noqa: E731
    return worst(half) * 2 <= worst(parent)


def resolution_target(state: OrderState) -> float:
    """The relative gradient error an aggregate must resolve for each leaf: RESOLUTION, or what the backend's
    own accuracy allows (a backend whose float64 erf is good to 1e-5 cannot resolve 1e-6 in any group: a leaf
    probed alone reaches a few times its model error)."""
    return max(RESOLUTION, MODEL_ERROR_MARGIN * state.numerics.model_error)


def follow_up(state: OrderState, groups: list[Group]) -> dict[str, tuple[CheckStatus, dict]]:
    """Status and details of the failing groups, worst first. A faulty backward also fails near x, a kink
    does not: once one group is a real fault, the groups failing with it need no nearby re-check. The
    worst element is searched in the few worst leaves only (deep networks fail in dozens of leaves)."""
    failing = sorted((g for g in groups if any(o.failed for o in g.results.values())),
                     key=lambda g: -max(o.excess for o in g.results.values()))
    cotangents, grads = state.analytical.cotangents, state.analytical.grads
    verdicts, fault_seen, searched = {}, False, 0
    for group in failing:
        kinks = None if fault_seen else at_kink(state.numerics, state.analytical, state.analytical_at,
                                                group.members, state.settings.kink_scan_limit)
        if kinks is not None:
            verdicts[group.name] = (CheckStatus.NONDIFFERENTIABLE_POINT, {"kink_elements": kinks})
            continue
        fault_seen, detail = True, {}
        reverse = group.results[Method.REVERSE]
        if len(group.members) == 1 and reverse.failed and searched < WORST_ELEMENT_LEAVES:
            searched += 1
            leaf, k = group.members[0], reverse.cotangent if reverse.cotangent is not None else 0
            detail = worst_element(state.numerics, leaf, cotangents[k], grads[k][leaf],
                                   state.settings.per_element_limit)
        verdicts[group.name] = (CheckStatus.FAIL, detail)
    return verdicts


def full_jacobian_mode(state: OrderState) -> list[Check]:
    """Every Jacobian entry: one-hot cotangents against one-hot directions (small cases only)."""
    f, space, outputs = state.f, state.space, evaluate(state.f, state.space.x)
    rows = sum(real(y).numel() for y in outputs)
    columns = sum(real(x).numel() for x in space.x)
    if rows * columns > state.settings.full_jacobian_limit:
        raise AuditError(f"--mode full needs a {rows}x{columns} Jacobian, more than "
                         f"{state.settings.full_jacobian_limit} entries; use --mode auto")
    labels, basis = one_hot_cotangents(outputs, f.output_names)
    rows_analytical = [[real(g).double().cpu().reshape(-1) for g in row] for row in vjps(f, space.x, basis)]
    checks, rtol, atol = [], state.settings.rtol, state.settings.atol
    for leaf, name in enumerate(space.names):
        outcome, worst = Outcome(), None
        if space.left_out(leaf):
            continue
        for j in range(real(space.x[leaf]).numel()):
            if space.left_out(leaf, j):
                continue
            numerical = directional_derivative(state.numerics.values, space.x, space.basis(leaf, j), space.h,
                                               space.eps)
            column = torch.cat([real(n).cpu().reshape(-1) for n in numerical.value]) / space.scales[leaf]
            errors = torch.cat([e.cpu().reshape(-1) for e in numerical.error]) / space.scales[leaf]
            for r, label in enumerate(labels):
                a, n = float(rows_analytical[r][leaf][j]), float(column[r])
                tol = ERROR_BAR_SAFETY * float(errors[r]) + ROUNDING_FACTOR * space.eps * (abs(a) + abs(n))
                before = outcome.excess
                user = (atol + rtol * abs(n), abs(n)) if rtol > 0 or atol > 0 else None  # (as torch.allclose)
                outcome.absorb(a, n, tol + 1e-300, output=label, user=user)
                if outcome.excess > before or worst is None:
                    worst = space.element_index(leaf, j)
        state.tick(f"order {f.order} wrt {name}")
        status = CheckStatus.FAIL if outcome.failed else CheckStatus.PASS
        checks.append(to_check(f.order, name, Method.FULL_JACOBIAN, outcome, status, {"worst_index": worst},
                               state.dtype_name))
    return checks


def one_hot_cotangents(outputs: Tensors, output_names: list[str]) -> tuple[list[str], list[list]]:
    """One one-hot cotangent per real output element, with its label (``out[3]``)."""
    labels, basis = [], []
    for i, y in enumerate(outputs):
        for j in range(real(y).numel()):
            flat = torch.zeros(real(y).numel(), dtype=real(y).dtype)  # built on the CPU, then moved
            flat[j] = 1
            t = flat.reshape(real(y).shape)
            labels.append(f"{output_names[i]}[{j}]")
            basis.append([torch.view_as_complex(t) if y.is_complex() else t if m == i else
                          torch.zeros_like(outputs[m], device="cpu") for m in range(len(outputs))])
    return labels, basis


CHECK_MODES: dict[str, Callable[[OrderState], list[Check]]] = {
    "auto": probe_mode, "fast": probe_mode, "full": full_jacobian_mode}


def on_cpu(tensors: Tensors) -> list[torch.Tensor]:
    """The program's results where the probes' arithmetic runs: on the CPU, in their own dtype (a no-op for CPU
    programs; on a compiling backend, each small formula on device tensors would be a graph of its own).
    Complex results travel as their real view (see numerics.to_host)."""
    return [to_host(t) for t in tensors]


# ------------------------------------------------------------------------------------------ measurements
def measure_noise(values: Evaluate, space: ProbeSpace, f, seed: int, eps: float) -> list[torch.Tensor] | None:
    """The rounding noise of f's outputs near x, along one direction moving every leaf (see
    numerics.rounding_noise), from a generator of its own so the probes stay those of the seed. ``eps``: the
    rounding unit the values carry (the arithmetic's, or the leaves' where a float32 section's casts were
    removed). A line scaled to float32 in a float64 function is 3e-4 of the leaves long: in a ReLU network
    it crosses kinks, whose jumps passed for noise (T5's tiny encoder at order 1 resolved 0.1, not 3e-6)."""
    generator = torch.Generator().manual_seed(seed + 7919 * f.order)
    u = [rademacher_like(xi, generator, "cpu").mul_(s) if every else rademacher_like(xi, generator, "cpu").mul_(s).mul_(m)
         for xi, s, m, every in zip(space.x, space.scales, space.movable, space.all_movable)]
    # A short line (steps of sqrt(eps)): long enough for rounding to decorrelate, short enough to rarely
    # reach a jump of a piecewise-constant function (round, floor), which would pass for noise.
    delta, noise = eps ** 0.5, None
    for _ in range(DOMAIN_SHRINKS):
        # The line starts next to x, on one side: a kink at x itself must not pass for noise.
        noise = rounding_noise(values, space.x, u, delta) or rounding_noise(values, space.x, u, -delta)
        if noise is not None:
            break
        delta /= 8
    if not isinstance(f, GradientFunction):
        return noise
    # A gradient is computed from the forward's values: it is known no better than eps times them over the
    # leaf's scale, even where it rounds to a constant (tanh saturated to +-1 makes 1 - t^2 exactly 0, and
    # no measurement along a line can see that resolution).
    ingredients = eps * sum(float((real(v).double().cpu().abs() * real(y).double().cpu().abs()).sum())
                            for v, y in zip(f.cotangent, evaluate(f.inner, space.x)))
    floors = [torch.full(real(xi).shape, ingredients / s, dtype=torch.float64)
              for xi, s in zip(space.x, space.scales)]
    return floors if noise is None else [torch.maximum(n, fl.to(n.device)) for n, fl in zip(noise, floors)]


# Pairs of jittered points x(1 +- k eps s), and k: how far each leaf element moves, in rounding units of the coarse
# precision. A float32 section rounds differently at each point; g(x+) + g(x-) - 2 g(x) cancels the gradient's
# true change (linear in the jitter) and leaves 6 times the variance of that rounding, and a wrong formula.
GRADIENT_JITTERS = 4
# A JVP's noise is measured only after a forward-mode test failed in a mixed-precision program, and each of its
# elements is judged alone, where 4 pairs of points left a heavy tail unseen (ViT's float32 softmax: a tangent
# that is 0 in exact arithmetic, computed as -1.3e-9, measured 9.6e-11 from 4 pairs, up to 4e-10 from 16).
TANGENT_JITTERS = 16
JITTER_UNITS = 4.0
# A gradient element through the coarse section is known no better than this many of its rounding units, even
# where the jittered points happen to round alike.
GRADIENT_ROUNDING_UNITS = 2.0


def measure_gradient_noise(f, space: ProbeSpace, cotangents: list[Tensors], grads: list[Tensors],
                           seed: int) -> list[Tensors] | None:
    """Per cotangent, the rounding noise of the analytical gradients' elements, measured at pairs of points
    jittered by a few rounding units of the coarse precision on the path (tests/test_calibration.py: three
    times its root-sum-square over the actual error's is 1.8..33, median 7, on random smooth functions). None where nothing on the path is
    coarser than the leaves."""
    if not space.mixed:
        return None
    generator = torch.Generator().manual_seed(seed + 104729 * f.order)
    spread = [[rounding_floor(g, space.eps) for g in row] for row in grads]
    # A backward as a function of its cotangent v is linear in v: moving v re-rounds nothing its forward
    # computed, whose float32 rounding it carries. There the point x is jittered, v held.
    at_x = isinstance(f, CotangentFunction)
    origin = f.x if at_x else space.x

    def gradients_at(z: list[torch.Tensor]) -> list[Tensors]:
        return on_cpu_rows(vjps(f.at(z), space.x, cotangents) if at_x else vjps(f, z, cotangents))

    for _ in range(GRADIENT_JITTERS):
        signs = jitter_signs(origin, generator)
        plus, minus = (gradients_at(jittered(origin, signs, side, space.eps)) for side in (1.0, -1.0))
        for k in range(len(grads)):
            for i, g in enumerate(grads[k]):
                spread[k][i] = widened(spread[k][i], plus[k][i], minus[k][i], g)
    return spread


def rounding_floor(value: torch.Tensor, eps: float) -> torch.Tensor:
    """GRADIENT_ROUNDING_UNITS of the coarse precision's rounding, per element of a derivative."""
    return GRADIENT_ROUNDING_UNITS * eps * real(value).double().abs()


def widened(spread: torch.Tensor, plus: torch.Tensor, minus: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """``spread`` raised to half of |d(x+) + d(x-) - 2 d(x)| of one derivative at a pair of jittered points."""
    curvature = real(plus).double() + real(minus).double() - 2 * real(center).double()
    return torch.maximum(spread, torch.nan_to_num(curvature.abs() / 2, nan=0.0, posinf=0.0))


def measure_tangent_noise(tangents_at: Callable[[list[torch.Tensor]], Tensors | None], point: Tensors,
                          tangents: Tensors, eps: float, seed: int) -> Tensors | None:
    """The rounding noise of a JVP's elements through a coarse section, measured as measure_gradient_noise
    measures the VJPs' (``tangents_at(z)``: the JVP along the same direction at z). A JVP sums terms far larger
    than itself where they cancel (a loss's derivative along a random direction): the model of rounding
    relative to its size fell short there (T5's float32 norms, a loss: relative error 2e-5, passed for a
    fault once finite differences ran in float64). None where forward mode fails at a jittered point."""
    generator = torch.Generator().manual_seed(seed)
    spread = [rounding_floor(t, eps) for t in tangents]
    for _ in range(TANGENT_JITTERS):
        signs = jitter_signs(point, generator)
        plus, minus = (tangents_at(jittered(point, signs, side, eps)) for side in (1.0, -1.0))
        if plus is None or minus is None:
            return None
        spread = [widened(s, p, m, t) for s, p, m, t in zip(spread, plus, minus, tangents)]
    # Each element is compared on its own, and an element's rounding is not predictable from its own jitter
    # (ViT's float32 softmax: a tangent that is exactly 0 in float64 computed as 8.6e-11 where the jittered
    # points rounded alike): no element is known better than its output's mean spread.
    return [torch.maximum(s, s.mean()) if s.numel() else s for s in spread]


def jitter_signs(x: Tensors, generator: torch.Generator) -> list[torch.Tensor | None]:
    return [rademacher_like(xi, generator, "cpu") if xi.is_floating_point() else None for xi in x]


def jittered(x: Tensors, signs: list, side: float, eps: float) -> list[torch.Tensor]:
    """The leaves moved by ``side`` JITTER_UNITS rounding units (``eps``), with the given signs."""
    return [xi if s is None else on_device_of(to_host(xi) * (1 + side * JITTER_UNITS * eps * s), xi)
            for xi, s in zip(x, signs)]


def on_cpu_rows(rows: list[Tensors]) -> list[Tensors]:
    return [on_cpu(row) for row in rows]


def nondeterminism(f, x: Tensors, cotangent: Tensors, reference: Tensors, repeats: int) -> Finding | None:
    """Backward passes repeated with the same cotangent must give the same gradients."""
    spread = 0.0
    for again in vjps(f, x, [cotangent] * repeats):
        for a, b in zip(on_cpu(again), reference):
            if a.numel() and not (a.dtype == b.dtype and torch.equal(a, b)):  # (the same bits: no temporaries)
                spread = max(spread, float((real(a).double() - real(b).double()).abs().max()))
    if spread == 0:
        return None
    scale = max(float(real(g).double().abs().max()) for g in reference if g.numel())
    return nondeterminism_finding(f.order, spread, scale, repeats)


def attention_kernel(exc: BaseException) -> bool:
    """Whether ``exc`` is a fused attention kernel's missing double backward (order 2 reruns with the math one)."""
    return "not implemented" in str(exc) and "attention" in str(exc)


def oracle_reason(failure: OracleFailure) -> str:
    """Why an oracle could not run, in one line: torch's words (or the exception) and where it was raised."""
    cause = failure.cause
    where = f" ({where_it_happened(cause)})" if raised_in_users_code(cause) else ""  # (torch's own: no place)
    return (f"{failure.oracle} could not run here, so that oracle is skipped: {type(cause).__name__}: "
            f"{first_line(cause)}{where}")


def reentrancy(f: ForwardFunction, x: Tensors, cotangent_of: Callable[[Tensors], Tensors],
               names: list[str]) -> Finding | None:
    """A backward must leave the tensors its graph saved as they were, so that a second pass of the same graph
    gives the same gradients (gradcheck: "Backward is not reentrant"). One that writes into them (liger-kernel
    0.5.10's SwiGLU stores its gradients in its saved inputs) is found by comparing the saved tensors (seen
    through ``saved_tensors_hooks``) and the leaves before and after a backward pass; a second pass says what
    that does to the gradients. Random noise in a backward changes nothing saved: ``nondeterminism`` judges it.
    Runs on copies of x: x itself is never written."""
    copies = [xi.detach().clone() for xi in x]
    with torch.enable_grad(), f.holding():
        xs = [own_leaf(c) for c in copies]
        versions = [c._version for c in copies]
        ys, saved = outputs_and_saved(f, xs)
        # (a copy the forward wrote into, in place, no longer holds x: what views it is copied)
        unwritten = [(c, xi) for c, xi, version in zip(copies, x, versions) if c._version == version]
        before = [unchanged_view(t, unwritten) for t in saved]
        cotangent = cotangent_of([y.detach() for y in ys])
        first = [g.detach() for g in gradients(ys, xs, cotangent, f.stats)]
        changed = [t for t, b in zip(saved, before) if gradient_spread([t], [b]) > 0]
        mutated = [name for name, c, xi in zip(names, copies, x) if gradient_spread([c], [xi]) > 0]
        if not changed and not mutated:
            return None
        first = [g.clone() for g in first]  # (before a second pass can write where they live)
        nodes = nodes_saving(ys, changed)
        try:
            second = [g.detach() for g in gradients(ys, xs, cotangent, f.stats)]
        except Exception as exc:  # torch's version counter saw the change ("modified by an inplace operation")
            return nonreentrant_finding(f.order, mutated, nodes, None, first_line(exc))
    scale = max((float(real(g).double().abs().max()) for g in first if g.numel()), default=0.0)
    return nonreentrant_finding(f.order, mutated, nodes, gradient_spread(first, second) / max(scale, 1e-300), None)


def unchanged_view(saved: torch.Tensor, copies: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """What a saved tensor held before the backward: a copy, or, where it views one of the leaves' copies (a
    weight saved by its matmul), the same view of the leaf itself, which nothing writes (no copy of every weight).
    ``copies``: (copy, leaf) for the copies the forward left as they were."""
    for copy, xi in copies:
        if (copy.numel() and saved.untyped_storage().data_ptr() == copy.untyped_storage().data_ptr()
                and saved.dtype == xi.dtype and copy.is_contiguous() and xi.is_contiguous()
                and xi.device == saved.device and not (saved.is_conj() or saved.is_neg())):  # (z.conj(): a bit)
            return xi.detach().as_strided(saved.shape, saved.stride(),
                                          xi.storage_offset() + saved.storage_offset() - copy.storage_offset())
    return saved.clone()


def outputs_and_saved(f: ForwardFunction, xs: Tensors) -> tuple[Tensors, Tensors]:
    """f's outputs at xs, and the tensors its autograd graph saved for backward (each once)."""
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.setdefault(id(tensor), tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ys = f.outputs(xs)
    # (dense tensors only: a sparse one has no elementwise comparison, and no memory a kernel writes through)
    return ys, [t.detach() for t in saved.values() if t.layout == torch.strided]


def nodes_saving(ys: Tensors, tensors: Tensors) -> list[str]:
    """The autograd nodes of ys's graph that saved one of ``tensors`` (custom Functions' ``saved_tensors``,
    built-in nodes' ``_saved_*``), by name."""
    wanted = {t.data_ptr() for t in tensors if t.numel()}
    seen, stack, names = set(), [y.grad_fn for y in ys if y.grad_fn is not None], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if any(isinstance(t, torch.Tensor) and t.layout == torch.strided and t.numel() and t.data_ptr() in wanted
               for t in saved_by(node)):
            names.append(node.name())
        stack += [next_node for next_node, _ in node.next_functions]
    return names


def saved_by(node) -> list:
    """What an autograd node saved for backward (empty where it cannot be read)."""
    try:
        if hasattr(node, "saved_tensors"):  # a custom Function's node
            return list(node.saved_tensors)
        return [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
    except RuntimeError:  # freed, or not readable
        return []


def gradient_spread(a: Tensors, b: Tensors) -> float:
    """The largest elementwise difference between two lists of tensors: 0 where they are equal (NaN and infinities
    included), infinite where only one side is finite."""
    spread = 0.0
    for g, h in zip(a, b):
        if g.numel() and not (g.device == h.device and g.dtype == h.dtype and torch.equal(g, h)):  # (NaN: below)
            g, h = real(g).double().cpu(), real(h).double().cpu()
            same = (g == h) | (g.isnan() & h.isnan())
            gap = torch.where(same, torch.zeros_like(g), (g - h).abs())
            spread = max(spread, float(torch.nan_to_num(gap, nan=math.inf).max()))
    return spread


# Each program's precision, traced once (the checker, the report and forward parity all ask for it).
_PRECISION: "weakref.WeakKeyDictionary[Program, Precision | None]" = weakref.WeakKeyDictionary()


def program_precision(program: Program) -> Precision | None:
    """The precision ``program`` really computes at (``core.precision``), from one traced forward; None where the
    backend cannot run under a dispatch mode (it is then taken as its leaves' precision)."""
    if program in _PRECISION:
        return _PRECISION[program]
    try:
        precision = detect_precision(ForwardFunction(program).outputs, [leaf.value for leaf in program.leaves],
                                     program.output_names, program.module)
    except Exception as exc:
        if users_own_exception(exc):  # the case failing on this call is the audit's failure, as on any other
            raise
        precision = None
    _PRECISION[program] = precision
    return precision


def share_precision(program: Program, reference: Program) -> None:
    """Where ``program``'s scan saw no section below its leaves' dtype but ``reference`` (eager float64 running the
    same case) has some, ``program`` takes them: the same code casts at the same places, and torch-xla's
    functional tensors hide requires_grad from the scan (an XLA report had no precision notes)."""
    own, theirs = program_precision(program), program_precision(reference)
    if theirs is None or (own is not None and any(d.what == "section" for d in own.drops)):
        return
    audited = own.audited if own is not None else program.dtype
    sections = [d for d in theirs.drops
                if d.what == "section" and resolution_of(getattr(torch, d.dtype)) > resolution_of(audited)]
    if sections:
        outputs = own.drops if own is not None else []
        _PRECISION[program] = Precision(audited, coarsest([audited, theirs.dtype] + ([own.dtype] if own else [])),
                                        outputs + sections)


def precision_notes(program: Program) -> list[dict]:
    """The report's ``precision`` notes for ``program``: where its computation drops below its leaves' dtype."""
    precision = program_precision(program)
    return precision.notes() if precision is not None else []


# ------------------------------------------------------------------------------------------ the auditor
class Auditor:
    """Runs the checks of one program at orders 1 (and 2), collecting checks, findings and skipped parts."""

    def __init__(self, program: Program, settings: Settings, progress: Progress | None = None,
                 numeric: Program | None = None, model_error: float = 0.0,
                 arithmetic: torch.dtype | None = None) -> None:
        """``program`` gives the analytical side (torch autograd); ``numeric``, when given, is a backend without
        autograd (an exported graph in a runtime) whose finite differences are judged against it.
        ``arithmetic``: the precision of the path where it is known from another program (eager float64's, for
        a backend whose ops a dispatch mode does not see, as torch-xla's)."""
        self.program, self.settings, self.progress = program, settings, progress
        self.model_error = model_error  # see numerics.model_error_of
        self.numeric = numeric if numeric is not None else program
        # The precision finite differences run in sets steps and error bars: the numeric program's, or coarser
        # where the computation drops below it (a float32 section in a float64 model).
        self.precision = program_precision(program)
        arithmetic = coarsest([self.numeric.dtype] + ([self.precision.dtype] if self.precision else [])
                              + ([arithmetic] if arithmetic is not None else []))
        self.space = ProbeSpace.seeded([leaf.value for leaf in program.leaves],
                                       [leaf.name for leaf in program.leaves], self.numeric.dtype, settings.seed,
                                       arithmetic, [leaf.frozen for leaf in program.leaves])
        self.checks: list[Check] = []
        self.findings: list[Finding] = []
        self.skipped: list[Note] = [Note(what=leaf.name, reason=leaf.frozen_reason)
                                    for leaf in program.leaves if leaf.frozen is not None]
        # Forward mode checks the program's own JVPs; against another backend's finite differences a
        # mismatch would be that backend's divergence, which the reverse-mode tests already report.
        self.forward_ad = program.capabilities.forward_ad and self.numeric is program
        # (order, failure) where forward mode raised on a backend other than eager: the caller holds these
        # against eager float64 (a backend_error), while the reverse-mode checks go on without forward mode.
        self.forward_ad_failures: list[tuple[int, BackendFailure]] = []
        self._done, self._steps = 0, 0
        self.order = 0
        self.graphless: list[str] = []  # order-2 outputs the backward computed without a graph (see CotangentFunction)

    def run(self) -> tuple[list[Check], list[Finding], list[Note]]:
        first = ForwardFunction(self.program)
        self._numeric_first = first if self.numeric is self.program else ForwardFunction(self.numeric)
        self._steps = self.settings.order  # at least one probe per order; splitting a failure adds more
        if self.program.capabilities.reference:  # (a property of the case's code: eager float64 tells it)
            self.check_reentrancy(first)
        if self.check_order(first):
            self.findings += order_findings(self.checks, 1)
        if self.settings.order >= 2:
            if not self.program.capabilities.double_backward or self.numeric is not self.program:
                self.skipped.append(Note(what="order 2", reason="the backend has no double backward"))
            else:
                self.second_order(GradientFunction(first, self.space.random_like(evaluate(first, self.space.x)),
                                                   self.space.names))
        return self.checks, self.findings, self.skipped

    def check_reentrancy(self, first: ForwardFunction) -> None:
        """A backward that changes what it saved (see ``reentrancy``) is a finding of its own; the audit then
        gives every backward pass a forward of its own, so the other checks judge its first pass only. (Its
        cotangent comes from a generator of its own: the probes stay those of the seed.)"""
        generator = torch.Generator().manual_seed(self.settings.seed + 7)
        finding = reentrancy(first, self.space.x, lambda ys: [rademacher_like(y, generator, "cpu") for y in ys],
                             self.space.names)
        if finding is not None:
            self.findings.append(finding)
            first.reentrant = False

    def second_order(self, second: GradientFunction) -> None:
        """Order 2: the gradient as a function of x, then of its cotangent. Double backward is the oracle here:
        where torch cannot run it, order 2 is skipped with a note saying why (the case's own code computing the
        gradient itself failing is still the audit's failure)."""
        try:
            ran = self.check_second(second)
        except OracleFailure as failure:  # fails at the first double backward, before any check is kept
            if not attention_kernel(failure.cause):
                self.skip_double_backward(failure)
                return
            with twice_differentiable_attention(self.skipped):
                ran = self.check_second(second)
        except RuntimeError as exc:  # computing the gradient with a graph failed: the case's, or torch's words
            if attention_kernel(exc):
                with twice_differentiable_attention(self.skipped):
                    ran = self.check_second(second)
            elif NO_DOUBLE_BACKWARD.search(str(exc)):
                self.skipped.append(Note(what="order 2", reason="torch has no double backward here: "
                                         + first_line(exc)))
                return
            else:
                raise AuditError(f"the order-2 check could not run: differentiating the gradient raised "
                                 f"{type(exc).__name__}: {first_line(exc)}") from exc
        if ran:
            self.findings += graphless_backward(order_findings(self.checks, 2), self.graphless)

    def check_second(self, second: GradientFunction) -> bool:
        """Order 2 with respect to x, then (where that ran) with respect to the cotangent."""
        if not self.check_order(second):
            return False
        self.check_cotangent(second)
        return True

    def skip_double_backward(self, failure: OracleFailure) -> None:
        """Order 2 without its oracle: torch's reason where it gave one, else the exception, named as such.
        On a backend other than the reference, an exception that is not torch's "no formula" stays an error."""
        cause = failure.cause
        if not (self.program.capabilities.reference or NO_DOUBLE_BACKWARD.search(str(cause))):
            raise AuditError(f"the order-2 check could not run: differentiating the gradient raised "
                             f"{type(cause).__name__}: {first_line(cause)}") from cause
        self.skipped.append(Note(what="order 2", reason=oracle_reason(failure)))

    def check_cotangent(self, second: GradientFunction) -> None:
        """The gradient's derivative with respect to its cotangent (grad_output), as gradgradcheck checks it: the
        backward as a function of v at the fixed point x, probed in a space of its own (its own generator: the
        probes with respect to x stay those of the seed)."""
        f = CotangentFunction(second, self.space.x)
        names = [f"grad_output[{name}]" for name in self._numeric_first.output_names]
        # Steps in v are steps in the outputs' dtype (a float16 output rounds its cotangent to float16).
        dtype = coarsest([self.space.dtype] + [real(v).dtype for v in second.cotangent])
        space = ProbeSpace.seeded(list(second.cotangent), names, dtype, self.settings.seed + 65537,
                                  coarsest([dtype, self.space.arithmetic or dtype]))
        try:
            self.check_order(f, space, oracles=False)
        except OracleFailure as failure:
            self.skipped.append(Note(what="order 2 wrt grad_output", reason=oracle_reason(failure)))
            return
        self.graphless = f.without_graph(space.x)

    def check_order(self, f, space: ProbeSpace | None = None, oracles: bool = True) -> bool:
        """The checks of one order's function f at ``space``'s point (the leaves' x by default); False where f
        is not finite there, so that there is nothing to differentiate. ``oracles``: whether forward mode and
        the non-determinism check run too."""
        space = space or self.space
        x, order = space.x, f.order
        self.order = order  # (the order under way, for a failure's report)
        if all(space.left_out(i) for i in range(len(space.names))):  # (a max_norm embedding's weight alone)
            verb, notes = ("is", "its note") if len(space.names) == 1 else ("are", "their notes")
            self.skipped.append(Note(what=f"order {order}", reason=f"nothing to differentiate: "
                                     f"{', '.join(space.names)} {verb} left out, see {notes}"))
            return False
        outputs = on_cpu(evaluate(f, x))
        for name, out in zip(f.output_names, outputs):
            if not torch.isfinite(out).all():  # (order 1's outputs were checked when the program loaded)
                self.skipped.append(Note(what=f"order {order}", reason=f"the order-{order - 1} gradient {name} "
                                         "is NaN or Inf at this point, so it cannot be differentiated"))
                return False
        values, promoted = self.numeric_values(f, x)
        noise = measure_noise(values, space, f, self.settings.seed, space.leaf_eps if promoted else space.eps)
        numerics = Numerics(values, space, noise,
                            self.model_error, user=UserTolerance.of(self.settings.rtol, self.settings.atol))
        cotangents = [space.random_like(outputs) for _ in range(self.settings.probes)]
        double = "double backward" if order > 1 else None  # (order 1's backward is the case's own)
        grads = [on_cpu(g) for g in vjps(f, x, cotangents, oracle=double)]
        numerics.gradient_noise = measure_gradient_noise(f, space, cotangents, grads, self.settings.seed)
        numerics.center = values([x])[0] if space.mixed else None
        finding = nondeterminism(f, x, cotangents[0], grads[0], self.settings.repeats) if oracles else None
        self.findings += [finding] if finding else []

        def analytical_at(point: list[torch.Tensor], grads: list | None = None) -> Analytical:
            tangents = (lambda u: self.tangents(f, point, u)) if oracles else (lambda u: None)

            def tangent_noise(u: list, jvp_at_point: Tensors) -> Tensors | None:
                return measure_tangent_noise(lambda z: self.tangents(f, z, u), point, jvp_at_point, space.eps,
                                             self.settings.seed + 15485863 * f.order)
            return Analytical(cotangents, grads or [on_cpu(g) for g in vjps(f, point, cotangents)], tangents,
                              f.output_names, tangent_noise if oracles and space.mixed else None)

        state = OrderState(f, numerics, analytical_at(x, grads), analytical_at, self.settings, self._tick)
        self.checks += CHECK_MODES[self.settings.mode](state)
        return True

    def tangents(self, f, x: Tensors, u: list) -> Tensors | None:
        """The JVP along u at x, while forward mode runs; torch saying it cannot turns it off, with a note."""
        if not self.forward_ad:
            return None
        try:
            return on_cpu(jvp(f, x, u))
        except Unsupported as exc:
            self.forward_ad = False
            self.skipped.append(Note(what=f"forward-mode AD (order {f.order})", reason=str(exc)))
            return None
        except Exception as exc:
            if users_own_exception(exc):  # a raise of the case's own code (its forward runs here too)
                raise
            if self.program.capabilities.reference:  # torch cannot run forward mode on this case: an oracle less
                self.forward_ad = False
                self.skipped.append({"what": f"forward-mode AD (order {f.order})",
                                     "reason": oracle_reason(OracleFailure("forward-mode AD", exc))})
                return None
            failure = backend_failure(self.program.device, "forward-mode AD", exc)
            self.forward_ad = False
            self.skipped.append(Note(what=f"forward-mode AD (order {f.order})", reason=str(failure)))
            if not isinstance(failure, Unsupported):
                self.forward_ad_failures.append((f.order, failure))
            return None

    def numeric_values(self, f, point: Tensors | None = None) -> tuple[Evaluate, bool]:
        """``points -> [f(z) for z in points]`` evaluated where finite differences run: the audited program
        itself, or the numeric backend with the points moved to its dtype and device (in one batched run
        where it can); and whether a coarser section's casts were removed from them (they then carry the
        leaves' precision, not the arithmetic's)."""
        if self.numeric is self.program:
            if isinstance(f, ForwardFunction) and self.settings.batch and self.program.capabilities.batch_evaluation:
                return batching(lambda points: [on_cpu(y) for y in evaluate_batch(self.program, points)]), False
            values = lambda points: [on_cpu(evaluate(f, z)) for z in points]  # noqa: E731
            point = self.space.x if point is None else point  # (where f is evaluated: x, or a cotangent)
            # (space.mixed: this program's own precision, or eager float64's path for a backend whose tensors
            # hide requires_grad from the precision scan, as torch-xla's functional tensors do)
            return without_down_casts(values, point, self.space.eps) if self.space.mixed else (values, False)
        leaves = self.numeric.leaves

        def move(z):
            return [zi.to(dtype=leaf.value.dtype, device=leaf.value.device) for zi, leaf in zip(z, leaves)]
        if self.numeric.capabilities.batch_evaluation:
            return batching(lambda points: [on_cpu(y) for y in self.numeric.evaluate_batch([move(z) for z in points])]), False
        return (lambda points: [on_cpu(evaluate(self._numeric_first, move(z))) for z in points]), False

    def _tick(self, what: str) -> None:
        self._done += 1
        if self.progress:
            self.progress(what, self._done, self._steps)

