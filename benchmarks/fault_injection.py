"""Fault injection: what the user's code or the environment does, and the exit code gradaudit promises for it.

    .venv/bin/python benchmarks/fault_injection.py [--only WORDS] [--jobs 2] [--overhead [--repeats 5]]

Runs each row of issue 10's table as a real ``gradaudit`` process (exits, signals, closed pipes, full devices,
crashes planted with ``ctypes.string_at(0)``; targets in ``tests/data/hostile_targets.py``) and prints the
promised and the observed exit code, and whether the output kept its promise too (one line on stderr, no
traceback, the note of a crash...). Exit status 0 when every row kept its promise. ``tests/test_exits.py``
runs the same rows.

``--overhead`` measures the price of crash isolation on a passing audit: ``gradaudit run`` of
``examples/bad_gelu.py:fixed`` with isolation (the default: the hazard scan runs in a forked child) and without
(``GRADAUDIT_NO_FORK=1``), end to end and inside ``gradaudit.check``. Target: under 5 % of ``run``'s time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
GRADAUDIT = str(Path(sys.executable).parent / "gradaudit")
HOSTILE = "tests/data/hostile_targets.py"
PROGRESS_LINE = re.compile(r"gradaudit: \[\d+ s\] ")
HOSTILE_ZOO = "tests/data/hostile_zoo.py:zoo"
# Start the command with Ctrl-C at its default, even under a harness that ignores SIGINT for background jobs.
WITH_SIGINT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])"]


@dataclass
class Row:
    what: str  # the table row: what the user's code or environment did
    argv: list[str]  # gradaudit's arguments, or a whole command when it starts with sys.executable
    promised: int
    says: str = ""  # a phrase stdout + stderr must contain
    one_line: bool = False  # stderr is exactly one line
    stdout: str = "pipe"  # "pipe", "closed" (the reader went away at once) or "full" (/dev/full)
    interrupt: str | None = None  # send Ctrl-C once the audit is under way: "run" or "suite"
    check: Callable[[str, str], str | None] | None = None  # more promises: a problem, or None

    @property
    def command(self) -> list[str]:
        return self.argv if self.argv[0] == sys.executable else [GRADAUDIT, *self.argv]


@dataclass
class Observed:
    row: Row
    code: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return self.code == self.row.promised and not self.problems


def no_library_source(stdout: str, _: str) -> str | None:
    sources = [f["source"] for f in json.loads(stdout)["findings"] if f.get("source")]
    return f"a library frame as source: {sources}" if any("core.py" in s or "site-packages" in s
                                                          for s in sources) else None


API_CALL_1_VS_2 = f"""
import sys; sys.path.insert(0, "tests/data")
import gradaudit, hostile_targets as t
errors = []
for factory in (t.raises_on_call_1, t.raises_on_call_2):
    try:
        gradaudit.check(factory())
    except gradaudit.AuditError as exc:
        errors.append(exc)
same = len(errors) == 2 and all(isinstance(e.__cause__, RuntimeError) and "planted failure" in str(e)
                                for e in errors)
print("\\n".join(f"{{type(e).__name__}}: {{e}} (cause {{type(e.__cause__).__name__}})" for e in errors))
sys.exit(0 if same else 1)
"""


def rows(scratch: Path) -> list[Row]:
    """Issue 10's table, one row per case (some table rows have several)."""
    h = HOSTILE
    return [
        Row("sys.exit(0) at import of the target file", ["run", "tests/data/exits_at_import.py:case"], 2,
            "sys.exit(0)", one_line=True),
        Row("sys.exit(0) in the function, first call", ["run", f"{h}:exit0_first_call"], 2, "sys.exit(0)",
            one_line=True),
        Row("sys.exit(0) in the function, 4th call", ["run", f"{h}:exit0_fourth_call"], 2, "sys.exit(0)",
            one_line=True),
        Row("sys.exit(0) in the factory", ["run", f"{h}:exit_in_factory"], 2, "sys.exit(0)", one_line=True),
        Row("sys.exit(1) in the target", ["run", f"{h}:exit1"], 2, "sys.exit(1)", one_line=True),
        Row("sys.exit(3) in the target", ["run", f"{h}:exit3"], 2, "sys.exit(3)", one_line=True),
        Row("os._exit(0) in the function (run)", ["run", f"{h}:os_exit0"], 2, "os._exit(0)", one_line=True),
        Row("os._exit(0) in the function, inside except Exception", ["run", f"{h}:os_exit0_swallowed"], 2,
            "os._exit(0)", one_line=True),
        Row("os._exit(0) in the function (graph)", ["graph", f"{h}:os_exit0", "--out", str(scratch / "g.svg")],
            2, "os._exit(0)", one_line=True),
        Row("the function raises KeyboardInterrupt", ["run", f"{h}:keyboard_interrupt"], 2,
            "the target raised KeyboardInterrupt", one_line=True),
        Row("Ctrl-C during a long run", ["run", f"{h}:slow"], 130, "interrupted", one_line=True,
            interrupt="run"),
        Row("Ctrl-C during gradaudit suite", ["suite", HOSTILE_ZOO, "--only", "quick,sleeper", "--orders", "1",
                                              "--workers", "2", "--results-dir", str(scratch / "results"), "-q"],
            130, "1 of 2 results finished and kept", one_line=True, interrupt="suite"),
        Row("RuntimeError of the user's on the forward-mode calls", ["run", f"{h}:raises_under_forward_ad"], 2,
            "the case raised RuntimeError: planted failure (during a forward-mode (JVP) evaluation",
            one_line=True),
        Row("RuntimeError of the user's on the function's 5th call", ["run", f"{h}:raises_on_call_5"], 2,
            "the case raised RuntimeError: planted failure (during", one_line=True),
        Row("NotImplementedError of the user's on a later call", ["run", f"{h}:not_implemented_by_user"], 2,
            "the case raised NotImplementedError", one_line=True),
        Row("forward raising on call 1 vs call 2, from Python", [sys.executable, "-c", API_CALL_1_VS_2], 0,
            "AuditError: the case raised RuntimeError: planted failure"),
        Row("graph --out to a missing directory", ["graph", "examples/bad_gelu.py:case", "--out",
                                                   str(scratch / "missing" / "g.svg")], 2, "no such directory",
            one_line=True),
        Row("graph --out onto a directory", ["graph", "examples/bad_gelu.py:case", "--out", str(scratch)], 2,
            "is a directory", one_line=True),
        Row("--json - to a full device (/dev/full)", ["run", "examples/bad_gelu.py:case", "--json", "-"], 2,
            "No space left on device", one_line=True, stdout="full"),
        Row("--json - | true (the reader is gone)", ["run", "examples/bad_gelu.py:case", "--json", "-"], 1,
            stdout="closed", check=lambda out, err: "stderr not empty" if err.strip() else None),
        Row("--traceback on an input error", ["run", "missing.py:case", "--traceback"], 2, "no such file"),
        Row("--seed 18446744073709551621", ["run", "examples/bad_gelu.py:case", "--seed",
                                            "18446744073709551621"], 2, "Invalid value for '--seed'"),
        Row("--backend onnx on a train-mode BatchNorm", ["run", f"{h}:train_mode_batch_norm", "--backend",
                                                         "onnx"], 2, "inference form", one_line=True),
        Row("suite --backends tpu9", ["suite", HOSTILE_ZOO, "--backends", "tpu9"], 2, "unknown backend 'tpu9'",
            one_line=True),
        Row("a suite whose every job errored", ["suite", HOSTILE_ZOO, "--only", "exits,interrupts", "--orders",
                                                "1", "-q"], 2, "nothing was audited"),
        Row("torch segfaults in an optional phase, a fault found", ["run", f"{h}:faulty_crashes_when_traced"], 1,
            "localization: crashed: signal 11 (SIGSEGV)"),
        Row("torch segfaults in an optional phase, a pass", ["run", f"{h}:correct_crashes_when_traced"], 0,
            "hazard scan: crashed: signal 11 (SIGSEGV)"),
        Row("torch segfaults in graph export", ["graph", f"{h}:faulty_crashes_when_traced", "--out",
                                                str(scratch / "crash.svg")], 1, "crashed: signal 11"),
        Row("a torch builtin passed as the function", ["run", f"{h}:builtin_apply", "--json", "-"], 1,
            check=no_library_source),
        Row("--dtype bfloat16 with complex inputs", ["run", f"{h}:complex_input", "--dtype", "bfloat16"], 0,
            "ran in complex64"),
        Row("--backend onnx --order 2", ["run", f"{h}:good", "--backend", "onnx", "--order", "2"], 2,
            "order 2 not checked"),
        Row("--backend onnx --order 2 --allow-skip", ["run", f"{h}:good", "--backend", "onnx", "--order", "2",
                                                      "--allow-skip"], 0, "order 2 not checked"),
        Row("suite --junit DIR", ["suite", HOSTILE_ZOO, "--junit", str(scratch)], 2, "--junit", one_line=True),
    ]


# ------------------------------------------------------------------------------------------ running a row
def observe(row: Row, scratch: Path) -> Observed:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    marker = scratch / f"marker-{abs(hash(row.what))}"
    if row.interrupt:
        env["GRADAUDIT_TEST_MARKER"] = str(marker)
    stdout = {"pipe": subprocess.PIPE, "closed": subprocess.PIPE, "full": None}[row.stdout]
    full = open("/dev/full", "w") if row.stdout == "full" else None
    started = time.perf_counter()
    command = WITH_SIGINT + row.command if row.interrupt else row.command
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=full or stdout, stderr=subprocess.PIPE,
                               text=True)
    try:
        if row.stdout == "closed":
            process.stdout.close()
        if row.interrupt:
            interrupted_at = interrupt_when_under_way(process, marker, scratch, row.interrupt)
        out, err = process.communicate(timeout=600)
    finally:
        if full is not None:
            full.close()
    observed = Observed(row, process.returncode, out or "", err, time.perf_counter() - started)
    if row.interrupt:
        observed.seconds = time.perf_counter() - interrupted_at
        if observed.seconds > 10:
            observed.problems.append(f"took {observed.seconds:.1f} s to stop after Ctrl-C")
    observed.problems += promises_broken(row, observed)
    return observed


def interrupt_when_under_way(process: subprocess.Popen, marker: Path, scratch: Path, kind: str) -> float:
    """Wait until the audited code has run (the suite: one record stored, one worker sleeping), then Ctrl-C."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        ready = marker.exists() and marker.read_text().strip()
        if kind == "suite":
            ready = ready and any((scratch / "results").glob("*.json"))
        if ready:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    return time.perf_counter()


def message_lines(stderr: str) -> list[str]:
    """stderr's lines without the progress lines a slow run prints when stderr is not a terminal
    (``gradaudit: [31 s] the checks``): those are not part of the one-line promise."""
    return [line for line in stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]


def promises_broken(row: Row, observed: Observed) -> list[str]:
    problems = []
    text = " ".join((observed.stdout + observed.stderr).split())  # rich wraps long lines at 80 columns
    if row.says and row.says not in text:
        problems.append(f"does not say {row.says!r}")
    if "Traceback" in observed.stderr and "--traceback" not in row.argv:
        problems.append("a traceback on stderr")
    lines = message_lines(observed.stderr)
    if row.one_line and len(lines) != 1:
        problems.append(f"stderr has {len(lines)} lines, not one")
    if row.check is not None:
        problem = row.check(observed.stdout, observed.stderr)
        if problem:
            problems.append(problem)
    return problems


def run_rows(selected: list[Row], scratch: Path, jobs: int = 2) -> list[Observed]:
    """Rows without signals run ``jobs`` at a time; the interrupt rows alone, one after the other (their
    timing is part of the promise)."""
    plain = [r for r in selected if not r.interrupt]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip(map(id, plain), pool.map(lambda r: observe(r, scratch), plain)))
    for row in selected:
        if row.interrupt:
            results[id(row)] = observe(row, scratch)
    return [results[id(r)] for r in selected]


def print_table(observations: list[Observed]) -> None:
    width = max(len(o.row.what) for o in observations)
    print(f"{'what the user code / environment did':<{width}}  promised  observed  kept  notes")
    for o in observations:
        print(f"{o.row.what:<{width}}  {o.row.promised:>8}  {str(o.code):>8}  {'yes' if o.kept else 'NO':>4}  "
              f"{'; '.join(o.problems)}")
    kept = sum(o.kept for o in observations)
    print(f"{kept}/{len(observations)} rows kept their promise")


# ------------------------------------------------------------------------------------------ overhead
def timed_run(isolated: bool) -> float:
    env = dict(os.environ)
    env.pop("GRADAUDIT_NO_FORK", None)
    if not isolated:
        env["GRADAUDIT_NO_FORK"] = "1"
    started = time.perf_counter()
    subprocess.run([GRADAUDIT, "run", "examples/bad_gelu.py:fixed"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def in_process_check(repeats: int) -> dict[bool, list[float]]:
    """Seconds of ``gradaudit.check`` on the passing example, with and without isolation (alternating, so
    that the machine's load hits both alike)."""
    import gradaudit
    from gradaudit.case import load_target

    case = load_target("examples/bad_gelu.py:fixed")
    gradaudit.check(case)  # warm up
    times = {True: [], False: []}
    for _ in range(repeats):
        for isolated in (True, False):
            if isolated:
                os.environ.pop("GRADAUDIT_NO_FORK", None)
            else:
                os.environ["GRADAUDIT_NO_FORK"] = "1"
            started = time.perf_counter()
            gradaudit.check(case)
            times[isolated].append(time.perf_counter() - started)
    os.environ.pop("GRADAUDIT_NO_FORK", None)
    return times


def measure_overhead(repeats: int) -> None:
    """The isolation's cost is measured inside the process (``gradaudit.check``, where it is paid), against
    the time of the whole ``gradaudit run`` command; minima are the least disturbed by a busy machine."""
    end_to_end = {True: [], False: []}
    for _ in range(repeats):
        for isolated in (True, False):
            end_to_end[isolated].append(timed_run(isolated))
    checks = in_process_check(repeats * 4)
    run_s = statistics.median(end_to_end[True])
    print(f"crash isolation on a passing audit (examples/bad_gelu.py:fixed; {repeats} runs of the command, "
          f"{repeats * 4} of check() each way):")
    for name, pick in (("min", min), ("median", statistics.median)):
        on, off = pick(end_to_end[True]), pick(end_to_end[False])
        check_on, check_off = pick(checks[True]), pick(checks[False])
        cost = check_on - check_off
        print(f"  {name:>6}: gradaudit run {on:.3f} s isolated / {off:.3f} s not; gradaudit.check {check_on:.3f} s "
              f"/ {check_off:.3f} s: isolation costs {cost * 1000:+.0f} ms = {cost / run_s:+.1%} of run's time "
              f"({cost / check_off:+.0%} of check's)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="rows whose description contains one of these words "
                                                     "(comma-separated)")
    parser.add_argument("--jobs", type=int, default=2, help="rows run at once (signal rows run alone)")
    parser.add_argument("--overhead", action="store_true", help="measure the cost of crash isolation instead")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.overhead:
        measure_overhead(args.repeats)
        return 0
    with tempfile.TemporaryDirectory(prefix="gradaudit-faults-") as tmp:
        scratch = Path(tmp)
        selected = rows(scratch)
        if args.only:
            words = [w.strip() for w in args.only.split(",") if w.strip()]
            selected = [r for r in selected if any(w in r.what for w in words)]
        observations = run_rows(selected, scratch, args.jobs)
    print_table(observations)
    return 0 if all(o.kept for o in observations) else 1


if __name__ == "__main__":
    sys.exit(main())
