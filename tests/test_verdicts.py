"""Verdicts on the op database's hard cases: no false alarm, no crash, no miss (issue 9's six classes)."""
import math

import pytest
import torch
from torch import nn

import fixtures as fx
import gradaudit
from gradaudit import AuditError

D = torch.float64


def errors(report):
    return [f for f in report.findings if f.severity == "error"]


def warnings_of(report, kind):
    return [f for f in report.findings if f.kind == kind and f.severity == "warning"]


# ------------------------------------------------------------------ 1. non-differentiable outputs
def test_outputs_that_do_not_require_grad_are_left_out_and_named():
    x = torch.randn(2, 3, dtype=D)
    report = gradaudit.check(lambda x: torch.native_layer_norm(x, [3], None, None, 1e-5), (x,), order=2)
    assert report.ok, report
    left_out = [s for s in report.skipped if s["what"].startswith("output")]
    assert left_out and "out[1], out[2]" in left_out[0]["what"], report.skipped


def test_a_detached_output_is_not_differentiated():
    report = gradaudit.check(lambda x: (x.sin(), x.detach() * 2), (torch.randn(3, dtype=D),))
    assert report.ok, report
    assert any("out[1]" in s["what"] for s in report.skipped)


def test_no_output_requiring_grad_is_an_audit_error():
    with pytest.raises(AuditError, match="no output .* requires grad"):
        gradaudit.check(lambda x: x.detach() * 2, (torch.randn(3, dtype=D),))


def test_a_wrong_gradient_beside_a_non_differentiable_output_is_caught():
    report = gradaudit.check(*fx.fault_beside_nondifferentiable_output())
    assert [f.kind for f in errors(report)] == ["faulty_backward"], report


# ------------------------------------------------------------------ 2. rounding of cancelling terms
def test_tanh_far_out_at_order_two_is_not_a_false_alarm():
    x = torch.tensor(7.5856719161270245, dtype=D)
    report = gradaudit.check(torch.tanh, (x,), order=2)
    assert report.ok and not report.findings, report


@pytest.mark.slow
def test_tanh_at_order_two_over_many_points_raises_no_alarm_and_no_kink():
    """The issue's measurement: 200 scalars from N(0, 9) (8 false errors and 6 spurious kinks before), plus
    fully saturated points where tanh rounds to +-1."""
    generator = torch.Generator().manual_seed(1)
    points = list(torch.randn(200, generator=generator, dtype=D) * 3) + [torch.tensor(v, dtype=D)
                                                                         for v in (-17.1, 19.5, 25.0, -40.0)]
    flagged = [float(p) for p in points if gradaudit.check(torch.tanh, (p,), order=2).findings]
    assert flagged == []


def test_a_wrong_second_derivative_of_a_saturating_function_is_caught():
    report = gradaudit.check(*fx.saturated_wrong_second_order(), order=2)
    assert [f.kind for f in errors(report)] == ["faulty_double_backward"], report


# ------------------------------------------------------------------ 3. domain edges
def test_log_next_to_zero_keeps_its_steps_in_the_domain():
    report = gradaudit.check(torch.log, (torch.tensor([1e-12, 0.5, 3.0], dtype=D),), order=2)
    assert report.ok and not errors(report), report


def test_sqrt_at_zero_is_a_nondifferentiable_point_naming_the_element():
    report = gradaudit.check(torch.sqrt, (torch.tensor([0.0, 0.5, 2.0], dtype=D),))
    assert report.ok, report
    (finding,) = warnings_of(report, "nondifferentiable_point")
    assert finding.details["kink_elements"]["args[0]"] == [[0]]
    assert "undefined" in finding.message


# ------------------------------------------------------------------ 4. a kink must be shown
def test_a_nan_backward_at_a_removable_singularity_is_a_fault_not_a_kink():
    report = gradaudit.check(*fx.sinc_nan_backward())
    (fault,) = [f for f in errors(report) if f.kind == "faulty_backward"]
    assert fault.details["worst_index"] == [2], report
    assert math.isnan(fault.details["analytical"])
    assert not warnings_of(report, "nondifferentiable_point")


def test_a_nan_double_backward_at_a_removable_singularity_is_caught():
    report = gradaudit.check(*fx.nan_double_backward_at_removable_singularity(), order=2)
    assert {f.kind for f in errors(report)} == {"faulty_double_backward"}, report
    assert all(c.ok for c in report.checks if c.order == 1)


def test_relu_at_zero_is_still_a_kink():
    report = gradaudit.check(torch.relu, (torch.tensor([0.0, 0.5, -1.0], dtype=D),))
    assert report.ok
    (finding,) = warnings_of(report, "nondifferentiable_point")
    assert finding.details["kink_elements"]["args[0]"] == [[0]]


# ------------------------------------------------------------------ 5. crashes
@pytest.mark.parametrize("fn", [torch.fft.ifft, torch.fft.ihfft, torch.fft.hfft])
def test_conjugate_view_outputs_are_audited(fn):
    assert gradaudit.check(fn, (torch.randn(6, dtype=D),), order=2).ok


@pytest.mark.parametrize("layout", ["to_sparse_csr", "to_sparse"])
def test_sparse_inputs_are_refused_with_an_audit_error(layout):
    x = getattr(torch.randn(3, 3, dtype=D), layout)()
    with pytest.raises(AuditError, match="dense tensors only"):
        gradaudit.check(lambda x: x.to_dense().sin(), (x,))


# ------------------------------------------------------------------ 6. which inputs are differentiated
def test_only_inputs_that_require_grad_are_differentiated():
    # Seeded and away from 0 and 1: BCELoss raises outside [0, 1], and this test is about which inputs count.
    prediction = (0.1 + 0.8 * torch.rand(4, dtype=D, generator=torch.Generator().manual_seed(0))).requires_grad_()
    target = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=D)
    report = gradaudit.check(torch.nn.BCELoss(), (prediction, target), order=2)
    assert report.ok, report
    assert {c.wrt for c in report.checks if not c.wrt.startswith("grad_output")} == {"args[0]"}  # (+ order 2's cotangent)


def test_soft_margin_loss_target_is_left_alone():
    x = torch.randn(5, dtype=D, requires_grad=True)
    target = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0], dtype=D)
    assert gradaudit.check(torch.nn.SoftMarginLoss(), (x, target)).ok


def test_without_requires_grad_every_floating_input_is_differentiated():
    report = gradaudit.check(lambda a, b: a * b, (torch.randn(3, dtype=D), torch.randn(3, dtype=D)))
    assert {c.wrt for c in report.checks} == {"total", "args[0]", "args[1]"}


def test_wrt_selects_parameters_and_inputs_by_name_and_glob():
    model = fx.mlp()[0]
    x = fx.mlp()[1][0]
    report = gradaudit.check(model, (x,), wrt="0.*, args[0]")
    names = {c.wrt for c in report.checks} - {"total"}
    assert names == {"0.weight", "0.bias", "args[0]"}, names


def test_wrt_matching_nothing_names_the_choices():
    with pytest.raises(AuditError, match="wrt 'fc9.weight' matches nothing; differentiable names are: .*args\\[0\\]"):
        gradaudit.check(*fx.mlp(), wrt=["fc9.weight"])


def test_wrt_on_a_planted_fault_still_catches_it():
    report = gradaudit.check(*fx.wrong_parameter_gradient(), wrt="fc2.bias")
    assert [f.wrt for f in errors(report)] == ["fc2.bias"]


def test_wrt_on_the_command_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "gradaudit.cli.main", "run", "tests/fixtures.py:mlp", "--wrt",
                             "args[0]", "--json", "-"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert {c["wrt"] for c in report["checks"]} == {"args[0]"}


# ------------------------------------------------------------------ more from the op database
def test_infinite_input_elements_are_held_fixed():
    x = torch.randn(2, 4, dtype=D)
    x[0, 1] = x[1, 3] = -math.inf  # an additive attention mask
    report = gradaudit.check(lambda x: torch.softmax(x, -1), (x,), order=2)
    assert report.ok and not report.findings, report


def test_nan_inputs_are_refused():
    with pytest.raises(AuditError, match="contains NaN"):
        gradaudit.check(torch.sin, (torch.tensor([0.5, math.nan], dtype=D),))


def test_no_double_backward_in_torch_skips_order_two_and_says_why():
    grid = torch.full((1, 2, 2, 2), 0.1, dtype=D)
    x = torch.randn(1, 1, 3, 3, dtype=D)
    report = gradaudit.check(lambda x: torch.nn.functional.grid_sample(x, grid, align_corners=False), (x,), order=2)
    assert report.ok and {c.order for c in report.checks} == {1}, report
    assert any(s["what"] == "order 2" and "grid_sampler_2d_backward" in s["reason"] for s in report.skipped)


def test_a_double_backward_that_raises_skips_order_two_naming_the_oracle():
    # (issue 23: double backward is an oracle; torch raising there skips it with a note, never an AuditError)
    x = torch.randn(1, 2, 3, dtype=D, requires_grad=True)
    bias = torch.randn(1, 2, 3, dtype=D, requires_grad=True)
    report = gradaudit.check(lambda x, b: torch.native_layer_norm(x, (1, 2, 3), None, b, 0.5), (x, bias), order=2)
    assert report.ok and {c.order for c in report.checks} == {1}, report
    reason = next(s["reason"] for s in report.skipped if s["what"] == "order 2")
    assert "double backward" in reason and "RuntimeError" in reason


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16, torch.complex32])
def test_a_cast_to_a_coarser_output_dtype_is_judged_by_that_dtype(cast):
    x = torch.randn(5, dtype=torch.complex128 if cast.is_complex else D)
    assert gradaudit.check(lambda x: x.to(cast), (x,)).ok


def test_torch_forward_over_reverse_failure_skips_only_forward_mode():
    a = torch.randn(3, dtype=D, requires_grad=True)
    report = gradaudit.check(torch.nn.MSELoss(), (a, torch.randn(3, dtype=D)), order=2)
    assert report.ok and {(c.order, c.method) for c in report.checks} >= {(2, "reverse")}
    assert any("ZeroTensors" in s["reason"] for s in report.skipped)


class _TokensThenMean(nn.Module):
    """BERT's embedding in small: a pad row (padding_idx 0) that torch keeps at zero gradient, and a batch that
    holds the pad token."""

    def __init__(self, scale_row_3: float = 1.0):
        super().__init__()
        self.embedding = nn.Embedding(6, 3, padding_idx=0)
        self.scale_row_3 = scale_row_3

    def forward(self, tokens):
        hidden = self.embedding(tokens)
        if self.scale_row_3 != 1.0:  # a planted fault: token 3's gradient scaled on its way back
            hidden = torch.where((tokens == 3).unsqueeze(-1), _ScaleGradient.apply(hidden, self.scale_row_3), hidden)
        return hidden.tanh().sum(-1)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def test_an_embedding_padding_row_is_left_out_with_a_note_and_the_other_rows_still_checked():
    tokens = torch.tensor([[0, 1, 3, 0], [2, 3, 5, 0]])
    torch.manual_seed(0)
    report = gradaudit.check(_TokensThenMean().double(), (tokens,), order=2)
    assert report.ok, report.findings
    (note,) = [n for n in report.skipped if n["what"] == "embedding.weight"]
    assert note["reason"].startswith("row 0 is embedding.padding_idx"), note
    torch.manual_seed(0)
    report = gradaudit.check(_TokensThenMean(scale_row_3=1.001).double(), (tokens,), order=1)
    assert not report.ok and report.findings[0].wrt == "embedding.weight", report.findings


class _MaxNormThenLinear(nn.Module):
    """nn.Embedding(max_norm): its forward renormalizes the rows it looks up, in place; a Linear after it whose
    backward may carry a planted fault."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.embedding, self.linear, self.scale = nn.Embedding(8, 4, max_norm=1.0), nn.Linear(4, 2), scale

    def forward(self, tokens):
        hidden = self.linear(self.embedding(tokens))
        return (_ScaleGradient.apply(hidden, self.scale) if self.scale != 1.0 else hidden).tanh()


def test_a_max_norm_embedding_weight_is_left_out_with_a_note_and_the_rest_still_checked():
    """Its first forward leaves the rows it renormalized on the renormalization's edge, where finite differences
    see a kink torch's gradient (the renormalized rows') does not have: a relative error of 0.3 was reported as a
    faulty backward. The weight is left out with a note; the layers after it are still checked."""
    tokens = torch.tensor([[1, 2, 3], [4, 1, 7]])
    torch.manual_seed(0)
    model = _MaxNormThenLinear().double()
    weight = model.embedding.weight.detach().clone()
    report = gradaudit.check(model, (tokens,), order=2)
    assert report.ok, report.findings
    (note,) = [n for n in report.skipped if n["what"] == "embedding.weight"]
    assert note["reason"].startswith("embedding.max_norm is set"), note
    assert "embedding.weight" not in {c.wrt for c in report.checks}  # (not checked: no row says it passed)
    assert torch.equal(model.embedding.weight, weight)  # (the user's weight, never renormalized by the audit)
    torch.manual_seed(0)
    report = gradaudit.check(_MaxNormThenLinear(scale=1.001).double(), (tokens,), order=1)
    assert not report.ok and {f.wrt for f in report.findings} & {"linear.weight", "linear.bias"}, report.findings


def test_full_mode_leaves_out_what_the_notes_leave_out():
    """--mode full moved every element, a max_norm weight's too, and held torch's gradient against a numerical 0."""
    torch.manual_seed(0)
    report = gradaudit.check(_MaxNormThenLinear().double(), (torch.tensor([[1, 2, 3], [4, 1, 7]]),), mode="full",
                             localize=False)
    assert report.ok, report.findings
    assert {c.wrt for c in report.checks} == {"linear.weight", "linear.bias"}


def test_an_audit_whose_every_tensor_is_left_out_says_so_and_evaluates_nothing_for_it():
    """A bare max_norm embedding: its weight, the only tensor, is left out. The orders read "no check of this
    order ran", after a noise line and the probes' set-up on a weight nothing would move."""
    torch.manual_seed(0)
    report = gradaudit.check(nn.Embedding(6, 3, max_norm=10.0).double(), (torch.tensor([[1, 2], [3, 5]]),),
                             order=2, localize=False)
    assert not report.checks
    reasons = {n["what"]: n["reason"] for n in report.skipped}
    assert reasons["order 1"] == "nothing to differentiate: weight is left out, see its note", reasons
    assert report.stats["forward_evals"] <= 4


class _ClampsItsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():  # (weight clipping, as some GAN critics do in their forward)
            self.linear.weight.clamp_(-0.3, 0.3)
        return self.linear(x).tanh()


def test_a_forward_that_writes_into_a_parameter_says_so_beside_the_verdict():
    torch.manual_seed(0)
    report = gradaudit.check(_ClampsItsWeight().double(), (torch.randn(2, 4, dtype=torch.float64),))
    (note,) = [n for n in report.skipped if n["what"] == "linear.weight"]
    assert note["reason"].startswith("the forward writes into it in place"), note


class HalvedTanh(torch.autograd.Function):
    """tanh whose backward is half the right one: a fault for the checkpointed block below."""

    @staticmethod
    def forward(ctx, x):
        y = x.tanh()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return 0.5 * grad * (1 - y * y)


class Checkpointed(nn.Module):
    """A block under torch.utils.checkpoint, as HF's gradient checkpointing runs its layers."""

    def __init__(self, reentrant: bool, faulty: bool = False):
        super().__init__()
        self.reentrant, self.faulty = reentrant, faulty
        self.inner = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def block(self, x):
        h = self.inner(x)
        return HalvedTanh.apply(h) if self.faulty else h.tanh()

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        return self.out(checkpoint(self.block, x, use_reentrant=self.reentrant).sin())


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("reentrant", [True, False])
def test_a_checkpointed_block_is_audited_and_its_fault_caught(reentrant):
    """A reentrant checkpoint refuses autograd.grad ("incompatible with .grad()"): gradients are then read from
    .backward() into the audit's own leaves. Its parameters are reached only through the re-run, which the
    graph does not show: no 'receives no gradient' hazard for them."""
    x = torch.randn(3, 4, dtype=D)
    torch.manual_seed(0)
    report = gradaudit.check(Checkpointed(reentrant).double(), (x,))
    assert report.ok and not warnings_of(report, "hazard"), report.text()
    assert {c.wrt for c in report.checks} >= {"inner.weight", "inner.bias", "args[0]"}
    torch.manual_seed(0)
    faulty = gradaudit.check(Checkpointed(reentrant, faulty=True).double(), (x,), localize=False)
    assert [f.kind for f in errors(faulty)] == ["faulty_backward"]
    assert errors(faulty)[0].wrt in {"inner.weight", "inner.bias", "args[0]"}


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad", "ignore:Using backward\\(\\) with create_graph")
def test_a_reentrant_checkpoints_double_backward_is_a_graphless_fault():
    """torch's reentrant checkpoint runs its inner backward without a graph, so its second derivatives are wrong
    (torch does not raise): a faulty_double_backward that says the gradient came without a graph."""
    torch.manual_seed(0)
    report = gradaudit.check(Checkpointed(True).double(), (torch.randn(3, 4, dtype=D),), order=2, localize=False)
    found = errors(report)
    assert found and found[0].kind == "faulty_double_backward"
    assert "grad[inner.weight]" in found[0].details["graphless_backward"]
