"""Gradients of one program against a float64 reference program, within the noise of the program's precision.

Used twice: low-precision audits (float32 gradients against the float64 shadow the numerical checks ran on)
and cross-backend audits (XLA or CUDA gradients against eager float64 on CPU). The noise is the precision's
eps, raised to how far the program's forward already drifts from the reference's.
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable, TypeVar

import torch

from gradaudit.core.checks import Settings, on_cpu, program_precision
from gradaudit.core.precision import coarsest
from gradaudit.core.findings import backend_error_finding, fault_finding, to_check
from gradaudit.core.kinds import CheckStatus, FaultKind, Severity
from gradaudit.core.probe import Outcome, user_judged
from gradaudit.core.differentiate import ForwardFunction, GradientFunction, evaluate, twice_differentiable_attention, vjps
from gradaudit.core.lowprecision import NoiseMeasurement, measure_noise, ratio_to_noise, tolerance
from gradaudit.core.numerics import ROUNDING_FACTOR, eps_of, rademacher_like, real
from gradaudit.errors import BackendFailure, Unsupported, backend_failure
from gradaudit.report import Check, Finding

T = TypeVar("T")

if TYPE_CHECKING:  # the core sees a backend only through the Program interface
    from gradaudit.backends.base import Program


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return real(tensor).detach().to("cpu", torch.float64)


def on_backend(program: "Program", what: str, run: Callable[[], T]) -> T:
    """``run()``, which calls only into ``program`` and brings its results to the CPU (on a lazy backend
    such as XLA that is where compiling and running happen): anything it raises is the backend failing where
    eager float64 ran, a :class:`BackendFailure`, unless it is the backend saying it lacks the op or dtype."""
    try:
        return run()
    except (Unsupported, BackendFailure):
        raise
    except Exception as exc:
        raise backend_failure(program.device, what, exc) from exc


def expected_dtype(reference_output: torch.Tensor, native_dtype: torch.dtype) -> torch.dtype:
    """The dtype the audited program should give where the float64 reference gives ``reference_output``: the
    program's own precision for float64 outputs (complex alike), the reference's dtype for anything else."""
    if reference_output.dtype == torch.float64:
        return native_dtype
    if reference_output.dtype == torch.complex128:
        return torch.complex64 if native_dtype != torch.float64 else torch.complex128
    return reference_output.dtype


def form_mismatch(native: torch.Tensor, reference: torch.Tensor, native_dtype: torch.dtype) -> str | None:
    """How two results differ in form (shape, dtype), or None when they can be compared element by element."""
    if tuple(native.shape) != tuple(reference.shape):
        return f"shape {list(native.shape)} where eager float64 gives {list(reference.shape)}"
    expected = expected_dtype(reference, native_dtype)
    if native.dtype not in (expected, reference.dtype):  # (an op that casts to float64 itself does so anywhere)
        return f"dtype {str(native.dtype)[6:]} where {str(expected)[6:]} is expected"
    return None


def elementwise_gaps(native: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """|native - reference| per element (float64, flat), where NaN on both sides and the same infinity agree,
    and NaN or an infinity on one side only is an infinite gap."""
    a, b = _cpu(native).reshape(-1), _cpu(reference).reshape(-1)
    gaps = (a - b).abs()
    agree = (torch.isnan(a) & torch.isnan(b)) | (torch.isinf(a) & (a == b))
    gaps = torch.where(agree, torch.zeros_like(gaps), gaps)
    return torch.nan_to_num(gaps, nan=math.inf)


def finite_abs(tensor: torch.Tensor) -> torch.Tensor:
    """|tensor| as float64 with NaN and infinities counted as 0 (they set no scale)."""
    return torch.nan_to_num(_cpu(tensor).reshape(-1).abs(), nan=0.0, posinf=0.0, neginf=0.0)


def compare_elementwise(order: int, name: str, method: str, native: torch.Tensor, reference: torch.Tensor,
                        native_dtype: torch.dtype, tolerance_of: Callable[[torch.Tensor], torch.Tensor],
                        user: tuple[float, float] = (0.0, 0.0)) -> Check:
    """One check of a native result against the reference: a form mismatch fails it outright; otherwise the
    worst element relative to ``tolerance_of(|reference|)``, or to the user's ``(rtol, atol)`` where looser
    (``atol + rtol * |reference|`` per element, as torch.allclose)."""
    if reference.is_complex() and not native.is_complex() and tuple(native.shape) == (*reference.shape, 2):
        native = torch.view_as_complex(native.contiguous())  # ONNX's form of a complex tensor: its real view
    mismatch = form_mismatch(native, reference, native_dtype)
    if mismatch is not None:
        return form_check(order, name, method, native_dtype, mismatch)
    outcome, worst = Outcome(), None
    if reference.numel():
        tolerance = tolerance_of(finite_abs(reference)) + 1e-300
        gaps = elementwise_gaps(native, reference)
        accepted = user[1] + user[0] * finite_abs(reference) + 1e-300 if any(user) else None
        excess = gaps / tolerance
        if accepted is not None:  # (as torch.allclose: atol + rtol * |reference|, per element)
            excess = user_judged(outcome, excess, gaps, accepted, finite_abs(reference))
        worst = int(torch.argmax(excess))
        a, b = _cpu(native).reshape(-1)[worst], _cpu(reference).reshape(-1)[worst]
        outcome.absorb(float(a), float(b), float(tolerance[worst]), user=None if accepted is None else (
            float(accepted[worst]), abs(float(b))))
        gap = float(gaps[worst])
        if gap == 0.0 or math.isinf(gap):  # (NaN on both sides agrees; on one side it never does)
            outcome.excess = outcome.abs_err = outcome.rel_err = gap
    check = _check(order, name, method, outcome, native_dtype, worst)
    check.resolution = elementwise_resolution(tolerance, reference) if reference.numel() else None
    if not check.ok and not math.isfinite(check.max_abs_err):
        check.mismatch = f"{_describe(a)} where eager float64 gives {_describe(b)} at element {worst}"
    return check


def elementwise_resolution(tolerance: torch.Tensor, reference: torch.Tensor) -> float | None:
    """The relative error an elementwise comparison would have seen: the tolerance at the reference's largest
    element over that element (None for an all-zero reference)."""
    sizes = finite_abs(reference)
    largest = int(torch.argmax(sizes))
    return float(tolerance[largest]) / float(sizes[largest]) if float(sizes[largest]) > 0 else None


def _describe(value: torch.Tensor) -> str:
    number = float(value)
    return "NaN" if math.isnan(number) else f"{number:.9g}"


def form_check(order: int, name: str, method: str, native_dtype: torch.dtype, mismatch: str) -> Check:
    """A failed check of results that differ in form (``mismatch`` says how): no element can be compared."""
    check = _check(order, name, method, Outcome(), native_dtype, None)
    check.ok, check.status, check.mismatch = False, CheckStatus.FAIL, mismatch
    check.max_abs_err = check.max_rel_err = math.inf
    return check


def count_mismatch(order: int, what: str, native: list, reference: list, native_dtype: torch.dtype) -> Check | None:
    """A failing check when the program returns another number of results than the reference."""
    if len(native) == len(reference):
        return None
    return form_check(order, what, "forward_parity" if order == 0 else "backend_parity", native_dtype,
                      f"{len(native)} results where eager float64 gives {len(reference)}")


def forward_drift(native: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """Largest forward-output difference relative to the output's scale: how ill-conditioned the case is
    (results of another shape, or NaN on one side, drift infinitely)."""
    drift = 0.0
    for a, b in zip(native, reference):
        if tuple(a.shape) != tuple(b.shape):
            return math.inf
        if b.numel():
            scale = float(finite_abs(b).max()) or 1.0
            drift = max(drift, float(elementwise_gaps(a, b).max()) / scale)
    return drift


def path_dtype(native: Program, reference: Program) -> torch.dtype:
    """The precision two programs can agree to: the native program's, or coarser where the reference's own
    computation drops below it (a float32 section inside a float64 model runs in float32 on both, each backend
    rounding it its own way)."""
    precision = program_precision(reference)
    return coarsest([native.dtype] + ([precision.dtype] if precision is not None else []))


def forward_checks(native: Program, reference: Program, seed: int = 0,
                   arithmetic: torch.dtype | None = None) -> tuple[list[Check], float]:
    """Forward outputs against the reference within the precision of the path (order 0 checks; ``arithmetic``,
    default :func:`path_dtype`). Besides rounding, the tolerance allows 16 times how far the reference's outputs
    move when the leaves are nudged by one rounding unit of that precision: the ill-conditioning a
    lower-precision run inherits, and the reference's own rounding in a coarser section, measured.
    Results of another number, shape or dtype, and NaN on one side only, fail their checks; an exception of
    the program is a :class:`BackendFailure`."""
    x_reference = [leaf.value for leaf in reference.leaves]
    f_reference = ForwardFunction(reference)
    y_reference = evaluate(f_reference, x_reference)
    y_native = on_backend(native, "the forward", lambda: on_cpu(
        evaluate(ForwardFunction(native), [leaf.value for leaf in native.leaves])))
    eps = eps_of(arithmetic or path_dtype(native, reference))
    generator = torch.Generator().manual_seed(seed)
    nudged = [x * (1 + eps * rademacher_like(x, generator)) for x in x_reference]
    y_nudged = evaluate(f_reference, nudged)
    scale = max((float(finite_abs(b).max()) for b in y_reference if b.numel()), default=0.0)
    checks = []
    for name, a, b, c in zip(reference.output_names, y_native, y_reference, y_nudged):
        conditioning = 16 * float(torch.nan_to_num(elementwise_gaps(c, b), posinf=0.0).max()) if b.numel() else 0.0
        checks.append(compare_elementwise(0, name, "forward_parity", a, b, native.dtype,
                                          lambda size: ROUNDING_FACTOR * eps * (size + scale) + conditioning))
    extra = count_mismatch(0, "outputs", y_native, y_reference, native.dtype)
    checks += [extra] if extra else []
    return checks, forward_drift(y_native, y_reference)


def grad_mode_form_checks(native: Program, reference: Program) -> list[Check]:
    """Failing order-0 checks for outputs whose form changes when the leaves require grad, as the backward
    sees them (torch-xla 2.9's nuclear norm returns a scalar there where eager returns one value per matrix):
    the backward would then fail on mismatched shapes, hiding the op that changed them."""
    y_reference = evaluate(ForwardFunction(reference), [leaf.value for leaf in reference.leaves])

    def run() -> list[torch.Tensor]:
        with torch.enable_grad():
            values = [leaf.value.detach().requires_grad_() for leaf in native.leaves]
            return on_cpu(ForwardFunction(native).outputs(values))

    y_native = on_backend(native, "the forward with gradients enabled", run)
    checks = []
    for name, a, b in zip(reference.output_names, y_native, y_reference):
        mismatch = form_mismatch(a, b, native.dtype)
        if mismatch is not None:
            checks.append(form_check(0, name, "forward_parity", native.dtype, f"with gradients enabled, {mismatch}"))
    extra = count_mismatch(0, "outputs", y_native, y_reference, native.dtype)
    return checks + ([extra] if extra else [])


def forward_divergences(checks: list[Check], drift: float, arithmetic: torch.dtype | None = None) -> list[Finding]:
    """One ``forward_divergence`` finding for the worst failing forward check, if any. A gap beyond the
    precision's rounding but below sqrt(eps) of the output's scale is a backend computing a function less
    accurately (XLA's float64 erf), a warning; above it, the backend computes something else: an error.
    ``arithmetic``: the precision of the path where it is coarser than the checks' dtype (see path_dtype)."""
    failing = [c for c in checks if c.method == "forward_parity" and not c.ok]
    if not failing:
        return []
    worst = max(failing, key=lambda c: (c.mismatch is not None, c.max_abs_err / max(c.tolerance, 1e-300)))
    limit = (precision_limit(arithmetic) if arithmetic is not None else
             PRECISION_LOSS_LIMIT[worst.dtype] if worst.dtype in PRECISION_LOSS_LIMIT else 1e-3)
    mismatches = [f"{c.wrt}: {c.mismatch}" for c in failing if c.mismatch]
    severity = "error" if drift > limit or mismatches else "warning"
    if severity == "warning":  # the checks pass, with their status saying why they needed the excuse
        for check in failing:
            check.ok, check.status = True, "precision_loss"
    what = "differs from" if severity == "error" else "loses precision against"
    if worst.mismatch:
        message = f"forward output {worst.wrt} differs from eager float64: {worst.mismatch}"
    else:
        message = (f"forward output {worst.wrt} {what} eager float64 at element {worst.worst_index}: "
                   f"{worst.analytical:.9g} vs {worst.numerical:.9g} (|err| {worst.max_abs_err:.3g} > "
                   f"{worst.tolerance:.3g} allowed in {worst.dtype}; {drift:.2g} of the output's scale)")
    details = {"relative_to_scale": drift}
    if mismatches:
        details["mismatch"] = mismatches
    return [Finding("forward_divergence", order=0, wrt=worst.wrt, max_abs_err=worst.max_abs_err, severity=severity,
                    message=message, details=details)]


def precision_limit(dtype: torch.dtype) -> float:
    """Gaps relative to the scale up to which a backend is only less accurate than eager: sqrt(eps)."""
    return eps_of(dtype) ** 0.5


# Forward gaps, relative to the output's scale, up to which a backend is only less accurate: sqrt(eps).
PRECISION_LOSS_LIMIT = {name: precision_limit(dtype) for name, dtype in
                        (("float64", torch.float64), ("float32", torch.float32), ("float16", torch.float16),
                         ("bfloat16", torch.bfloat16))}


def _check(order: int, wrt: str, method: str, outcome: Outcome, dtype: torch.dtype, worst: int | None) -> Check:
    status = CheckStatus.FAIL if outcome.failed else CheckStatus.PASS
    check = to_check(order, wrt, method, outcome, status, {"worst_index": [worst]}, str(dtype).replace("torch.", ""))
    check.probes = 1
    return check


def parity_checks(native: Program, reference: Program, settings: Settings,
                  method: str = "dtype_parity") -> tuple[list[Check], list[Finding]]:
    """Order-1 (and order-2) gradients of ``native`` against ``reference`` for the same seeded cotangents.
    The reference is differentiated first; the native program's gradients are computed and brought to the CPU
    under :func:`on_backend`, so an exception there is a :class:`BackendFailure` of that order. A low-precision
    program against its float64 shadow (``dtype_parity``) is judged by its measured noise
    (:func:`measured_parity_checks`)."""
    if method == "dtype_parity":
        return measured_parity_checks(native, reference, settings)
    generator = torch.Generator().manual_seed(settings.seed + 7919)
    x_native = [leaf.value for leaf in native.leaves]
    x_reference = [leaf.value for leaf in reference.leaves]
    names = [leaf.name for leaf in native.leaves]
    f_native, f_reference = ForwardFunction(native), ForwardFunction(reference)
    y_reference = evaluate(f_reference, x_reference)
    y_native = on_backend(native, "the forward", lambda: evaluate(f_native, x_native))
    noise = max(eps_of(native.dtype), forward_drift(on_cpu(y_native), y_reference))

    def like(cotangent, tensors):
        return [c.to(device=t.device, dtype=t.dtype) for c, t in zip(cotangent, tensors)]

    # Derivatives that cancel to zero everywhere (copysign's second, softmin's) keep rounding of the terms they
    # are computed from: the floor of each order's tolerance is the largest value computed before it.
    checks, findings, previous_scale = [], [], largest(y_reference)
    pairs = [(f_native, f_reference, y_reference, y_native)]
    if settings.order >= 2:
        v = [rademacher_like(y, generator) for y in y_reference]
        pairs.append((GradientFunction(f_native, like(v, y_native), names), GradientFunction(f_reference, v, names),
                      x_reference, x_native))
    for f_n, f_r, reference_like, native_like in pairs:
        cotangent = [rademacher_like(y, generator) for y in reference_like]
        with twice_differentiable_attention([]) if f_n.order > 1 else nullcontext():
            g_reference = vjps(f_r, x_reference, [cotangent])[0]
            what = "the backward" if f_n.order == 1 else "the double backward"
            try:
                g_native = on_backend(native, what, lambda: on_cpu(
                    vjps(f_n, x_native, [like(cotangent, native_like)])[0]))
            except BackendFailure as failure:  # the orders before it keep their checks
                findings.append(backend_error_finding(f_n.order, failure))
                break
        order_checks = order_parity_checks(f_n.order, method, names, g_native, g_reference, native.dtype, noise,
                                           previous_scale, (settings.rtol, settings.atol))
        own_scale = largest(g_reference) or previous_scale
        previous_scale = max(previous_scale, own_scale)
        checks += order_checks
        failing = [c for c in order_checks if not c.ok]
        if failing:
            finding = parity_finding(f_n.order, method, failing, native)
            if method == "backend_parity" and all(c.max_abs_err <= precision_limit(native.dtype) * own_scale
                                                  for c in failing):
                finding = excuse_as_precision_loss(finding, failing, own_scale)
            findings.append(finding)
    return checks, findings


def excuse_as_precision_loss(finding: Finding, failing: list[Check], scale: float) -> Finding:
    """A gradient gap within sqrt(eps) of the derivatives' scale (XLA's float64 eigh and svd iterate to about
    1e-9): the backend is less accurate, not wrong. A warning; the checks pass with status precision_loss."""
    relative = max(c.max_abs_err for c in failing) / max(scale, 1e-300)
    for check in failing:
        check.ok, check.status = True, "precision_loss"
    return dataclasses.replace(
        finding, severity=Severity.WARNING, details=finding.details | {"relative_to_scale": relative},
        message=f"loses precision against eager float64 ({relative:.2g} of the derivatives' scale, within "
                f"sqrt(eps)): {finding.message}")


def largest(tensors: list[torch.Tensor]) -> float:
    """The largest finite magnitude among the tensors (0 for none)."""
    return max((float(finite_abs(t).max()) for t in tensors if t.numel()), default=0.0)


def order_parity_checks(order: int, method: str, names: list[str], native: list[torch.Tensor],
                        reference: list[torch.Tensor], native_dtype: torch.dtype, noise: float,
                        previous_scale: float = 0.0, user: tuple[float, float] = (0.0, 0.0)) -> list[Check]:
    """One check per leaf. Like rounding, the tolerance floor is relative to the largest gradient: an entry
    that cancels to zero in float64 (a bias before batch norm) keeps float32 noise of the whole computation's
    scale; ``previous_scale`` (the largest output or lower-order derivative) floors it further."""
    scale = max(largest(reference), previous_scale)
    checks = [compare_elementwise(order, name, method, a, b, native_dtype,
                                  lambda size: ROUNDING_FACTOR * noise * (size + scale), user)
              for name, a, b in zip(names, native, reference)]
    extra = count_mismatch(order, "gradients", native, reference, native_dtype)
    return checks + ([extra] if extra else [])


def parity_finding(order: int, method: str, failing: list[Check], native: Program) -> Finding:
    """The finding of an order's failing parity checks."""
    dtype = str(native.dtype).replace("torch.", "")
    if method == "dtype_parity":
        return fault_finding(order, method, failing,
                             lead=f"{dtype} gradients disagree with the float64 computation beyond {dtype} noise: ")
    return fault_finding(order, method, failing, FaultKind.BACKWARD_DIVERGENCE,
                         f"gradients of {native.display_name()} disagree with eager float64 on CPU beyond {dtype} "
                         "noise: ")


# ---------------------------------------------------------------- low precision: judged by its measured noise
def as_reference(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A native leaf value on the reference's device and precision (float64, complex128)."""
    return x.detach().to(device=like.device, dtype=like.dtype)


def measured_parity_checks(native: Program, reference: Program,
                           settings: Settings) -> tuple[list[Check], list[Finding]]:
    """Gradients of a low-precision program against its float64 shadow at the same leaf values (the native
    ones cast up, so only the arithmetic differs), each order judged against the noise measured at jittered
    copies of the leaves (:mod:`gradaudit.core.lowprecision`)."""
    generator = torch.Generator().manual_seed(settings.seed + 7919)
    x_native, names = [leaf.value for leaf in native.leaves], [leaf.name for leaf in native.leaves]
    up = lambda xs: [as_reference(x, leaf.value) for x, leaf in zip(xs, reference.leaves)]  # noqa: E731
    f_native, f_reference = ForwardFunction(native), ForwardFunction(reference)
    y_reference = evaluate(f_reference, up(x_native))
    y_native = on_backend(native, "the forward", lambda: evaluate(f_native, x_native))
    drift = forward_drift(on_cpu(y_native), y_reference)
    pairs = [(f_native, f_reference, y_reference, y_native)]
    if settings.order >= 2:
        v = [rademacher_like(y, generator) for y in y_reference]
        pairs.append((GradientFunction(f_native, _like(v, y_native), names), GradientFunction(f_reference, v, names),
                      up(x_native), x_native))
    checks, findings = [], []
    for f_n, f_r, reference_like, native_like in pairs:
        cotangent = [rademacher_like(y, generator) for y in reference_like]
        what = "the backward" if f_n.order == 1 else "the double backward"

        def gradients_at(xs, f_n=f_n, f_r=f_r, cotangent=cotangent, native_like=native_like, what=what):
            with twice_differentiable_attention([]) if f_n.order > 1 else nullcontext():
                g_reference = as_float64_shadows(vjps(f_r, up(xs), [cotangent])[0], reference.dtype)
                g_native = on_backend(native, what, lambda: on_cpu(
                    vjps(f_n, xs, [_like(cotangent, native_like)])[0]))
            return g_native, g_reference

        try:
            measured = measure_noise(gradients_at, x_native, settings.seed + 104729 * f_n.order)
        except BackendFailure as failure:  # the orders before it keep their checks
            findings.append(backend_error_finding(f_n.order, failure))
            break
        order_checks, ratios = measured_order_checks(f_n.order, names, measured, native.dtype, drift)
        checks += order_checks
        failing = [c for c in order_checks if not c.ok]
        if failing:
            findings.append(noise_finding(f_n.order, failing, ratios, native.dtype))
    return checks, findings


def as_float64_shadows(gradients: list[torch.Tensor], shadow: torch.dtype) -> list[torch.Tensor]:
    """A float32 shadow's gradients (the case refused float64) in the form a float64 shadow's have, so the
    program's dtype is the one expected of them (their values keep float32's rounding, 2^16 below bf16's)."""
    if shadow == torch.float64:
        return gradients
    wider = {torch.float32: torch.float64, torch.complex64: torch.complex128}
    return [g.to(wider[g.dtype]) if g.dtype in wider else g for g in gradients]


def _like(cotangent: list[torch.Tensor], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [c.to(device=t.device, dtype=t.dtype) for c, t in zip(cotangent, tensors)]


def measured_order_checks(order: int, names: list[str], measured: NoiseMeasurement, native_dtype: torch.dtype,
                          drift: float) -> tuple[list[Check], dict[str, float]]:
    """One check per leaf: the worst element's typical error against its tolerance from the measured noise;
    and, per leaf, how many times the measured noise that element's error is."""
    checks, ratios = [], {}
    for i, name in enumerate(names):
        native, reference = measured.native[i], measured.reference[i]
        mismatch = form_mismatch(native, reference, native_dtype)
        if mismatch is not None:
            checks.append(form_check(order, name, "dtype_parity", native_dtype, mismatch))
            continue
        check, ratios[name] = noise_check(order, name, measured, i, native_dtype, drift)
        checks.append(check)
    extra = count_mismatch(order, "gradients", measured.native, measured.reference, native_dtype)
    return checks + ([extra] if extra else []), ratios


def noise_check(order: int, name: str, measured: NoiseMeasurement, leaf: int, native_dtype: torch.dtype,
                drift: float) -> tuple[Check, float]:
    """The check of one leaf, and its worst element's error over the measured noise."""
    outcome, worst, ratio = Outcome(tests=measured.points), None, 0.0
    typical = measured.typical_error(leaf)
    if typical.numel():
        bound = tolerance(measured, leaf, eps_of(native_dtype), drift)
        excess = torch.where(typical > 0, typical / (bound + 1e-300), torch.zeros_like(typical))
        worst = int(torch.argmax(torch.nan_to_num(excess, nan=math.inf)))
        a = float(_cpu(measured.native[leaf]).reshape(-1)[worst])
        b = float(_cpu(measured.reference[leaf]).reshape(-1)[worst])
        error, allowed = float(typical[worst]), float(bound[worst])
        outcome.excess, outcome.abs_err, outcome.tolerance = float(excess[worst]), error, allowed
        outcome.rel_err = error / max(abs(b), 1e-300)
        outcome.analytical, outcome.numerical = a, b
        sizes = finite_abs(measured.reference[leaf])
        largest = int(torch.argmax(sizes))
        outcome.resolution = float(bound[largest] / sizes[largest]) if float(sizes[largest]) > 0 else math.inf
        ratio = ratio_to_noise(error, float(measured.spread(leaf)[worst]))
    check = _check(order, name, "dtype_parity", outcome, native_dtype, worst)
    return check, ratio


def noise_finding(order: int, failing: list[Check], ratios: dict[str, float], native_dtype: torch.dtype) -> Finding:
    """The finding of an order's failing dtype-parity checks, giving the error as a multiple of the noise."""
    dtype = str(native_dtype).replace("torch.", "")
    finding = fault_finding(order, "dtype_parity", failing)
    ratio = ratios.get(finding.wrt)  # (of the leaf the finding names: known once it is chosen)
    times = (f"error {ratio:.3g}x the measured {dtype} noise" if ratio is not None and math.isfinite(ratio)
             else f"beyond the measured {dtype} noise")
    return dataclasses.replace(
        finding, message=f"{dtype} gradients disagree with the float64 computation, {times}: {finding.message}",
        details=finding.details | ({} if ratio is None else {"noise_ratio": ratio}))
