"""The checker on real torch: planted faults are caught at the right order and wrt, correct code passes."""
import pytest
import torch

import fixtures as fx
import gradaudit
from gradaudit import AuditError


def kinds(report, severity="error"):
    return [f.kind for f in report.findings if f.severity == severity]


# ------------------------------------------------------------------ planted faults
@pytest.mark.parametrize("factory, order, kind, wrt", [
    (fx.scaled_backward, 1, "faulty_backward", "args[0]"),
    (fx.wrong_for_negatives, 1, "faulty_backward", "args[0]"),
    (fx.single_element_fault, 1, "faulty_backward", "args[0]"),
    (fx.wrong_parameter_gradient, 1, "faulty_backward", "fc2.bias"),
    (fx.custom_op_fault, 1, "faulty_backward", "args[0]"),
    (fx.complex_fault, 1, "faulty_backward", "args[0]"),
    (fx.detached_second_order, 2, "faulty_double_backward", "args[0]"),
    (fx.ctx_intermediate_second_order, 2, "faulty_double_backward", "args[0]"),
])
def test_planted_fault_is_caught_at_its_order_and_wrt(factory, order, kind, wrt):
    report = gradaudit.check(*factory(), order=2)
    assert not report.ok
    faults = [f for f in report.findings if f.severity == "error"]
    assert [f.kind for f in faults] == [kind], report
    assert faults[0].order == order and faults[0].wrt == wrt, report
    failing_orders = {c.order for c in report.checks if not c.ok}
    assert failing_orders == {order}, report


def test_single_wrong_element_is_named():
    report = gradaudit.check(*fx.single_element_fault())
    check = next(c for c in report.checks if not c.ok)
    assert check.worst_index == [137]
    assert check.analytical == pytest.approx(2 * check.numerical, rel=1e-6)


def test_only_the_wrong_parameter_fails():
    report = gradaudit.check(*fx.wrong_parameter_gradient())
    failing = {c.wrt for c in report.checks if not c.ok}
    assert failing == {"total", "fc2.bias"}, report


def test_wrong_only_for_negative_inputs_passes_on_positive_inputs():
    assert gradaudit.check(*fx.wrong_for_negatives(positive_only=True)).ok


def test_fast_mode_catches_but_does_not_localize():
    report = gradaudit.check(*fx.single_element_fault(), mode="fast")
    assert kinds(report) == ["faulty_backward"]
    assert all(c.worst_index is None for c in report.checks)


def test_full_jacobian_mode_names_output_and_input_element():
    report = gradaudit.check(*fx.scaled_backward(), mode="full")
    check = next(c for c in report.checks if not c.ok)
    assert check.method == "full_jacobian"
    assert check.output.startswith("out") and check.worst_index is not None
    assert gradaudit.check(torch.sin, (fx.randn(4),), mode="full", order=2).ok


def test_full_mode_refuses_huge_jacobians():
    with pytest.raises(AuditError, match="--mode full"):
        gradaudit.check(torch.sin, (fx.randn(1000),), mode="full")


def test_forward_mode_is_a_third_oracle():
    class BadJvp(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x.exp()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.saved_tensors[0]

        @staticmethod
        def jvp(ctx, tangent):
            return tangent  # wrong: should be tangent * exp(x)

    report = gradaudit.check(BadJvp.apply, (fx.randn(4),))
    assert kinds(report) == ["faulty_forward_ad"], report
    assert all(c.ok for c in report.checks if c.method == "reverse")


def test_float32_only_fault_is_caught_against_the_float64_shadow():
    report = gradaudit.check(*fx.float32_only_fault(), dtype="float32")
    assert not report.ok
    assert any(c.method == "dtype_parity" and not c.ok for c in report.checks)
    assert gradaudit.check(*fx.float32_only_fault()).ok  # in float64 the backward is right


def test_nondeterministic_backward_is_reported_as_its_own_kind():
    report = gradaudit.check(*fx.nondeterministic())
    assert "nondeterministic_backward" in kinds(report, "warning")


# ------------------------------------------------------------------ correct code passes
CORRECT = [fx.conv_batchnorm, fx.lstm, fx.multihead_attention, fx.dropout_mlp, fx.sparse_embedding,
           fx.transformer_layer, fx.groupnorm_gelu, fx.plain_function]


@pytest.mark.parametrize("factory", CORRECT + [fx.complex_function, fx.lazy_linear], ids=lambda f: f.__name__)
def test_correct_float64_cases_pass_orders_1_and_2(factory):
    report = gradaudit.check(*factory(), order=2)
    assert report.ok, report
    assert {c.order for c in report.checks} == {1, 2}
    assert not report.findings, report


@pytest.mark.parametrize("factory", CORRECT, ids=lambda f: f.__name__)
def test_correct_float32_cases_pass_at_defaults(factory):
    report = gradaudit.check(*factory(dtype=torch.float32), order=2)
    assert report.ok, report
    assert report.dtype == "float32"


def test_torch_gradcheck_false_alarms_on_a_correct_float32_module():
    """What the float64 shadow buys: torch's gradcheck at defaults rejects correct float32 code."""
    model, (x,) = fx.groupnorm_gelu(dtype=torch.float32)
    assert not torch.autograd.gradcheck(model, (x.requires_grad_(),), raise_exception=False)
    assert gradaudit.check(model, (x,)).ok


def test_relu_at_exact_zeros_is_a_nondifferentiable_point_not_a_fault():
    report = gradaudit.check(*fx.relu_at_zeros(), order=2)
    assert report.ok
    assert kinds(report) == []
    finding = next(f for f in report.findings if f.kind == "nondifferentiable_point")
    assert finding.details["kink_elements"]["args[0]"] == [[0, 1], [2, 3]]


@pytest.mark.parametrize("fn, kinks", [
    (lambda x: x.clamp(-0.5, 0.5), (0.5, -0.5)),
    (torch.nn.functional.hardswish, (3.0, -3.0)),
    (torch.nn.functional.relu6, (0.0, 6.0)),
], ids=["clamp", "hardswish", "relu6"])
def test_kinks_of_other_ops_are_classified(fn, kinks):
    x = fx.randn(6)
    x[1], x[4] = kinks
    report = gradaudit.check(fn, (x,))
    assert report.ok and not kinds(report)
    finding = next(f for f in report.findings if f.kind == "nondifferentiable_point")
    assert [1] in finding.details["kink_elements"]["args[0]"]


def test_abs_at_zero_needs_no_excuse():
    """Central differences of |x| at 0 give 0, torch's subgradient: nothing to report."""
    x = fx.randn(5)
    x[2] = 0.0
    report = gradaudit.check(torch.abs, (x,))
    assert report.ok and not report.findings


def test_max_ties_are_classified():
    """max over a dim sends the whole gradient to one of the tied elements: a tie is a kink."""
    x = torch.tensor([[1.0, 3.0], [1.0, -2.0], [0.5, 4.0]], dtype=torch.float64)
    report = gradaudit.check(lambda t: t.max(dim=0).values, (x,), probes=8)
    assert report.ok and not kinds(report)
    finding = next(f for f in report.findings if f.kind == "nondifferentiable_point")
    assert finding.details["kink_elements"]["args[0]"] == [[0, 0], [1, 0]]


# ------------------------------------------------------------------ nothing the user gave is modified
def test_audit_leaves_module_inputs_rng_and_flags_untouched():
    model, (x,) = fx.conv_batchnorm()
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x_before = x.clone()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    report = gradaudit.check(model, (x,), order=2, dtype="float32")
    assert report.ok
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    assert next(model.parameters()).dtype == torch.float64
    assert all(p.grad is None for p in model.parameters())
    assert "0.bias" not in {c.wrt for c in report.checks}  # frozen parameters are constants


def test_lazy_module_is_initialized_on_a_copy():
    model, args = fx.lazy_linear()
    assert gradaudit.check(model, args).ok
    assert isinstance(model[0].weight, torch.nn.parameter.UninitializedParameter)


def test_report_contract():
    report = gradaudit.check(*fx.wrong_parameter_gradient(), seed=5)
    data = report.to_dict()
    for key in ("gradaudit", "target", "backend", "device", "dtype", "seed", "ok", "checks", "findings", "stats"):
        assert key in data
    assert data["seed"] == 5 and data["ok"] is False and data["backend"] == "eager"
    check = data["checks"][0]
    for key in ("order", "wrt", "ok", "max_abs_err", "max_rel_err", "worst_index", "analytical", "numerical"):
        assert key in check
    for key in ("seconds", "forward_evals", "backward_evals", "compilations"):
        assert key in data["stats"]
    assert "fc2.bias" in str(report) and "FAIL" in str(report)


def test_seed_changes_probes_but_not_verdicts():
    first = gradaudit.check(*fx.lstm(), seed=1)
    second = gradaudit.check(*fx.lstm(), seed=2)
    assert first.ok and second.ok
    assert first.checks[0].analytical != second.checks[0].analytical


@pytest.mark.parametrize("call, message", [
    (lambda: gradaudit.check(torch.sin, (torch.arange(3),)), "nothing to differentiate"),
    (lambda: gradaudit.check(torch.sin, (torch.tensor([float("nan")]),)), "contains NaN"),
    (lambda: gradaudit.check(lambda x: x / 0, (torch.ones(2),)), "NaN or Inf"),
    (lambda: gradaudit.check(torch.sin, (torch.ones(2),), order=3), "order"),
    (lambda: gradaudit.check(torch.sin, (torch.ones(2),), backend="nope"), "unknown backend"),
    (lambda: gradaudit.check(torch.sin, (torch.ones(2),), dtype="int8"), "unknown dtype"),
    (lambda: gradaudit.check(42, ()), "not callable"),
])
def test_bad_input_raises_audit_error(call, message):
    with pytest.raises(AuditError, match=message):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float32_audit_passes_and_restores_tf32_flags():
    torch.backends.cuda.matmul.allow_tf32 = True
    model, (x,) = fx.conv_batchnorm(dtype=torch.float32)
    report = gradaudit.check(model, (x,), device="cuda", order=2)
    assert report.ok, report
    assert report.device.startswith("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 is True
    assert next(model.parameters()).device.type == "cpu"
    assert not gradaudit.check(*fx.scaled_backward(), device="cuda").ok


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(AuditError, match="CUDA is not available"):
        gradaudit.check(torch.sin, (fx.randn(3),), device="cuda")
