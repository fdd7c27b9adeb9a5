"""Where suite jobs run: ``serial`` (one at a time), ``local`` (a thread pool launching ``workers`` worker
processes at once) and ``ray`` (a Ray task per job launching the same worker process on a cluster node).

Every job runs in its own ``python -m gradaudit.suite.worker`` process, in its own session: a segfault or a hang
in a runtime becomes an ``error`` record ("crashed: signal 11 (SIGSEGV)", "timed out after 120 s"), and Ctrl-C
kills every worker at once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable

from gradaudit.errors import AuditError
from gradaudit.suite.plan import orders_of
from gradaudit.suite.records import SuiteRecord, SuiteStatus, first_line

EXECUTORS = ("local", "serial", "ray")
WORKER_COMMAND = [sys.executable, "-m", "gradaudit.suite.worker"]

# settle(job, records): what an executor calls with each job's records; early(job): records for a job that need
# not run (its backend was found unusable), or None.
Settle = Callable[[dict, list[SuiteRecord]], None]
Early = Callable[[dict], "list[SuiteRecord] | None"]


class Workers:
    """The worker processes running now, so that Ctrl-C can kill them all at once; once stopped, no new one
    starts (a pool thread about to launch one gets None instead)."""

    def __init__(self) -> None:
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def start(self, *args, **kwargs) -> subprocess.Popen | None:
        """Launch a process unless stopped."""
        with self._lock:
            if self.stopped.is_set():
                return None
            process = subprocess.Popen(*args, **kwargs)
            self._running.add(process)
            return process

    def done(self, process: subprocess.Popen) -> None:
        """Forget a process that ended."""
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
                          cwd: str | None = None, workers: Workers | None = None) -> list[SuiteRecord]:
    """Run one job in ``python -m gradaudit.suite.worker``; always returns one record per order of the job (none
    when ``workers`` was stopped before it could start).

    The worker runs in its own session (its process group is killed on timeout, on Ctrl-C, and when this
    function is left by any exception). Orders it did not report — it crashed, hung or exited early — get
    ``error`` records saying how it ended."""
    workers = workers or Workers()
    started = time.perf_counter()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["GRADAUDIT_SUITE_PID"] = str(os.getpid())  # the worker dies with this process (Linux)
    process = workers.start(list(command or WORKER_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env, start_new_session=True)
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
    records = _parse_records(stdout)
    why = f"timed out after {_fmt_seconds(timeout)} s" if timed_out else _how_it_ended(process.returncode, stderr)
    return records + missing_orders(job, records, why, round(time.perf_counter() - started, 3))


def missing_orders(job: dict, records: list[SuiteRecord], why: str, seconds: float = 0.0) -> list[SuiteRecord]:
    """``error`` records, saying ``why``, for the orders of a job that have no record."""
    done = {record.order for record in records}
    return [SuiteRecord.of_job(job, order, SuiteStatus.ERROR, why, seconds=seconds)
            for order in orders_of(job) if order not in done]


def _parse_records(stdout: str) -> list[SuiteRecord]:
    records = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(SuiteRecord.from_dict(json.loads(line)))
            except json.JSONDecodeError:
                pass
    return records


def _how_it_ended(returncode: int, stderr: str | None) -> str:
    if returncode < 0:
        return f"crashed: signal {-returncode} ({_signal_name(-returncode)})"
    if returncode != 0:
        last = [line for line in (stderr or "").strip().splitlines() if line.strip()]
        return f"crashed: exit code {returncode}" + (f": {last[-1].strip()[:300]}" if last else "")
    return "the worker exited without a record"


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


# ---------------------------------------------------------------------------------------------- local, serial
def run_pending(pending: list[dict], executor: str, count: int | None, running: Workers, timeout: float,
                address: str | None, command: list[str] | None, settle: Settle, early: Early) -> None:
    """Run the jobs not already known on the chosen executor, settling each job's records as it finishes."""
    if executor == "serial":
        for job in pending:
            settle(job, early(job) or run_job_in_subprocess(job, timeout, command, workers=running))
    elif executor == "local":
        run_locally(pending, count, running, timeout, command, settle, early)
    else:
        run_on_ray(pending, timeout, address, count, settle, early, command)


def run_locally(pending: list[dict], count: int | None, running: Workers, timeout: float,
                command: list[str] | None, settle: Settle, early: Early) -> None:
    """``count`` jobs at once (default: the CPU count), each worker with its share of the CPU threads."""
    count = count or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // count)

    def one(job: dict) -> tuple[dict, list[SuiteRecord]]:
        return job, early(job) or run_job_in_subprocess(job | {"threads": threads}, timeout, command,
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


# ---------------------------------------------------------------------------------------------- ray
def import_ray():
    """Ray, or a one-line AuditError saying how to install it."""
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
        def run_remote(job: dict, timeout: float, command: list[str] | None) -> list[SuiteRecord]:
            from gradaudit.suite.executors import run_job_in_subprocess as run_there

            return run_there(job, timeout, command)
        _remote_cache["runner"] = run_remote
    return _remote_cache["runner"]


def _start_ray(ray, address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:
        raise AuditError(f"cannot start or reach Ray at {address or 'a local instance'}: {type(exc).__name__}: "
                         f"{first_line(exc)}") from exc
    return True


def run_on_ray(jobs: list[dict], timeout: float, address: str | None, workers: int | None,
               settle: Settle, early: Early, command: list[str] | None = None) -> None:
    """A Ray task per job, at most ``workers`` (default: the cluster's CPUs) in flight."""
    ray = import_ray()
    started_here = _start_ray(ray, address)
    try:
        runner = _remote_runner(ray)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = 1 if workers is None else max(1, (os.cpu_count() or 1) // limit)
        waiting = list(jobs)
        in_flight: dict = {}
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                job = waiting.pop(0)
                known = early(job)
                if known is not None:
                    settle(job, known)
                    continue
                # The subprocess command runs on the node: default to that node's python (None).
                in_flight[runner.remote(job | {"threads": threads}, timeout, command)] = job
            if in_flight:
                _settle_one_ray_task(ray, in_flight, settle)
    finally:
        if started_here:
            ray.shutdown()


def _settle_one_ray_task(ray, in_flight: dict, settle: Settle) -> None:
    """Wait for a task to finish and settle its records (error records where the task itself failed)."""
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
            records = missing_orders(job, [], f"ray task failed: {type(exc).__name__}: {first_line(exc)}"[:400])
        settle(job, records)
