"""Gradients of one program against a float64 reference program, within the noise of the program's precision.

Used twice: low-precision audits (float32 gradients against the float64 shadow the numerical checks ran on)
and cross-backend audits (XLA or CUDA gradients against eager float64 on CPU). The noise is the precision's
eps, raised to how far the program's forward already drifts from the reference's.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from typing import TYPE_CHECKING

from gradaudit.core.checks import Settings
from gradaudit.core.findings import fault_finding, to_check
from gradaudit.core.kinds import CheckStatus, FaultKind
from gradaudit.core.probe import Outcome
from gradaudit.core.differentiate import ForwardFunction, GradientFunction, evaluate, twice_differentiable_attention, vjps
from gradaudit.core.numerics import ROUNDING_FACTOR, eps_of, rademacher_like, real
from gradaudit.report import Check, Finding

if TYPE_CHECKING:  # the core sees a backend only through the Program interface
    from gradaudit.backends.base import Program


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return real(tensor).detach().to("cpu", torch.float64)


def forward_drift(native: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest forward-output difference relative to the output's scale: how ill-conditioned the case is."""
    drift = 0.0
    for a, b in zip(native, reference):
        if b.numel():
            scale = float(_cpu(b).abs().max()) or 1.0
            drift = max(drift, float((_cpu(a) - _cpu(b)).abs().max()) / scale)
    return drift


def forward_checks(native: Program, reference: Program, seed: int = 0) -> tuple[list[Check], float]:
    """Forward outputs against the reference within the program's precision (order 0 checks). Besides
    rounding, the tolerance allows 16 times how far the float64 outputs move when the leaves are nudged by
    one rounding unit of the program's precision: the ill-conditioning a lower-precision run inherits."""
    x_reference = [leaf.value for leaf in reference.leaves]
    f_reference = ForwardFunction(reference)
    y_native = evaluate(ForwardFunction(native), [leaf.value for leaf in native.leaves])
    y_reference = evaluate(f_reference, x_reference)
    eps = eps_of(native.dtype)
    generator = torch.Generator().manual_seed(seed)
    nudged = [x * (1 + eps * rademacher_like(x, generator)) for x in x_reference]
    y_nudged = evaluate(f_reference, nudged)
    scale = max((float(_cpu(b).abs().max()) for b in y_reference if b.numel()), default=0.0)
    checks = []
    for name, a, b, c in zip(reference.output_names, y_native, y_reference, y_nudged):
        a, b, c = _cpu(a).reshape(-1), _cpu(b).reshape(-1), _cpu(c).reshape(-1)
        outcome, worst = Outcome(), None
        if b.numel():
            conditioning = 16 * float((c - b).abs().max())
            tolerance = ROUNDING_FACTOR * eps * (b.abs() + scale) + conditioning + 1e-300
            worst = int(torch.argmax((a - b).abs() / tolerance))
            outcome.absorb(float(a[worst]), float(b[worst]), float(tolerance[worst]))
        checks.append(_check(0, name, "forward_parity", outcome, native.dtype, worst))
    return checks, forward_drift(y_native, y_reference)


def forward_divergences(checks: list[Check], drift: float) -> list[Finding]:
    """One ``forward_divergence`` finding for the worst failing forward check, if any. A gap beyond the
    precision's rounding but below sqrt(eps) of the output's scale is a backend computing a function less
    accurately (XLA's float64 erf), a warning; above it, the backend computes something else: an error."""
    failing = [c for c in checks if c.method == "forward_parity" and not c.ok]
    if not failing:
        return []
    worst = max(failing, key=lambda c: c.max_abs_err / max(c.tolerance, 1e-300))
    limit = PRECISION_LOSS_LIMIT[worst.dtype] if worst.dtype in PRECISION_LOSS_LIMIT else 1e-3
    severity = "error" if drift > limit else "warning"
    if severity == "warning":  # the checks pass, with their status saying why they needed the excuse
        for check in failing:
            check.ok, check.status = True, "precision_loss"
    what = "differs from" if severity == "error" else "loses precision against"
    return [Finding("forward_divergence", order=0, wrt=worst.wrt, max_abs_err=worst.max_abs_err, severity=severity,
                    message=f"forward output {worst.wrt} {what} eager float64 at element {worst.worst_index}: "
                            f"{worst.analytical:.9g} vs {worst.numerical:.9g} (|err| {worst.max_abs_err:.3g} > "
                            f"{worst.tolerance:.3g} allowed in {worst.dtype}; {drift:.2g} of the output's scale)",
                    details={"relative_to_scale": drift})]


# Forward gaps, relative to the output's scale, up to which a backend is only less accurate: sqrt(eps).
PRECISION_LOSS_LIMIT = {name: eps_of(dtype) ** 0.5 for name, dtype in
                        (("float64", torch.float64), ("float32", torch.float32), ("float16", torch.float16),
                         ("bfloat16", torch.bfloat16))}


def _check(order: int, wrt: str, method: str, outcome: Outcome, dtype: torch.dtype, worst: int | None) -> Check:
    status = CheckStatus.FAIL if outcome.failed else CheckStatus.PASS
    check = to_check(order, wrt, method, outcome, status, {"worst_index": [worst]}, str(dtype).replace("torch.", ""))
    check.probes = 1
    return check


def parity_checks(native: Program, reference: Program, settings: Settings,
                  method: str = "dtype_parity") -> tuple[list[Check], list[Finding]]:
    """Order-1 (and order-2) gradients of ``native`` against ``reference`` for the same seeded cotangents."""
    generator = torch.Generator().manual_seed(settings.seed + 7919)
    x_native = [leaf.value for leaf in native.leaves]
    x_reference = [leaf.value for leaf in reference.leaves]
    names = [leaf.name for leaf in native.leaves]
    f_native, f_reference = ForwardFunction(native), ForwardFunction(reference)
    y_reference = evaluate(f_reference, x_reference)
    y_native = evaluate(f_native, x_native)
    noise = max(eps_of(native.dtype), forward_drift(y_native, y_reference))
    dtype = str(native.dtype).replace("torch.", "")

    def like(cotangent, tensors):
        return [c.to(device=t.device, dtype=t.dtype) for c, t in zip(cotangent, tensors)]

    checks, findings = [], []
    pairs = [(f_native, f_reference, y_reference, y_native)]
    if settings.order >= 2:
        v = [rademacher_like(y, generator) for y in y_reference]
        pairs.append((GradientFunction(f_native, like(v, y_native), names), GradientFunction(f_reference, v, names),
                      x_reference, x_native))
    for f_n, f_r, reference_like, native_like in pairs:
        cotangent = [rademacher_like(y, generator) for y in reference_like]
        with twice_differentiable_attention([]) if f_n.order > 1 else nullcontext():
            g_reference = vjps(f_r, x_reference, [cotangent])[0]
            g_native = vjps(f_n, x_native, [like(cotangent, native_like)])[0]
        # Like rounding, the tolerance floor is relative to the largest gradient: an entry that cancels to
        # zero in float64 (a bias before batch norm) keeps float32 noise of the whole computation's scale.
        scale = max((float(_cpu(b).abs().max()) for b in g_reference if b.numel()), default=0.0)
        order_checks = []
        for name, a, b in zip(names, g_native, g_reference):
            outcome, worst = Outcome(), None
            a, b = _cpu(a).reshape(-1), _cpu(b).reshape(-1)
            if b.numel():
                tolerance = ROUNDING_FACTOR * noise * (b.abs() + scale) + 1e-300
                worst = int(torch.argmax((a - b).abs() / tolerance))
                outcome.absorb(float(a[worst]), float(b[worst]), float(tolerance[worst]))
            order_checks.append(_check(f_n.order, name, method, outcome, native.dtype, worst))
        checks += order_checks
        failing = [c for c in order_checks if not c.ok]
        if failing:
            finding = fault_finding(f_n.order, method, failing)
            if method == "dtype_parity":
                finding.message = (f"{dtype} gradients disagree with the float64 computation beyond {dtype} "
                                   "noise: " + finding.message)
            else:
                finding.kind = FaultKind.BACKWARD_DIVERGENCE
                finding.message = (f"{native.device} gradients disagree with eager float64 on CPU beyond {dtype} "
                                   "noise: " + finding.message)
            findings.append(finding)
    return checks, findings
