"""Start-up: ``--help``, ``--version``, the quick ``gradaudit backends`` and configuration errors never import torch
(nor torch-xla, onnxruntime, onnx), each checked in a fresh process with ``-X importtime``; ``backends --check``
still loads each backend and tells the real state."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradaudit.cli import main

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "torch_xla", "onnxruntime", "onnx", "onnxscript", "networkx", "jinja2"}


def gradaudit(*argv: str, cwd: Path = ROOT, env: dict | None = None) -> tuple[int, list[str], str, set[str]]:
    """Run ``python -m gradaudit ARGV`` with ``-X importtime`` (as an environment variable, so that Python
    processes it starts report too): (exit code, its own stderr lines, stdout, the top-level packages it imported
    that are in HEAVY)."""
    result = subprocess.run([sys.executable, "-m", "gradaudit", *argv], cwd=cwd, capture_output=True, text=True,
                            timeout=120, env={**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    own = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    return result.returncode, own, result.stdout, imported & HEAVY


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["backends"], ["backends", "-q"],
                                  *[[name, "--help"] for name in sorted(main.commands)]],
                         ids=" ".join)
def test_commands_that_run_no_audit_import_no_torch(argv):
    code, errors, out, heavy = gradaudit(*argv)
    assert code == 0, errors
    assert out.strip()
    assert heavy == set(), f"gradaudit {' '.join(argv)} imported {sorted(heavy)}"


def test_the_version_is_the_package_version_without_importing_it():
    import gradaudit as package

    code, _, out, heavy = gradaudit("--version")
    assert code == 0 and package.__version__ in out and not heavy


@pytest.mark.parametrize("pyproject, env, message", [
    ("[tool.gradaudit.run]\norder = 3\n", {}, "[tool.gradaudit.run]: order = 3: 3 is not in the range"),
    ("[tool.gradaudit]\nsede = 3\n", {}, "unknown key 'sede' (did you mean 'seed'?)"),
    ("", {"GRADAUDIT_SEED": "-1"}, "GRADAUDIT_SEED=-1: -1 is not in the range"),
], ids=["bad value", "unknown key", "bad environment value"])
def test_a_configuration_error_is_one_line_exit_2_without_torch(tmp_path, pyproject, env, message):
    (tmp_path / "pyproject.toml").write_text(pyproject)
    code, errors, _, heavy = gradaudit("run", "case.py:nothing", cwd=tmp_path, env=env)
    assert code == 2 and len(errors) == 1 and errors[0].startswith("gradaudit: error:"), errors
    assert message in errors[0]
    assert heavy == set()


def test_the_console_script_starts_without_torch():
    script = Path(sys.executable).parent / "gradaudit"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert result.returncode == 0 and "Usage: gradaudit" in result.stdout
    assert "click" in imported and not imported & HEAVY


def test_import_gradaudit_is_light_and_its_names_load_on_use():
    script = ("import sys, gradaudit; light = 'torch' not in sys.modules; "
              "from gradaudit import check, Report, AuditError; "
              "print(light, 'torch' in sys.modules, check.__module__, Report.__module__, sorted(gradaudit.__all__))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("True True gradaudit.api gradaudit.report"), out


def test_the_pytest_plugin_loads_without_torch():
    """Every pytest session where gradaudit is installed loads gradaudit.testing (a pytest11 entry point)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gradaudit.testing"],
                            capture_output=True, text=True, timeout=120)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert result.returncode == 0 and "gradaudit" in imported and not imported & HEAVY


def test_the_graph_formats_written_out_in_the_cli_are_the_renderers():
    from gradaudit.analyzers.render import FORMATS
    from gradaudit.cli import graph

    assert graph.FORMATS == FORMATS


# ------------------------------------------------------------------ a third party's backends, quick and deep
BACKENDS_MODULE = '''\
import torch  # a backend's module imports torch: the quick listing must read it, not run it

from gradaudit.backends.base import Availability, Backend


class ReadyBackend(Backend):
    name = "fake_ready"
    description = "every module it needs is installed"
    required_modules = ("torch",)

    def availability(self):
        return Availability(False, "switched off by the test")

    def default_device(self):
        return "cpu"

    def load(self, case, device=None, dtype=None):
        raise NotImplementedError


class MissingBackend(ReadyBackend):
    description = "needs a module nobody has"
    required_modules = ("torch", "gradaudit_test_no_such_module")


class SilentBackend(ReadyBackend):
    description = "declares no modules"
'''


@pytest.fixture(scope="module")
def third_party(tmp_path_factory) -> dict:
    """The environment of a process that sees the distribution 'fakeback', whose package imports torch and
    registers three backends: one installed, one missing a module, one that declares nothing."""
    root = tmp_path_factory.mktemp("fakeback")
    info = root / "fakeback-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeback\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [gradaudit.backends]
        fake_ready = fakeback.backends:ReadyBackend
        fake_missing = fakeback.backends:MissingBackend
        fake_silent = fakeback.backends:SilentBackend
        """))
    (root / "fakeback").mkdir()
    (root / "fakeback" / "__init__.py").write_text("import torch  # the package imports torch too\n")
    (root / "fakeback" / "backends.py").write_text(BACKENDS_MODULE)
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "400"}


def rows(out: str) -> dict[str, str]:
    """Table rows by their first word (the backend's name)."""
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


def test_the_quick_listing_reads_what_a_third_party_backend_declares(third_party):
    code, errors, out, heavy = gradaudit("backends", env=third_party)
    assert code == 0 and heavy == set(), (errors, heavy)
    table = rows(out)
    assert " yes " in table["fake_ready"] and "found: torch" in table["fake_ready"]
    assert " no " in table["fake_missing"] and "not found: gradaudit_test_no_such_module" in table["fake_missing"]
    assert " unknown " in table["fake_silent"] and "declares no literal required_modules" in table["fake_silent"]
    assert " yes " in table["eager"]
    code, _, out, heavy = gradaudit("backends", "-q", env=third_party)
    names = out.split()
    assert code == 0 and heavy == set() and "fake_ready" in names and "eager" in names
    assert "fake_missing" not in names and "fake_silent" not in names


@pytest.mark.slow  # loads every backend: torch-xla, onnxruntime and inductor (about 8 s of CPU)
def test_backends_check_loads_and_probes_each_backend(third_party):
    code, errors, out, heavy = gradaudit("backends", "--check", env=third_party)
    assert code == 0, errors
    assert "torch" in heavy  # it really loaded them
    table = rows(out)
    assert " no " in table["fake_ready"] and "switched off by the test" in table["fake_ready"]
    assert " yes " in table["eager"]
    _, _, quick, _ = gradaudit("backends", "-q", env=third_party)
    _, _, deep, _ = gradaudit("backends", "--check", "-q", env=third_party)
    assert "eager" in deep.split()
    assert set(deep.split()) <= set(quick.split())  # whatever really runs has its modules installed
