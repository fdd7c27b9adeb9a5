"""Cross-backend audits: a program on another backend held against eager float64 on the CPU, with the same case,
parameters, inputs and probes. Forward and gradient parity come from ``core.parity``; where they part, the
op is found by ``analyzers.divergence``. Used by ``gradaudit.compare`` and by ``gradaudit.check`` on a backend
other than eager."""
from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from typing import Callable

import torch

from gradaudit.core.checks import Auditor, Settings, measure_noise
from gradaudit.core.differentiate import ForwardFunction, evaluate
from gradaudit.core.findings import backend_error_finding, kink_convention_finding
from gradaudit.core.followups import kink_elements
from gradaudit.core.kinds import FAULTS, FaultKind, Severity
from gradaudit.core.numerics import eps_of, model_error_of
from gradaudit.core.parity import (forward_checks, forward_divergences, grad_mode_form_checks, parity_checks,
                                   path_dtype)
from gradaudit.core.probe import Numerics, ProbeSpace
from gradaudit.errors import AuditError, BackendFailure, Unsupported, backend_failure
from gradaudit.pipeline import AuditResult, optional_phase
from gradaudit.backends.base import Program
from gradaudit.registry import reference_backend, usable_backend
from gradaudit.report import Check, Finding


def forward_parity(program: Program, eager: Program) -> AuditResult:
    """Forward outputs against eager float64 (order-0 checks), and the model error that sets for the
    checker: how accurate the backend's elementary functions are. Skipped when the case draws random numbers
    (seen in a traced forward of eager's: tracing on the backend can fail where the case runs, as
    torch-xla's matrix_power under a dispatch mode)."""
    from gradaudit.analyzers.divergence import random_op

    random = random_op(eager)
    if random:
        return AuditResult().noted("forward parity with eager float64",
                                   f"the case draws random numbers ({random}), and each backend draws its own")
    arithmetic = path_dtype(program, eager)
    checks, drift = forward_checks(program, eager, arithmetic=arithmetic)
    return AuditResult(checks, forward_divergences(checks, drift, arithmetic),
                       model_error=model_error_of(drift, eps_of(arithmetic)))


def numeric_backend_audit(program: Program, reference: Program, settings: Settings, progress,
                          localize: bool) -> AuditResult:
    """A backend without autograd (an exported graph): its forward against eager float64, then its finite
    differences against eager float64 gradients. A mismatch is the backend differentiating differently from
    PyTorch: a divergence, not a faulty backward of the user's code. Both programs must stay open for the
    result's optional phases (``later``)."""
    arithmetic = path_dtype(program, reference)
    checks, drift = forward_checks(program, reference, arithmetic=arithmetic)
    findings = forward_divergences(checks, drift, arithmetic)
    if any(check.mismatch for check in checks):
        return AuditResult(checks, findings).noted("gradient parity",
                                                   "the forward results differ in form from eager's")
    # An exported graph that approximates an elementary function differently (onnxruntime's tanh-GELU) has
    # derivatives off by more than its forward: the same model error as on an autograd backend.
    model_error = model_error_of(drift, eps_of(arithmetic))
    try:
        gradient_checks, gradient_findings, more = Auditor(reference, settings, progress, numeric=program,
                                                           model_error=model_error).run()
    except BackendFailure as failure:  # the exported graph failed at a shifted point
        return AuditResult(checks, findings + [backend_error_finding(1, failure)])
    # The reference's derivatives against the program's finite differences: a fault here is the program's.
    findings += [dataclasses.replace(f, kind=FaultKind.BACKWARD_DIVERGENCE, message=f"derivatives of "
                                     f"{program.display_name()} differ from PyTorch's gradients: {f.message}")
                 if f.kind in FAULTS else f for f in gradient_findings]
    result = AuditResult(checks + gradient_checks, findings, list(more))
    if localize and any(f.severity == Severity.ERROR for f in findings):
        from gradaudit.analyzers.divergence import locate_divergence

        result.later.append(("localization", lambda: locate_divergence(program, reference, findings)))
    return result


def parity_settings(program: Program, settings: Settings) -> Settings:
    """The settings of a backend's gradient parity: order 2 only where the backend declares a double backward.
    A compiled backward (AOTAutograd) is not differentiable: its second derivatives raise or come from no graph,
    so holding them against eager's would report the compiler's documented limit as a crash or a divergence."""
    if settings.order < 2 or program.capabilities.double_backward:
        return settings
    return dataclasses.replace(settings, order=1)


NO_DOUBLE_BACKWARD = ("order 2", "the backend has no double backward")  # (the note where parity stops at order 1)


def gradient_parity(program: Program, reference: Program, settings: Settings) -> AuditResult:
    """The program's gradients against the reference's at the orders the backend can differentiate, with a
    note where it cannot reach ``settings.order``."""
    parity = parity_settings(program, settings)
    result = AuditResult(*parity_checks(program, reference, parity))
    return result.noted(*NO_DOUBLE_BACKWARD) if parity.order < settings.order else result


def compare_program(program, reference, settings: Settings, localize: bool = True) -> AuditResult:
    """Forward parity, then gradient parity (autograd backends) or the finite-difference audit that
    ``gradaudit run`` gives a backend without autograd (exported graphs). The backend raising where eager
    float64 ran is a ``backend_error`` finding; results of another form (shape, dtype, number) stop the
    comparison after the forward, since gradients of different functions cannot be compared."""
    result = AuditResult()
    try:
        if not program.capabilities.autograd:
            return numeric_backend_audit(program, reference, settings, None, localize)
        parity = parity_settings(program, settings)
        if parity.order < settings.order:
            result.noted(*NO_DOUBLE_BACKWARD)
        arithmetic = path_dtype(program, reference)
        checks, drift = forward_checks(program, reference, arithmetic=arithmetic)
        if not any(check.mismatch for check in checks):
            checks += grad_mode_form_checks(program, reference)
    except BackendFailure as failure:
        return result + AuditResult(findings=[backend_error_finding(0, failure)])
    findings = forward_divergences(checks, drift, arithmetic)
    if any(check.mismatch for check in checks):
        result.noted("gradient parity", "the forward results differ in form from eager's")
    else:
        gradient_checks, gradient_findings = parity_checks(program, reference, parity, method="backend_parity")
        checks += gradient_checks
        findings += [explain_kinks(f, reference, parity) for f in gradient_findings]
    result.checks, result.findings = checks, findings
    if localize and any(f.severity == Severity.ERROR and f.kind != FaultKind.BACKEND_ERROR for f in findings):
        result.later.append(("localization", lambda: localize_divergences(program, reference, findings,
                                                                          settings.seed)))
    return result


def compare_backend(backend, case, reference: Program, settings: Settings, dtype: torch.dtype | None,
                    localize: bool, open_programs: ExitStack) -> AuditResult:
    """One backend of a comparison, with the program's stats (the program stays open in ``open_programs`` for
    the result's optional phases). Loading that fails where eager float64 loaded (an export onnxruntime
    cannot run, a transfer XLA refuses) is a ``backend_error`` finding; what the backend says it cannot do
    (``Unsupported``) stops the comparison with its reason."""
    try:
        program = on_backend_load(backend, case, dtype)
    except BackendFailure as failure:
        return AuditResult(findings=[backend_error_finding(0, failure)])
    open_programs.enter_context(program)
    # (the notes of loading first: what it changed, a graph run in float32 for want of kernels)
    result = AuditResult(notes=list(program.notes)) + compare_program(program, reference, settings, localize)
    if program.dtype != torch.float64 and divergences_to_explain(result.findings):
        optional_phase("same-precision triage", lambda: excuse_precision(
            program, reference, settings, result.findings, lambda: reference_backend().load(
                case, "cpu", program.dtype)), result.notes)
        excuse_checks(result.checks, result.findings)
    result.stats = program.stats.to_dict()
    return result


def divergences_to_explain(findings: list[Finding]) -> list[Finding]:
    """Error divergences of values (not of form) that the program's lower precision might explain."""
    return [f for f in findings if f.severity == Severity.ERROR and not f.details.get("mismatch")
            and f.kind in (FaultKind.FORWARD_DIVERGENCE, FaultKind.BACKWARD_DIVERGENCE)]


def excuse_precision(program: Program, reference: Program, settings: Settings, findings: list[Finding],
                     load_eager: Callable[[], Program]) -> None:
    """A float32 program that parts from eager float64 the way eager itself does in float32 (a product that
    underflows, a loss that rounds to 0, finite differences in float32 stepping over a staircase) shows its
    precision, not the backend: those divergences become warnings (``details.precision`` says why)."""
    with load_eager() as eager:
        if program.capabilities.autograd:
            same = forward_checks(program, eager)[0] + parity_checks(program, eager, settings, "backend_parity")[0]
            explained = {order for order in (0, 1, 2) if all(c.ok for c in same if c.order == order)}
        else:  # finite differences of eager in the same precision: do they fail the same way?
            explained = {0} if all(c.ok for c in forward_checks(program, eager)[0]) else set()
            model_error = model_error_of(forward_checks(eager, reference)[1], eps_of(eager.dtype))
            eager_findings = Auditor(reference, settings, None, numeric=eager, model_error=model_error).run()[1]
            explained |= {f.order for f in eager_findings if f.kind in FAULTS and f.severity == Severity.ERROR}
    dtype = str(program.dtype).replace("torch.", "")
    for finding in divergences_to_explain(findings):
        if finding.order in explained:
            finding.severity = Severity.WARNING
            finding.details["precision"] = f"eager {dtype} parts from eager float64 the same way"
            finding.message = (f"{dtype} precision, not the backend (eager {dtype} parts from float64 the same "
                               f"way): " + finding.message)


def excuse_checks(checks: list[Check], findings: list[Finding]) -> None:
    """The failing checks of each order whose divergence the precision explains pass as ``precision_loss``."""
    excused = {f.order for f in findings if f.details.get("precision")}
    for check in checks:
        if check.order in excused and not check.ok:
            check.ok, check.status = True, "precision_loss"


def on_backend_load(backend, case, dtype: torch.dtype | None) -> Program:
    """``backend.load(case)`` with anything but an AuditError (a refusal naming what is wrong) counted as the
    backend failing, or lacking the op (``errors.backend_failure``): the same case has loaded on eager already."""
    try:
        return backend.load(case, None, dtype)
    except AuditError:
        raise
    except Exception as exc:
        raise backend_failure(backend.default_device(), f"loading the case on {backend.name}", exc) from exc


def localize_divergences(program: Program, reference: Program, findings: list[Finding], seed: int) -> None:
    """Forward: the first op whose output diverges while its inputs agree. Backward (order 1): the node whose
    incoming gradient agrees across backends but whose outgoing gradient does not. Best effort, like every
    localization: a failure is noted in the finding."""
    from gradaudit.analyzers.divergence import first_backward_divergence, first_diverging_op

    for finding in findings:
        if finding.kind == FaultKind.FORWARD_DIVERGENCE:
            search = lambda: first_diverging_op(program, reference)  # noqa: E731
        elif finding.kind == FaultKind.BACKWARD_DIVERGENCE and finding.order == 1:
            search = lambda: first_backward_divergence(program, reference, seed)  # noqa: E731
        else:
            continue
        try:
            place = search()
        except Exception as exc:
            finding.details["localization"] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        if place is not None:
            finding.node, finding.op, finding.module, finding.source = place.node, place.op, place.module, place.source
            finding.details.update(place.details)


def explain_kinks(finding: Finding, reference, settings: Settings) -> Finding:
    """Backends may pick different one-sided derivatives at a kink (relu6 exactly at 6): that is a
    convention, not a bug, when the worst element sits on a kink of the float64 reference."""
    if finding.order != 1 or finding.details.get("worst_index") is None:
        return finding
    names = [leaf.name for leaf in reference.leaves]
    if finding.wrt not in names:
        return finding
    kinks, index = reference_kinks(reference, finding.wrt, settings, finding.details["worst_index"][0])
    if index not in kinks:
        return finding
    return kink_convention_finding(finding.wrt, index, kinks, finding.details.get("analytical"),
                                   finding.details.get("numerical"))


def reference_kinks(reference, wrt: str, settings: Settings, flat_index: int = 0) -> tuple[list, list[int]]:
    """The elements of leaf ``wrt`` where the reference is not differentiable (up to the kink scan's limit), and
    the multi-index of its flat element ``flat_index``."""
    names = [leaf.name for leaf in reference.leaves]
    space = ProbeSpace.seeded([leaf.value for leaf in reference.leaves], names, reference.dtype, settings.seed,
                              frozen=[leaf.frozen for leaf in reference.leaves])
    f = ForwardFunction(reference)
    values = lambda points: [evaluate(f, z) for z in points]  # noqa: E731
    # The measured rounding noise, as the audit's own kink test has: <v, f> under random signs can cancel far
    # below its terms (100x on op_db's avg_pool3d sample), and eps times that sum alone calls rounding a kink.
    numerics = Numerics(values, space, measure_noise(values, space, f, settings.seed, space.eps))
    cotangent = space.random_like(evaluate(f, space.x))
    leaf = names.index(wrt)
    kinks = kink_elements(numerics, leaf, cotangent, settings.kink_scan_limit)["elements"] or []
    return kinks, space.element_index(leaf, flat_index)


def refuse_random_ops(reference) -> None:
    """Each backend has its own random generator: dropout masks differ, so outputs cannot be compared."""
    from gradaudit.analyzers.divergence import random_op

    op = random_op(reference)
    if op is not None:
        raise Unsupported(f"the case draws random numbers ({op}) and every backend draws its own; "
                         "compare it in eval mode")
