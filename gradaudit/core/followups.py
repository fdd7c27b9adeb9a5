"""Follow-ups on a failed probe test: is x a non-differentiable point (a kink: the group passes nearby and the
function is provably non-smooth at x), which elements sit on the kink, and which element of a failing leaf is
the worst. Free functions over the probe test's ``Numerics`` (values, point, noise)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from gradaudit.core.numerics import (RSS_SAFETY, Evaluate, Tensors, batching, central_difference,
                                     extrapolated_derivative, is_finite, nonsmooth_evidence, rademacher_like, real,
                                     relative_floor, rss_inner)
from gradaudit.core.probe import Analytical, Numerics, dot, group_direction, probe_group, unit

NEARBY_TRIES = 2  # nearby points a kink must pass at


def scalar_of(values: Evaluate, cotangent: Tensors) -> Evaluate:
    """``points -> [[<cotangent, f(z)>]]``: the scalar whose partial derivatives are one row of the VJP."""
    def function(points):
        return [[torch.as_tensor(sum((real(v).double().cpu() * real(y).double().cpu()).sum()
                                     for v, y in zip(cotangent, outputs))).reshape(1)]
                for outputs in values(points)]
    return batching(function, getattr(values, "batched", False))


def scalar_noise(noise: Tensors | None, cotangent: Tensors) -> list[torch.Tensor] | None:
    """Noise of ``<cotangent, f>``: the outputs' noise under the cotangent's random signs (root-sum-square)."""
    if noise is None:
        return None
    return [torch.tensor([rss_inner([real(v) for v in cotangent], noise)], dtype=torch.float64)]


def scalar_numerics(numerics: Numerics, cotangent: Tensors) -> Numerics:
    """The probe setting of ``<cotangent, f>`` instead of f."""
    return Numerics(scalar_of(numerics.values, cotangent), numerics.space, scalar_noise(numerics.noise, cotangent),
                    numerics.model_error)


# ------------------------------------------------------------------------------------------ kinks
def nonsmooth_at_x(numerics: Numerics, analytical: Analytical, members: list[int]) -> str | None:
    """Evidence (one line) that f is not differentiable at x along some direction in the group (directions
    drawn as the group's probes draw them)."""
    space = numerics.space
    for _ in range(2):
        u = group_direction(space, analytical, members, space.x)
        evidence = nonsmooth_evidence(numerics.values, space.x, u, space.h, space.eps, numerics.noise)
        if evidence is not None:
            return evidence
    return None


def at_kink(numerics: Numerics, analytical: Analytical, analytical_at: Callable[[list[torch.Tensor]], Analytical],
            members: list[int], scan_limit: int) -> list | None:
    """The kink details if the group fails only because x is a non-differentiable point, else None (a real
    fault). A kink must be shown, not assumed: f must be non-smooth at x along the group's directions
    (one-sided derivatives that differ, diverge, or leave the domain), and the group must pass nearby.
    Failing at exactly one point where f is smooth is a wrong derivative there (a removable singularity
    handled wrongly), not a kink."""
    evidence = nonsmooth_at_x(numerics, analytical, members)
    if evidence is None:
        return None
    for _ in range(NEARBY_TRIES):
        nearby = numerics.space.nearby_point(lambda point: is_finite(numerics.values([point])[0]))
        if nearby is None:
            continue  # x sits at the domain's edge on both sides of this shift
        # One direction suffices: a faulty backward fails in almost every signed direction.
        if any(o.failed for o in probe_group(numerics, analytical_at(nearby), nearby, members, 1).values()):
            return None
    cotangent = analytical.cotangents[0]
    return [kink_elements(numerics, i, cotangent, scan_limit) | {"evidence": evidence} for i in members]


def kink_elements(numerics: Numerics, leaf: int, cotangent: Tensors, scan_limit: int) -> dict:
    """Elements of a leaf where f is not differentiable: one-sided derivatives that jump, do not converge, or
    leave the domain (the same test as the evidence for the whole group, one element at a time)."""
    space = numerics.space
    name, count = space.names[leaf], real(space.x[leaf]).numel()
    if count > scan_limit:
        return {"wrt": name, "elements": None, "note": f"{count} elements, too many to scan"}
    scalar = scalar_numerics(numerics, cotangent)
    found = [space.element_index(leaf, j) for j in range(count)
             if nonsmooth_evidence(scalar.values, space.x, space.basis(leaf, j), space.h, space.eps,
                                   scalar.noise) is not None]
    return {"wrt": name, "elements": found}


# ------------------------------------------------------------------------------------------ the worst element
def worst_element(numerics: Numerics, leaf: int, cotangent: Tensors, gradient: torch.Tensor,
                  per_element_limit: int) -> dict:
    """The element of a failing leaf with the largest analytical-vs-numerical error (every element when the leaf
    is small, bisection with signed probes when it is large); empty when no single element shows the fault."""
    scalar = scalar_numerics(numerics, cotangent)
    gradient = real(gradient).double().reshape(-1)
    count = gradient.numel()

    def excess(test: tuple[float, float, float]) -> float:
        error = abs(test[0] - test[1]) / test[2]
        return error if math.isfinite(error) else math.inf  # a NaN gradient is the worst element

    if count <= per_element_limit:
        tests = [element_test(scalar, leaf, unit(count, j), gradient) for j in range(count)]
        j = max(range(count), key=lambda i: excess(tests[i]))
    else:
        j = bisect(scalar, leaf, gradient)
    a, n, tol = element_test(scalar, leaf, unit(count, j), gradient)
    if math.isfinite(abs(a - n)) and abs(a - n) < tol:
        return {}  # a fault spread thinly over the whole tensor: no single element shows it on its own
    return {"worst_index": numerics.space.element_index(leaf, j), "analytical": a, "numerical": n,
            "element_tolerance": tol}


def bisect(scalar: Numerics, leaf: int, gradient: torch.Tensor) -> int:
    """Halve the candidate elements, following the half with the larger error under fixed random signs.
    Errors add up over disjoint halves, so one difference quotient per level is enough."""
    space = scalar.space
    signs = rademacher_like(gradient, space.generator)

    def error(indices: torch.Tensor) -> float:
        u = torch.zeros_like(gradient)
        u[indices] = signs[indices]
        numerical = central_difference(scalar.values, space.x, space.leaf_direction(leaf, u), space.h)
        error = dot(gradient, u) - float(numerical[0].sum()) / space.scales[leaf]
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


def element_test(scalar: Numerics, leaf: int, u_flat: torch.Tensor,
                 gradient: torch.Tensor) -> tuple[float, float, float]:
    """(analytical, numerical, tolerance) of the derivative of a scalar along a direction in one leaf."""
    space = scalar.space
    numerical = extrapolated_derivative(scalar.values, space.x, space.leaf_direction(leaf, u_flat), space.top,
                                        space.eps, scalar.noise)
    n = float(numerical.value[0].sum()) / space.scales[leaf]
    err = float(numerical.error[0].sum()) / space.scales[leaf]
    a = dot(gradient, u_flat)
    return a, n, RSS_SAFETY * err + relative_floor(space.eps) * (abs(a) + abs(n)) + 1e-300
