"""The one place where whatever escapes the user's code becomes the contract's outcome (click-free: the core and
the backends import it; the exit codes and what the commands print live in ``gradaudit.cli.exits``).

Nothing the audited code does may turn into a pass or a problem found, so:

* :func:`user_code_boundary` wraps the API's entry points (``gradaudit.check``, ``gradaudit.compare``): any
  exception of the user's code, on any call, becomes one :class:`AuditError` naming the call (the original is
  chained as ``__cause__``); ``sys.exit`` and ``os._exit`` become :class:`TargetExit` (an ``AuditError``);
  ``KeyboardInterrupt`` passes through unchanged (the caller's Ctrl-C is the caller's).
* :func:`error_line`: the one line for whatever stopped an audit before its verdict (the command's exit 2).
* :func:`exits_raise`: while gradaudit runs the user's code, ``os._exit`` raises instead of ending the process.

The suite worker, the pytest plugin (through the API) and the CLI all go through these.
"""
from __future__ import annotations

import errno
import functools
import linecache
import os
import signal
import sys
import sysconfig
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, TypeVar

from gradaudit.errors import AuditError
from gradaudit.lines import first_line, one_line  # (re-exported: the boundary's callers cut messages too)
from gradaudit.paths import is_own_file

F = TypeVar("F", bound=Callable[..., Any])


class TargetExit(AuditError):
    """The audited code tried to end the process (``sys.exit``, ``os._exit``): the audit could not run."""


class OsExitCalled(SystemExit):
    """What ``os._exit`` raises while gradaudit runs the user's code (a BaseException, so that the user's own
    ``except Exception`` cannot swallow it)."""


# ------------------------------------------------------------------------------------------ os._exit guard
_real_os_exit = os._exit
_guard = {"depth": 0, "pid": None}


def _raising_os_exit(status: int) -> NoReturn:
    if os.getpid() != _guard["pid"]:  # a process the user's code forked (multiprocessing): let it exit
        _real_os_exit(status)
    raise OsExitCalled(status)


@contextmanager
def exits_raise() -> Iterator[None]:
    """While inside, ``os._exit`` in this process raises :class:`OsExitCalled` instead of ending it: only
    gradaudit decides how an audit ends. Re-entrant; the real ``os._exit`` is back on leaving."""
    if _guard["depth"] == 0:
        _guard["pid"] = os.getpid()
        os._exit = _raising_os_exit
    _guard["depth"] += 1
    try:
        yield
    finally:
        _guard["depth"] -= 1
        if _guard["depth"] == 0:
            os._exit = _real_os_exit


# ------------------------------------------------------------------------------------------ describing
_LIBRARY_DIRS = tuple(str(Path(p).resolve()) + os.sep for p in {
    sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})

# The innermost of these on a traceback names what gradaudit was doing when the user's code failed.
PHASES = {
    "_import_target_module": "the import of the target",
    "load_target": "the target's factory",
    "jvp": "a forward-mode (JVP) evaluation",
    "vjps": "a reverse-mode (VJP) evaluation",
    "gradients": "a backward pass",
    "evaluate": "an evaluation",
    "directional_derivative": "a finite-difference evaluation",
    "check_nondeterminism": "the repeated-backward (non-determinism) check",
    "at_kink": "the kink follow-up",
    "worst_element": "the worst-element follow-up",
    "forward_checks": "the forward parity check",
    "parity_checks": "the float64 parity check",
    "load": "the loading of the case",
    "locate": "localization",
    "static_findings": "the hazard scan",
    "program_precision": "the precision scan",
}


def _frames(exc: BaseException) -> list:
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _is_users(file: str) -> bool:
    path = str(Path(file).resolve()) if not file.startswith("<") else file
    return not (file.startswith("<") or is_own_file(file) or path.startswith(_LIBRARY_DIRS))


def users_own_exception(exc: BaseException) -> bool:
    """Whether the user's code raised ``exc`` itself: its traceback starts at a ``raise`` or ``assert``
    statement in a file of the user's (rather than in an op the user's code called, which fails in C and
    leaves the user's line as the innermost frame too)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not _is_users(tb.tb_frame.f_code.co_filename):
        return False
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip().startswith(("raise", "assert"))


def where_it_happened(exc: BaseException) -> str:
    """``during <what gradaudit was doing>, at <file.py:line of the user's code>``, as far as the traceback
    tells; empty when it tells nothing."""
    frames = _frames(exc)
    phase = next((PHASES[f.f_code.co_name] for f in reversed(frames)
                  if f.f_code.co_name in PHASES and is_own_file(f.f_code.co_filename)), None)
    user = next((f for f in reversed(frames) if _is_users(f.f_code.co_filename)), None)
    parts = ([f"during {phase}"] if phase else []) + (
        [f"at {Path(user.f_code.co_filename).name}:{user.f_lineno}"] if user is not None else [])
    return ", ".join(parts)


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11: the name of the signal that ended a process (a crash of the user's code)."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def exit_call(exc: SystemExit) -> str:
    """``sys.exit(0)`` / ``os._exit(3)`` / ``sys.exit('message')``: how the target tried to end the process."""
    function = "os._exit" if isinstance(exc, OsExitCalled) else "sys.exit"
    return f"{function}({'' if exc.code is None else repr(exc.code)})"


def describe(exc: BaseException) -> str:
    """One line for anything that escaped an audit."""
    if isinstance(exc, AuditError):
        return first_line(exc) or type(exc).__name__
    where = where_it_happened(exc)
    suffix = f" ({where})" if where else ""
    if isinstance(exc, SystemExit):
        return f"the target called {exit_call(exc)}{suffix}; nothing was audited"
    text = first_line(exc)
    return f"{type(exc).__name__}{': ' + text if text else ''}{suffix}"


def raised_in_users_code(exc: BaseException) -> bool:
    return any(_is_users(frame.f_code.co_filename) for frame in _frames(exc))


def as_audit_error(exc: BaseException, entry: str) -> AuditError:
    """The AuditError the API raises for an exception that escaped ``entry`` (cause chained by the caller):
    the same for a failure on the first call of the case as on its hundredth."""
    if isinstance(exc, AuditError):
        return exc
    if isinstance(exc, SystemExit):
        return TargetExit(describe(exc))
    if raised_in_users_code(exc):
        return AuditError(f"the case raised {describe(exc)}")
    return AuditError(f"{entry} could not run: {describe(exc)}")


# ------------------------------------------------------------------------------------------ the API
def user_code_boundary(entry: str) -> Callable[[F], F]:
    """Decorate an API entry point: whatever the user's code raises on any call (``sys.exit`` and ``os._exit``
    included) comes out as an :class:`AuditError` naming ``entry`` and the call, with the original chained.
    ``KeyboardInterrupt`` passes through; so do other non-Exception escapes that belong to the caller's
    framework (pytest's skip/fail outcomes, GeneratorExit)."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with exits_raise():
                try:
                    return function(*args, **kwargs)
                except (AuditError, KeyboardInterrupt):
                    raise
                except (SystemExit, Exception) as exc:
                    raise as_audit_error(exc, entry) from exc
        return guarded  # type: ignore[return-value]
    return decorate


# ------------------------------------------------------------------------------------------ what stopped it
def error_line(exc: BaseException, show_traceback: bool = False) -> str:
    """The one line for what stopped an audit before its verdict (after ``gradaudit: error: ``). A
    ``KeyboardInterrupt`` here was raised by the target itself (a real Ctrl-C reaches the supervisor)."""
    if isinstance(exc, KeyboardInterrupt):
        return f"the target raised KeyboardInterrupt ({where_it_happened(exc) or 'no traceback'}); nothing was audited"
    if isinstance(exc, (AuditError, SystemExit)):
        return describe(exc)
    hint = "" if show_traceback else " (rerun with --traceback for details)"
    return f"the audit could not run: {describe(exc)}{hint}"


# ------------------------------------------------------------------------------------------ skipped orders
def orders_not_run(report: Any) -> list[tuple[int, str]]:
    """Requested orders of which not a single check ran (``--order 2`` on a backend without double backward),
    with the report's reason (and, in a cross-backend report, the backend): a partial audit, never a silent
    pass."""
    settings = getattr(report, "settings", {}) or {}
    if settings.get("static_only"):
        return []
    backends = sorted({check.backend for check in report.checks if check.backend}) or [None]
    missing = []
    for backend in backends:
        ran = {check.order for check in report.checks if check.backend == backend}
        for order in range(1, int(settings.get("order", 1)) + 1):
            if order in ran:
                continue
            what = f"order {order}" if backend is None else f"{backend}: order {order}"
            reason = next((s["reason"] for s in report.skipped if s.get("what") == what),
                          "no check of this order ran")
            missing.append((order, reason if backend is None else f"on {backend}: {reason}"))
    return missing
