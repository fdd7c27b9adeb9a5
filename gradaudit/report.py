"""What an audit found: checks, findings and the report, with their JSON forms (renderers: gradaudit.renderers)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from gradaudit.core.kinds import CheckStatus, FindingKind, Method, Note, Severity, as_member

FINDING_KINDS = tuple(kind.value for kind in FindingKind)


@dataclass
class Check:
    """One comparison: at an order, with respect to one leaf (or ``total``: all of them), by one method.

    method: ``reverse`` (VJP vs numerical), ``forward`` (forward-mode JVP vs numerical), ``full_jacobian``,
    or ``dtype_parity`` (gradients in the audited dtype vs a float64 shadow computation).
    """

    order: int
    wrt: str
    method: Method | str
    ok: bool
    status: CheckStatus | str = CheckStatus.PASS
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
    mismatch: str | None = None  # in cross-backend reports: how the results differ in form (shape, dtype, NaN)
    # The smallest relative error this check could have seen: its error bar over the scale of the compared
    # quantity (None where not measured). A pass only says the gradient is right to about this much.
    resolution: float | None = None
    # Which bound judged the check: "error_bar" (the numerical side's error bar) or "user_tolerance" (--rtol/--atol:
    # a test passed only within it, or failed it although it was the looser); None where not recorded.
    bound: str | None = None
    user_tolerance: float | None = None  # the bound --rtol/--atol gave at the worst test (absolute)
    user_rel_err: float | None = None  # the largest error over the size rtol multiplies (see probe.UserTolerance)

    def __post_init__(self) -> None:
        # Enums whatever was passed (they are str enums: JSON and string comparisons see the same values).
        self.method, self.status = as_member(Method, self.method), as_member(CheckStatus, self.status)

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Check":
        """The check of a :meth:`to_dict`; missing keys take defaults (``?`` for what it is about)."""
        return _from_dict(cls, {"order": 0, "wrt": "?", "method": "?", "ok": False, "status": "fail"}, data)


@dataclass
class Finding:
    """One problem found: its kind (``FindingKind``), where (order, wrt, node, op, module, source), how bad, and
    whether it fails the audit (``severity``)."""

    kind: FindingKind | str
    message: str
    order: int | None = None
    wrt: str | None = None
    node: str | None = None
    op: str | None = None
    module: str | None = None
    source: str | None = None
    max_abs_err: float | None = None
    severity: Severity | str = Severity.ERROR  # error: fails the audit; warning: reported, does not fail it
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind, self.severity = as_member(FindingKind, self.kind), as_member(Severity, self.severity)

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        """The finding of a :meth:`to_dict`; missing keys take defaults."""
        finding = _from_dict(cls, {"kind": "?", "message": ""}, data)
        finding.details = dict(finding.details or {})
        return finding


@dataclass
class Report:
    target: str
    backend: str
    device: str
    dtype: str
    seed: int
    checks: list[Check] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Note] = field(default_factory=list)  # what the audit left out (e.g. forward-mode AD), and why
    stats: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    version: str = ""
    # Where the computation runs below the audited precision (a float32 island in a float64 model, a float32
    # loss): one note per drop, e.g. {"dtype": "float32", "at": "input_layernorm", "op": "aten._to_copy"}.
    precision: list[dict] = field(default_factory=list)

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
            "precision": [_jsonable(note) for note in self.precision],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """The report of a :meth:`to_dict` (a stored JSON report, a suite record's). Tolerant, for reading old or
        hand-written files: missing keys take defaults, unknown keys are ignored; ``ok`` is recomputed."""
        return cls(target=str(data.get("target", "?")), backend=str(data.get("backend", "?")),
                   device=str(data.get("device", "?")), dtype=str(data.get("dtype", "?")), seed=data.get("seed", "?"),
                   checks=[Check.from_dict(c) for c in data.get("checks") or []],
                   findings=[Finding.from_dict(f) for f in data.get("findings") or []],
                   skipped=list(data.get("skipped") or []), stats=dict(data.get("stats") or {}),
                   settings=dict(data.get("settings") or {}), version=str(data.get("gradaudit", "")),
                   precision=list(data.get("precision") or []))

    def text(self, verbose: bool = False, quiet: bool = False, max_checks: int | None = 12) -> str:
        """The plain-text report (:func:`gradaudit.renderers.text.render_text`)."""
        from gradaudit.renderers.text import render_text  # (the renderer reads a report; it never imports one)

        return render_text(self, verbose=verbose, quiet=quiet, max_checks=max_checks)

    def __str__(self) -> str:
        return self.text()


def _from_dict(cls: type, required: dict[str, Any], data: dict[str, Any]) -> Any:
    """``cls(**data)`` keeping only its fields, with ``required`` filling the fields it has no default for."""
    names = {f.name for f in fields(cls)}
    return cls(**(required | {k: v for k, v in data.items() if k in names and v is not None}))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):  # (the plain string of the JSON contract, not the enum)
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
