"""What an audit found: checks, findings, the report and its text and JSON forms."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

FINDING_KINDS = (
    "faulty_backward", "faulty_double_backward", "faulty_forward_ad", "nondifferentiable_point",
    "nondeterministic_backward", "forward_divergence", "backward_divergence", "hazard",
)


@dataclass
class Check:
    """One comparison: at an order, with respect to one leaf (or ``total``: all of them), by one method.

    method: ``reverse`` (VJP vs numerical), ``forward`` (forward-mode JVP vs numerical), ``full_jacobian``,
    or ``dtype_parity`` (gradients in the audited dtype vs a float64 shadow computation).
    """

    order: int
    wrt: str
    method: str
    ok: bool
    status: str = "pass"  # pass | fail | nondifferentiable_point
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    tolerance: float = 0.0
    worst_index: list[int] | None = None
    analytical: float | None = None
    numerical: float | None = None
    probes: int = 0
    dtype: str = ""
    output: str | None = None  # worst output, where the method compares outputs elementwise
    kink_elements: list | None = None  # for nondifferentiable_point: elements found on the kink, per leaf
    backend: str | None = None  # in cross-backend reports: the backend this check is about

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


@dataclass
class Finding:
    kind: str
    message: str
    order: int | None = None
    wrt: str | None = None
    node: str | None = None
    op: str | None = None
    module: str | None = None
    source: str | None = None
    max_abs_err: float | None = None
    severity: str = "error"  # error: fails the audit; warning: reported, does not fail it
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


@dataclass
class Report:
    target: str
    backend: str
    device: str
    dtype: str
    seed: int
    checks: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # capabilities the case lacks (e.g. forward-mode AD)
    stats: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    version: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not any(f.severity == "error" for f in self.findings)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gradaudit": self.version, "target": self.target, "backend": self.backend, "device": self.device,
            "dtype": self.dtype, "seed": self.seed, "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
            "findings": [f.to_dict() for f in self.findings],
            "skipped": self.skipped,
            "stats": {k: _jsonable(v) for k, v in self.stats.items()},
            "settings": self.settings,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return render_text(self)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_text(report: Report) -> str:
    """The plain-text summary (also ``str(report)``): verdict, findings, failing checks, counts."""
    verdict = "PASS" if report.ok else "FAIL"
    lines = [f"gradaudit {verdict}: {report.target} on {report.backend}/{report.device} ({report.dtype}), "
             f"{len(report.checks)} checks, {len(report.failed_checks)} failed, seed {report.seed}"]
    for finding in report.findings:
        lines.append(f"  [{finding.severity}] {finding.kind}: {finding.message}")
        where = ", ".join(f"{k} {getattr(finding, k)}" for k in ("node", "module", "source")
                          if getattr(finding, k))
        if where:
            lines.append(f"      at {where}")
    shown = report.failed_checks[:12]
    for check in shown:
        index = "" if check.worst_index is None else f" at {check.worst_index}"
        lines.append(f"  failed: order {check.order} {check.method} wrt {check.wrt}{index}: analytical "
                     f"{fmt(check.analytical)} vs numerical {fmt(check.numerical)} "
                     f"(|err| {fmt(check.max_abs_err)} > tol {fmt(check.tolerance)})")
    if len(report.failed_checks) > len(shown):
        lines.append(f"  ... and {len(report.failed_checks) - len(shown)} more failed checks")
    for skip in report.skipped:
        lines.append(f"  skipped: {skip['what']}: {skip['reason']}")
    stats = report.stats
    if stats:
        lines.append(f"  {stats.get('seconds', 0):.2f}s, {stats.get('forward_evals', 0)} forward and "
                     f"{stats.get('backward_evals', 0)} backward evaluations")
    return "\n".join(lines)
