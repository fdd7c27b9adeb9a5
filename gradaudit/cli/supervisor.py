"""The supervisor behind ``gradaudit run`` and ``compare``: the audit runs in a fresh worker process
(``gradaudit.cli.worker``, started by fork and exec; never a bare fork of this process), and this process, which
never imports torch, owns what must not depend on the audited code:

* **time limits**: everything up to the verdict within ``--timeout`` seconds, each optional phase after it
  within ``--phase-timeout`` (default: the larger of 120 s and twice the time to the verdict);
* **crashes**: a worker that dies (a segfault in the user's code, an abort) is one line naming the signal and
  the phase; after the verdict, it costs only the phase that was running;
* **signals**: Ctrl-C (130) and SIGTERM (143) stop the worker and everything it started (its own process
  group), write what is finished, and exit;
* **the verdict first**: once the checks are done, the verdict line is printed and the JSON report written
  (atomically), before any optional phase starts; the complete report replaces it at the end.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gradaudit.outcome import signal_name
from gradaudit.core.kinds import Note
from gradaudit.pipeline import note

DEFAULT_TIMEOUT = 3600.0
MIN_PHASE_TIMEOUT = 120.0
_GRACE = 2.0  # seconds a stopped worker gets to end by SIGTERM before SIGKILL


class Terminated(BaseException):
    """SIGTERM reached the supervisor: stop like Ctrl-C, exit 143."""


@dataclass
class Limits:
    """Seconds allowed up to the verdict (``audit``) and for each optional phase (``phase``; None: the larger
    of ``MIN_PHASE_TIMEOUT`` and twice the time to the verdict). 0 means no limit."""

    audit: float = DEFAULT_TIMEOUT
    phase: float | None = None

    def for_phase(self, seconds_to_verdict: float) -> float:
        return self.phase if self.phase is not None else max(MIN_PHASE_TIMEOUT, 2 * seconds_to_verdict)


@dataclass
class Outcome:
    """How a supervised audit ended. ``report`` (a Report) is the complete one, or the verdict's with a note
    on what was lost; None when no verdict was reached (``error`` says why, one line)."""

    report: Any = None
    error: str | None = None
    stopped_by: str | None = None  # "interrupted" (Ctrl-C) or "terminated" (SIGTERM)
    more: dict = field(default_factory=dict)  # what else the worker sent with the complete report
    verdict_seconds: float = 0.0
    notes: list[Note] = field(default_factory=list)


class Worker:
    """The worker process, its event pipe, and its output (stdout and stderr: the user's prints, logs,
    ``--traceback``), passed on to this process's stderr as it comes, so that stdout keeps only the report."""

    def __init__(self, request: dict) -> None:
        read_end, write_end = os.pipe()
        python = [sys.executable] + (["-P"] if sys.version_info >= (3, 11) else [])  # (-P: no cwd on sys.path)
        self.process = subprocess.Popen(
            python + ["-m", "gradaudit.cli.worker", str(write_end)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        self._events, self._output, self._buffer = read_end, self.process.stdout.fileno(), b""
        self.process.stdin.write(json.dumps(request).encode())
        self.process.stdin.close()

    def next_event(self, deadline: float | None) -> dict | None:
        """The next event; None when the worker has closed its pipe (it ended). Raises TimeoutError at
        ``deadline`` (a ``time.monotonic()`` value)."""
        while b"\n" not in self._buffer:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._events] + ([self._output] if self._output is not None else []),
                                        [], [], wait)
            if self._output in ready:
                self._pass_on_output()
            if self._events in ready:
                chunk = os.read(self._events, 1 << 20)
                if not chunk:
                    self.drain_output()
                    return None
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _pass_on_output(self) -> None:
        chunk = os.read(self._output, 1 << 16)
        if not chunk:
            self._output = None
            return
        try:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
        except (OSError, ValueError):  # our stderr is gone: the exit code still tells
            pass

    def drain_output(self) -> None:
        """Pass on what the worker wrote last (waiting at most a moment for more)."""
        while self._output is not None and select.select([self._output], [], [], 0.2)[0]:
            self._pass_on_output()

    def how_it_ended(self) -> str:
        """``crashed with signal 11 (SIGSEGV)`` or ``ended with exit code 3``."""
        try:
            code = self.process.wait(timeout=_GRACE)
        except subprocess.TimeoutExpired:
            self.stop()
            return "closed its pipe and did not end"
        if code < 0:
            return f"crashed: signal {-code} ({signal_name(-code)})"
        return f"ended with exit code {code}"

    def stop(self) -> None:
        """End the worker and every process it started (its process group): SIGTERM, then SIGKILL."""
        for number in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, number)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.process.wait(timeout=_GRACE)
                if number == signal.SIGTERM:
                    os.killpg(self.process.pid, signal.SIGKILL)  # anything of the group still alive
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        os.close(self._events)
        self.process.stdout.close()


def supervise(request: dict, limits: Limits, on_verdict: Callable[[Any], None],
              on_progress: Callable[[str, int, int], None] | None = None,
              on_phase: Callable[[str], None] | None = None) -> Outcome:
    """Run ``request`` (see ``gradaudit.cli.worker``) in a worker within ``limits``. ``on_verdict(report)``
    is called once the checks are done, before any optional phase; ``on_progress(what, done, total)`` and
    ``on_phase(name)`` as the worker reports them."""
    from gradaudit.report import Report

    outcome, started, phase = Outcome(), time.monotonic(), "the start of the worker"
    deadline = started + limits.audit if limits.audit else None
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    worker = Worker(request)
    try:
        while True:
            try:
                event = worker.next_event(deadline)
            except TimeoutError:
                _ran_over(outcome, phase, limits)
                break
            if event is None:
                _worker_died(outcome, phase, worker.how_it_ended())
                break
            kind = event["event"]
            if kind == "phase":
                phase = event["name"]
                if on_phase is not None:
                    on_phase(phase)
                if outcome.report is not None:  # an optional phase: its own clock
                    deadline = _phase_deadline(limits, outcome.verdict_seconds)
            elif kind == "progress" and on_progress is not None:
                on_progress(event["what"], event["done"], event["total"])
            elif kind == "verdict":
                outcome.report = Report.from_dict(event["report"])
                outcome.verdict_seconds = time.monotonic() - started
                on_verdict(outcome.report)
                deadline = _phase_deadline(limits, outcome.verdict_seconds)
            elif kind == "done":
                worker.drain_output()
                outcome.report, outcome.notes = Report.from_dict(event.pop("report")), []
                outcome.more = {key: value for key, value in event.items() if key != "event"}
                break
            elif kind == "error":
                worker.drain_output()
                outcome.error = event["message"]
                break
    except KeyboardInterrupt:
        outcome.stopped_by = "interrupted"
    except Terminated:
        outcome.stopped_by = "terminated"
    finally:
        worker.stop()
        signal.signal(signal.SIGTERM, previous)
    if outcome.report is not None:
        outcome.report.skipped += outcome.notes
        if outcome.stopped_by:
            outcome.report.skipped.append(note(phase, f"{outcome.stopped_by} during it"))
    return outcome


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _phase_deadline(limits: Limits, verdict_seconds: float) -> float | None:
    limit = limits.for_phase(verdict_seconds)
    return time.monotonic() + limit if limit else None


def _ran_over(outcome: Outcome, phase: str, limits: Limits) -> None:
    if outcome.report is None:
        outcome.error = (f"the audit ran over its time limit (--timeout {limits.audit:g} s) during {phase}; "
                         f"nothing was audited")
    else:
        limit = limits.for_phase(outcome.verdict_seconds)
        outcome.notes.append(note(phase, f"ran over its time limit ({limit:g} s, --phase-timeout)"))


def _worker_died(outcome: Outcome, phase: str, how: str) -> None:
    if outcome.report is None:
        outcome.error = f"the audit {how.replace(': signal', ' with signal')} during {phase}; nothing was audited"
    else:
        outcome.notes.append(note(phase, how))


__all__ = ["DEFAULT_TIMEOUT", "Limits", "Outcome", "supervise"]
