"""Low-precision audits: gradients computed in the audited dtype against a float64 shadow computation.

The numerical checks run on the float64 shadow (finite differences in float32 are too coarse to see small
bugs); this module then asks whether the float32 (or half) gradients agree with the float64 ones within the
noise that precision implies, scaled by how far the float32 forward already drifts from float64.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .backends.base import Program
from .checker import Outcome, Settings, fault_finding
from .differentiate import ForwardFunction, GradientFunction, evaluate, twice_differentiable_attention, vjps
from .numerics import ROUNDING_FACTOR, eps_of, rademacher_like, real
from .report import Check, Finding


def forward_drift(native: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest forward-output difference relative to the output's scale: how ill-conditioned the case is."""
    drift = 0.0
    for a, b in zip(native, reference):
        if b.numel():
            scale = float(real(b).double().abs().max()) or 1.0
            drift = max(drift, float((real(a).double() - real(b).double()).abs().max()) / scale)
    return drift


def parity_checks(native: Program, reference: Program, settings: Settings) -> tuple[list[Check], list[Finding]]:
    generator = torch.Generator().manual_seed(settings.seed + 7919)
    x_native = [leaf.value for leaf in native.leaves]
    x_reference = [leaf.value for leaf in reference.leaves]
    names = [leaf.name for leaf in native.leaves]
    f_native, f_reference = ForwardFunction(native), ForwardFunction(reference)
    y_reference = evaluate(f_reference, x_reference)
    drift = forward_drift(evaluate(f_native, x_native), y_reference)
    noise = max(eps_of(native.dtype), drift)
    dtype = str(native.dtype).replace("torch.", "")

    checks, findings = [], []
    pairs = [(f_native, f_reference, y_reference)]
    if settings.order >= 2:
        v = [rademacher_like(y, generator) for y in y_reference]
        v_native = [c.to(y.dtype) for c, y in zip(v, evaluate(f_native, x_native))]
        pairs.append((GradientFunction(f_native, v_native, names), GradientFunction(f_reference, v, names),
                      x_reference))
    for f_n, f_r, like in pairs:
        cotangent = [rademacher_like(y, generator) for y in like]
        with twice_differentiable_attention([]) if f_n.order > 1 else nullcontext():
            g_reference = vjps(f_r, x_reference, [cotangent])[0]
            g_native = vjps(f_n, x_native, [[c.to(x.dtype) for c, x in
                                             zip(cotangent, evaluate(f_n, x_native))]])[0]
        # Like rounding, the tolerance floor is relative to the largest gradient: an entry that cancels to
        # zero in float64 (a bias before batch norm) keeps float32 noise of the whole computation's scale.
        scale = max((float(real(b).double().abs().max()) for b in g_reference if b.numel()), default=0.0)
        order_checks = []
        for name, a, b in zip(names, g_native, g_reference):
            outcome = Outcome()
            a, b = real(a).double().reshape(-1), real(b).double().reshape(-1)
            if b.numel():
                tolerance = ROUNDING_FACTOR * noise * (b.abs() + scale) + 1e-300
                worst = int(torch.argmax((a - b).abs() / tolerance))
                outcome.absorb(float(a[worst]), float(b[worst]), float(tolerance[worst]))
            check = Check(order=f_n.order, wrt=name, method="dtype_parity", ok=not outcome.failed,
                          status="fail" if outcome.failed else "pass", max_abs_err=outcome.abs_err,
                          max_rel_err=outcome.rel_err, tolerance=outcome.tolerance, analytical=outcome.analytical,
                          numerical=outcome.numerical, probes=1, dtype=dtype)
            if outcome.failed:
                check.worst_index = [worst]
            order_checks.append(check)
        checks += order_checks
        failing = [c for c in order_checks if not c.ok]
        if failing:
            finding = fault_finding(f_n.order, "dtype_parity", failing)
            finding.message = (f"{dtype} gradients disagree with the float64 computation beyond {dtype} noise: "
                               + finding.message)
            findings.append(finding)
    return checks, findings
