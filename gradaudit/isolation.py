"""Crash isolation of optional phases: localization, the hazard scan, graph export.

Once the checks have a verdict, a crash in what only adds detail must not lose it (torch has segfaulted under a
``TorchDispatchMode`` with forward-AD dual tensors, which forward-mode localization uses). On POSIX, an optional
phase on an eager CPU program runs in a child forked from the audit: the child inherits the loaded programs (no
process start, no pickling of the case), sends its result back through a pipe and ends. A crash there (signal 11,
an abort) is a note; the parent's findings and exit code stand. Costs one ``fork`` per phase (tens of
milliseconds; ``benchmarks/fault_injection.py`` measures it). Elsewhere (XLA, CUDA, onnxruntime, whose runtimes
do not survive a fork, or ``GRADAUDIT_NO_FORK=1``), the phase runs in-process and only its exceptions are notes.
So does every phase of a process in which torch's autograd has started threads for a non-CPU device (a machine
with CUDA devices, torch-xla registered): torch refuses backward in a forked child then. The first child finds
out with one tiny backward, and the phases of that process run in-process from then on.

The user's code keeps its outcome in the child too: ``sys.exit``/``os._exit`` there is still "the target exited"
(exit 2) and Ctrl-C still exit 130.
"""
from __future__ import annotations

import faulthandler
import functools
import gc
import importlib
import os
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from gradaudit.outcome import TargetExit, claim_exit_guard, describe, real_exit

NO_FORK_ENV = "GRADAUDIT_NO_FORK"
# Once torch's autograd has started threads for a non-CPU device (CUDA present, torch-xla registered), a forked
# child cannot run backward at all. The first child finds out and says so; from then on phases run in-process.
_fork_breaks_autograd = {"seen": False}


@dataclass
class PhaseResult:
    value: Any = None
    failure: str | None = None  # "crashed: signal 11 (SIGSEGV)", "failed: RuntimeError: ...": it gave nothing

    @property
    def ok(self) -> bool:
        return self.failure is None


def fork_safe(programs: Iterable[Any]) -> bool:
    """Whether a forked child can run these programs: eager ones on the CPU (a forked child cannot use CUDA,
    an XLA client or an onnxruntime session of its parent)."""
    if not hasattr(os, "fork") or os.environ.get(NO_FORK_ENV) or _fork_breaks_autograd["seen"]:
        return False
    import torch

    from gradaudit.backends.eager import EagerProgram

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return False
    return all(isinstance(p, EagerProgram) and str(p.device) == "cpu" for p in programs if p is not None)


def run_optional_phase(work: Callable[[], Any], programs: Iterable[Any] = ()) -> PhaseResult:
    """Run ``work()`` (an optional phase over ``programs``) so that nothing it does can cost the verdict: its
    exceptions, and where the programs allow a fork its crashes, come back as ``failure``. The programs'
    evaluation counters are carried back from the child."""
    return start_optional_phase(work, programs).result()


class PendingPhase:
    """An optional phase started by :func:`start_optional_phase`: running in a forked child while the parent
    goes on, or (where no fork is safe) waiting to run in-process when its result is asked for."""

    def __init__(self, work: Callable[[], Any], programs: list, child: tuple[int, int] | None) -> None:
        self._work, self._programs, self._child = work, programs, child

    def result(self) -> PhaseResult:
        if self._child is None:
            return _in_process(self._work)
        pid, read_end = self._child
        self._child = None
        result = _finish_child(pid, read_end, self._programs)
        if result is None:  # a forked child cannot run backward in this process: never again, run it here
            _fork_breaks_autograd["seen"] = True
            return _in_process(self._work)
        return result

    def cancel(self) -> None:
        """Stop the child (the audit it served failed or was interrupted)."""
        if self._child is not None:
            pid, read_end = self._child
            self._child = None
            _kill(pid)
            os.close(read_end)


def start_optional_phase(work: Callable[[], Any], programs: Iterable[Any] = ()) -> PendingPhase:
    """Start ``work()`` as an optional phase (see :func:`run_optional_phase`) and return at once where it runs
    in a forked child: the child works on the second core while the parent audits. Only the counters the
    child's own work adds are carried back."""
    programs = [p for p in programs if p is not None]
    if not fork_safe(programs):
        return PendingPhase(work, programs, None)
    _import_phase_modules()
    return PendingPhase(work, programs, _start_child(work, programs))


@functools.lru_cache(maxsize=1)
def _import_phase_modules() -> None:
    """The analyzers the phases run, imported once in the parent: a child that imported them itself would pay
    the import (networkx, the tracer: ~0.4 s) on every fork, and a passing audit forks once."""
    for name in ("divergence", "graph", "hazards", "localize", "local_probe", "render", "trace"):
        importlib.import_module(f"gradaudit.analyzers.{name}")


def _in_process(work: Callable[[], Any]) -> PhaseResult:
    try:
        return PhaseResult(value=work())
    except SystemExit as exc:  # the user's code exited: the audit could not run, as in a child
        raise TargetExit(describe(exc)) from exc
    except Exception as exc:  # (KeyboardInterrupt keeps its outcome)
        return PhaseResult(failure=f"failed: {describe(exc)}")


# ------------------------------------------------------------------------------------------ the child
def _child_main(work: Callable[[], Any], programs: list, write_end: int) -> None:
    """Run in the forked child; never returns (the parent's cleanup, atexit and buffers are the parent's)."""
    try:
        claim_exit_guard()  # os._exit of the user's code raises here too
        faulthandler.disable()  # a crash is reported by the parent, in one line
        gc.disable()  # a collection would touch (copy) every page of the parent for nothing: the child is brief
        import torch

        torch.set_num_threads(1)  # the parent's OpenMP pool did not survive the fork: a parallel op would hang
        try:
            if not _backward_runs():
                message = ("no autograd", None, None)
            else:
                before = [_counters(p) for p in programs]
                value = work()
                message = ("ok", value, [_added(_counters(p), b) for p, b in zip(programs, before)])
        except KeyboardInterrupt:
            message = ("interrupted", None, None)
        except SystemExit as exc:
            message = ("exit", TargetExit(describe(exc)), None)
        except BaseException as exc:  # noqa: B036 - anything the phase raised is its failure, in one line
            message = ("error", describe(exc), None)
        try:
            payload = pickle.dumps(message)
        except Exception as exc:
            payload = pickle.dumps(("error", f"its result cannot be sent back: {describe(exc)}", None))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view):]
        _flush_standard_streams()
    finally:
        real_exit(0)


def _flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone, a closed stream: the command's output step says so
            pass


def _backward_runs() -> bool:
    """Whether autograd works in this forked child (see ``_fork_breaks_autograd``)."""
    import torch

    x = torch.zeros(1, requires_grad=True)
    try:
        torch.autograd.grad(x.sum(), x)
    except RuntimeError as exc:
        if "fork" in str(exc):
            return False
        raise
    return True


def _counters(program: Any) -> dict:
    """A program's evaluation counters (``Program.stats``), to carry back from a forked child."""
    return program.stats.counters()


def _added(after: dict, before: dict) -> dict:
    """What a child's work added to the counters: the parent may have counted on meanwhile."""
    return {key: value - before[key] for key, value in after.items()}


def _start_child(work: Callable[[], Any], programs: list) -> tuple[int, int]:
    _flush_standard_streams()  # what the parent buffered must not be written twice
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child_main(work, programs, write_end)
    os.close(write_end)
    return pid, read_end


def _finish_child(pid: int, read_end: int, programs: list) -> PhaseResult | None:
    try:
        payload = _read_all(read_end)
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C in the parent: the child goes too, at once
        _kill(pid)
        raise
    finally:
        os.close(read_end)
    return _result_of(payload, status, programs)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _result_of(payload: bytes, status: int, programs: list) -> PhaseResult | None:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGINT:
            raise KeyboardInterrupt
        return PhaseResult(failure=f"crashed: signal {number} ({_signal_name(number)})")
    if not payload:
        return PhaseResult(failure=f"ended with exit code {os.WEXITSTATUS(status)} and no result")
    kind, value, counters = pickle.loads(payload)
    if kind == "interrupted":
        raise KeyboardInterrupt
    if kind == "no autograd":
        return None
    if kind == "exit":
        raise value
    if kind == "error":
        return PhaseResult(failure=f"failed: {value}")
    for program, added in zip(programs, counters):
        for key, number in added.items():
            setattr(program.stats, key, getattr(program.stats, key) + number)
    return PhaseResult(value=value)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


# ------------------------------------------------------------------------------------------ the phases
def note(name: str, failure: str) -> dict:
    """The report's note for an optional phase that gave nothing (in ``report.skipped``)."""
    return {"what": name, "reason": f"{failure}; the verdict and the findings stand without it"}


def annotate_isolated(name: str, findings: list, notes: list[dict], programs: Iterable[Any],
                      annotate: Callable[[], None]) -> None:
    """Run ``annotate()``, which fills in ``findings`` in place (localization), as an optional phase; the
    child's annotated findings are copied back onto the parent's."""
    def work() -> list:
        annotate()
        return findings
    result = run_optional_phase(work, programs)
    if not result.ok:
        notes.append(note(name, result.failure))
        return
    if result.value is not findings:  # came back from a child: copy its annotations onto our findings
        for mine, annotated in zip(findings, result.value):
            mine.__dict__.update(annotated.__dict__)


def collect_isolated(name: str, notes: list[dict], programs: Iterable[Any],
                     collect: Callable[[], list] | PendingPhase) -> list:
    """``collect()`` (the hazard scan) as an optional phase, or the result of one already started: its list,
    or [] and a note."""
    pending = collect if isinstance(collect, PendingPhase) else start_optional_phase(collect, programs)
    result = pending.result()
    if not result.ok:
        notes.append(note(name, result.failure))
        return []
    return result.value


__all__ = ["PendingPhase", "PhaseResult", "run_optional_phase", "start_optional_phase", "annotate_isolated",
           "collect_isolated", "fork_safe", "note"]
