"""Option defaults from [tool.gradaudit] in pyproject.toml and GRADAUDIT_* environment variables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradaudit import config
from gradaudit.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXED = str(ROOT / "examples" / "bad_gelu.py") + ":fixed"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the working directory) whose pyproject.toml a test writes; no GRADAUDIT_* from the
    environment of whoever runs the tests."""
    for variable in [v for v in os.environ if v.startswith(config.ENV_PREFIX)]:
        monkeypatch.delenv(variable)
    monkeypatch.chdir(tmp_path)

    def write(text: str) -> Path:
        (tmp_path / "pyproject.toml").write_text(text)
        return tmp_path / "pyproject.toml"
    return write


def audit(*args, env=None):
    """The JSON report of ``gradaudit run FIXED ... --json -`` (exit code, report or None, stderr)."""
    result = CliRunner().invoke(main, ["run", FIXED, "--json", "-", "-q", *args], env=env,
                                catch_exceptions=False)
    report = json.loads(result.stdout) if result.exit_code in (0, 1) else None
    return result.exit_code, report, result.stderr


def test_pyproject_sets_defaults_and_command_tables_win_over_top_level(project):
    project('[tool.gradaudit]\nseed = 3\ndtype = "float32"\n\n[tool.gradaudit.run]\ndtype = "float64"\n')
    code, report, _ = audit()
    assert code == 0 and report["seed"] == 3 and report["dtype"] == "float64"


def test_precedence_command_line_then_environment_then_pyproject(project):
    project("[tool.gradaudit]\nseed = 3\n")
    assert audit(env={"GRADAUDIT_SEED": "5"})[1]["seed"] == 5
    assert audit("--seed", "7", env={"GRADAUDIT_SEED": "5"})[1]["seed"] == 7


def test_environment_flags_and_orders(project):
    code, report, _ = audit(env={"GRADAUDIT_ORDER": "2", "GRADAUDIT_NO_LOCALIZE": "1"})
    assert code == 0 and report["settings"]["order"] == 2 and {c["order"] for c in report["checks"]} == {1, 2}


def test_nearest_pyproject_is_found_from_a_subfolder(project, tmp_path, monkeypatch):
    project("[tool.gradaudit.run]\nseed = 11\n")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    assert audit()[1]["seed"] == 11


def test_lists_are_comma_separated_options(project):
    project('[tool.gradaudit.compare]\nbackends = ["eager"]\n')
    assert config.default_map(main, "compare") == {"backend_list": "eager"}


@pytest.mark.parametrize("text, env, words", [
    ("[tool.gradaudit]\nsed = 3\n", {}, "[tool.gradaudit]: unknown key 'sed' (did you mean 'seed'?)"),
    ("[tool.gradaudit.rnu]\nseed = 3\n", {}, "unknown key 'rnu' (did you mean 'run'?)"),
    ("[tool.gradaudit.run]\nbackends = 'eager'\n", {}, "[tool.gradaudit.run]: unknown key 'backends'"),
    ("[tool.gradaudit.run]\norder = 3\n", {}, "[tool.gradaudit.run]: order = 3: 3 is not in the range"),
    ('[tool.gradaudit]\ndtype = "float128"\n', {}, "dtype = 'float128': 'float128' is not one of"),
    ("[tool.gradaudit\n", {}, "pyproject.toml: cannot read it"),
    ("", {"GRADAUDIT_SEED": "abc"}, "GRADAUDIT_SEED=abc: 'abc' is not a valid integer"),
])
def test_bad_configuration_is_one_line_naming_key_and_file_exit_2(project, text, env, words):
    path = project(text)
    code, _, err = audit(env=env)
    assert code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if not env:
        assert str(path) in err


def test_unrelated_gradaudit_variables_are_not_options(project):
    code, report, _ = audit(env={"GRADAUDIT_NO_FORK": "1", "GRADAUDIT_SOMETHING": "x"})
    assert code == 0 and report["seed"] == 0


def test_configured_default_shows_in_help(project):
    project("[tool.gradaudit.run]\nseed = 42\n")
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0 and "default: 42" in result.output


def test_real_process_reads_pyproject_and_environment(project, tmp_path):
    project('[tool.gradaudit]\nseed = 3\n')
    result = subprocess.run([sys.executable, "-m", "gradaudit", "run", FIXED, "--json", "-", "-q"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GRADAUDIT_DTYPE": "float32"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["seed"] == 3 and report["dtype"] == "float32"
