"""The command line contract: options, exit codes, JSON report, one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradaudit.cli import main

ROOT = Path(__file__).resolve().parent.parent
BAD = "tests/data/bad_targets.py"


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_planted_fault_exits_1_and_names_the_gradient():
    code, out, _ = run("run", "examples/bad_gelu.py:case")
    assert code == 1
    assert "faulty_backward" in out and "fc1.weight" in out


def test_correct_case_exits_0_at_order_2():
    code, out, _ = run("run", "examples/bad_gelu.py:fixed", "--order", "2")
    assert code == 0 and "PASS" in out


def test_json_report_to_stdout_follows_the_contract():
    code, out, _ = run("run", "tests/fixtures.py:wrong_parameter_gradient", "--json", "-", "--seed", "3")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["seed"] == 3 and report["backend"] == "eager"
    assert report["target"] == "tests/fixtures.py:wrong_parameter_gradient"
    finding = report["findings"][0]
    assert finding["kind"] == "faulty_backward" and finding["wrt"] == "fc2.bias"
    assert {"forward_evals", "backward_evals", "compilations", "seconds"} <= set(report["stats"])


def test_json_report_to_file(tmp_path):
    path = tmp_path / "report.json"
    code, _, _ = run("run", "tests/fixtures.py:lstm", "--json", str(path), "--dtype", "float32")
    assert code == 0
    report = json.loads(path.read_text())
    assert report["ok"] and report["dtype"] == "float32"


def test_dotted_module_target(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    code, _, _ = run("run", "fixtures:plain_function", "--mode", "full")
    assert code == 0


@pytest.mark.parametrize("target, message", [
    ("missing.py:case", "no such file"),
    ("examples/bad_gelu.py:nothing", "has no attribute 'nothing'"),
    (f"{BAD}:raises", "raised ValueError: the factory is broken"),
    (f"{BAD}:wrong_shape", "expected (fn_or_module, args)"),
    (f"{BAD}:no_floating_inputs", "nothing to differentiate"),
    (f"{BAD}:nan_input", "contains NaN"),
    (f"{BAD}:inf_output", "NaN or Inf"),
    (f"{BAD}:case_raises", "calling the case raised RuntimeError"),
    (f"{BAD}:not_callable", "not a callable"),
    ("tests/data/bad_syntax.py:broken", "SyntaxError"),
    ("no_colon_here", "is not of the form"),
    ("no_such_module_xyz:case", "cannot import"),
])
def test_bad_input_is_one_line_and_exit_2(target, message):
    code, out, err = run("run", target)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_backend_exits_2():
    code, _, err = run("run", "examples/bad_gelu.py:fixed", "--backend", "nope")
    assert code == 2 and "unknown backend" in err


def test_invalid_option_exits_2():
    code, _, _ = run("run", "examples/bad_gelu.py:fixed", "--order", "3")
    assert code == 2


def test_backends_command_lists_eager_through_entry_points():
    code, out, _ = run("backends")
    assert code == 0 and "eager" in out


def test_installed_console_script_end_to_end():
    script = Path(sys.executable).parent / "gradaudit"
    result = subprocess.run([str(script), "run", "examples/bad_gelu.py:case", "--json", "-"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert json.loads(result.stdout)["findings"][0]["kind"] == "faulty_backward"
