"""Issue 23, part 1: oracles that torch cannot run are skipped with a note, never fatal (C++ custom Functions have
no forward mode, some no double backward); order 2 differentiates the backward with respect to its cotangent as
well (a backward computed without a graph); a backward that writes into what it saved is named as such; NaN
gradients read as NaN. The C++ Functions are built from tests/data/cpp_functions.cpp with
``torch.utils.cpp_extension`` (g++ and ninja; about 40 s the first time, cached per user after that)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

import gradaudit

sys.path.insert(0, str(Path(__file__).parent / "data"))
import extension_targets as targets  # noqa: E402

TARGETS = Path(__file__).parent / "data" / "extension_targets.py"
# (ninja: a system binary, or the pip package of the test extra)
NO_COMPILER = shutil.which("g++") is None or (shutil.which("ninja") is None and find_spec("ninja") is None)
cpp = pytest.mark.skipif(NO_COMPILER, reason="building a C++ extension needs g++ and ninja")


def errors(report) -> list:
    return [f for f in report.findings if f.severity == "error"]


def skipped(report, what: str) -> str:
    return next(s["reason"] for s in report.skipped if s["what"] == what)


# ------------------------------------------------------------------------------------------ C++ Functions
@pytest.fixture(scope="module")
def cpp_module():
    return targets.cpp_module()  # (built once per user and source; see extension_targets.cpp_module)


@cpp
@pytest.mark.slow
def test_cpp_function_passes_with_forward_mode_skipped_and_named(cpp_module):
    report = gradaudit.check(*targets.cpp_cube(), order=2)
    assert report.ok, report
    reason = skipped(report, "forward-mode AD (order 1)")
    assert "jvp is not implemented for the c++ API of custom Function" in reason
    # its backward is made of differentiable ops: double backward runs, in x and in the cotangent
    assert {(c.order, c.wrt) for c in report.checks} == {(1, "args[0]"), (2, "args[0]"), (2, "grad_output[out]")}
    # vmap cannot run a C++ Function either: batched evaluation falls back to one call per point, and says why
    batched = gradaudit.check(*targets.cpp_cube(), batch=True)
    assert batched.ok and "vmap cannot run the case" in batched.stats["batching"], batched.stats


@cpp
@pytest.mark.slow
def test_cpp_function_without_double_backward_skips_order_2_naming_the_oracle(cpp_module):
    report = gradaudit.check(*targets.cpp_once_cube(), order=2)
    assert report.ok and [c.order for c in report.checks] == [1], report
    reason = skipped(report, "order 2")
    assert "double backward" in reason and "double backwards on once_cube not supported" in reason


@cpp
@pytest.mark.slow
def test_cpp_function_with_a_wrong_backward_fails_at_order_1_named_at_its_node(cpp_module):
    report = gradaudit.check(*targets.cpp_wrong_cube())
    (finding,) = errors(report)
    assert finding.kind == "faulty_backward" and finding.wrt == "args[0]", report
    assert finding.node is not None and "CppNode<Cube>" in finding.node, finding
    assert finding.details["analytical"] == pytest.approx(2.9 / 3 * finding.details["numerical"], rel=1e-6)


@cpp
@pytest.mark.slow
def test_cli_runs_a_cpp_function_at_order_2_without_exit_2(cpp_module, tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "gradaudit", "run", f"{TARGETS}:cpp_cube", "--order", "2",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert any(s["what"] == "forward-mode AD (order 1)" for s in report["skipped"])


# ------------------------------------------------------------------------------------------ order 2 in the cotangent
def test_backward_without_a_graph_on_a_linear_op_fails_at_order_2_named_at_its_node():
    assert gradaudit.check(*targets.graphless_scale()).ok  # order 1 is right
    report = gradaudit.check(*targets.graphless_scale(), order=2)
    (finding,) = errors(report)
    assert finding.kind == "faulty_double_backward" and finding.wrt == "grad_output[out]", report
    assert finding.node == "GraphlessScaleBackward", finding
    assert "without a graph" in finding.message and "grad_output" in finding.message
    assert finding.details["graphless_backward"] == ["grad[args[0]]"]
    # with the cotangent held fixed the order-2 test sees nothing: the derivative in x is 0 either way
    assert [c.ok for c in report.checks if c.order == 2 and c.wrt == "args[0]"] == [True]


def test_differentiable_backward_passes_in_the_cotangent():
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = gradaudit.check(torch.nn.functional.softplus, (x,), order=2)
    assert report.ok, report
    assert [c.ok for c in report.checks if c.wrt.startswith("grad_output")] == [True]


# ------------------------------------------------------------------------------------------ non-reentrant backward
def test_backward_writing_into_its_saved_inputs_is_named_as_such():
    report = gradaudit.check(*targets.stores_gradients_in_inputs(), localize=False)
    (finding,) = errors(report)
    assert finding.kind == "nonreentrant_backward", report
    assert "not reentrant" in finding.message and "writes into the tensors it saved" in finding.message
    assert finding.details["mutated_inputs"] == ["args[0]", "args[1]"]
    assert finding.node == "StoresGradientsInInputsBackward"
    # its first pass is right: no faulty_backward, no non-determinism warning
    assert all(c.ok for c in report.checks) and not [f for f in report.findings if f is not finding]


def test_random_noise_in_a_backward_is_not_called_non_reentrant():
    import fixtures

    report = gradaudit.check(*fixtures.nondeterministic())
    assert "nonreentrant_backward" not in [f.kind for f in report.findings]


# ------------------------------------------------------------------------------------------ NaN and Inf
def test_nan_returning_backward_says_nan_where_the_numerical_derivative_is_finite():
    fn, (x,) = targets.nan_at_one_element()
    report = gradaudit.check(fn, (x,), localize=False)
    (finding,) = errors(report)
    assert finding.kind == "faulty_backward"
    # (the derivative of <v, f> for a random signed cotangent v: 2 x[1] up to its sign)
    size = f"{abs(2 * float(x[1])):.6g}"
    expected = "the backward returns NaN at element [1] where the numerical derivative is "
    assert expected + size in finding.message or expected + "-" + size in finding.message, finding.message
    assert "|err| nan" not in finding.message and "error bar nan" not in finding.message


@pytest.mark.slow
def test_the_text_report_says_nan_never_err_nan():
    run = subprocess.run([sys.executable, "-m", "gradaudit", "run", f"{TARGETS}:nan_at_one_element", "--no-localize"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    text = run.stdout + run.stderr
    assert "the backward returns NaN at element [1]" in text and "analytical NaN vs numerical" in text
    assert "|err| nan" not in text and "error bar nan" not in text, text


# ------------------------------------------------------------------------------------------ whose exception
def test_a_double_backward_raising_in_python_skips_order_2_saying_where():
    report = gradaudit.check(*targets.python_once_square(), order=2)
    assert report.ok and {c.order for c in report.checks} == {1}, report
    reason = skipped(report, "order 2")
    assert "double backward" in reason and "python_once_square not supported" in reason
    assert "extension_targets.py" in reason  # (raised in the user's code: the note says where)


def test_the_cases_own_backward_raising_is_still_the_audits_failure():
    with pytest.raises(gradaudit.AuditError, match="planted failure in the backward"):
        gradaudit.check(*targets.raising_backward(), order=2)
