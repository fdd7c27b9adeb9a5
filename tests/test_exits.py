"""Issue 10: the user's code and the runtime cannot corrupt a verdict (exits, interrupts, crashes, write errors).

Every row of the issue's table runs as a real ``gradaudit`` process (``benchmarks/fault_injection.py`` holds the
rows and prints them as a table); the API, the worker, the pytest plugin and crash isolation are tested here too.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gradaudit
import gradaudit.outcome as outcome
from gradaudit.errors import AuditError
from gradaudit.pipeline import Listener, listening, optional_phase
from gradaudit.outcome import TargetExit, exits_raise, orders_not_run, user_code_boundary
from gradaudit.cli.exits import check_output_path
from gradaudit.suite.worker import run_job

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
import hostile_targets as hostile  # noqa: E402

_spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "benchmarks" / "fault_injection.py")
fault_injection = importlib.util.module_from_spec(_spec)
sys.modules["fault_injection"] = fault_injection  # (its dataclasses look their module up there)
_spec.loader.exec_module(fault_injection)

ROWS = fault_injection.rows(Path("/scratch-placeholder"))
pytest_plugins = ["pytester"]


# ---------------------------------------------------------------------------------------------- the table
@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """Every row of the table, run once as real processes (two at a time; Ctrl-C rows alone)."""
    scratch = tmp_path_factory.mktemp("faults")
    rows = fault_injection.rows(scratch)
    return {o.row.what: o for o in fault_injection.run_rows(rows, scratch, jobs=2)}


@pytest.mark.slow
@pytest.mark.parametrize("what", [row.what for row in ROWS])
def test_table_row_keeps_its_promise(observed, what):
    o = observed[what]
    assert o.code == o.row.promised, (o.code, o.stdout[-2000:], o.stderr[-2000:])
    assert not o.problems, (o.problems, o.stdout[-2000:], o.stderr[-2000:])


# ---------------------------------------------------------------------------------------------- the API
@pytest.mark.parametrize("factory, words", [
    (hostile.exit0_first_call, "the target called sys.exit(0)"),
    (hostile.exit0_fourth_call, "the target called sys.exit(0)"),
    (hostile.exit3, "the target called sys.exit(3)"),
    (hostile.os_exit0, "the target called os._exit(0)"),
    (hostile.os_exit0_swallowed, "the target called os._exit(0)"),
])
def test_api_turns_exits_into_target_exit(factory, words):
    with pytest.raises(TargetExit, match=words.replace("(", r"\(").replace(")", r"\)")) as caught:
        gradaudit.check(factory())
    assert isinstance(caught.value, AuditError) and isinstance(caught.value.__cause__, SystemExit)
    assert os._exit is outcome._real_os_exit  # the real one is back


def test_api_failure_on_call_1_or_2_is_the_same_audit_error_with_the_cause_chained():
    errors = []
    for factory in (hostile.raises_on_call_1, hostile.raises_on_call_2):
        with pytest.raises(AuditError) as caught:
            gradaudit.check(factory())
        errors.append(caught.value)
    for error in errors:
        assert isinstance(error.__cause__, RuntimeError) and "planted failure" in str(error)
        assert str(error).startswith(("calling the case raised RuntimeError", "the case raised RuntimeError"))
    # (call 1 loads the case, call 2 is the precision scan's traced forward)
    assert "during the precision scan" in str(errors[1]) and "hostile_targets.py" in str(errors[1])


def test_api_lets_keyboard_interrupt_through():
    with pytest.raises(KeyboardInterrupt):
        gradaudit.check(hostile.keyboard_interrupt())


def test_users_exception_under_forward_ad_is_no_skip_but_torchs_own_is():
    with pytest.raises(AuditError, match=r"the case raised RuntimeError: planted failure \(during a forward-mode"):
        gradaudit.check(hostile.raises_under_forward_ad())
    report = gradaudit.check(hostile.builtin_apply(), localize=False)  # a Function without jvp: torch's words
    assert any(s["what"].startswith("forward-mode AD") for s in report.skipped)


def test_compare_has_the_same_boundary():
    with pytest.raises(TargetExit, match=r"sys\.exit\(0\)"):
        gradaudit.compare(hostile.exit0_fourth_call(), backends=["eager"])


def test_assert_gradients_raises_target_exit():
    with pytest.raises(TargetExit):
        gradaudit.assert_gradients(*hostile.os_exit0())


def test_boundary_leaves_frameworks_outcomes_alone():
    class Outcome(BaseException):  # pytest.skip() and friends are BaseExceptions of the caller's framework
        pass

    @user_code_boundary("f")
    def raises_outcome():
        raise Outcome()

    with pytest.raises(Outcome):
        raises_outcome()


def test_os_exit_in_a_process_the_users_code_forks_still_exits():
    """multiprocessing's forked children end with os._exit: the guard must let them."""
    with exits_raise():
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7


def test_source_of_a_builtin_case_is_never_a_library_frame():
    report = gradaudit.check(hostile.builtin_apply())
    finding = next(f for f in report.findings if f.kind == "faulty_backward")
    assert finding.node == "WrongSquareBackward" and finding.source is None


def test_complex_inputs_in_bfloat16_say_they_ran_in_complex64():
    report = gradaudit.check(hostile.complex_input(), dtype="bfloat16", localize=False)
    assert any("complex64" in s["reason"] for s in report.skipped)


# ---------------------------------------------------------------------------------------------- optional phases
# (crashes and hangs in optional phases are the supervisor's: tests/test_process.py)
def test_an_optional_phase_keeps_the_users_exit_an_exit():
    def exits():
        with exits_raise():
            os._exit(0)
    with pytest.raises(TargetExit, match=r"os\._exit\(0\)"):
        optional_phase("localization", exits, [])


def test_an_optional_phase_that_raises_is_a_note_and_runs_here():
    notes: list[dict] = []
    assert optional_phase("hazard scan", os.getpid, notes) == os.getpid() and notes == []
    assert optional_phase("hazard scan", lambda: [][1], notes) is None
    assert notes[0]["what"] == "hazard scan" and notes[0]["reason"].startswith("failed: IndexError")


def test_the_verdict_is_published_before_the_optional_phases():
    """The listener hears the verdict (faulty, not yet localized), then the phases that follow it."""
    heard = []

    class Recorder(Listener):
        def phase(self, name):
            heard.append(name)

        def verdict(self, report):
            heard.append(("verdict", report.findings[0].node))

    with listening(Recorder()):
        report = gradaudit.check(hostile.builtin_apply())
    assert heard == ["the checks", ("verdict", None), "localization", "hazard scan"]
    assert report.findings[0].node == "WrongSquareBackward"


# ---------------------------------------------------------------------------------------------- outputs
def test_output_paths_are_checked_before_the_work(tmp_path):
    check_output_path(None, "--json")
    check_output_path("-", "--json")
    check_output_path(str(tmp_path / "new.json"), "--json")
    for path, words in [(tmp_path, "is a directory"), (tmp_path / "no" / "x.json", "no such directory")]:
        with pytest.raises(AuditError, match=words):
            check_output_path(str(path), "--json")


def test_an_order_that_did_not_run_is_named():
    report = gradaudit.check(hostile.good(), order=2, localize=False)
    assert orders_not_run(report) == []
    report.checks = [c for c in report.checks if c.order == 1]
    report.skipped.append({"what": "order 2", "reason": "the backend has no double backward"})
    assert orders_not_run(report) == [(2, "the backend has no double backward")]
    from gradaudit.report import Check, Report

    compared = Report("t", "eager,onnx", "cpu", "float64", 0, settings={"order": 2},
                      checks=[Check(o, "x", "reverse", True, backend=b) for b, o in
                              [("eager", 1), ("eager", 2), ("onnx", 1)]],
                      skipped=[{"what": "onnx: order 2", "reason": "no double backward"}])
    assert orders_not_run(compared) == [(2, "on onnx: no double backward")]


# ---------------------------------------------------------------------------------------------- worker, suite
@pytest.mark.parametrize("case, words", [
    ("exits", "sys.exit(0)"), ("os_exits", "os._exit(0)"), ("exits_in_factory", "called sys.exit(0)"),
    ("interrupts", "KeyboardInterrupt"),
])
def test_worker_records_an_exiting_or_interrupting_case_as_an_error(case, words):
    records = []
    run_job({"zoo": str(DATA / "hostile_zoo.py") + ":zoo", "case": case, "backend": "eager", "orders": [1]},
            records.append)
    assert [r["status"] for r in records] == ["error"] and words in records[0]["reason"]


def test_suite_refuses_an_unknown_backend_before_any_job():
    from gradaudit.suite.runner import run_suite

    with pytest.raises(AuditError, match="unknown backend 'tpu9'"):
        run_suite(str(DATA / "hostile_zoo.py") + ":zoo", ["eager", "tpu9"], (1,))


def test_pytest_plugin_reports_an_exiting_function_as_a_failed_test_and_goes_on(pytester):
    pytester.makepyfile(test_inner=f"""
import sys
sys.path.insert(0, {str(DATA)!r})
import hostile_targets as hostile

def test_exits(gradaudit):
    gradaudit(*hostile.exit0_fourth_call())

def test_os_exits(gradaudit):
    gradaudit(*hostile.os_exit0())

def test_after(gradaudit):
    gradaudit(*hostile.good())
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines(["*TargetExit: the target called sys.exit(0)*",
                                 "*TargetExit: the target called os._exit(0)*"])
