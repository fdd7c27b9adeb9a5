"""Cross-backend audits: the same case, parameters, inputs and probes on several backends, each judged against
eager float64 on the CPU (``gradaudit.compare``, ``gradaudit compare``)."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from gradaudit import __version__
from gradaudit.api import numeric_backend_audit, parse_dtype, same_rng_for_each_program
from gradaudit.case import as_case
from gradaudit.core.checks import Settings
from gradaudit.core.differentiate import ForwardFunction, evaluate
from gradaudit.core.findings import kink_convention_finding
from gradaudit.core.followups import kink_elements
from gradaudit.core.probe import Numerics, ProbeSpace
from gradaudit.errors import AuditError
from gradaudit.isolation import annotate_isolated
from gradaudit.outcome import user_code_boundary
from gradaudit.core.parity import forward_checks, forward_divergences, parity_checks
from gradaudit.registry import usable_backend
from gradaudit.report import Finding, Report


@user_code_boundary("gradaudit.compare")
def compare(target: Any, args: Any = (), kwargs: dict | None = None, *, backends: tuple[str, ...] | list[str] =
            ("eager", "xla"), order: int = 1, dtype: str | torch.dtype | None = None, seed: int = 0,
            probes: int = 3, localize: bool = True, progress: Callable[[str, int, int], None] | None = None,
            name: str | None = None) -> Report:
    """Run the case on each backend (in ``dtype``, default: as given) and compare forward outputs and
    gradients (orders 1..order) with eager float64 on CPU, within each backend's precision.

    Backends without autograd (ONNX) are checked by finite differences against the reference's gradients.
    A kink where backends follow different conventions (relu6 exactly at 6) is a ``nondifferentiable_point``,
    not a divergence."""
    if order not in (1, 2):
        raise AuditError(f"order must be 1 or 2, got {order}")
    if not backends:
        raise AuditError("compare needs at least one backend")
    case = as_case(target, args, kwargs, name)
    chosen = [usable_backend(b) for b in backends]
    settings = Settings(order=order, seed=seed, probes=probes)
    started = time.perf_counter()
    checks, findings, skipped = [], [], []
    stats = {"forward_evals": 0, "backward_evals": 0, "compilations": 0}
    with same_rng_for_each_program() as rewind:
        with usable_backend("eager").load(case, "cpu", torch.float64) as reference:
            refuse_random_ops(reference)
            for step, backend in enumerate(chosen):
                if progress:
                    progress(f"comparing {backend.name}", step, len(chosen))
                rewind()
                with backend.load(case, None, parse_dtype(dtype)) as program:
                    backend_checks, backend_findings, notes = compare_program(program, reference, settings,
                                                                              localize)
                    for item in backend_checks:
                        item.backend = backend.name
                    for finding in backend_findings:
                        finding.details["backend"] = backend.name
                        finding.message = f"[{backend.name}] {finding.message}"
                    checks += backend_checks
                    findings += backend_findings
                    skipped += [dict(note, what=f"{backend.name}: {note['what']}") for note in notes]
                    for key, value in program.stats.to_dict().items():
                        stats[key] += value
    stats["seconds"] = round(time.perf_counter() - started, 4)
    return Report(target=case.label, backend=",".join(b.name for b in chosen), device="cpu (reference)",
                  dtype=str(parse_dtype(dtype) or "as given").replace("torch.", ""), seed=seed, checks=checks,
                  findings=findings, skipped=skipped, stats=stats,
                  settings=settings.to_dict() | {"reference": "eager/cpu/float64", "localize": localize},
                  version=__version__)


def compare_program(program, reference, settings: Settings,
                    localize: bool = True) -> tuple[list, list[Finding], list[dict]]:
    """Forward parity, then gradient parity (autograd backends) or the finite-difference audit that
    ``gradaudit run`` gives a backend without autograd (exported graphs)."""
    notes: list[dict] = []
    if not program.capabilities.autograd:
        checks, findings = numeric_backend_audit(program, reference, settings, None, notes, localize)
        return checks, findings, notes
    checks, drift = forward_checks(program, reference)
    findings = forward_divergences(checks, drift)
    gradient_checks, gradient_findings = parity_checks(program, reference, settings, method="backend_parity")
    findings += [explain_kinks(f, reference, settings) for f in gradient_findings]
    if localize and any(f.severity == "error" for f in findings):
        annotate_isolated("localization", findings, notes, [program, reference],
                          lambda: localize_divergences(program, reference, findings, settings.seed))
    return checks + gradient_checks, findings, notes


def localize_divergences(program, reference, findings: list[Finding], seed: int) -> None:
    """Forward: the first op whose output diverges while its inputs agree. Backward (order 1): the node whose
    incoming gradient agrees across backends but whose outgoing gradient does not."""
    from gradaudit.analyzers.divergence import first_backward_divergence, first_diverging_op

    for finding in findings:
        if finding.kind == "forward_divergence":
            try:
                op = first_diverging_op(program, reference)
            except Exception as exc:  # best effort, like every localization
                finding.details["localization"] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if op is not None:
                finding.node, finding.op, finding.module, finding.source = op.node, op.op, op.module, op.source
        elif finding.kind == "backward_divergence" and finding.order == 1:
            try:
                node = first_backward_divergence(program, reference, seed)
            except Exception as exc:
                finding.details["localization"] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            if node is not None:
                finding.node, finding.op, finding.module, finding.source = node.node, node.op, node.module, node.source


def explain_kinks(finding: Finding, reference, settings: Settings) -> Finding:
    """Backends may pick different one-sided derivatives at a kink (relu6 exactly at 6): that is a
    convention, not a bug, when the worst element sits on a kink of the float64 reference."""
    if finding.order != 1 or finding.details.get("worst_index") is None:
        return finding
    names = [leaf.name for leaf in reference.leaves]
    if finding.wrt not in names:
        return finding
    space = ProbeSpace.seeded([leaf.value for leaf in reference.leaves], names, reference.dtype, settings.seed)
    f = ForwardFunction(reference)
    numerics = Numerics(lambda points: [evaluate(f, z) for z in points], space)
    cotangent = space.random_like(evaluate(f, space.x))
    leaf = names.index(finding.wrt)
    kinks = kink_elements(numerics, leaf, cotangent, settings.kink_scan_limit)["elements"] or []
    index = space.element_index(leaf, finding.details["worst_index"][0])
    if index not in kinks:
        return finding
    return kink_convention_finding(finding.wrt, index, kinks, finding.details.get("analytical"),
                                   finding.details.get("numerical"))


def refuse_random_ops(reference) -> None:
    """Each backend has its own random generator: dropout masks differ, so outputs cannot be compared."""
    from gradaudit.analyzers.divergence import random_op

    op = random_op(reference)
    if op is not None:
        raise AuditError(f"the case draws random numbers ({op}) and every backend draws its own; "
                         "compare it in eval mode")
