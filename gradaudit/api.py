"""The Python API: ``gradaudit.check(...) -> Report`` on one backend, ``gradaudit.compare(...) -> Report`` across
backends."""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch

from gradaudit._version import __version__
from gradaudit.case import as_case
from gradaudit.core.checks import Auditor, Settings, precision_notes, share_precision
from gradaudit.core.findings import backend_error_finding
from gradaudit.errors import AuditError, BackendFailure, Unsupported, backend_failure
from gradaudit.pipeline import AuditResult, announce, optional_phase, publish_verdict
from gradaudit.outcome import first_line, user_code_boundary, users_own_exception, where_it_happened
from gradaudit.core.kinds import FAULTS, FaultKind, Note, Severity
from gradaudit.core.parity import path_dtype
from gradaudit.crossbackend import (compare_backend, forward_parity, gradient_parity, numeric_backend_audit,
                                    refuse_random_ops)
from gradaudit.registry import REFERENCE, reference_backend, usable_backend
from gradaudit.rng import preserved_rng
from gradaudit.backends.base import Program, Stats
from gradaudit.report import Finding, Report

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}
MODES = ("auto", "fast", "full")


def checked_settings(order: int, mode: str, probes: int, seed: int, batch: bool = False, rtol: float = 0.0,
                     atol: float = 0.0) -> Settings:
    """The audit's settings, or an AuditError naming the bad value."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise AuditError(f"{name} must be a finite number >= 0, got {value!r}")
    if order not in (1, 2):
        raise AuditError(f"order must be 1 or 2, got {order}")
    if mode not in MODES:
        raise AuditError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if probes < 1:
        raise AuditError(f"probes must be at least 1, got {probes}")
    return Settings(order=order, mode=mode, probes=probes, seed=seed, batch=batch, rtol=float(rtol),
                    atol=float(atol))


def load_reference(case, backend, program: Program, device: str | None, shadow: bool,
                   rewind: Callable[[], None]) -> tuple[Program | None, list[Note]]:
    """The float64 program the numerics run on, and the notes of how it was chosen: eager float64 on CPU for a
    backend without autograd, the same backend in float64 (the shadow) for a low-precision case; None when the
    program itself is float64."""
    if not program.capabilities.autograd:
        rewind()
        return reference_backend().load(case, "cpu", torch.float64), []
    if not shadow or program.dtype == torch.float64:
        return None, []
    rewind()
    try:
        return backend.load(case, device, torch.float64), []
    except Exception as exc:
        refusal = f"{type(exc).__name__}: {first_line(exc)}"
    fallback = float32_shadow(case, backend, program, device, rewind)
    what = "the reference is a float32 shadow" if fallback is not None else \
        f"checked in {program.dtype} with its own error bars"
    return fallback, [Note(what="float64 shadow", reason=f"{refusal}; {what}")]


def float32_shadow(case, backend, program: Program, device: str | None,
                   rewind: Callable[[], None]) -> Program | None:
    """The case in float32 where it refuses float64 (a Triton kernel, torchaudio's rnnt_loss) and the program is
    coarser (bf16/fp16): float32's rounding is 2^16 times below bf16's, so it still judges the program's noise."""
    if torch.finfo(program.dtype).eps <= torch.finfo(torch.float32).eps:
        return None
    rewind()
    try:
        return backend.load(case, device, torch.float32)
    except Exception:
        return None


def shadow_notes(program: Program, reference: Program | None) -> list[Note]:
    """The precision note of a low-precision program judged against a float32 shadow rather than float64."""
    if reference is None or not program.capabilities.autograd or reference.dtype == torch.float64:
        return []
    return [Note(what="shadow", reason="the case refused float64: gradients judged against a float32 shadow",
                 dtype=str(reference.dtype).replace("torch.", ""))]


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise AuditError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextmanager
def same_rng_for_each_program() -> Iterator[Callable[[], None]]:
    """Every program loaded inside starts from the caller's RNG state (same dropout masks in the float64
    shadow as in the audited dtype): the block gets ``rewind()``; the caller gets that state back at the end."""
    with preserved_rng() as snapshot:
        yield snapshot.restore


@user_code_boundary("gradaudit.check")
def check(target: Any, args: Any = (), kwargs: dict | None = None, *, backend: str = REFERENCE,
          device: str | None = None, order: int = 1, dtype: str | torch.dtype | None = None, mode: str = "auto",
          seed: int = 0, probes: int = 3, shadow: bool = True, localize: bool = True, static_only: bool = False,
          fail_on_hazard: bool = False, progress: Callable[[str, int, int], None] | None = None,
          name: str | None = None, wrt: str | list[str] | None = None, batch: bool = False, rtol: float = 0.0,
          atol: float = 0.0) -> Report:
    """Audit the gradients of a function or module at ``args``/``kwargs``.

    ``target`` is a callable (function or ``nn.Module``), a ``gradaudit.Case``, or a factory's
    ``(fn, args[, kwargs])`` tuple. ``order=2`` checks first and second order. Low-precision cases are checked
    numerically on a float64 shadow copy, and their own gradients are compared with it (``shadow=False``
    checks them directly in their dtype). Failures are localized to the autograd node, op, module and source
    line (``localize``). What is differentiated follows torch: the module's trainable parameters and the inputs
    with ``requires_grad=True`` (every floating input when none has it); ``wrt`` (names or globs such as
    ``"fc1.*, args[0]"``) overrides that. Static hazards (dead parameters, non-differentiable ops on a gradient
    path, ...) are reported as warnings, as errors with ``fail_on_hazard``, and alone with ``static_only``. Raises
    :class:`gradaudit.AuditError` when the audit cannot run. ``batch`` runs each probe's points in one
    ``torch.func.vmap`` call on eager programs, falling back to one call per point where vmap cannot run the
    case (``stats["batching"]`` says which); off by default: on the CPU it saves nothing measurable.
    ``rtol``/``atol`` accept approximate gradients (adjoint methods, estimators): a check also passes within
    ``atol + rtol * |numerical|`` per Jacobian entry, carried onto the probes (``core.probe.UserTolerance``);
    each check's ``bound`` says whether the error bar or that tolerance judged it.

    Everything runs in this process, the optional phases (localization, the hazard scan) after the verdict
    (``gradaudit.pipeline``): an exception there is a note in ``report.skipped``, and the verdict stands.
    """
    settings = checked_settings(order, mode, probes, seed, batch, rtol, atol)
    case = as_case(target, args, kwargs, name, wrt)
    chosen = usable_backend(backend)
    started = time.perf_counter()
    announce("the checks")
    with same_rng_for_each_program() as rewind, ExitStack() as open_programs:
        try:
            program = open_programs.enter_context(chosen.load(case, device, parse_dtype(dtype)))
        except BackendFailure as failure:  # (only another backend's: eager raising is the case's own error)
            report = failed_backend_report(case, chosen, failure, settings, rewind, dtype, started)
            publish_verdict(report)
            return report
        reference, notes = (None, []) if static_only else load_reference(case, chosen, program, device, shadow,
                                                                         rewind)
        if reference is not None:
            open_programs.enter_context(reference)
        result = AuditResult(notes=notes + program.notes) + audit_program(
            case, program, reference, settings, progress, localize, rewind, open_programs, static_only)
        if fail_on_hazard:  # hazards decide the verdict: the scan is part of it
            result.findings = [hazard_as_error(f) for f in result.findings + run_later(result, "hazard scan")]
        report = verdict_report(case.label, chosen.name, program, reference, result, started, settings,
                                {"localize": localize, "static_only": static_only})
        publish_verdict(report)
        for phase, work in result.later:
            report.findings += optional_phase(phase, work, report.skipped) or []
        report.stats = audit_stats(program, reference, started)
    return report


def verdict_report(label: str, backend: str, program: Program, reference: Program | None, result: AuditResult,
                   started: float, settings: Settings, options: dict) -> Report:
    """The report of one program's checks, before any optional phase: the settings, the shadow's dtype and the
    ``options`` (localize, static_only) in its ``settings``."""
    shadow = str(reference.dtype).replace("torch.", "") if reference is not None else None
    return Report(target=label, backend=backend, device=program.device,
                  dtype=str(program.dtype).replace("torch.", ""), seed=settings.seed, checks=result.checks,
                  findings=result.findings, skipped=result.notes, stats=audit_stats(program, reference, started),
                  settings=settings.to_dict() | {"shadow": shadow} | options, version=__version__,
                  precision=[] if options.get("static_only") else
                  precision_notes(reference or program) + shadow_notes(program, reference))


def failed_backend_report(case, backend, failure: BackendFailure, settings: Settings, rewind: Callable[[], None],
                          dtype: str | torch.dtype | None, started: float) -> Report:
    """The backend raised running the case (torch-xla refusing ``dim=0`` on a 0-d tensor): when eager float64
    runs the same case, that is a finding about the backend (``backend_error``, the verdict FAIL), as in
    ``compare``; when eager raises too, its error is the case's own and the audit cannot run."""
    rewind()
    with reference_backend().load(case, "cpu", torch.float64) as eager:
        precision = precision_notes(eager)
        stats = eager.stats.to_dict()
    stats["seconds"] = round(time.perf_counter() - started, 4)
    return Report(target=case.label, backend=backend.name, device=failure.device,
                  dtype=str(parse_dtype(dtype) or "as given").replace("torch.", ""), seed=settings.seed,
                  findings=[backend_error_finding(0, failure)], stats=stats, settings=settings.to_dict(),
                  skipped=[Note(what=f"order {order}", reason=f"{failure.what} on {failure.device} raised")
                           for order in range(1, settings.order + 1)],
                  version=__version__, precision=precision)


def audit_stats(program: Program, reference: Program | None, started: float) -> dict:
    """The program's counters, the float64 reference's added, and the seconds since ``started``."""
    stats = program.stats.to_dict()
    if reference is not None:
        for key, value in reference.stats.counters().items():
            stats[key] += value
    stats["seconds"] = round(time.perf_counter() - started, 4)
    return stats


def audit_program(case, program: Program, reference: Program | None, settings: Settings, progress,
                  localize: bool, rewind: Callable[[], None], open_programs: ExitStack,
                  static_only: bool) -> AuditResult:
    """The audit that fits the program: static hazards only, the checks of an autograd backend, or finite
    differences through a backend without autograd."""
    if static_only:
        return AuditResult(findings=static_hazards(program))
    if program.capabilities.autograd:
        return autograd_backend_audit(case, program, reference, settings, progress, localize, rewind,
                                      open_programs)
    return numeric_backend_audit(program, reference, settings, progress, localize)


def hazard_as_error(finding: Finding) -> Finding:
    """With ``fail_on_hazard``, a hazard fails the audit: the finding with severity error."""
    return dataclasses.replace(finding, severity=Severity.ERROR) if finding.kind == FaultKind.HAZARD else finding


def run_later(result: AuditResult, phase: str) -> list[Finding]:
    """Take ``phase`` out of the result's optional phases and run it now (its findings, or [] and a note)."""
    for index, (name, work) in enumerate(result.later):
        if name == phase:
            del result.later[index]
            return optional_phase(name, work, result.notes) or []
    return []


@user_code_boundary("gradaudit.compare")
def compare(target: Any, args: Any = (), kwargs: dict | None = None, *, backends: tuple[str, ...] | list[str] =
            ("eager", "xla"), order: int = 1, dtype: str | torch.dtype | None = None, seed: int = 0,
            probes: int = 3, localize: bool = True, progress: Callable[[str, int, int], None] | None = None,
            name: str | None = None, rtol: float = 0.0, atol: float = 0.0) -> Report:
    """Run the case on each backend (in ``dtype``, default: as given) and compare forward outputs and
    gradients (orders 1..order) with eager float64 on CPU, within each backend's precision.

    Backends without autograd (ONNX) are checked by finite differences against the reference's gradients.
    A kink where backends follow different conventions (relu6 exactly at 6) is a ``nondifferentiable_point``,
    not a divergence."""
    settings = checked_settings(order, "auto", probes, seed, rtol=rtol, atol=atol)
    if not backends:
        raise AuditError("compare needs at least one backend")
    case = as_case(target, args, kwargs, name)
    chosen = [usable_backend(b) for b in backends]
    started = time.perf_counter()
    announce("the checks")
    everything = AuditResult()
    stats, batching = Stats().counters(), []
    with same_rng_for_each_program() as rewind, ExitStack() as open_programs:
        reference = open_programs.enter_context(reference_backend().load(case, "cpu", torch.float64))
        refuse_random_ops(reference)
        precision = precision_notes(reference)
        for step, backend in enumerate(chosen):
            if progress:
                progress(f"comparing {backend.name}", step, len(chosen))
            rewind()
            result = compare_backend(backend, case, reference, settings, parse_dtype(dtype), localize,
                                     open_programs)
            everything += labelled(result, backend.name)
            for key in stats:
                stats[key] += result.stats.get(key, 0)
            batching.append(f"{backend.name}: {result.stats.get('batching', 'none')}")
        stats["batching"] = "; ".join(batching)
        stats["seconds"] = round(time.perf_counter() - started, 4)
        report = Report(target=case.label, backend=",".join(b.name for b in chosen), device="cpu (reference)",
                        dtype=str(parse_dtype(dtype) or "as given").replace("torch.", ""), seed=seed,
                        checks=everything.checks, findings=everything.findings, skipped=everything.notes,
                        stats=stats, version=__version__, precision=precision,
                        settings=settings.to_dict() | {"reference": "eager/cpu/float64", "localize": localize})
        publish_verdict(report)
        for phase, work in everything.later:  # (localizations edit the findings they place)
            rewind()
            optional_phase(phase, work, report.skipped)
        report.stats["seconds"] = round(time.perf_counter() - started, 4)
    return report


def labelled(result: AuditResult, backend: str) -> AuditResult:
    """One backend's part of a comparison, each check, finding, note and phase naming its backend."""
    for item in result.checks:
        item.backend = backend
    for finding in result.findings:
        finding.details["backend"] = backend
        finding.message = f"[{backend}] {finding.message}"
    return AuditResult(result.checks, result.findings,
                       [dict(note, what=f"{backend}: {note['what']}") for note in result.notes],
                       [(f"{name} ({backend})", work) for name, work in result.later], result.stats)


def autograd_backend_audit(case, program: Program, reference: Program | None, settings: Settings,
                           progress, localize: bool, rewind: Callable[[], None],
                           open_programs: ExitStack) -> AuditResult:
    """Checks of a backend with torch autograd (eager, XLA), with the optional phases to run once the verdict
    is out (``later``: work that returns findings to add). A backend that is not the eager reference itself
    (``capabilities.reference``) is also held against eager float64 on CPU: its forward (order-0 checks; how
    accurate its elementary functions are sets the checker's model error) and, for localization, its
    gradients node by node. Programs stay open in ``open_programs`` for the optional phases."""
    result, eager = AuditResult(), None
    if not program.capabilities.reference:
        rewind()
        eager = open_programs.enter_context(reference_backend().load(case, "cpu", torch.float64))
        share_precision(program, eager)  # (the notes and arithmetic of a backend the precision scan cannot see)
        result = forward_parity(program, eager)
        if any(check.mismatch for check in result.checks):  # another function than eager's: nothing to audit
            return result.noted("gradient checks", "the forward results differ in form (shape, dtype, number, "
                                "NaN) from eager float64's")
    audited = reference or program
    auditor = Auditor(audited, settings, progress, model_error=result.model_error,
                      arithmetic=path_dtype(program, eager) if eager is not None else None)
    result += audit_or_backend_error(auditor, eager, settings)
    result.findings += fallback_hazards(program)
    if reference is not None:
        result += gradient_parity(program, reference, settings)
    findings = result.findings
    if localize and any(f.severity == Severity.ERROR for f in findings):  # (a pass has nothing to localize)
        result.later.append(("localization",
                             lambda: localize_findings(audited, findings, settings.seed, eager) or []))
    result.later.append(("hazard scan", lambda: static_hazards(program)))
    return result


def audit_or_backend_error(auditor: Auditor, eager: Program | None, settings: Settings) -> AuditResult:
    """``auditor.run()``. On a backend other than eager, an exception that is neither the user's code raising
    nor the backend saying it lacks an op, and that eager float64 does not raise in the same audit, is the
    backend failing: a ``backend_error`` finding at the order under way, after the checks of the orders before
    it (torch-xla 2.9's eval-mode BatchNorm2d backward). Otherwise the exception stands: the audit could not
    run. Forward mode raising on the backend (torch-xla 2.9's var, std, dist, quantile) only turns forward mode
    off there, and is a ``backend_error`` finding where eager float64's forward mode ran."""
    try:
        result = AuditResult(*auditor.run())
    except Exception as exc:
        if eager is None or isinstance(exc, AuditError) or users_own_exception(exc):
            raise
        where = where_it_happened(exc)
        what = f"differentiation ({where})" if where else "differentiation"
        failure = backend_failure(auditor.program.device, what, exc)
        if isinstance(failure, Unsupported):
            raise failure from exc
        try:
            Auditor(eager, settings).run()
        except Exception:
            raise exc from None  # eager fails too: not the backend's doing
        return AuditResult(auditor.checks, auditor.findings + [backend_error_finding(auditor.order, failure)],
                           auditor.skipped)
    # Forward mode that raised on the backend was turned off there (the reverse-mode checks stand); where eager
    # float64's forward mode runs the same audit, that is the backend failing too.
    if auditor.forward_ad_failures and eager is not None:
        reference = Auditor(eager, settings)
        reference.run()
        if reference.forward_ad:
            result.findings = result.findings + [backend_error_finding(order, failure)
                                                 for order, failure in auditor.forward_ad_failures]
    return result


def localize_findings(program: Program, findings: list[Finding], seed: int, eager: Program | None = None) -> None:
    """Name the node, op, module and source line of each fault (the programs must still be open). On a
    backend other than eager, whose ops cannot be mapped to autograd nodes directly (XLA functionalizes), a
    fault only that backend has is the node where its gradients part from eager's; one it shares with eager
    is localized on eager."""
    from gradaudit.analyzers.divergence import first_backward_divergence
    from gradaudit.analyzers.localize import localize

    for finding in findings:
        if finding.kind not in FAULTS or finding.details.get("method") == "dtype_parity":
            continue  # (the float64 program has no dtype-only fault to find)
        if eager is None:
            localize(program, finding, seed)
            continue
        node = first_backward_divergence(program, eager, seed) if finding.kind == FaultKind.FAULTY_BACKWARD else None
        if node is None:
            localize(eager, finding, seed)
        else:
            finding.node, finding.op, finding.module, finding.source = node.node, node.op, node.module, node.source
            finding.details["localization"] = {"method": "gradients node by node against eager float64",
                                               "relative_gap": node.max_abs_err}
            finding.details.update(node.details)


def static_hazards(program: Program) -> list[Finding]:
    if not program.capabilities.autograd:
        return []
    from gradaudit.analyzers.hazards import static_findings

    return static_findings(program)



def fallback_hazards(program: Program) -> list[Finding]:
    """Ops a compiling backend (XLA) could not lower and ran on the CPU instead: slow, and a place where
    device and CPU semantics may differ."""
    if not program.capabilities.fallback_ops:  # (a program that cannot tell has no fallback_counts)
        return []
    return [Finding(FaultKind.HAZARD, f"{op} fell back to the CPU on {program.device}", op=op,
                    severity=Severity.WARNING,
                    details={"hazard": "cpu_fallback", "count": count})
            for op, count in program.fallback_counts.items()]
