"""The resolution rule (issue 24): every tensor ends resolved to the target (a relative error of 1e-6 in its
gradient would fail its test), or probed alone at the best step the arithmetic allows with that resolution
reported; none passes inside a group that could not see a 1e-4 error in it. Planted faults in deep narrow
nets, vanishing and exploding gradients, and a tensor whose gradient is 1e-6 of its neighbours'."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradaudit
from gradaudit.core import checks


class ScaleGrad(torch.autograd.Function):
    """The identity, whose backward scales the gradient by 1 + eps and adds ``shift`` to each element: a planted
    relative error of eps, or an absolute one (of a gradient that should be 0)."""

    @staticmethod
    def forward(ctx, x, eps, shift):
        ctx.eps, ctx.shift = eps, shift
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * (1 + ctx.eps) + ctx.shift, None, None


class DeepTanh(nn.Module):
    """``depth`` layers tanh(Linear(width, width)), weights times ``gain``; layer ``planted``'s bias gradient is
    scaled by 1 + eps."""

    def __init__(self, depth: int, planted: int, eps: float, width: int = 8, gain: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight *= gain
        self.planted, self.eps = planted, eps

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            bias = ScaleGrad.apply(layer.bias, self.eps, 0.0) if i == self.planted else layer.bias
            x = torch.tanh(nn.functional.linear(x, layer.weight, bias))
        return x


def deep_case(depth: int, planted: int, eps: float, gain: float = 1.0, seed: int = 0):
    model = DeepTanh(depth, planted, eps, gain=gain, seed=seed).double()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return model, (x,)


def leaf_check(report, name: str):
    return next(c for c in report.checks if c.wrt == name and c.method == "reverse")


def faulty(report) -> bool:
    return any(f.kind == "faulty_backward" for f in report.findings)


@pytest.mark.slow
def test_fifty_layer_tanh_bias_fault_of_1e_6_is_caught():
    """The issue's case: width 8, 50 layers, the bias of layer 25 (its gradient ~5e-7), a relative error of
    1e-6 (was: 1e-3 passed, its group's error bar allowing 3e-4)."""
    model, args = deep_case(50, 25, 1e-6)
    report = gradaudit.check(model, args, localize=False)
    assert not report.ok and faulty(report)
    assert leaf_check(report, "layers.25.bias").status == "fail"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_fifty_layer_tanh_without_a_fault_passes(seed):
    """No false alarm at 0 (several checker seeds), and every tensor reports its resolution."""
    model, args = deep_case(50, 25, 0.0)
    report = gradaudit.check(model, args, localize=False, seed=seed)
    assert report.ok, [c for c in report.checks if c.status != "pass"]
    assert all(c.resolution is not None for c in report.checks if c.wrt != "total" and c.method == "reverse"
               and c.wrt != "args[0]")


def probed_alone(monkeypatch) -> set[str]:
    """The leaves the checker probes in a group of their own (recorded, not changed)."""
    alone: set[str] = set()
    original = checks.probed_group

    def recording(state, name, members):
        if len(members) == 1:
            alone.add(state.space.names[members[0]])
        return original(state, name, members)
    monkeypatch.setattr(checks, "probed_group", recording)
    return alone


@pytest.mark.slow
def test_every_leaf_is_resolved_or_probed_alone(monkeypatch):
    """The rule itself, on a deep net whose gradients vanish towards the input (layer 0's: ~1e-14): each leaf's
    reported resolution meets the target, or the leaf was probed alone; none passes coarser than 1e-4 in a
    group."""
    alone = probed_alone(monkeypatch)
    model, args = deep_case(24, 12, 0.0)
    report = gradaudit.check(model, args, localize=False)
    assert report.ok
    leaves = [c for c in report.checks if c.method == "reverse" and c.wrt != "total"]
    assert len(leaves) == 49
    coarse = [c.wrt for c in leaves if c.resolution is None or c.resolution > checks.RESOLUTION]
    assert coarse, "a vanishing gradient the target cannot reach (else this test shows nothing)"
    assert set(coarse) <= alone
    assert all(c.wrt in alone for c in leaves if c.resolution is None or c.resolution > checks.AGGREGATE_LIMIT)


class Neighbours(nn.Module):
    """Two tensors moving the same outputs, one's gradient 1e-6 of the other's; the small one's gradient is
    scaled by 1 + eps."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.big = nn.Parameter(torch.randn(6, 6, generator=g, dtype=torch.float64))
        self.small = nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
        self.eps = eps

    def forward(self, x):
        small = ScaleGrad.apply(self.small, self.eps, 0.0)
        return torch.tanh(x @ self.big) + 1e-6 * torch.sin(small)


@pytest.mark.parametrize("eps, caught", [(0.0, False), (1e-5, True), (-1e-5, True)])
def test_a_gradient_1e_6_of_its_neighbours_is_resolved(eps, caught):
    """(Was: resolved to 1.2e-5 inside the aggregate, a 1e-5 error passed.)"""
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    report = gradaudit.check(Neighbours(eps), (x,), localize=False)
    assert report.ok is not caught
    small = leaf_check(report, "small")
    assert small.resolution is not None and small.resolution <= checks.AGGREGATE_LIMIT
    if caught:
        assert small.status == "fail"


@pytest.mark.slow
@pytest.mark.parametrize("eps, caught", [(0.0, False), (1e-5, True)])
def test_exploding_gradients(eps, caught):
    """Weights 3x the default scale: gradients grow towards the input, so the planted bias near the output is
    the smallest of the net's (a vanishing share of every aggregate)."""
    model, args = deep_case(12, 10, eps, gain=3.0)
    report = gradaudit.check(model, args, localize=False)
    assert report.ok is not caught
    if caught:
        assert leaf_check(report, "layers.10.bias").status == "fail"


@pytest.mark.slow
@pytest.mark.parametrize("eps, caught", [(0.0, False), (1e-3, True)])
def test_vanishing_gradients_in_a_deep_narrow_net(eps, caught):
    """40 layers, weights 0.7x the default: the bias of layer 16 has a gradient far below the later layers'. It
    is probed alone (was: passed in a group resolving it to 2e-2, so 1e-3 went unseen) and reports what that
    reached."""
    model, args = deep_case(40, 16, eps, gain=0.7)
    report = gradaudit.check(model, args, localize=False)
    assert report.ok is not caught
    resolution = leaf_check(report, "layers.16.bias").resolution
    assert resolution is not None and resolution < 1e-3


class ConvBeforeBatchNorm(nn.Module):
    """A convolution's bias before train-mode BatchNorm: its gradient is exactly 0 (the normalization subtracts
    the channel mean), computed as rounding (~1e-15); ``delta`` plants an error of that absolute size in it."""

    def __init__(self, delta: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm, self.delta = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), delta

    def forward(self, x):
        bias = ScaleGrad.apply(self.conv.bias, 0.0, self.delta)
        return self.norm(nn.functional.conv2d(x, self.conv.weight, bias)).tanh()


def test_a_gradient_that_is_zero_is_named_on_the_verdict_line_and_an_error_in_it_is_caught():
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    passed = gradaudit.check(ConvBeforeBatchNorm(0.0).double(), (x,), localize=False)
    assert passed.ok
    from gradaudit.renderers.text import verdict_line
    assert "conv.bias's gradient is 0 to within its error bar" in verdict_line(passed)
    failed = gradaudit.check(ConvBeforeBatchNorm(1e-9).double(), (x,), localize=False)
    assert not failed.ok and any(c.wrt == "conv.bias" and not c.ok for c in failed.checks)


def _mlp_with_a_bias_before_batchnorm(with_bias: bool) -> nn.Module:
    """25 tensors in 12 Linear+tanh layers; layer 6's output goes through train-mode BatchNorm first, so its bias
    (where there is one) has an exactly 0 gradient."""
    torch.manual_seed(0)
    layers = []
    for i in range(12):
        norm = [nn.BatchNorm1d(6)] if i == 6 else []
        layers += [nn.Linear(6, 6, bias=with_bias or i != 6), *norm, nn.Tanh()]
    return nn.Sequential(*layers).double()


def test_a_zero_gradient_among_many_tensors_is_probed_alone_without_halving_down_to_it():
    """A leaf the aggregate cannot resolve is probed again with the other coarse ones only, then alone: halving
    probed every half that held it (129 forward evaluations against 47 without that bias; now 68)."""
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    without = gradaudit.check(_mlp_with_a_bias_before_batchnorm(False), (x,), localize=False)
    report = gradaudit.check(_mlp_with_a_bias_before_batchnorm(True), (x,), localize=False)
    assert without.ok and report.ok
    assert report.stats["forward_evals"] <= without.stats["forward_evals"] + 35
    zero = leaf_check(report, "12.bias")
    assert zero.resolution > 1 and zero.tolerance < 1e-10  # (its gradient is 0: held to an absolute bar)
