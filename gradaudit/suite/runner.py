"""Audit suites: every case of a zoo on several backends and orders, each case isolated in its own process.

``run_suite("torch.nn", ["eager", "xla", "onnx"])`` returns one record per (case, backend, order) — the dicts
that ``python -m gradaudit.suite.worker`` prints. A job is one case on one backend (its orders run in the same
process, one record each); it runs in a subprocess, so a segfault or a hang in a runtime becomes an ``error``
record ("crashed: signal 11 (SIGSEGV)", "timed out after 120 s") and the suite goes on.

Executors: ``serial`` (one job at a time), ``local`` (a thread pool launching ``workers`` subprocesses at once)
and ``ray`` (a Ray task per job that launches the same subprocess on a cluster node). With ``results_dir`` each
record is stored as JSON under a key of everything it depends on (zoo, case, backend, order, seed, dtype, the
versions of gradaudit, torch and the backend's package); a re-run reuses records whose key matches.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path
from typing import Callable, Iterable

from gradaudit.errors import AuditError

EXECUTORS = ("local", "serial", "ray")
STATUSES = ("pass", "fail", "skip", "error")
WORKER_COMMAND = [sys.executable, "-m", "gradaudit.suite.worker"]
# The package whose version decides a backend's results (besides torch and gradaudit).
BACKEND_PACKAGES = {"eager": ("torch",), "xla": ("torch-xla",), "onnx": ("onnxruntime", "onnx", "onnxscript")}


# ---------------------------------------------------------------------------------------------- jobs
def make_job(zoo: str, case: str, backend: str, orders: Iterable[int], seed: int = 0, dtype: str | None = None,
             **extra) -> dict:
    return {"zoo": zoo, "case": case, "backend": backend, "orders": list(orders), "seed": seed, "dtype": dtype,
            **extra}


class Workers:
    """The worker processes running now, so that Ctrl-C can kill them all at once; once stopped, no new one
    starts (a pool thread about to launch one gets None instead)."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def start(self, *args, **kwargs) -> subprocess.Popen | None:
        with self._lock:
            if self.stopped.is_set():
                return None
            process = subprocess.Popen(*args, **kwargs)
            self._running.add(process)
            return process

    def done(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    def stop(self) -> None:
        """Kill every running worker's process group now; refuse new ones."""
        with self._lock:
            self.stopped.set()
            running = list(self._running)
        for process in running:
            _kill_group(process)


def run_job_in_subprocess(job: dict, timeout: float, command: list[str] | None = None,
                          cwd: str | None = None, workers: Workers | None = None) -> list[dict]:
    """Run one job in ``python -m gradaudit.suite.worker``; always returns one record per order of the job (none
    when ``workers`` was stopped before it could start).

    The worker runs in its own session (its process group is killed on timeout, on Ctrl-C, and when this
    function is left by any exception). Orders it did not report — it crashed, hung or exited early — get
    ``error`` records saying how it ended."""
    command = list(command or WORKER_COMMAND)
    workers = workers or Workers()
    started = time.perf_counter()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["GRADAUDIT_SUITE_PID"] = str(os.getpid())  # the worker dies with this process (Linux)
    process = workers.start(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=cwd, env=env, start_new_session=True)
    if process is None:
        return []
    timed_out = False
    try:
        stdout, stderr = process.communicate(json.dumps(job), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        stdout, stderr = process.communicate()
    except BaseException:  # Ctrl-C in a serial suite: the worker must not outlive us
        _kill_group(process)
        process.wait()
        raise
    finally:
        workers.done(process)
    seconds = round(time.perf_counter() - started, 3)
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if timed_out:
        why = f"timed out after {_fmt_seconds(timeout)} s"
    elif process.returncode < 0:
        why = f"crashed: signal {-process.returncode} ({_signal_name(-process.returncode)})"
    elif process.returncode != 0:
        last = [line for line in (stderr or "").strip().splitlines() if line.strip()]
        why = f"crashed: exit code {process.returncode}" + (f": {last[-1].strip()[:300]}" if last else "")
    else:
        why = "the worker exited without a record"
    done = {r.get("order") for r in records}
    for order in _orders_of(job):
        if order not in done:
            records.append({"zoo": job.get("zoo"), "case": job.get("case"), "backend": job.get("backend"),
                            "order": order, "seed": job.get("seed", 0), "dtype": job.get("dtype"),
                            "status": "error", "reason": why, "report": None, "seconds": seconds})
    return records


def _orders_of(job: dict) -> list[int]:
    return list(job.get("orders") or [job.get("order", 1)])


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ---------------------------------------------------------------------------------------------- resume keys
def package_version(name: str) -> str | None:
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return None


def backend_versions(backend: str) -> dict[str, str | None]:
    packages = BACKEND_PACKAGES.get(backend)
    if packages is None:  # a plugin backend: the version of the distribution that registers it
        from gradaudit.registry import _registered

        for ep in _registered():
            if ep.name == backend and ep.dist is not None:
                return {ep.dist.name: ep.dist.version}
        return {}
    return {package: package_version(package) for package in packages}


def record_key(zoo: str, case: str, backend: str, order: int, seed: int, dtype: str | None,
               versions: dict | None = None) -> dict:
    from gradaudit import __version__

    return {"zoo": zoo, "case": case, "backend": backend, "order": order, "seed": seed, "dtype": dtype,
            "gradaudit": __version__, "torch": package_version("torch"),
            "backend_versions": versions if versions is not None else backend_versions(backend)}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class ResultStore:
    """Records on disk, one JSON file per key: ``{"key": ..., "record": ...}``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create results directory {directory}: {exc.strerror}") from exc
        self._lock = threading.Lock()

    def path(self, key: dict) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{key['case']}-{key['backend']}")
        return self.directory / f"{safe[:80]}-o{key['order']}-{key_digest(key)}.json"

    def load(self, key: dict) -> dict | None:
        path = self.path(key)
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return stored.get("record") if stored.get("key") == key else None

    def save(self, key: dict, record: dict) -> None:
        path = self.path(key)
        temporary = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        with self._lock:
            temporary.write_text(json.dumps({"key": key, "record": record}, default=str))
            os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------- the suite
def _matches(name: str, only) -> bool:
    if not only:
        return True
    if callable(only):
        return bool(only(name))
    patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p and p.strip()]
    return not patterns or any(p in name for p in patterns)


def _zoo_spec_for_workers(spec: str) -> str:
    """File zoos are passed to workers (and stored in keys) with an absolute path: they may run elsewhere."""
    module_part, sep, attr = spec.rpartition(":")
    if sep and (module_part.endswith(".py") or "/" in module_part) and Path(module_part).is_file():
        return f"{Path(module_part).resolve()}:{attr}"
    return spec


def plan(zoo_spec: str, backends: Iterable[str], orders: Iterable[int] = (1, 2), only=None,
         seed: int = 0, dtype: str | None = None) -> tuple[str, list, list[dict]]:
    """(resolved zoo spec, the selected cases, one job per (case, backend) with the orders each case has)."""
    from gradaudit.suite.zoos import load_zoo

    orders = sorted(set(int(o) for o in orders))
    if not orders or not set(orders) <= {1, 2}:
        raise AuditError(f"orders must be among 1, 2; got {orders}")
    backends = [b for b in backends if b]
    if not backends:
        raise AuditError("no backends given")
    from gradaudit.registry import get_backend

    for name in backends:  # an unknown name is a typo, not a backend to skip: refuse before the first job
        get_backend(name)
    spec = _zoo_spec_for_workers(zoo_spec)
    cases = [c for c in load_zoo(spec) if _matches(c.name, only)]
    if not cases:
        raise AuditError(f"no case of zoo {zoo_spec} matches {only!r}" if only else f"zoo {zoo_spec} is empty")
    jobs = [make_job(spec, case.name, backend, orders, seed, dtype) for case in cases for backend in backends]
    return spec, cases, jobs


def run_suite(zoo_spec: str, backends: Iterable[str] = ("eager",), orders: Iterable[int] = (1, 2),
              executor: str = "local", workers: int | None = None, timeout: float = 120,
              results_dir: str | os.PathLike | None = None, address: str | None = None,
              progress: Callable[[dict, int, int], None] | None = None, only=None, seed: int = 0,
              dtype: str | None = None, command: list[str] | None = None) -> list[dict]:
    """Audit every case of a zoo on each backend at each order; one record per (case, backend, order).

    ``only`` keeps cases whose name contains one of its substrings (comma-separated or a list; or a predicate
    on the name). ``progress``
    is called as ``progress(record, done, total)`` after each record. Orders a case does not support give
    ``skip`` records without running anything; so do jobs on a backend a worker found unusable."""
    if executor not in EXECUTORS:
        raise AuditError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if timeout is None or timeout <= 0:
        raise AuditError(f"timeout must be positive, got {timeout}")
    if workers is not None and workers < 1:
        raise AuditError(f"workers must be at least 1, got {workers}")
    spec, cases, jobs = plan(zoo_spec, list(backends), orders, only, seed, dtype)
    by_name = {c.name: c for c in cases}
    store = ResultStore(results_dir) if results_dir else None
    versions = {b: backend_versions(b) for b in {job["backend"] for job in jobs}}
    total = len(jobs) * len(jobs[0]["orders"])
    results: dict[tuple, dict] = {}
    lock = threading.Lock()
    finished = [0]

    def finish(record: dict) -> None:
        record.setdefault("module", by_name[record["case"]].module_type if record["case"] in by_name else None)
        key = record_key(spec, record["case"], record["backend"], record["order"], seed, dtype,
                         versions[record["backend"]])
        if store is not None and not record.get("resumed"):
            store.save(key, record)
        with lock:
            results[(record["case"], record["backend"], record["order"])] = record
            finished[0] += 1
            done = finished[0]
        if progress is not None:
            progress(record, done, total)

    # What is already known: stored records, and orders a case does not support.
    pending: list[dict] = []
    for job in jobs:
        case = by_name[job["case"]]
        left = []
        for order in job["orders"]:
            key = record_key(spec, job["case"], job["backend"], order, seed, dtype, versions[job["backend"]])
            stored = store.load(key) if store is not None else None
            if stored is not None:
                finish(stored | {"resumed": True})
            elif order not in case.orders:
                finish({"zoo": spec, "case": case.name, "backend": job["backend"], "order": order, "seed": seed,
                        "dtype": dtype, "status": "skip", "report": None, "seconds": 0.0,
                        "reason": f"order {order} is not supported by this case (orders {list(case.orders)})"})
            else:
                left.append(order)
        if left:
            pending.append(job | {"orders": left})

    unusable: dict[str, str] = {}  # backend -> why a worker found it unusable: later jobs are skipped at once
    running = Workers()

    def settle(job: dict, records: list[dict]) -> None:
        if running.stopped.is_set():  # killed by Ctrl-C: these records say nothing about the case
            return
        for record in records:
            if record.get("status") == "skip" and "is not usable here" in str(record.get("reason")):
                unusable.setdefault(record["backend"], record["reason"])
            finish(record)

    def skipped_early(job: dict) -> list[dict] | None:
        reason = unusable.get(job["backend"])
        if reason is None:
            return None
        return [{"zoo": spec, "case": job["case"], "backend": job["backend"], "order": order, "seed": seed,
                 "dtype": dtype, "status": "skip", "reason": reason, "report": None, "seconds": 0.0}
                for order in job["orders"]]

    try:
        if pending:
            run_pending(pending, executor, workers, running, timeout, address, command, settle, skipped_early)
    except KeyboardInterrupt:
        running.stop()  # at once: a worker's timeout can be minutes
        kept = [results[key] for key in ((j["case"], j["backend"], o) for j in jobs for o in j["orders"])
                if key in results]
        raise SuiteInterrupted(kept, total) from None

    ordered = []
    for job in jobs:
        for order in job["orders"]:
            ordered.append(results[(job["case"], job["backend"], order)])
    return ordered


class SuiteInterrupted(KeyboardInterrupt):
    """Ctrl-C during a suite. Its workers were killed at once; ``records`` are those that had finished (in the
    plan's order, already in the results directory), of ``total``."""

    def __init__(self, records: list[dict], total: int) -> None:
        super().__init__(f"interrupted after {len(records)} of {total} results")
        self.records, self.total = records, total


def run_pending(pending: list[dict], executor: str, count: int | None, running: Workers, timeout: float,
                address: str | None, command: list[str] | None, settle: Callable, skipped_early: Callable) -> None:
    """Run the jobs not already known on the chosen executor, settling each job's records as it finishes."""
    if executor == "serial":
        for job in pending:
            settle(job, skipped_early(job) or run_job_in_subprocess(job, timeout, command, workers=running))
    elif executor == "local":
        count = count or os.cpu_count() or 1
        threads = max(1, (os.cpu_count() or 1) // count)

        def one(job: dict) -> tuple[dict, list[dict]]:
            early = skipped_early(job)
            return job, early or run_job_in_subprocess(job | {"threads": threads}, timeout, command,
                                                       workers=running)
        pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="gradaudit-suite")
        try:
            futures = [pool.submit(one, job) for job in pending]
            for future in as_completed(futures):
                settle(*future.result())
        except BaseException:
            running.stop()  # before the pool waits for its threads: they are waiting for these workers
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        run_on_ray(pending, timeout, address, count, settle, skipped_early, command)


# ---------------------------------------------------------------------------------------------- ray
def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise AuditError("the ray executor needs Ray: pip install 'gradaudit[ray]' "
                         f"({type(exc).__name__}: {exc})") from exc
    return ray


_remote_cache: dict = {}


def _remote_runner(ray):
    """A Ray task that runs the same worker subprocess as the local executors, on whichever node gets it."""
    if "runner" not in _remote_cache:
        @ray.remote(num_cpus=1, max_retries=0)
        def run_remote(job: dict, timeout: float, command: list[str] | None) -> list[dict]:
            from gradaudit.suite.runner import run_job_in_subprocess as run_there

            return run_there(job, timeout, command)
        _remote_cache["runner"] = run_remote
    return _remote_cache["runner"]


def run_on_ray(jobs: list[dict], timeout: float, address: str | None, workers: int | None,
               settle: Callable, skipped_early: Callable, command: list[str] | None = None) -> None:
    ray = import_ray()
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
        except Exception as exc:
            where = address or "a local instance"
            raise AuditError(f"cannot start or reach Ray at {where}: {type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
        started_here = True
    try:
        runner = _remote_runner(ray)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = 1 if workers is None else max(1, (os.cpu_count() or 1) // limit)
        waiting = list(jobs)
        in_flight: dict = {}
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                job = waiting.pop(0)
                early = skipped_early(job)
                if early is not None:
                    settle(job, early)
                    continue
                # The subprocess command runs on the node: default to that node's python (None).
                in_flight[runner.remote(job | {"threads": threads}, timeout, command)] = job
            if not in_flight:
                continue
            try:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
            except KeyboardInterrupt:
                for ref in in_flight:  # kills the Ray worker; its job's subprocess dies with it (die_with_parent)
                    ray.cancel(ref, force=True)
                raise
            for ref in ready:
                job = in_flight.pop(ref)
                try:
                    records = ray.get(ref)
                except Exception as exc:  # the Ray task itself failed (node lost, ...)
                    first = str(exc).strip().splitlines()
                    why = f"ray task failed: {type(exc).__name__}: {first[0] if first else ''}"[:400]
                    records = [{"zoo": job["zoo"], "case": job["case"], "backend": job["backend"], "order": o,
                                "seed": job.get("seed", 0), "dtype": job.get("dtype"), "status": "error",
                                "reason": why, "report": None, "seconds": 0.0} for o in _orders_of(job)]
                settle(job, records)
    finally:
        if started_here:
            ray.shutdown()


def summary_counts(records: list[dict]) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for record in records:
        counts[record.get("status", "error")] = counts.get(record.get("status", "error"), 0) + 1
    return counts


__all__ = ["run_suite", "run_job_in_subprocess", "record_key", "ResultStore", "summary_counts", "EXECUTORS",
           "SuiteInterrupted", "Workers"]
