"""Every way two backends can disagree, on real torch-xla and onnxruntime: results of another shape, dtype or
number, NaN on one side only, a backend raising where eager float64 runs. Each case plants the difference in
a function that asks which device it runs on, the way a backend's own kernel would differ."""
import math

import pytest
import torch
from click.testing import CliRunner

import gradaudit
from gradaudit.cli import main

pytest.importorskip("torch_xla", reason="torch-xla is not installed")


def on_xla(x: torch.Tensor) -> bool:
    return x.device.type == "xla"


def errors(report, backend="xla"):
    return [f for f in report.findings if f.severity == "error" and f.details.get("backend") == backend]


def keepdim_on_xla(x):
    return torch.sum(x * x, dim=0, keepdim=on_xla(x))


def float32_on_xla(x):
    y = torch.sin(x)
    return y.float() if on_xla(x) else y


def extra_output_on_xla(x):
    return (torch.sin(x), torch.cos(x)) if on_xla(x) else (torch.sin(x),)


def nan_on_xla(x):
    return torch.log(x) if on_xla(x) else torch.log(x.abs())


def raises_on_xla(x):
    if on_xla(x):
        raise RuntimeError("planted: no kernel for this op on the device")
    return torch.tanh(x)


class SquareWhoseDoubleBackwardFailsOnXla(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if on_xla(x) and torch.is_grad_enabled():  # building a graph of the backward: order 2
            raise RuntimeError("planted: double backward not lowered")
        return 2 * x * grad


def double_backward_raises_on_xla(x):
    return SquareWhoseDoubleBackwardFailsOnXla.apply(x)


def mixed():
    return torch.tensor([[1.5, -2.0, 0.5], [-0.25, 3.0, -1.0]], dtype=torch.float64)


def test_output_of_another_shape_is_a_forward_divergence_localized_to_its_op():
    report = gradaudit.compare(keepdim_on_xla, (mixed(),), backends=["xla"], order=2)
    (finding,) = errors(report)
    assert finding.kind == "forward_divergence", report
    assert "shape [1, 3] where eager float64 gives [3]" in finding.message
    assert finding.op is not None and "sum" in finding.op, finding
    assert not [c for c in report.checks if c.order > 0], "gradients of different functions are not compared"
    assert any("differ in form" in note["reason"] for note in report.skipped)


def test_output_of_another_dtype_is_a_forward_divergence():
    report = gradaudit.compare(float32_on_xla, (mixed(),), backends=["xla"])
    (finding,) = errors(report)
    assert finding.kind == "forward_divergence"
    assert "dtype float32 where float64 is expected" in finding.message


def test_another_number_of_outputs_is_a_forward_divergence():
    report = gradaudit.compare(extra_output_on_xla, (mixed(),), backends=["xla"])
    (finding,) = errors(report)
    assert finding.kind == "forward_divergence"
    assert "2 results where eager float64 gives 1" in finding.message


def test_nan_on_one_side_only_is_a_forward_divergence_naming_the_element():
    report = gradaudit.compare(nan_on_xla, (mixed(),), backends=["xla"])
    (finding,) = errors(report)
    assert finding.kind == "forward_divergence"
    assert "NaN where eager float64 gives" in finding.message
    check = next(c for c in report.checks if c.order == 0 and not c.ok)
    assert math.isinf(check.max_abs_err) and check.worst_index == [1]


def test_nan_on_both_sides_agrees():
    x = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    from gradaudit.core.parity import elementwise_gaps

    assert elementwise_gaps(torch.log(x), torch.log(x)).max() == 0
    assert math.isinf(elementwise_gaps(torch.log(-x), torch.log(x)).max())


def test_backend_raising_in_the_forward_is_a_finding_not_an_audit_error():
    report = gradaudit.compare(raises_on_xla, (mixed(),), backends=["xla"], order=2)
    (finding,) = errors(report)
    assert finding.kind == "backend_error" and finding.order == 0
    assert "planted: no kernel" in finding.message and "the forward" in finding.message


def test_backend_raising_at_order_2_keeps_the_order_1_verdict():
    report = gradaudit.compare(double_backward_raises_on_xla, (mixed(),), backends=["xla"], order=2)
    (finding,) = errors(report)
    assert finding.kind == "backend_error" and finding.order == 2, report
    assert "double backward not lowered" in finding.message
    assert [c.ok for c in report.checks if c.order == 1] == [True]


def test_the_cli_reports_a_backend_error_with_exit_1_and_no_traceback(tmp_path):
    target = tmp_path / "case.py"
    target.write_text("import torch\n"
                      "def f(x):\n"
                      "    if x.device.type == 'xla':\n"
                      "        raise RuntimeError('planted device failure')\n"
                      "    return x.sin()\n"
                      "def case():\n"
                      "    return f, (torch.randn(3, dtype=torch.float64),)\n")
    result = CliRunner().invoke(main, ["compare", f"{target}:case", "--backends", "eager,xla"])
    assert result.exit_code == 1, result.output
    assert "backend_error" in result.output and "planted device failure" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- real torch-xla 2.9.0 behaviours
def test_complex_results_are_compared_despite_the_lossy_complex_copy_to_the_host():
    # torch-xla 2.9 drops the imaginary parts when a complex tensor is copied to the CPU; results travel as
    # their real view, so a correct complex op agrees.
    pairs = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    report = gradaudit.compare(torch.view_as_complex, (pairs,), backends=["xla"], order=2)
    assert report.ok, report
    assert not errors(report)


def test_a_float64_derivative_a_float32_constant_away_is_a_divergence():
    # XLA's hardsigmoid backward multiplies by 1/6 in float32: 3e-8 relative, beyond sqrt(float64 eps).
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    report = gradaudit.compare(torch.nn.functional.hardsigmoid, (x,), backends=["xla"])
    (finding,) = errors(report)
    assert finding.kind == "backward_divergence" and finding.order == 1


def test_gradient_gaps_within_sqrt_eps_of_the_scale_are_precision_loss_warnings():
    # XLA's float64 eigh iterates to about 1e-9: less accurate than LAPACK, not wrong.
    a = torch.tensor([[2.0, 0.3, -0.1], [0.3, 1.0, 0.4], [-0.1, 0.4, -1.5]], dtype=torch.float64)
    report = gradaudit.compare(torch.linalg.eigvalsh, (a,), backends=["xla"])
    assert report.ok, report
    for finding in report.findings:
        assert finding.severity == "warning" and finding.details["relative_to_scale"] < 1.5e-8


def test_second_derivatives_that_cancel_to_zero_keep_the_first_order_scale():
    # copysign's second derivative is 0 everywhere; XLA computes about 1e-17 of rounding instead.
    x = torch.tensor([1.5, -0.3, 2.0], dtype=torch.float64)
    y = torch.tensor([-1.0, 2.0, -0.5], dtype=torch.float64)
    report = gradaudit.compare(torch.copysign, (x, y), backends=["xla"], order=2)
    assert report.ok, report


def test_a_real_shape_changing_reduction_is_reported_and_localized_to_its_op():
    # torch-xla 2.9.0: the nuclear norm over dims (1, 2) of a [5, 3, 4] batch reduces the wrong dims and
    # returns 3 values where eager returns 5 (with gradients enabled the tensor even claims shape []).
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = gradaudit.compare(lambda t: torch.norm(t, p="nuc", dim=(1, 2)), (x,), backends=["xla"])
    (finding,) = errors(report)
    assert finding.kind == "forward_divergence"
    assert "shape [3] where eager float64 gives [5]" in finding.message
    assert finding.op == "aten._linalg_svd"


def test_a_float32_underflow_that_eager_float32_shares_is_precision_not_a_divergence():
    # 0.05**120 is 7.5e-157 in float64 and 0 in float32, on onnxruntime and on eager alike.
    x = torch.full((3, 40), 0.05, dtype=torch.float64)
    report = gradaudit.compare(lambda t: t.prod(), (x,), backends=["onnx"], dtype="float32")
    assert report.ok, report
    assert {f.severity for f in report.findings} == {"warning"}
    assert all("float32 precision, not the backend" in f.message for f in report.findings)
    assert {c.status for c in report.checks if c.order == 0} == {"precision_loss"}
