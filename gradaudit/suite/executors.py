"""Where suite jobs run: ``serial`` (one at a time), ``local`` (a thread pool launching ``workers`` worker
processes at once) and ``ray`` (a Ray task per batch launching the same worker process on a cluster node).

Jobs run in ``python -P -m gradaudit.suite.worker`` processes (``-P``: the working directory is not on the
worker's ``sys.path``, so a ``json.py`` there is never imported in its place; zoos and targets still load from
it, as ``gradaudit.case`` resolves them), each in its own session, one job per process or
``jobs_per_worker`` of them (a batch, of one backend) in turn: a segfault or a hang in a runtime becomes an
``error`` record of the job in progress ("crashed: signal 11 (SIGSEGV)", "timed out after 120 s") while the rest
of its batch goes on in a new worker, each job's records are settled as soon as it finishes, and Ctrl-C kills
every worker at once."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from gradaudit.errors import AuditError
from gradaudit.suite.plan import orders_of
from gradaudit.lines import first_line
from gradaudit.outcome import signal_name
from gradaudit.suite.records import SuiteRecord, SuiteStatus

EXECUTORS = ("local", "serial", "ray")
WORKER_COMMAND = [sys.executable, "-P", "-m", "gradaudit.suite.worker"]
RAY_CONNECT_SECONDS = 5.0  # an unreachable Ray address is said within this, not after Ray's own minutes of retries

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
    finished = list(run_batch_in_subprocess([job], timeout, command, cwd, workers))
    return finished[0][1] if finished else []


def run_batch_in_subprocess(jobs: list[dict], timeout: float, command: list[str] | None = None,
                            cwd: str | None = None, workers: Workers | None = None
                            ) -> Iterator[tuple[dict, list[SuiteRecord]]]:
    """Run jobs in order in one worker process, yielding ``(job, its records)`` as each job finishes (one record
    per order of the job).

    Each job has ``timeout`` seconds from the end of the one before (the first: from the launch). Where the
    worker hangs past it, crashes or exits early, the job in progress gets ``error`` records saying how (as
    :func:`run_job_in_subprocess`'s) and the rest of the batch goes on in a new worker. Nothing more starts once
    ``workers`` is stopped; leaving the generator early kills the worker."""
    workers = workers or Workers()
    left = list(jobs)
    while left:
        worker = WorkerProcess.launch(left, command, cwd, workers)
        if worker is None:
            return
        try:
            while left:
                job = left.pop(0)
                started = time.perf_counter()
                records, why = worker.read_records(job, timeout)
                if why is not None:
                    records += missing_orders(job, records, why, round(time.perf_counter() - started, 3))
                yield job, records
                if why is not None:
                    break  # that worker is gone: the rest of the batch in a new one
            else:
                worker.exited_within(WorkerProcess.EXIT_GRACE)  # done: let it exit on its own
        finally:
            worker.close()


class WorkerProcess:
    """A worker process on a list of jobs, in its own session. Threads feed it its jobs and read its stdout
    line by line and its stderr (of which the last lines are kept), so that no pipe ever fills up and blocks it
    while records are awaited with a timeout."""

    EXIT_GRACE = 5.0  # seconds a worker whose output ended (or that is done) may take to exit before it is killed

    def __init__(self, process: subprocess.Popen, workers: Workers) -> None:
        self.process, self.workers = process, workers
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    @classmethod
    def launch(cls, jobs: list[dict], command: list[str] | None, cwd: str | None,
               workers: Workers) -> "WorkerProcess | None":
        """Start a worker on the jobs (None when ``workers`` was stopped)."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["GRADAUDIT_SUITE_PID"] = str(os.getpid())  # the worker dies with this process (Linux)
        process = workers.start(list(command or WORKER_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", cwd=cwd, env=env,
                                start_new_session=True)  # errors: a runtime's odd bytes never stop a reader
        if process is None:
            return None
        payload = json.dumps(jobs[0] if len(jobs) == 1 else jobs)  # one job: the plain object, as ever
        threading.Thread(target=cls._feed, args=(process, payload), daemon=True).start()
        return cls(process, workers)

    @staticmethod
    def _feed(process: subprocess.Popen, payload: str) -> None:
        try:
            process.stdin.write(payload)
            process.stdin.close()
        except OSError:  # it died before reading: how it ended says why
            pass

    def _read_stdout(self) -> None:
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.put(line)
        self.lines.put(None)  # end of output: the worker ended

    def _read_stderr(self) -> None:
        with self.process.stderr:
            for line in self.process.stderr:
                if line.strip():
                    self.stderr_tail.append(line)

    def read_records(self, job: dict, timeout: float) -> tuple[list[SuiteRecord], str | None]:
        """The records of the job in progress, once there is one for each of its orders: ``(records, None)``;
        where the worker hangs past ``timeout`` (it is killed) or ends first: ``(the records it gave, why)``."""
        wanted, records = set(orders_of(job)), []
        deadline = time.monotonic() + timeout
        while not wanted <= {record.order for record in records}:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                _kill_group(self.process)
                return records, f"timed out after {_fmt_seconds(timeout)} s"
            if line is None:
                return records, self.how_it_ended()
            records += _parse_records(line)
        return records, None

    def how_it_ended(self) -> str:
        """Why a worker whose output ended gave no more records (its exit, and its last stderr line)."""
        if not self.exited_within(self.EXIT_GRACE):
            _kill_group(self.process)
            return "the worker closed its output without a record"
        self._stderr_reader.join(timeout=1.0)  # a grandchild may hold stderr open: do not wait for it
        return _how_it_ended(self.process.returncode, "".join(self.stderr_tail))

    def exited_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the worker to exit; whether it did."""
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        """Kill the worker's process group if it still runs, and forget it."""
        try:
            if self.process.poll() is None:
                _kill_group(self.process)
            self.process.wait()
        finally:
            self.workers.done(self.process)


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
        return f"crashed: signal {-returncode} ({signal_name(-returncode)})"
    if returncode != 0:
        last = [line for line in (stderr or "").strip().splitlines() if line.strip()]
        return f"crashed: exit code {returncode}" + (f": {last[-1].strip()[:300]}" if last else "")
    return "the worker exited without a record"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# ---------------------------------------------------------------------------------------------- local, serial
def run_pending(pending: list[dict], executor: str, count: int | None, running: Workers, timeout: float,
                address: str | None, command: list[str] | None, settle: Settle, early: Early,
                jobs_per_worker: int = 1) -> None:
    """Run the jobs not already known on the chosen executor, ``jobs_per_worker`` to a worker process, settling
    each job's records as it finishes."""
    batches = make_batches(pending, jobs_per_worker)
    if executor == "serial":
        for batch in batches:
            for job, records in run_batch(batch, timeout, command, running, early):
                settle(job, records)
    elif executor == "local":
        run_locally(batches, count, running, timeout, command, settle, early)
    else:
        run_on_ray(batches, timeout, address, count, settle, early, command)


def make_batches(jobs: list[dict], size: int) -> list[list[dict]]:
    """The jobs in batches of ``size``, in order, each of one backend: a process holds one backend's runtime
    (and an ONNX export before XLA's first use breaks XLA's backward in that process)."""
    by_backend: dict[str, list[dict]] = {}
    for job in jobs:
        by_backend.setdefault(job["backend"], []).append(job)
    return [same[i:i + size] for same in by_backend.values() for i in range(0, len(same), max(size, 1))]


def run_batch(batch: list[dict], timeout: float, command: list[str] | None, running: Workers,
              early: Early) -> Iterator[tuple[dict, list[SuiteRecord]]]:
    """(job, records) for each job of a batch: those known already (``early``) at once, the rest as their
    worker finishes them."""
    to_run = []
    for job in batch:
        known = early(job)
        if known is None:
            to_run.append(job)
        else:
            yield job, known
    yield from run_batch_in_subprocess(to_run, timeout, command, workers=running)


def run_locally(batches: list[list[dict]], count: int | None, running: Workers, timeout: float,
                command: list[str] | None, settle: Settle, early: Early) -> None:
    """``count`` worker processes at once (default: the CPU count), each with its share of the CPU threads, one
    batch each; every job's records are settled here, in the calling thread, as soon as its worker gives them."""
    count = count or os.cpu_count() or 1
    threads = max(1, (os.cpu_count() or 1) // count)
    finished: queue.Queue = queue.Queue()  # (job, records) as they come; None when a batch is over

    def one(batch: list[dict]) -> None:
        try:
            for job, records in run_batch([job | {"threads": threads} for job in batch], timeout, command,
                                          running, early):
                finished.put((job, records))
        finally:
            finished.put(None)
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="gradaudit-suite")
    try:
        futures = [pool.submit(one, batch) for batch in batches]
        for item in _until_every_batch_is_over(finished, len(futures)):
            settle(*item)
        for future in futures:
            future.result()  # a pool thread's own exception, if any
    except BaseException:
        running.stop()  # before the pool waits for its threads: they are waiting for these workers
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _until_every_batch_is_over(finished: queue.Queue, batches: int) -> Iterator[tuple]:
    over = 0
    while over < batches:
        item = finished.get()
        if item is None:
            over += 1
        else:
            yield item


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
    """A Ray generator task that runs the same worker subprocess as the local executors on a batch, on
    whichever node gets it, and streams each job's records back as the job finishes."""
    if "runner" not in _remote_cache:
        @ray.remote(num_cpus=1, max_retries=0)
        def run_remote(jobs: list[dict], timeout: float, command: list[str] | None):
            from gradaudit.suite.executors import run_batch_in_subprocess as run_there

            for _job, records in run_there(jobs, timeout, command):
                yield records
        _remote_cache["runner"] = run_remote
    return _remote_cache["runner"]


def check_ray_address(address: str | None, seconds: float = RAY_CONNECT_SECONDS) -> None:
    """Refuse, within ``seconds``, a Ray address (``host:port`` or ``ray://host:port``) nothing listens on; Ray
    itself retries for minutes. ``auto``, ``local`` and no address are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise AuditError(f"--address {address}: expected host:port (or ray://host:port, auto, local)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds) as connection:
            answer = _http2_greeting(connection)
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise AuditError(f"cannot reach Ray at {address} within {seconds:g} s: {why}") from None
    if answer[3:4] != b"\x04":  # not an HTTP/2 SETTINGS frame: Ray would retry it for many minutes
        heard = answer.splitlines()[0][:40].decode("ascii", "replace") if answer.strip() else "nothing"
        raise AuditError(f"{address} is not a Ray address: what listens there does not speak gRPC (Ray's "
                         f"protocol; it answered {heard!r})")


# An HTTP/2 client's connection preface and an empty SETTINGS frame: every gRPC server (Ray's GCS and Ray
# Client's proxy) answers with a SETTINGS frame of its own, whose type byte (the 4th) is 4.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _http2_greeting(connection: socket.socket) -> bytes:
    """The first bytes a server sends back after an HTTP/2 preface (empty if it closes or stays silent)."""
    connection.sendall(_HTTP2_PREFACE)
    try:
        return connection.recv(64)
    except TimeoutError:
        return b""


def _start_ray(ray, address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    # ray.init replaces the SIGTERM handler with one that calls sys.exit: the suite's own (reports written,
    # exit 143) stays in force.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address or None, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:
        raise AuditError(f"cannot start or reach Ray at {address or 'a local instance'}: {type(exc).__name__}: "
                         f"{first_line(exc)}") from exc
    finally:
        if threading.current_thread() is threading.main_thread() and sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return True


def run_on_ray(batches: list[list[dict]], timeout: float, address: str | None, workers: int | None,
               settle: Settle, early: Early, command: list[str] | None = None) -> None:
    """A Ray task per batch, at most ``workers`` (default: the cluster's CPUs) in flight; each job's records
    are settled as the task streams them back."""
    check_ray_address(address)  # before Ray's import and its own, much longer, retries
    ray = import_ray()
    started_here = _start_ray(ray, address)
    try:
        runner = _remote_runner(ray)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        threads = 1 if workers is None else max(1, (os.cpu_count() or 1) // limit)
        waiting = list(batches)
        in_flight: dict = {}  # a task's generator -> the jobs of its batch not settled yet
        while waiting or in_flight:
            while waiting and len(in_flight) < limit:
                batch = [job for job in waiting.pop(0) if not _settled_early(job, early, settle)]
                if batch:  # the subprocess command runs on the node: default to that node's python (None)
                    in_flight[runner.remote([job | {"threads": threads} for job in batch], timeout, command)] = batch
            if in_flight:
                _settle_from_ray(ray, in_flight, settle)
    finally:
        if started_here:
            ray.shutdown()


def _settled_early(job: dict, early: Early, settle: Settle) -> bool:
    """Settle a job whose records are known without running it; whether it was."""
    known = early(job)
    if known is not None:
        settle(job, known)
    return known is not None


def _settle_from_ray(ray, in_flight: dict, settle: Settle) -> None:
    """Wait for a task to stream a job's records and settle them (error records for the rest of its batch
    where the task itself failed)."""
    try:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
    except KeyboardInterrupt:
        for task in in_flight:  # kills the Ray worker; its job's subprocess dies with it (die_with_parent)
            ray.cancel(task, force=True)
        raise
    for task in ready:
        try:
            records = ray.get(next(task))
        except StopIteration:  # the task ended without them: cannot happen unless the runner is broken
            _settle_rest(in_flight.pop(task), "the ray task ended without records", settle)
            continue
        except Exception as exc:  # the Ray task itself failed (node lost, ...)
            _settle_rest(in_flight.pop(task), f"ray task failed: {type(exc).__name__}: {first_line(exc)}"[:400],
                         settle)
            continue
        batch = in_flight[task]
        settle(batch.pop(0), records)
        if not batch:
            in_flight.pop(task)


def _settle_rest(batch: list[dict], why: str, settle: Settle) -> None:
    for job in batch:
        settle(job, missing_orders(job, [], why))
