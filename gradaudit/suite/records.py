"""Suite records: one per (case, backend, order), the one place they are built, and their JSON form.

``SuiteRecord.to_dict()`` is the record of the suite's JSON (``zoo``, ``case``, ``backend``, ``order``, ``seed``,
``dtype``, ``module``, ``status``, ``reason``, ``report``, ``seconds``; ``torch_known`` for cases of PyTorch's own
databases, ``resumed`` for records taken from a results directory and ``compare`` for records of a cross-backend
suite, only where they apply).
``SuiteRecord.from_dict()`` reads it back, tolerantly (old or hand-written files: a missing or unknown status is an
error, a missing order is 1)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from gradaudit.registry import REFERENCE


class SuiteStatus(str, Enum):
    """How one (case, backend, order) ended; compares equal to, and serializes as, its plain string."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


STATUSES = tuple(status.value for status in SuiteStatus)


@dataclass
class SuiteRecord:
    """What one (case, backend, order) of a suite gave: its status, a one-line reason where it did not pass,
    the audit's report (``Report.to_dict()``, None where no audit ran) and the seconds it took."""

    case: str
    backend: str
    order: int
    status: SuiteStatus
    reason: str | None = None
    report: dict | None = None
    seconds: float = 0.0
    zoo: str | None = None
    seed: int = 0
    dtype: str | None = None
    module: str | None = None
    torch_known: list[str] | None = None
    resumed: bool = False
    compare: bool = False  # compared against eager float64 (``gradaudit suite --compare``), not checked alone

    @classmethod
    def of_job(cls, job: dict, order: int, status: SuiteStatus | str, reason: str | None,
               report: dict | None = None, seconds: float = 0.0, module: str | None = None) -> "SuiteRecord":
        """The record of one order of a suite job (``{"zoo", "case", "backend", "seed", "dtype", ...}``)."""
        return cls(case=job.get("case"), backend=job.get("backend", REFERENCE), order=order,
                   status=SuiteStatus(status), reason=reason, report=report, seconds=seconds, zoo=job.get("zoo"),
                   seed=int(job.get("seed", 0) or 0), dtype=job.get("dtype"), module=module,
                   compare=bool(job.get("compare")))

    @property
    def cell(self) -> tuple[str, str, int]:
        """(case, backend, order): where the record goes in a suite's matrix."""
        return self.case, self.backend, self.order

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``torch_known``, ``resumed`` and ``compare`` only where they apply)."""
        data = {"zoo": self.zoo, "case": self.case, "backend": self.backend, "order": self.order,
                "seed": self.seed, "dtype": self.dtype, "module": self.module, "status": self.status.value,
                "reason": self.reason, "report": self.report, "seconds": self.seconds}
        if self.torch_known is not None:
            data["torch_known"] = self.torch_known
        if self.resumed:
            data["resumed"] = True
        if self.compare:
            data["compare"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SuiteRecord":
        """The record of a :meth:`to_dict` (or of an older or hand-written one; see the module's docstring)."""
        try:
            status = SuiteStatus(data.get("status"))
        except ValueError:
            status = SuiteStatus.ERROR
        return cls(case=str(data.get("case", "?")), backend=str(data.get("backend") or "?"),
                   order=_int(data.get("order"), 1), status=status, reason=data.get("reason"),
                   report=data.get("report") or None, seconds=_seconds(data.get("seconds")), zoo=data.get("zoo"),
                   seed=_int(data.get("seed"), 0), dtype=data.get("dtype"), module=data.get("module"),
                   torch_known=data.get("torch_known"), resumed=bool(data.get("resumed")),
                   compare=bool(data.get("compare")))


def _int(value: Any, default: int) -> int:
    try:
        return int(value or default)
    except (TypeError, ValueError):
        return default


def _seconds(value: Any) -> float:
    """Seconds as a finite, non-negative float (0.0 for anything else)."""
    try:
        seconds = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds >= 0 else 0.0


def as_record(record: "SuiteRecord | dict") -> SuiteRecord:
    """A SuiteRecord, whether given one or its dict."""
    return record if isinstance(record, SuiteRecord) else SuiteRecord.from_dict(record)
