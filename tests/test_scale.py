"""Aggregated probes: the cost of a correct model does not grow with its number of parameter tensors, and one
slightly wrong tensor among many is still caught and named."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gradaudit

D = torch.float64


class ScaledBiasGrad(torch.autograd.Function):
    """y = x + b, with the gradient of b off by a relative ``error`` (a planted fault)."""

    @staticmethod
    def forward(ctx, x, bias, error):
        ctx.error = error
        return x + bias

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.sum(0) * (1 + ctx.error), None


class FaultyBiasLinear(nn.Linear):
    """nn.Linear whose bias gradient is off by a relative ``error``."""

    error = 0.0

    def forward(self, x):
        return ScaledBiasGrad.apply(nn.functional.linear(x, self.weight), self.bias, self.error)


def encoder(faulty: tuple[int, str] | None = None, error: float = 1e-4) -> tuple[nn.Module, tuple]:
    """An 8-layer TransformerEncoder (96 parameter tensors), optionally with one Linear's bias gradient wrong."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, activation="gelu")
    model = nn.TransformerEncoder(layer, 8, enable_nested_tensor=False).to(D).eval()
    if faulty is not None:
        index, name = faulty
        original = getattr(model.layers[index], name)
        replacement = FaultyBiasLinear(original.in_features, original.out_features).to(D)
        replacement.load_state_dict(original.state_dict())
        replacement.error = error
        setattr(model.layers[index], name, replacement)
    return model, (torch.randn(2, 5, 32, dtype=D),)


class Layer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def deep(layers: int) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return nn.Sequential(*[Layer(6) for _ in range(layers)]).to(D), (torch.randn(4, 6, dtype=D),)


def test_correct_models_cost_the_same_whatever_their_number_of_tensors():
    small = gradaudit.check(*deep(5), localize=False)
    large = gradaudit.check(*deep(50), localize=False)
    assert small.ok and large.ok
    assert {c.wrt for c in large.checks} == {"total", "args[0]"} | {n for n, _ in deep(50)[0].named_parameters()}
    assert large.stats["forward_evals"] <= small.stats["forward_evals"] + 12


@pytest.mark.slow
@pytest.mark.parametrize("faulty", [(0, "linear1"), (4, "linear2"), (7, "linear1")])
def test_a_small_error_in_one_bias_among_96_tensors_is_caught_and_named(faulty):
    model, args = encoder(faulty, 1e-4)
    assert len(list(model.parameters())) == 96
    report = gradaudit.check(model, args, localize=False)
    assert not report.ok
    name = f"layers.{faulty[0]}.{faulty[1]}.bias"
    assert {c.wrt for c in report.checks if not c.ok} == {"total", name}
    assert report.findings[0].wrt == name


def test_the_correct_encoder_passes():
    assert gradaudit.check(*encoder(), localize=False).ok
