"""From probe outcomes to the report's records: a ``Check`` per (order, group, method), a ``Finding`` per problem.
Every finding the checker makes is built here, so its wording and details have one source."""
from __future__ import annotations

import dataclasses
import math

from gradaudit.core.kinds import CheckStatus, FaultKind, Method, Severity, fault_kind
from gradaudit.core.probe import Outcome
from gradaudit.report import Check, Finding

METHOD_WORDS = {Method.REVERSE: "reverse-mode gradient", Method.FORWARD: "forward-mode derivative (JVP)",
                Method.FULL_JACOBIAN: "Jacobian"}
OTHERS_SHOWN = 6  # leaves named besides the worst one in a fault's message


def to_check(order: int, wrt: str, method: str, outcome: Outcome, status: CheckStatus, detail: dict,
             dtype: str) -> Check:
    """The check of one outcome; a failure's worst element (when the follow-up found one) replaces the probe's
    scalars, which say less."""
    check = Check(order=order, wrt=wrt, method=method, ok=status != CheckStatus.FAIL, status=status,
                  max_abs_err=outcome.abs_err, max_rel_err=outcome.rel_err, tolerance=outcome.tolerance,
                  analytical=outcome.analytical, numerical=outcome.numerical, probes=outcome.tests,
                  dtype=dtype, output=outcome.output,
                  resolution=outcome.resolution if math.isfinite(outcome.resolution) else None)
    check.bound = outcome.bound
    if outcome.user_bound is not None:
        check.user_tolerance = outcome.user_bound
        check.user_rel_err = outcome.user_rel_err
    if status == CheckStatus.FAIL and detail.get("worst_index") is not None:
        check.worst_index = detail["worst_index"]
        if method == Method.REVERSE:
            check.analytical, check.numerical = detail["analytical"], detail["numerical"]
            check.max_abs_err = abs(detail["analytical"] - detail["numerical"])
            check.max_rel_err = check.max_abs_err / max(abs(detail["numerical"]), 1e-300)
            check.tolerance = detail["element_tolerance"]
    if status == CheckStatus.NONDIFFERENTIABLE_POINT:
        check.kink_elements = detail["kink_elements"]
    return check


def order_findings(checks: list[Check], order: int) -> list[Finding]:
    """One finding per (order, method) that failed, naming the most specific failing leaves, and one for kinks."""
    mine = [c for c in checks if c.order == order]
    findings = []
    for method in dict.fromkeys(c.method for c in mine):
        failing = [c for c in mine if c.method == method and c.status == CheckStatus.FAIL]
        if failing:
            findings.append(fault_finding(order, method, failing))
    kinks = [c for c in mine if c.status == CheckStatus.NONDIFFERENTIABLE_POINT and c.method == Method.REVERSE]
    if kinks:
        findings.append(kink_finding(order, kinks))
    return findings


def fault_finding(order: int, method: str, failing: list[Check], kind: FaultKind | None = None,
                  lead: str = "") -> Finding:
    """A wrong derivative: the worst failing leaf (``total`` only when no single leaf fails), the others named,
    and checks whose results differ in form (shape, NaN) from the reference's listed. ``kind`` (default: the
    fault of this order and method) and ``lead`` (words before the message) are for findings about a backend
    or a precision rather than the case's own derivative."""
    partial = [c for c in failing if c.wrt != "total"] or failing
    worst = max(partial, key=lambda c: c.max_abs_err / max(c.tolerance, 1e-300))
    what = METHOD_WORDS.get(method, method)
    where = f" at element {worst.worst_index}" if worst.worst_index is not None else ""
    if worst.output:
        where += f" (output {worst.output})"
    others = [c.wrt for c in partial if c is not worst]
    if len(others) > OTHERS_SHOWN:
        others = others[:OTHERS_SHOWN] + [f"{len(others) - OTHERS_SHOWN} more"]
    accepted = "" if worst.user_tolerance is None else f", --rtol/--atol allow {worst.user_tolerance:.3g}"
    scaled = "" if worst.user_rel_err is None else f" ({worst.user_rel_err:.3g} on --rtol's scale)"
    if all(v is not None and math.isfinite(v) for v in (worst.analytical, worst.numerical)):
        # (relative to a numerical 0 there is no relative error to print: 1e300 said nothing)
        relative = "" if worst.numerical == 0 else f", relative error {worst.max_rel_err:.3g}"
        message = (f"order-{order} {what} wrt {worst.wrt} is wrong{where}: analytical {worst.analytical:.6g} vs "
                   f"numerical {worst.numerical:.6g} (|err| {worst.max_abs_err:.3g}{relative}{scaled}, "
                   f"error bar {worst.tolerance:.3g}{accepted})")
    else:
        message = f"order-{order} {what} wrt {worst.wrt} is wrong: " + nonfinite_words(order, method, worst, where)
    if others:
        message += f"; also wrong wrt {', '.join(others)}"
    mismatches = [f"{c.wrt}: {c.mismatch}" for c in failing if c.mismatch]
    if mismatches:
        message += " (" + "; ".join(mismatches[:3]) + ")"
    details = {"method": method, "wrt_all": [c.wrt for c in partial], "worst_index": worst.worst_index,
               "analytical": worst.analytical, "numerical": worst.numerical, "error_bar": worst.tolerance,
               "relative_error": worst.max_rel_err}
    return Finding(kind or fault_kind(order, method), lead + message, order=order, wrt=worst.wrt,
                   max_abs_err=worst.max_abs_err, details=details | ({"mismatch": mismatches} if mismatches else {}))


def nonfinite_words(order: int, method: str, check: Check, where: str) -> str:
    """A comparison with NaN or Inf on one side, said as such: which side, where, and the other side's value."""
    doer = {Method.FORWARD: "forward-mode AD"}.get(method, "the backward" if order == 1 else "the double backward")
    a, n = check.analytical, check.numerical
    if a is None or not math.isfinite(a):
        other = f"the numerical derivative is {number(n)}" if n is not None and math.isfinite(n) else (
            f"the numerical derivative is {number(n)} too (the function is not finite a step away)")
        return f"{doer} returns {number(a)}{where} where {other}"
    return (f"the numerical derivative is {number(n)}{where} (the function is not finite a step away) where "
            f"{doer} returns {a:.6g}")


def number(value: float | None) -> str:
    """A value as a message says it: NaN, +Inf, -Inf, or 6 significant digits."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def kink_finding(order: int, checks: list[Check]) -> Finding:
    """A check that fails only at x, which is not differentiable: a warning naming the kink's elements."""
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
    return Finding(FaultKind.NONDIFFERENTIABLE_POINT, order=order, wrt=wrts[0], severity=Severity.WARNING,
                   message=f"order-{order} check wrt {', '.join(wrts)} fails only at this point, which is not "
                           f"differentiable: {evidence} ({located}); gradients agree at nearby points",
                   details={"kink_elements": elements, "evidence": evidence})


def kink_convention_finding(wrt: str, index: list[int], kinks: list, analytical: float | None,
                            numerical: float | None) -> Finding:
    """Two backends that pick different one-sided derivatives on a kink of the reference: a convention."""
    return Finding(FaultKind.NONDIFFERENTIABLE_POINT, order=1, wrt=wrt, severity=Severity.WARNING,
                   message=f"{wrt} element {index} sits on a kink where backends follow different one-sided "
                           f"conventions ({analytical:.6g} vs {numerical:.6g}); not a backend bug",
                   details={"kink_elements": {wrt: kinks}, "convention": True})


def nondeterminism_finding(order: int, spread: float, scale: float, repeats: int) -> Finding:
    """Identical backward runs that disagree: a warning with the spread."""
    return Finding(FaultKind.NONDETERMINISTIC_BACKWARD, order=order, max_abs_err=spread, severity=Severity.WARNING,
                   message=f"order-{order} gradients differ between identical backward runs by up to "
                           f"{spread:.3g} ({spread / max(scale, 1e-300):.2g} of their largest value)",
                   details={"spread": spread, "repeats": repeats})


def nonreentrant_finding(order: int, mutated: list[str], nodes: list[str], spread: float | None,
                         error: str | None) -> Finding:
    """A backward that is not reentrant: it writes into the tensors it saved (the leaves ``mutated`` among them;
    ``nodes``: the autograd nodes that saved them), so a second backward pass of the same graph gives other
    gradients (``spread``, relative to their largest) or raises (``error``)."""
    saver = f" of {nodes[0]}" if nodes else ""
    wrote = f"writes into the tensors it saved for backward{saver}" + (
        f" (its inputs {', '.join(mutated)} changed during the backward pass)" if mutated else "")
    if error is not None:
        effect = f"a second backward pass of the same graph raises: {error}"
    else:
        effect = f"a second backward pass of the same graph gives gradients off by {spread:.3g} of their largest value"
    return Finding(FaultKind.NONREENTRANT_BACKWARD, order=order, wrt=mutated[0] if mutated else None,
                   node=nodes[0] if nodes else None, severity=Severity.ERROR,
                   message=f"the order-{order} backward is not reentrant: it {wrote}; {effect}. The other checks "
                           "judge its first pass, each on a fresh forward",
                   details={"mutated_inputs": mutated, "nodes": nodes, "relative_spread": spread,
                            "second_pass_error": error})


def graphless_backward(findings: list[Finding], graphless: list[str]) -> list[Finding]:
    """``findings`` of order 2, the double-backward fault's message saying why where the backward returned some
    gradients without a graph (they depend on grad_output, yet double backward sees constants)."""
    if not graphless:
        return findings
    gradients = ", ".join(name.removeprefix("grad[").removesuffix("]") for name in graphless)
    why = (f". The backward returns its gradient wrt {gradients} without a graph (computed under no_grad or from "
           "detached values): double backward takes it for a constant, although it depends on grad_output")
    return [dataclasses.replace(f, message=f.message + why, details=f.details | {"graphless_backward": list(graphless)})
            if f.kind == FaultKind.FAULTY_DOUBLE_BACKWARD else f for f in findings]


def backend_error_finding(order: int, failure) -> Finding:
    """A backend raised (``errors.BackendFailure``) where eager float64 ran the same case and order."""
    return Finding(FaultKind.BACKEND_ERROR, f"{failure.what} on {failure.device} raised where eager float64 runs "
                   f"(order {order}): {failure.cause}", order=order, severity=Severity.ERROR,
                   details={"phase": failure.what, "exception": failure.cause})
