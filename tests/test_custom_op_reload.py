"""A target file is run once per process, as Python's import runs a module once.

Running a file again re-registers what it registers. ``torch.library.custom_op`` then destroys the earlier
definition of the op, and everything still holding the earlier one (the module the tests import as
``fixtures``, a case loaded before) calls a freed operator: the suite's segfault in
``test_core.py::test_planted_fault_is_caught_at_its_order_and_wrt[custom_op_fault]`` (issue 22), or
``ValueError: basic_string::_M_create`` when the freed memory held something else by then.
"""
import gc
import importlib
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch
from torch._library.custom_ops import OPDEF_TO_LIB

from gradaudit.case import load_target
from gradaudit.errors import AuditError

ROOT = Path(__file__).resolve().parent.parent

CUSTOM_OP_FILE = '''
import torch

@torch.library.custom_op("{namespace}::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return 2 * x

@twice.register_fake
def _(x):
    return torch.empty_like(x)

def case():
    return twice, (torch.arange(3.0, dtype=torch.float64),)
'''

LIBRARY_DEF_FILE = '''
import torch

lib = torch.library.Library("{namespace}", "DEF")
lib.define("thrice(Tensor x) -> Tensor")
lib.impl("thrice", lambda x: 3 * x, "CompositeExplicitAutograd")

def case():
    return torch.ops.{namespace}.thrice.default, (torch.arange(3.0, dtype=torch.float64),)
'''


def target_file(folder: Path, template: str) -> tuple[Path, str]:
    """A target file defining ops in a namespace of its own (ops cannot be unregistered across tests)."""
    namespace = f"gradaudit_reload_{uuid.uuid4().hex[:10]}"
    path = folder / f"ops_{namespace}.py"
    path.write_text(template.format(namespace=namespace))
    return path, namespace


def op_is_live(op) -> bool:
    """Whether a CustomOpDef's definition is still the registered one (its Library not destroyed)."""
    return op._lib.m is not None and OPDEF_TO_LIB.get(op._qualname) is op._lib


def test_a_file_loaded_twice_keeps_the_custom_op_of_the_first_load(tmp_path):
    path, _ = target_file(tmp_path, CUSTOM_OP_FILE)
    first = load_target(f"{path}:case")
    second = load_target(f"{path}:case")
    gc.collect()
    assert op_is_live(first.fn), "loading the file again destroyed the op the first case holds"
    assert second.fn is first.fn
    assert first.fn(*first.args).tolist() == [0.0, 2.0, 4.0]


def test_a_file_imported_by_name_is_the_module_a_path_target_uses(tmp_path, monkeypatch):
    path, _ = target_file(tmp_path, CUSTOM_OP_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    imported = importlib.import_module(path.stem)
    monkeypatch.setitem(sys.modules, path.stem, imported)  # removed from sys.modules after the test
    case = load_target(f"{path}:case")
    gc.collect()
    assert case.fn is imported.twice
    assert op_is_live(imported.twice), "loading the file by path destroyed the op of the imported module"
    assert imported.twice(torch.ones(2, dtype=torch.float64)).tolist() == [2.0, 2.0]


def test_a_file_defining_a_library_loads_twice(tmp_path):
    path, namespace = target_file(tmp_path, LIBRARY_DEF_FILE)
    first = load_target(f"{path}:case")  # kept alive: its module's Library still owns the op's definition
    second = load_target(f"{path}:case")
    assert second.fn(*second.args).tolist() == first.fn(*first.args).tolist() == [0.0, 3.0, 6.0]


def test_a_file_edited_since_it_ran_runs_again(tmp_path):
    path = tmp_path / "edited_target.py"
    path.write_text("import torch\ndef case():\n    return torch.sin, (torch.ones(2, dtype=torch.float64),)\n")
    assert load_target(f"{path}:case").fn is torch.sin
    path.write_text("import torch\ndef case():\n    return torch.cos, (torch.ones(2, dtype=torch.float64),)\n# +\n")
    assert load_target(f"{path}:case").fn is torch.cos


def test_a_file_whose_import_failed_is_run_again(tmp_path):
    path = tmp_path / "fails_once.py"
    marker = tmp_path / "ran_once"
    path.write_text(textwrap.dedent(f"""
        import pathlib, torch
        marker = pathlib.Path({str(marker)!r})
        if not marker.exists():
            marker.write_text("x")
            raise RuntimeError("first import fails")
        def case():
            return torch.sin, (torch.ones(2, dtype=torch.float64),)
        """))
    with pytest.raises(AuditError, match="first import fails"):
        load_target(f"{path}:case")
    assert load_target(f"{path}:case").fn is torch.sin


STRESS = """
import gc, sys
import torch
sys.path.insert(0, "tests")
import fixtures  # as the tests import it
import gradaudit
from gradaudit.case import load_target

loaded = []
for _ in range(3):
    loaded.append(load_target("tests/fixtures.py:custom_op_fault"))
    gc.collect()
# The op fixtures.softsign calls is still the registered one (else it calls a freed definition: a segfault,
# an internal assert or a garbage string, or by luck of the heap, the new definition at the old address).
print("live", fixtures.softsign._lib.m is not None
      and fixtures.softsign._opoverload is torch.ops.gradaudit_tests.softsign.default)
fn, args = fixtures.custom_op_fault()
print("called", tuple(fn(*args).shape), *(tuple(case.fn(*case.args).shape) for case in loaded))
report = gradaudit.check(fn, args, localize=False)
print("caught", [str(finding.kind) for finding in report.findings if finding.severity == "error"])
"""


def test_the_fixture_op_survives_its_file_being_loaded_by_path_again_and_again():
    """The suite's sequence, in a process of its own: tests/fixtures.py imported as ``fixtures``, then loaded
    by path. Before the fix the op ``fixtures`` holds is no longer the registered one (always), and calling it
    reads a freed definition: a segfault, an internal assert, or a pass when the heap put the new definition
    at the old address (most runs)."""
    result = subprocess.run([sys.executable, "-X", "faulthandler", "-c", STRESS], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "live True" in result.stdout
    assert "called (3, 3) (3, 3) (3, 3) (3, 3)" in result.stdout
    assert "caught ['faulty_backward']" in result.stdout
