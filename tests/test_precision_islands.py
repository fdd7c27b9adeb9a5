"""float32 islands inside float64 models: the precision is found (where it drops, the coarsest dtype on the path),
the error bars follow the measured noise at that precision, and every check says what it could resolve.

The models are pure torch, written after HF's: Llama's RMSNorm (variance and normalization in float32, cast back),
T5's layer norm (only the variance in float32), a causal-LM style float32 loss. A 1e-4 backward error planted in a
rotate_half-like custom Function inside such a model must be caught; correct ones must pass.
"""
import json

import pytest
import torch
from torch import nn

import gradaudit
from gradaudit.case import as_case
from gradaudit.core.parity import forward_checks, forward_divergences, path_dtype
from gradaudit.core.precision import detect_precision
from gradaudit.registry import usable_backend
from gradaudit.renderers.text import verdict_line
from gradaudit.report import Check, Report


class LlamaRMSNorm(nn.Module):
    inner = torch.float32  # the precision the norm computes in
    epsilon = 1e-6

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size) + 0.1 * torch.randn(size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        hidden = hidden.to(self.inner)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.epsilon)
        return self.weight * hidden.to(dtype)


class Float64RMSNorm(LlamaRMSNorm):
    inner = torch.float64


class WrongRMSNorm(LlamaRMSNorm):
    epsilon = 1e-2  # another function: a real divergence


class T5LayerNorm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size) + 0.1 * torch.randn(size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + 1e-6))


PLANTED = {"error": 0.0}  # the relative error of RotateHalf's backward


class RotateHalf(torch.autograd.Function):
    """rotate_half as a custom Function, whose backward is off by PLANTED["error"] (relative)."""

    @staticmethod
    def forward(ctx, x):
        half = x.shape[-1] // 2
        return torch.cat([-x[..., half:], x[..., :half]], -1)

    @staticmethod
    def backward(ctx, grad):
        half = grad.shape[-1] // 2
        return torch.cat([grad[..., half:], -grad[..., :half]], -1) * (1 + PLANTED["error"])


class Block(nn.Module):
    """fc -> norm -> h + rotate_half(h) * sin -> tanh -> fc, optionally ending in a float32 loss."""

    def __init__(self, norm: type, width: int = 32, float_loss: bool = False, rotate: bool = True) -> None:
        super().__init__()
        self.up, self.input_layernorm, self.down = nn.Linear(width, width), norm(width), nn.Linear(width, 4)
        self.sin = nn.Parameter(torch.rand(width), requires_grad=False)
        self.float_loss, self.rotate = float_loss, rotate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(self.up(x))
        if self.rotate:  # (a custom Function: not exportable to ONNX)
            h = h + RotateHalf.apply(h) * self.sin
        out = self.down(torch.tanh(h))
        return out.float().pow(2).mean() if self.float_loss else out


def block(norm: type, seed: int, **options) -> tuple[nn.Module, tuple]:
    torch.manual_seed(seed)
    return Block(norm, **options).double(), (torch.randn(8, 32, dtype=torch.float64),)


@pytest.fixture
def planted():
    def plant(error: float) -> None:
        PLANTED["error"] = error
    yield plant
    PLANTED["error"] = 0.0


def test_the_float32_section_and_the_float32_loss_are_found():
    model, (x,) = block(LlamaRMSNorm, 0, float_loss=True)
    names = [n for n, _ in model.named_parameters()]

    def forward(values):
        parameters = dict(zip(names, values[:-1]))
        return [torch.func.functional_call(model, parameters, (values[-1],))]
    precision = detect_precision(forward, list(model.parameters()) + [x], ["loss"], model)
    assert precision.audited == torch.float64 and precision.dtype == torch.float32 and precision.mixed
    notes = precision.notes()
    assert notes[0] == {"dtype": "float32", "what": "output", "output": "loss"}
    section = [n for n in notes if n.get("at") == "input_layernorm"]
    assert section and section[0]["op"] == "aten._to_copy" and section[0]["source"].startswith(
        "test_precision_islands.py:")


def test_a_float64_model_has_no_precision_notes():
    model, (x,) = block(nn.LayerNorm, 0)
    precision = detect_precision(lambda v: [torch.func.functional_call(
        model, dict(zip([n for n, _ in model.named_parameters()], v[:-1])), (v[-1],))],
        list(model.parameters()) + [x])
    assert precision.dtype == torch.float64 and not precision.mixed and precision.notes() == []


@pytest.mark.parametrize("norm", [LlamaRMSNorm, T5LayerNorm])
@pytest.mark.parametrize("seed", [0, 1])
def test_correct_models_with_float32_norms_pass_with_their_resolution(norm, seed):
    model, args = block(norm, seed)
    report = gradaudit.check(model, args, seed=seed, localize=False)
    assert report.ok, report
    assert report.precision and report.precision[0]["at"] == "input_layernorm", report.precision
    leaves = [c for c in report.checks if c.wrt != "total" and c.method == "reverse"]
    # float32 rounding (1e-7) seen through finite differences: coarser than float64's 1e-6 target; the float64
    # error model left 3e-4..1e-3 on every leaf, the measured noise 1e-6..1e-4 on most (a 32x32 weight probed
    # beside the rest resolves least)
    resolutions = sorted(c.resolution for c in leaves)
    assert 1e-7 < resolutions[0] and resolutions[len(resolutions) // 2] < 1e-4 and resolutions[-1] < 1e-3, \
        [(c.wrt, c.resolution) for c in leaves]
    line = str(report).splitlines()[0]
    assert "PASS (resolution " in line and "float32 section at input_layernorm" in line, line


def test_a_float32_loss_passes_and_is_named(planted):
    model, args = block(nn.LayerNorm, 0, float_loss=True)
    report = gradaudit.check(model, args, localize=False)
    assert report.ok, report
    assert report.precision[0] == {"dtype": "float32", "what": "output", "output": "loss"}
    assert "float32 loss" in str(report).splitlines()[0]


@pytest.mark.parametrize("norm", [LlamaRMSNorm, T5LayerNorm])
def test_a_1e4_backward_error_behind_a_float32_norm_is_caught(norm, planted):
    planted(1e-4)
    model, args = block(norm, 1)
    report = gradaudit.check(model, args, seed=1, localize=False)
    assert not report.ok, report
    assert report.findings[0].kind == "faulty_backward"


def test_json_carries_resolution_and_precision():
    model, args = block(LlamaRMSNorm, 0)
    data = json.loads(gradaudit.check(model, args, localize=False).to_json())
    assert data["precision"][0]["dtype"] == "float32" and data["precision"][0]["at"] == "input_layernorm"
    assert all("resolution" in c for c in data["checks"])
    assert Report.from_dict(data).precision == data["precision"]


def test_the_verdict_says_nothing_when_the_resolution_is_what_the_dtype_allows():
    fine = Check(order=1, wrt="w", method="reverse", ok=True, dtype="float64", resolution=3e-9)
    coarse = Check(order=1, wrt="w", method="reverse", ok=True, dtype="float64", resolution=3e-4)
    report = Report("t", "eager", "cpu", "float64", 0, checks=[fine])
    assert "resolution" not in verdict_line(report)
    report.checks.append(coarse)
    report.precision = [{"dtype": "float32", "what": "section", "at": "input_layernorm", "op": "aten._to_copy"}]
    assert "PASS (resolution 0.0003 on 1 tensor: float32 section at input_layernorm)" in verdict_line(report)


def eager_program(norm: type, **options):
    model, args = block(norm, 0, **options)
    return usable_backend("eager").load(as_case(model, args), "cpu", torch.float64)


def test_forward_parity_follows_the_float32_section_and_still_sees_a_real_divergence():
    with eager_program(LlamaRMSNorm) as reference, eager_program(Float64RMSNorm) as same, \
            eager_program(WrongRMSNorm) as wrong:
        assert path_dtype(same, reference) == torch.float32
        checks, drift = forward_checks(same, reference)
        assert 1e-10 < drift < 1e-6 and all(c.ok for c in checks)  # float32 rounding, not a divergence
        assert forward_divergences(checks, drift, torch.float32) == []
        checks, drift = forward_checks(wrong, reference)
        findings = forward_divergences(checks, drift, path_dtype(wrong, reference))
        assert drift > 1e-4 and findings and findings[0].severity == "error", findings


@pytest.mark.parametrize("backend", ["onnx", "xla", pytest.param("compile", marks=pytest.mark.slow)])
def test_compare_passes_a_float32_norm(backend):
    """Each backend rounds the float32 section its own way (a 2e-8..4e-8 gap in the outputs): not a divergence."""
    pytest.importorskip({"onnx": "onnxruntime", "xla": "torch_xla", "compile": "torch"}[backend])
    model, args = block(LlamaRMSNorm, 0, rotate=False)
    report = gradaudit.compare(model, args, backends=[backend], localize=False)
    assert report.ok, report
    assert not [f for f in report.findings if f.kind == "forward_divergence"]
    assert report.precision and report.precision[0]["at"] == "input_layernorm"


def test_a_backend_hidden_from_dispatch_modes_gets_eager_float64s_precision(planted):
    """torch-xla's functional tensors hide requires_grad from the precision scan: the checker and the report take
    the precision of eager float64's path (its notes were missing), and a 1e-4 error behind the float32 norm is
    caught there too (the down-casts removed from the finite differences: 2e-5 resolved, was 4.5e-4)."""
    pytest.importorskip("torch_xla")
    model, args = block(LlamaRMSNorm, 0)
    report = gradaudit.check(model, args, backend="xla", localize=False)
    assert report.ok, report
    assert report.precision and report.precision[0]["at"] == "input_layernorm", report.precision
    assert "float32 section at input_layernorm" in str(report).splitlines()[0]
    assert max(c.resolution for c in report.checks if c.method == "reverse" and c.wrt != "total") < 1e-4
    planted(1e-4)
    assert not gradaudit.check(model, args, backend="xla", localize=False).ok


class ScaledJvpIdentity(torch.autograd.Function):
    """The identity with a right backward and a forward-mode formula off by ``eps`` (relative)."""

    @staticmethod
    def forward(x, eps):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.eps = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad, None

    @staticmethod
    def jvp(ctx, tangent, _):
        return tangent * (1 + ctx.eps)


class Float32SoftmaxAttention(nn.Module):
    """One head of attention whose softmax runs in float32 and is cast back, as HF's eager attention computes it;
    the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift shared by a row), and its JVP is
    float32 rounding alone. ``eps`` plants a forward-mode error after the softmax."""

    def __init__(self, width: int = 8, eps: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.query(x) @ self.key(x).transpose(-1, -2) / x.shape[-1] ** 0.5
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(x.dtype)
        return ScaledJvpIdentity.apply(weights, self.eps) @ self.value(x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_jvp_that_is_float32_rounding_alone_passes_and_a_forward_mode_fault_is_caught(seed):
    """HF ViT (transformers 5) at its key bias: a JVP that is 0 in exact arithmetic, computed as -1.3e-9 by the
    float32 softmax, was judged against a spread measured from 4 pairs of jittered points (9.6e-11): a false
    faulty_forward_ad on 4 of 6 seeds."""
    x = torch.randn(2, 6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    correct = gradaudit.check(Float32SoftmaxAttention().double(), (x,), localize=False, seed=seed)
    assert correct.ok, [(c.wrt, c.method, c.analytical, c.numerical, c.tolerance) for c in correct.failed_checks]
    faulty = gradaudit.check(Float32SoftmaxAttention(eps=1e-3).double(), (x,), localize=False, seed=seed)
    assert any(f.kind == "faulty_forward_ad" for f in faulty.findings)
