"""An audit in phases: the checks give the verdict; optional phases (localization, the hazard scan, graph export)
only add detail, and run after the verdict is out.

Every phase runs in this process: nothing is ever forked. A forked child of a process that has threads (torch's
own, inductor's compile workers, the user's thread pools) can deadlock on a lock some other thread held at the fork,
and did (a localization child on a futex for 19 minutes). Crash and time isolation belong to the command line
instead: ``gradaudit run`` and ``compare`` are a small supervisor that starts the audit in a fresh worker process
(``gradaudit.cli.worker``, spawned: fork and exec) and hears of its progress through a :class:`Listener`. The
supervisor owns signals and time limits; a crash or a hang in an optional phase costs that phase, never the
verdict, which the worker has already sent.

The Python API (``gradaudit.check`` on live objects) runs with the default listener, which does nothing: an
optional phase's exceptions are a note in ``report.skipped``; the user's ``sys.exit`` is still "the target exited".
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from gradaudit.outcome import TargetExit, describe
from gradaudit.core.kinds import Note


Phase = tuple[str, Callable[[], Any]]  # (name, work): an optional phase, run after the verdict


@dataclass
class AuditResult:
    """What auditing one program gave, in one value (no tuples, no out-lists): its checks and findings, the
    notes for ``report.skipped`` (what was left out and why), the optional phases still to run once the verdict
    is out, the program's counters, and the model error its forward parity measured (how accurate its
    elementary functions are: it widens the checker's error bars on that backend)."""

    checks: list = field(default_factory=list)
    findings: list = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    later: list[Phase] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    model_error: float = 0.0

    def __add__(self, other: "AuditResult") -> "AuditResult":
        """Both results, this one's first (counters and model error: the other's where it has them)."""
        return AuditResult(self.checks + other.checks, self.findings + other.findings, self.notes + other.notes,
                           self.later + other.later, other.stats or self.stats,
                           other.model_error or self.model_error)

    def noted(self, what: str, reason: str) -> "AuditResult":
        """This result with a note added (``{"what", "reason"}``)."""
        self.notes.append(Note(what=what, reason=reason))
        return self


class Listener:
    """Told of an audit's progress. The default hears nothing; the CLI's worker passes each event on to its
    supervisor, which starts a phase's clock at :meth:`phase` and writes the verdict at :meth:`verdict`."""

    def phase(self, name: str) -> None:
        """A phase starts (``checks``, ``localization``, ``hazard scan``...)."""

    def verdict(self, report: Any) -> None:
        """The checks are done: ``report`` holds the verdict, before any optional phase has added to it."""


_listener: ContextVar[Listener] = ContextVar("gradaudit_listener", default=Listener())


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Audits run inside tell ``listener`` of their phases and verdicts."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def announce(phase: str) -> None:
    """Tell the listener that ``phase`` starts."""
    _listener.get().phase(phase)


def publish_verdict(report: Any) -> None:
    """Tell the listener the verdict (the report before any optional phase)."""
    _listener.get().verdict(report)


def note(name: str, failure: str) -> Note:
    """The report's note for an optional phase that gave nothing (in ``report.skipped``)."""
    return Note(what=name, reason=f"{failure}; the verdict and the findings stand without it")


def optional_phase(name: str, work: Callable[[], Any], notes: list[Note]) -> Any:
    """``work()``, an optional phase: what it returns, or None and a note in ``notes`` when it raises. The
    user's code ending the process there is still the target exiting (the audit could not run); Ctrl-C stays
    Ctrl-C."""
    announce(name)
    try:
        return work()
    except SystemExit as exc:
        raise TargetExit(describe(exc)) from exc
    except Exception as exc:
        notes.append(note(name, f"failed: {describe(exc)}"))
        return None


__all__ = ["AuditResult", "Listener", "Phase", "announce", "listening", "note", "optional_phase", "publish_verdict"]
