"""Isolated suite jobs: ``python -m gradaudit.suite.worker`` reads a JSON job, or a JSON list of jobs, on stdin,
audits each zoo case on its backend in order, and prints one JSON record per order on stdout (one line each,
flushed as soon as it is known, so a crash at order 2 still leaves the order-1 record, and a crash in the third
job of a list leaves the records of the first two).

Job: ``{"zoo": SPEC, "case": NAME, "backend": "eager", "order": 1 | "orders": [1, 2], "seed": 0,
"dtype": null, "mode": "auto", "probes": 3, "threads": null, "compare": false}``. With ``"compare": true`` the
case is compared against eager float64 on CPU (``gradaudit.compare``) instead of checked on its backend alone.

Record: :class:`~gradaudit.suite.records.SuiteRecord` as a dict (``case``, ``backend``, ``order``, ``status``,
``reason``, ``report``, ``seconds``, ``zoo``, ``module``, ``seed``, ``dtype``, and ``torch_known`` for cases of
PyTorch's own databases, ``compare`` for compared ones). ``skip``: the backend is not usable here or does not
support the case; ``error``: the audit could not run for another reason (one-line ``reason``).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

from gradaudit.outcome import as_audit_error, exit_call, exits_raise
from gradaudit.suite.plan import orders_of, unsupported_order
from gradaudit.lines import one_line
from gradaudit.core.kinds import Note
from gradaudit.registry import REFERENCE
from gradaudit.suite.records import SuiteRecord, SuiteStatus

if TYPE_CHECKING:
    from gradaudit.case import Case
    from gradaudit.report import Report
    from gradaudit.suite.zoos import ZooCase

# What a backend or the audit cannot do is raised as errors.Unsupported and classified by its type. Torch's own
# messages for what it cannot do (an op without a derivative formula, an op or dtype it does not support) come as
# plain RuntimeError/NotImplementedError text (or an AuditError quoting it), with no type to tell them by: for
# those only, the message text decides, and the case is skipped with the message as its reason.
LIMIT = 400  # characters of a reason in a record
TORCH_UNSUPPORTED = [
    r"derivative for .* is not implemented",
    r"does not support",
    r"not supported",
]


def classify(exc: BaseException) -> tuple[SuiteStatus, str]:
    """(status, one-line reason) of an exception raised by an audit: ``skip`` for what the backend or the case
    cannot do (:class:`gradaudit.errors.Unsupported`, or torch saying so), ``error`` for anything else."""
    from gradaudit.errors import AuditError, Unsupported

    text = one_line(exc, LIMIT)
    if isinstance(exc, Unsupported):
        return SuiteStatus.SKIP, text
    if isinstance(exc, (AuditError, NotImplementedError, RuntimeError)) and any(
            re.search(pattern, str(exc)) for pattern in TORCH_UNSUPPORTED):
        return SuiteStatus.SKIP, text if isinstance(exc, AuditError) else f"{type(exc).__name__}: {text}"
    if isinstance(exc, AuditError):
        return SuiteStatus.ERROR, text
    return SuiteStatus.ERROR, f"{type(exc).__name__}: {text}"


def status_of(report) -> tuple[SuiteStatus, str | None]:
    """pass/fail and why: the first error finding (or failed check) of a report; warnings are listed on a pass.
    A pass in which the requested order could not run at all is a skip, never a silent pass."""
    from gradaudit.outcome import orders_not_run

    not_run = orders_not_run(report)
    if report.ok and not_run:
        return SuiteStatus.SKIP, "; ".join(f"order {order} could not run: {why}" for order, why in not_run)
    if report.ok:
        warnings = sorted({f.kind for f in report.findings})
        return SuiteStatus.PASS, (f"warnings: {', '.join(warnings)}" if warnings else None)
    errors = [f for f in report.findings if f.severity == "error"]
    if errors:
        first = errors[0]
        where = f" (at {first.node or first.module})" if (first.node or first.module) else ""
        more = f"; {len(errors) - 1} more" if len(errors) > 1 else ""
        return SuiteStatus.FAIL, f"{first.kind}: {one_line(Exception(first.message), 300)}{where}{more}"
    failed = report.failed_checks
    first = failed[0]
    return SuiteStatus.FAIL, (f"order {first.order} {first.method} check wrt {first.wrt} failed "
                    f"(|err| {first.max_abs_err:.3g} > {first.tolerance:.3g}); {len(failed)} failed checks")


def _classified(exc: BaseException) -> tuple[SuiteStatus, str]:
    """classify() of anything a case raised or exited with (exits and Ctrl-C become AuditErrors first)."""
    return classify(exc if isinstance(exc, Exception) else as_audit_error(exc, "the worker"))


def run_job(job: dict, emit: Callable[[dict], None]) -> None:
    """Audit the job's case at each of its orders, emitting one record (a dict) per order."""
    orders = orders_of(job)
    started = time.perf_counter()
    try:
        if job.get("threads"):
            import torch

            torch.set_num_threads(int(job["threads"]))
        with exits_raise():  # importing the zoo runs the user's code too
            zoo_case = find_zoo_case(job["zoo"], job["case"])
    except BaseException as exc:  # noqa: B036 - a worker only ever answers with records
        status, reason = _classified(exc)
        for order in orders:
            emit(SuiteRecord.of_job(job, order, status, reason,
                                    seconds=round(time.perf_counter() - started, 3)).to_dict())
        return
    setup = time.perf_counter() - started
    for order in orders:
        began = time.perf_counter()
        record = audit_order(zoo_case, order, job)
        if order in zoo_case.orders:
            record.seconds = round(time.perf_counter() - began + setup, 3)
            setup = 0.0  # the imports and the zoo count once, toward the first order audited
        emit(record.to_dict())


@lru_cache(maxsize=8)
def zoo_cases(spec: str) -> dict:
    """A zoo's cases by name, loaded once per worker process: the jobs of a batch share it (loading torch's op
    database takes seconds)."""
    from gradaudit.suite.zoos import load_zoo

    return {case.name: case for case in load_zoo(spec)}


def find_zoo_case(spec: str, name: str) -> "ZooCase":
    """The zoo case a job names (a one-line AuditError where the zoo has none)."""
    from gradaudit.errors import AuditError

    case = zoo_cases(spec).get(name)
    if case is None:
        raise AuditError(f"zoo {spec} has no case {name!r}")
    return case


def audit_order(zoo_case, order: int, job: dict) -> SuiteRecord:
    """The record of one order: skipped where the case does not support it, else audited (an exception of the
    case or the audit is an error or a skip, by :func:`classify`)."""
    if order not in zoo_case.orders:
        return SuiteRecord.of_job(job, order, SuiteStatus.SKIP, unsupported_order(zoo_case, order),
                                  module=zoo_case.module_type)
    try:
        status, reason, report = audit(zoo_case, order, job)
    except BaseException as exc:  # noqa: B036 - sys.exit, os._exit, KeyboardInterrupt of the case: an error
        (status, reason), report = _classified(exc), None
        if os.environ.get("GRADAUDIT_WORKER_TRACEBACK"):
            traceback.print_exc()
    record = SuiteRecord.of_job(job, order, status, reason, report, module=zoo_case.module_type)
    torch_already_knows(zoo_case, record)
    return record


def torch_already_knows(zoo_case, record: SuiteRecord) -> None:
    """For cases from PyTorch's own test databases: the known-failure decorators and skips torch has for the
    record's order, and a reason that starts with "(torch knows)" where the case did not pass, so reports tell
    what torch already knows apart from what is new."""
    from gradaudit.suite.zoos.torch_ops import torch_known

    known = torch_known(zoo_case, record.order)
    if not known:
        return
    record.torch_known = known
    if record.status != SuiteStatus.PASS:
        record.reason = f"(torch knows) {record.reason or ''}".rstrip()


def audit(zoo_case, order: int, job: dict) -> tuple[SuiteStatus, str | None, dict]:
    """Audit the case at one order: (status, reason, the report's dict). A job with ``compare`` compares the
    backend against eager float64; a checked one gets pictures attached to its localized faults."""
    case = build_case(zoo_case)
    compared = bool(job.get("compare"))
    report = compare_audit(zoo_case, case, order, job) if compared else check_audit(case, order, job)
    status, reason = status_of(report)
    if status == SuiteStatus.FAIL and not compared and job.get("localize", True):
        attach_pictures(case, report, _seed(job))
    return status, reason, report.to_dict()


def build_case(zoo_case: "ZooCase") -> "Case":
    """The gradaudit.Case of a zoo case (its factory's exits and exceptions become one AuditError)."""
    from gradaudit.case import case_from_tuple
    from gradaudit.errors import AuditError

    try:
        with exits_raise():
            built = zoo_case.build()
    except (Exception, SystemExit) as exc:
        what = f"called {exit_call(exc)}" if isinstance(exc, SystemExit) else \
            f"raised {type(exc).__name__}: {one_line(exc, LIMIT)}"
        raise AuditError(f"the factory of {zoo_case.name} {what}") from exc
    case = case_from_tuple(built, zoo_case.name)
    case.name = zoo_case.name
    return case


def _seed(job: dict) -> int:
    return int(job.get("seed", 0) or 0)


def tolerances(job: dict) -> dict[str, float]:
    """The job's ``rtol``/``atol`` (the user's tolerance for approximate gradients), where it has them."""
    return {name: float(job[name]) for name in ("rtol", "atol") if job.get(name)}


def check_audit(case: "Case", order: int, job: dict) -> "Report":
    """gradaudit.check of the case on the job's backend: the Report."""
    import gradaudit

    return gradaudit.check(case, backend=job.get("backend", REFERENCE), order=order, dtype=job.get("dtype"),
                           seed=_seed(job), mode=job.get("mode", "auto"), probes=int(job.get("probes", 3)),
                           localize=bool(job.get("localize", True)), **tolerances(job))


def compare_audit(zoo_case: "ZooCase", case: "Case", order: int, job: dict) -> "Report":
    """gradaudit.compare of the case on the job's backend against eager float64 on CPU: the Report."""
    import gradaudit
    from gradaudit.suite.zoos.op_repro import attach_repros

    backend = job.get("backend", REFERENCE)
    report = gradaudit.compare(case, backends=(backend,), order=order, dtype=job.get("dtype"), seed=_seed(job),
                               probes=int(job.get("probes", 3)), localize=bool(job.get("localize", True)),
                               **tolerances(job))
    if job.get("zoo") == "torch.ops":  # a divergence of an op gets its repro, run in a process of its own
        try:
            attach_repros(zoo_case.name, report, backend, job.get("dtype"), order)
        except Exception as exc:  # optional: the verdict stands without it
            report.skipped.append(Note(what="repro", reason=f"{type(exc).__name__}: {one_line(exc, LIMIT)}"))
    return report


def attach_pictures(case, report, seed: int) -> None:
    """The autograd graph with the culprit highlighted, as SVG text on each localized fault (the HTML report
    shows it). Drawn on eager, where ops map onto autograd nodes; best effort, an optional phase: an error while
    drawing must not cost the record (a crash costs this worker's job, which the suite's runner reports)."""
    from gradaudit.pipeline import optional_phase

    faults = [f for f in report.findings if f.node and f.kind.startswith("faulty_")]
    if not faults:
        return
    failures: list[dict] = []
    drawn = optional_phase("graph export", lambda: pictures(case, faults, seed), failures)
    for finding, svg in zip(faults, drawn or [None] * len(faults)):
        if svg is not None:
            finding.details["graph_svg_text"] = svg
        elif failures:
            finding.details.setdefault("graph_svg_error", f"drawing the graph: {failures[0]['reason']}")


def pictures(case, faults: list, seed: int) -> list[str | None]:
    """The SVG of each fault's localized graph (None where localization found no graph)."""
    from gradaudit.analyzers.render import to_svg
    from gradaudit.analyzers.localize import locate
    from gradaudit.registry import reference_backend

    svgs = []
    with reference_backend().load(case) as program:
        for finding in faults:
            found = locate(program, finding, seed)
            svgs.append(None if found.graph is None else to_svg(found.graph, found.culprit, title=case.name))
    return svgs


def die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that launched it dies (a suite killed, a cancelled
    Ray task), instead of letting it run on to its timeout."""
    parent = os.environ.get("GRADAUDIT_SUITE_PID")
    if not sys.platform.startswith("linux") or not parent:
        return
    try:
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if str(os.getppid()) != parent:  # the parent died before the line above: too late for the kernel
            os._exit(1)
    except (OSError, AttributeError):
        pass


def main() -> int:
    die_with_parent()
    # The records own the real stdout; whatever the audited code or a runtime prints goes to stderr.
    records = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        jobs = read_jobs(sys.stdin.read())
    except ValueError as exc:
        print(f"gradaudit.suite.worker: bad job: {one_line(exc, LIMIT)}", file=sys.stderr)
        return 2

    def emit(record: dict) -> None:
        records.write(json.dumps(record, default=str) + "\n")
        records.flush()

    for job in jobs:
        run_job(job, emit)
    records.close()
    return 0


def read_jobs(text: str) -> list[dict]:
    """The jobs of the worker's input: one JSON job object, or a JSON list of them (ValueError otherwise)."""
    data = json.loads(text)
    jobs = data if isinstance(data, list) else [data]
    if not jobs or not all(isinstance(job, dict) and "zoo" in job and "case" in job for job in jobs):
        raise ValueError("a job is a JSON object with at least 'zoo' and 'case' (or a list of them)")
    return jobs


if __name__ == "__main__":
    sys.exit(main())
