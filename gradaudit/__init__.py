"""gradaudit: are the gradients of your PyTorch code right, on every backend, and if not, which op is wrong?

The public names are imported on first use (``gradaudit.check``, ``from gradaudit import check``): they pull in
torch, which the command line's ``--help``, ``--version``, ``backends`` and configuration errors never need.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from gradaudit._version import __version__

# public name -> the module that defines it
_LAZY = {
    "AuditError": "gradaudit.errors",
    "FindingKind": "gradaudit.core.kinds",
    "CheckStatus": "gradaudit.core.kinds",
    "Severity": "gradaudit.core.kinds",
    "Method": "gradaudit.core.kinds",
    "Note": "gradaudit.core.kinds",
    "Case": "gradaudit.case",
    "load_target": "gradaudit.case",
    "Check": "gradaudit.report",
    "Finding": "gradaudit.report",
    "Report": "gradaudit.report",
    "check": "gradaudit.api",
    "compare": "gradaudit.api",
    "assert_gradients": "gradaudit.testing",
}

__all__ = ["AuditError", "Case", "assert_gradients", "Check", "CheckStatus", "Finding", "FindingKind", "Method",
           "Note", "Report", "Severity", "check", "compare", "load_target", "__version__"]

if TYPE_CHECKING:  # type checkers and IDEs see the names as ordinary imports
    from gradaudit.api import check, compare
    from gradaudit.case import Case, load_target
    from gradaudit.core.kinds import CheckStatus, FindingKind, Method, Note, Severity
    from gradaudit.errors import AuditError
    from gradaudit.report import Check, Finding, Report
    from gradaudit.testing import assert_gradients


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it in the module, so later lookups are plain attributes."""
    if name not in _LAZY:
        raise AttributeError(f"module 'gradaudit' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
