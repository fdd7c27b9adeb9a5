"""Audit suites: every case of a zoo on several backends and orders, each case isolated in a worker process (its own,
or one it shares with the next jobs of its batch).

``run_suite("torch.nn", ["eager", "xla", "onnx"])`` returns one record per (case, backend, order), as the dicts
of :class:`~gradaudit.suite.records.SuiteRecord`. The pieces: :mod:`~gradaudit.suite.plan` (which jobs),
:mod:`~gradaudit.suite.executors` (where they run: serial, local, ray), :mod:`~gradaudit.suite.worker` (jobs in
a process of their own), :mod:`~gradaudit.suite.store` (records reused across runs with ``results_dir``).
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Iterable

from gradaudit.errors import AuditError
from gradaudit.registry import REFERENCE
from gradaudit.suite.executors import (EXECUTORS, Workers, check_ray_address,  # noqa: F401 (re-exported)
                                       run_job_in_subprocess, run_pending)
from gradaudit.suite.plan import Plan, plan, unsupported_order
from gradaudit.suite.records import SuiteRecord, SuiteStatus
from gradaudit.suite.summary import summary_counts  # noqa: F401 (re-exported)
from gradaudit.suite.store import ResultStore, backend_versions, record_key, zoo_digest

UNUSABLE = "is not usable here"  # in a skip's reason: the backend cannot run anywhere in this suite


class SuiteInterrupted(KeyboardInterrupt):
    """Ctrl-C during a suite. Its workers were killed at once; ``records`` are those that had finished (in the
    plan's order, already in the results directory), of ``total``."""

    def __init__(self, records: list[dict], total: int) -> None:
        super().__init__(f"interrupted after {len(records)} of {total} results")
        self.records, self.total = records, total


class SuiteRun:
    """The records of one suite as they arrive: stored, counted, reported to ``progress``; and the backends a
    worker found unusable, so that their remaining jobs are skipped without a worker."""

    def __init__(self, the_plan: Plan, store: ResultStore | None, progress: Callable | None) -> None:
        self.plan, self.store, self.progress = the_plan, store, progress
        self.by_name = the_plan.by_name
        self.versions = {b: backend_versions(b) for b in {job["backend"] for job in the_plan.jobs}}
        self.zoo_sha256 = zoo_digest(the_plan.spec)
        self.results: dict[tuple, SuiteRecord] = {}
        self.unusable: dict[str, str] = {}  # backend -> why a worker found it unusable
        self.running = Workers()
        self._lock = threading.Lock()

    def key(self, job: dict, order: int) -> dict:
        """The store key of one order of a job."""
        return record_key(self.plan.spec, job["case"], job["backend"], order, job.get("seed", 0),
                          job.get("dtype"), self.versions[job["backend"]], self.zoo_sha256,
                          compare=bool(job.get("compare")),
                          tolerances={name: job.get(name) for name in ("rtol", "atol")})

    def finish(self, job: dict, record: SuiteRecord) -> None:
        """Keep a record (and store it, unless it came from the store), then report progress."""
        if record.module is None and record.case in self.by_name:
            record.module = self.by_name[record.case].module_type
        if self.store is not None and not record.resumed:
            self.store.save(self.key(job, record.order), record)
        with self._lock:
            self.results[record.cell] = record
            done = len(self.results)
        if self.progress is not None:
            self.progress(record.to_dict(), done, self.plan.total)

    def pending(self) -> list[dict]:
        """Finish what is already known (stored records, orders a case does not support); the jobs left, with
        the orders each still needs."""
        left_jobs = []
        for job in self.plan.jobs:
            case = self.by_name[job["case"]]
            left = []
            for order in job["orders"]:
                stored = self.store.load(self.key(job, order)) if self.store is not None else None
                if stored is not None:
                    stored.resumed = True
                    self.finish(job, stored)
                elif order not in case.orders:
                    self.finish(job, SuiteRecord.of_job(job, order, SuiteStatus.SKIP, unsupported_order(case, order)))
                else:
                    left.append(order)
            if left:
                left_jobs.append(job | {"orders": left})
        return left_jobs

    def settle(self, job: dict, records: list[SuiteRecord]) -> None:
        """Finish a job's records, unless Ctrl-C killed its worker (then they say nothing about the case)."""
        if self.running.stopped.is_set():
            return
        for record in records:
            if record.status == SuiteStatus.SKIP and UNUSABLE in str(record.reason):
                self.unusable.setdefault(record.backend, record.reason)
            self.finish(job, record)

    def skipped_early(self, job: dict) -> list[SuiteRecord] | None:
        """Skip records for a job whose backend a worker already found unusable; None otherwise."""
        reason = self.unusable.get(job["backend"])
        if reason is None:
            return None
        return [SuiteRecord.of_job(job, order, SuiteStatus.SKIP, reason) for order in job["orders"]]

    def ordered(self) -> list[dict]:
        """The records that finished, in the plan's order."""
        cells = ((job["case"], job["backend"], order) for job in self.plan.jobs for order in job["orders"])
        return [self.results[cell].to_dict() for cell in cells if cell in self.results]


def _check_arguments(executor: str, timeout: float | None, workers: int | None, jobs_per_worker: int,
                     address: str | None = None) -> None:
    if executor not in EXECUTORS:
        raise AuditError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if timeout is None or timeout <= 0:
        raise AuditError(f"timeout must be positive, got {timeout}")
    if workers is not None and workers < 1:
        raise AuditError(f"workers must be at least 1, got {workers}")
    if not isinstance(jobs_per_worker, int) or jobs_per_worker < 1:
        raise AuditError(f"jobs per worker must be an integer of at least 1, got {jobs_per_worker!r}")
    if executor == "ray":
        check_ray_address(address)  # up front: before the zoo loads and any job runs


def run_suite(zoo_spec: str, backends: Iterable[str] = (REFERENCE,), orders: Iterable[int] = (1, 2),
              executor: str = "local", workers: int | None = None, timeout: float = 120,
              results_dir: str | os.PathLike | None = None, address: str | None = None,
              progress: Callable[[dict, int, int], None] | None = None, only=None, seed: int = 0,
              dtype: str | None = None, command: list[str] | None = None, compare: bool = False,
              shard: str | tuple[int, int] | None = None, jobs_per_worker: int = 1, rtol: float = 0.0,
              atol: float = 0.0) -> list[dict]:
    """Audit every case of a zoo on each backend at each order; one record (a dict) per (case, backend, order).

    ``only`` keeps cases whose name contains one of its substrings (comma-separated or a list; or a predicate
    on the name); ``shard`` (``"K/N"``) keeps the K-th of N slices of those (positions i with i % N == K - 1).
    With ``compare``, each case is compared against eager float64 on CPU on each backend (eager is the
    reference: it gets jobs only when it is the one backend). ``progress`` is called as
    ``progress(record, done, total)`` after each record. Orders a case does not support give ``skip`` records
    without running anything; so do jobs on a backend a worker found unusable. ``jobs_per_worker`` jobs run in
    turn in one worker process (a worker's start costs seconds; an audit of one op less than one). With
    ``results_dir``, records are stored and a re-run reuses those whose key still matches (editing the zoo's
    file, or changing a version, seed, dtype, ``compare`` or a tolerance, runs the jobs again). ``rtol``/``atol``:
    the user's tolerance for approximate gradients in every audit (see ``gradaudit.check``)."""
    _check_arguments(executor, timeout, workers, jobs_per_worker, address)
    suite = SuiteRun(plan(zoo_spec, list(backends), orders, only, seed, dtype, compare, shard, rtol, atol),
                     ResultStore(results_dir) if results_dir else None, progress)
    pending = suite.pending()
    try:
        if pending:
            run_pending(pending, executor, workers, suite.running, timeout, address, command, suite.settle,
                        suite.skipped_early, jobs_per_worker)
    except KeyboardInterrupt:
        suite.running.stop()  # at once: a worker's timeout can be minutes
        raise SuiteInterrupted(suite.ordered(), suite.plan.total) from None
    return suite.ordered()


__all__ = ["run_suite", "run_job_in_subprocess", "record_key", "ResultStore", "summary_counts", "EXECUTORS",
           "SuiteInterrupted", "SuiteRun", "Workers"]
