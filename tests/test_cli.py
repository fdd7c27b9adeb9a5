"""The command line contract: options, exit codes, JSON report, one-line errors."""
import json
import os
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


# ---------------------------------------------------------------------------------- conventions of the CLI
def test_dotted_target_from_the_working_directory_leaves_sys_path_alone(tmp_path, monkeypatch):
    from gradaudit.case import load_target

    (tmp_path / "my_cases.py").write_text(
        "import torch\n\nclass Cases:\n    @staticmethod\n    def sine():\n"
        "        return torch.sin, (torch.randn(3, dtype=torch.float64),)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = list(sys.path)
    assert load_target("my_cases:Cases.sine").name == "my_cases:Cases.sine"
    assert sys.path == before


def test_quiet_prints_the_verdict_line_only():
    code, out, err = run("run", "examples/bad_gelu.py:case", "-q")
    assert code == 1 and len(out.strip().splitlines()) == 1 and "FAIL" in out and not err.strip()


def test_quiet_on_every_command(tmp_path):
    for command in main.commands.values():
        assert "--quiet" in [opt for p in command.params for opt in p.opts], command.name
    code, out, _ = run("backends", "-q")
    assert code == 0 and "eager" in out.split()
    code, out, _ = run("graph", "examples/bad_gelu.py:case", "--out", str(tmp_path / "g.dot"), "-q")
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'g.dot'} (dot, ")


def test_python_m_gradaudit_help_names_the_program():
    result = subprocess.run([sys.executable, "-m", "gradaudit", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0 and result.stdout.startswith("Usage: gradaudit [OPTIONS] COMMAND")
    for command in ("run", "compare", "graph", "suite", "backends"):
        assert f"  {command} " in result.stdout


def test_very_verbose_logs_the_phases_on_stderr_and_keeps_stdout_clean():
    script = Path(sys.executable).parent / "gradaudit"
    result = subprocess.run([str(script), "run", "examples/bad_gelu.py:case", "-vv", "--json", "-"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert json.loads(result.stdout)["ok"] is False
    for words in ("INFO gradaudit.cli: loading examples/bad_gelu.py:case", "INFO gradaudit.cli: audit done",
                  "DEBUG gradaudit.cli: finding faulty_backward"):
        assert words in result.stderr, result.stderr


def test_compare_defaults_to_the_usable_backends_and_says_so(monkeypatch):
    from gradaudit.cli import compare
    from gradaudit.registry import describe_backends

    usable = [name for name, availability, _ in describe_backends() if availability.usable]
    assert compare.usable_backends()[0] == "eager" and sorted(compare.usable_backends()) == sorted(usable)
    monkeypatch.setattr(compare, "usable_backends", lambda: ["eager"])  # the others are test_compare's
    code, _, err = run("compare", "examples/bad_gelu.py:fixed")
    assert code == 0 and "comparing eager (the usable backends here" in err


def test_output_paths_are_refused_in_one_line_before_the_work(tmp_path):
    for args, words in [(("--json", str(tmp_path)), "--json"), (("--json", str(tmp_path / "no" / "r.json")),
                                                                "no such directory")]:
        code, _, err = run("run", "examples/bad_gelu.py:fixed", *args)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
