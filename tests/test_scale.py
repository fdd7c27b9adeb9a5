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


def encoder(faulty: tuple[int, str] | None = None, error: float = 1e-4, layers: int = 8) -> tuple[nn.Module, tuple]:
    """A TransformerEncoder (8 layers: 96 parameter tensors), optionally with one Linear's bias gradient wrong."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True, activation="gelu")
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(D).eval()
    if faulty is not None:
        index, name = faulty
        original = getattr(model.layers[index], name)
        replacement = FaultyBiasLinear(original.in_features, original.out_features).to(D)
        replacement.load_state_dict(original.state_dict())
        replacement.error = error
        setattr(model.layers[index], name, replacement)
    return model, (torch.randn(2, 5, 32, dtype=D),)


def test_correct_models_cost_the_same_whatever_their_number_of_tensors():
    small = gradaudit.check(*encoder(layers=2), localize=False)
    large = gradaudit.check(*encoder(layers=8), localize=False)
    assert small.ok and large.ok
    model = encoder(layers=8)[0]
    assert {c.wrt for c in large.checks} == {"total", "args[0]"} | {n for n, _ in model.named_parameters()}
    assert large.stats["forward_evals"] <= small.stats["forward_evals"] + 12
    assert large.stats["forward_evals"] <= 60  # issue 12's bound for a correct TransformerEncoder (43 here)


def tanh_chain(error: float | None) -> tuple[nn.Module, tuple]:
    """30 Linear+Tanh layers; with ``error``, layer 0's bias gradient is off by that relative error."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(30)]).to(D)
    if error is not None:
        faulty = FaultyBiasLinear(6, 6).to(D)
        faulty.load_state_dict(model[0][0].state_dict())
        faulty.error = error
        model[0][0] = faulty
    return model, (torch.randn(4, 6, dtype=D),)


@pytest.mark.parametrize("error", [None, 1e-3])
def test_an_aggregate_too_coarse_for_a_vanishing_gradient_probes_it_in_smaller_groups(error):
    """Layer 0 of a deep tanh chain has a gradient far below the others': the aggregate cannot resolve a small
    error in it, so it is probed again in smaller groups instead of being passed unseen. (1e-3 is caught and
    named; 1e-4 is below what the chain's own rounding lets any finite difference see, alone or not.)"""
    report = gradaudit.check(*tanh_chain(error), localize=False)
    if error is None:
        assert report.ok, report
        return
    assert not report.ok, report
    assert "0.0.bias" in {c.wrt for c in report.failed_checks}


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
