"""The names a report uses, as enums: what kind of problem a finding is, how a check ended, how serious a finding
is. They are ``str`` enums, so a report compares and serializes them as the plain strings of the JSON contract."""

from enum import Enum
from typing import Any, NotRequired, TypedDict


class _Name(str, Enum):
    """A str enum that prints as its value (``enum.StrEnum`` needs Python 3.11)."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class FindingKind(_Name):
    """``Finding.kind``: what was found (``gradaudit.FindingKind``)."""

    FAULTY_BACKWARD = "faulty_backward"
    FAULTY_DOUBLE_BACKWARD = "faulty_double_backward"
    FAULTY_FORWARD_AD = "faulty_forward_ad"
    NONDIFFERENTIABLE_POINT = "nondifferentiable_point"
    NONDETERMINISTIC_BACKWARD = "nondeterministic_backward"
    # A backward that changes what it saved (its inputs, leaves included): a second pass of the same graph gives
    # other gradients (gradcheck's "Backward is not reentrant").
    NONREENTRANT_BACKWARD = "nonreentrant_backward"
    FORWARD_DIVERGENCE = "forward_divergence"
    BACKWARD_DIVERGENCE = "backward_divergence"
    BACKEND_ERROR = "backend_error"  # between backends: one raised where eager float64 ran
    HAZARD = "hazard"


FaultKind = FindingKind  # (the name the core and the analyzers import)

# The kinds that say a derivative is wrong (localization looks for their op).
FAULTS = (FindingKind.FAULTY_BACKWARD, FindingKind.FAULTY_DOUBLE_BACKWARD, FindingKind.FAULTY_FORWARD_AD)


class CheckStatus(_Name):
    """``Check.status``: how one comparison ended."""

    PASS = "pass"
    FAIL = "fail"
    NONDIFFERENTIABLE_POINT = "nondifferentiable_point"


class Severity(_Name):
    """``Finding.severity``: an error fails the audit, a warning is reported only."""

    ERROR = "error"
    WARNING = "warning"


class Method(_Name):
    """``Check.method``: how the analytical side was compared."""

    REVERSE = "reverse"
    FORWARD = "forward"
    FULL_JACOBIAN = "full_jacobian"
    DTYPE_PARITY = "dtype_parity"


def as_member(enum: type[_Name], value: Any) -> Any:
    """``value`` as a member of ``enum`` where it names one; otherwise unchanged (a report read back from a file
    may carry a kind this version does not know: it stays a plain string)."""
    try:
        return enum(value)
    except ValueError:
        return value


def fault_kind(order: int, method: str) -> FindingKind:
    """The kind of a failed check: forward mode, or reverse mode at order 1 or 2."""
    if method == Method.FORWARD:
        return FaultKind.FAULTY_FORWARD_AD
    return FaultKind.FAULTY_BACKWARD if order == 1 else FaultKind.FAULTY_DOUBLE_BACKWARD


class Note(TypedDict):
    """What an audit left out or changed, and why: an entry of ``Report.skipped`` and ``Program.notes``
    (``gradaudit.Note``). A TypedDict, so a note is the JSON report's object itself: ``Report.from_dict`` and
    readers of the contract see the same keys. Built as ``Note(what=..., reason=...)``. (This module has no
    ``from __future__ import annotations``: TypedDict reads ``NotRequired`` only from evaluated annotations.)"""

    what: str  # the oracle, tensor, output, phase or setting concerned ("forward-mode AD (order 1)")
    reason: str
    note: NotRequired[bool]  # True: how the audit ran (a compile count), not something it left out
    dtype: NotRequired[str]  # on a shadow note: the shadow's dtype
