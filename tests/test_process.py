"""The process model of the command line (gradaudit.cli.supervisor): the audit runs in a spawned worker; threads,
hangs, crashes and signals there never cost a verdict that is known, and never leave a process behind. Real
processes, each bounded by a timeout."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = "tests/data/process_targets.py"
PROGRESS_LINE = re.compile(r"gradaudit: \[\d+ s\] ")  # (a slow run's progress when stderr is not a terminal)


def gradaudit(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradaudit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_a_forward_on_a_module_level_thread_pool_passes():
    result = gradaudit("run", f"{TARGETS}:threadpool_forward", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gradaudit PASS")


def test_an_optional_phase_that_hangs_keeps_the_verdict(tmp_path):
    report_path = tmp_path / "report.json"
    started = time.monotonic()
    result = gradaudit("run", f"{TARGETS}:faulty_hangs_when_traced", "--phase-timeout", "3", "--json",
                       str(report_path), timeout=120)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 60
    assert result.stdout.startswith("gradaudit FAIL")
    report = json.loads(report_path.read_text())
    assert report["findings"][0]["kind"] == "faulty_backward"
    notes = {note["what"]: note["reason"] for note in report["skipped"]}
    assert notes["localization"].startswith("ran over its time limit (3 s"), notes


def test_a_crash_in_an_optional_phase_keeps_the_verdict():
    result = gradaudit("run", f"{TARGETS}:faulty_crashes_when_traced", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "skipped localization: crashed: signal 11 (SIGSEGV); the verdict and the findings stand" in result.stdout


def test_a_segfault_of_the_users_code_is_one_line_and_exit_2():
    result = gradaudit("run", f"{TARGETS}:segfaults", timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = [line for line in result.stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert lines == ["gradaudit: error: the audit crashed with signal 11 (SIGSEGV) during the checks; nothing "
                     "was audited"], result.stderr


def test_the_checks_past_their_time_limit_are_exit_2():
    # (20 s: the limit counts the worker's start too, which takes several seconds on a loaded 2-core machine)
    result = gradaudit("run", f"{TARGETS}:sleeps_with_a_child", "--timeout", "20", timeout=180,
                       env={"PROCESS_TEST_PIDS": os.devnull})
    assert result.returncode == 2
    assert "ran over its time limit (--timeout 20 s) during the checks" in result.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")  # a zombie is gone but unreaped


def test_sigterm_exits_143_and_leaves_no_process_behind(tmp_path):
    pids_file = tmp_path / "pids"
    process = subprocess.Popen([sys.executable, "-m", "gradaudit", "run", f"{TARGETS}:sleeps_with_a_child"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PROCESS_TEST_PIDS": str(pids_file)})
    try:
        deadline = time.monotonic() + 120
        while not (pids_file.exists() and pids_file.read_text().endswith("\n")):
            assert time.monotonic() < deadline and process.poll() is None, "the worker never started its child"
            time.sleep(0.1)
        worker, grandchild = map(int, pids_file.read_text().split())
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "gradaudit: terminated"
    deadline = time.monotonic() + 10
    while (_alive(worker) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker) and not _alive(grandchild)


@pytest.mark.slow
def test_a_failing_compiled_case_finishes_with_its_verdict():
    """A real compile-only fault (a wrong decomposition in inductor's table), audited on --backend compile with
    inductor: the verdict, localized, and the command ends."""
    result = gradaudit("run", "tests/data/compile_targets.py:faulty_decomposition", "--backend", "compile",
                       "--json", "-", timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["findings"][0]["kind"] == "faulty_backward"
    assert report["findings"][0]["op"] == "gradaudit_compile_test.softsign", report["findings"][0]


def test_sigterm_to_a_suite_keeps_finished_results_and_exits_143(tmp_path):
    """CI cancellation of a suite: the results that finished are reported (as on Ctrl-C), the hanging worker
    is gone, and the exit code says SIGTERM."""
    report = tmp_path / "suite.json"
    process = subprocess.Popen([sys.executable, "-m", "gradaudit", "suite", "tests/data/suite_zoo.py:zoo",
                                "--only", "good,hang", "--orders", "1", "--workers", "1", "--json", str(report)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.monotonic() + 180, []
        while not any("pass  good" in line for line in seen):  # a progress line per result, on stderr
            assert time.monotonic() < deadline and process.poll() is None, seen
            seen.append(process.stderr.readline())
        time.sleep(1)  # the hang is running in its worker
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("gradaudit: terminated; 1 of 2 results"), stderr
    records = json.loads(report.read_text())["records"]
    assert [(r["case"], r["status"]) for r in records] == [("good", "pass")]
