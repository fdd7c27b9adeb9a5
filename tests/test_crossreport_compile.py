"""The cross-backend report on torch.compile: the compiler in the title, and for each crash or divergence of a
torch.ops case the op's own repro (the exact sample, compiled vs eager float64), run in a fresh process; a repro
that does not show what the record claims is never called confirmed."""
import pytest

from gradaudit.suite.crossreport import backend_label, repro_cell
from gradaudit.suite.records import SuiteRecord, SuiteStatus

pytest.importorskip("expecttest", reason="op_db needs the opinfo extra")


def test_the_compile_backend_is_named_with_its_compiler(monkeypatch):
    monkeypatch.delenv("GRADAUDIT_COMPILE_BACKEND", raising=False)
    monkeypatch.delenv("GRADAUDIT_COMPILE_MODE", raising=False)
    assert backend_label("compile") == "compile (inductor)"
    monkeypatch.setenv("GRADAUDIT_COMPILE_BACKEND", "aot_eager")
    assert backend_label("compile") == "compile (aot_eager)" and backend_label("xla") == "xla"


@pytest.mark.slow
def test_a_claimed_compile_divergence_gets_the_ops_repro_which_does_not_confirm_a_correct_op(monkeypatch, tmp_path):
    # sin compiles correctly on aot_eager: a record claiming a crash, or a divergence with the localizer's piece,
    # must come out 'not confirmed' from running the op's own repro, not 'confirmed' on the record's word.
    monkeypatch.setenv("GRADAUDIT_COMPILE_BACKEND", "aot_eager")
    piece = "print('the localized piece')\n"
    findings = {"crash": {"kind": "backend_error", "severity": "error", "message": "[compile] raised",
                          "details": {"exception": "RuntimeError: planted compiler failure"}},
                "divergence": {"kind": "backward_divergence", "severity": "error", "message": "[compile] differs",
                               "details": {"repro": piece, "repro_confirmed": True,
                                           "localization": {"segment": ["sin"]}}}}
    for what, finding in findings.items():
        record = SuiteRecord("sin[sample 0]", "compile", 1, SuiteStatus.FAIL, what, report={"findings": [finding]},
                             zoo="torch.ops")
        cell = repro_cell(record, tmp_path / what, "r/")
        assert cell.startswith("[sin-sample0.py](r/sin-sample0.py) not confirmed"), cell
        code = (tmp_path / what / "sin-sample0.py").read_text()
        assert "torch.compile(outputs, backend='aot_eager', dynamic=False)" in code
    assert (tmp_path / "divergence" / "sin-sample0-piece.py").read_text() == piece
    assert not (tmp_path / "crash" / "sin-sample0-piece.py").exists()  # a crash has no localized piece
    assert "(r/sin-sample0-piece.py)" in cell


def test_a_repro_runs_apart_from_the_working_directory(monkeypatch, tmp_path):
    # python -c puts the working directory first on sys.path: a bisect.py there broke every repro's import of torch
    from gradaudit.suite.zoos.op_repro import confirm

    (tmp_path / "bisect.py").write_text("raise ImportError('the working directory shadowed the stdlib')\n")
    monkeypatch.chdir(tmp_path)
    assert confirm("import random, torch\nprint('verdict: agrees')") == (False, "verdict: agrees")


def test_a_failed_check_excused_only_by_a_warning_is_listed_as_a_divergence():
    # inductor's avg_pool3d (ceil_mode) gradient was 3x eager's; a kink warning on that linear op must not
    # file the case under kink conventions
    from gradaudit.suite.crossreport import category

    check = {"order": 1, "wrt": "args[0]", "method": "backend_parity", "ok": False, "status": "fail"}
    kink = {"kind": "nondifferentiable_point", "severity": "warning", "order": 1, "message": "kink"}
    failed = SuiteRecord("avg_pool3d[sample 6]", "compile", 1, SuiteStatus.FAIL, "check failed",
                         report={"checks": [check], "findings": [kink]}, zoo="torch.ops")
    passed = SuiteRecord("relu6[sample 0]", "compile", 1, SuiteStatus.PASS, None,
                         report={"checks": [dict(check, ok=True, status="pass")], "findings": [kink]})
    assert category(failed) == "gradient" and category(passed) == "kink"
