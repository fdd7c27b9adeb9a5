"""The error model is calibrated, not assumed: the numerical J·u's error bar against its actual error, measured
against a reference far more accurate than the numerics (forward-mode AD in float64), over random smooth
functions of random depth, width and input scale, in float64 and in float32.

The quantity judged by a probe is a sum over output elements under random signs, so the calibrated figure is
the ratio of the bars' root-sum-square to the actual errors' (issue 14's target: between 1 and ~30).
"""
import statistics

import pytest
import torch

from gradaudit.core import numerics

D = torch.float64
ACTIVATIONS = [torch.tanh, torch.sin, lambda z: torch.exp(-z * z), torch.nn.functional.softplus,
               lambda z: z * torch.sigmoid(z)]


def random_function(generator: torch.Generator, depth: int, width: int):
    layers = []
    for _ in range(depth):
        weight = torch.randn(width, width, generator=generator, dtype=D) / width ** 0.5
        layers.append((weight, ACTIVATIONS[int(torch.randint(0, len(ACTIVATIONS), (1,), generator=generator))]))

    def f(x):
        for weight, act in layers:
            x = act(x @ weight.to(x.dtype)) + 0.1 * x
        return x
    return f


def bar_over_actual(dtype: torch.dtype, cases: int, seed: int) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    eps = torch.finfo(dtype).eps
    ratios = []
    for _ in range(cases):
        depth = int(torch.randint(1, 7, (1,), generator=generator))
        width = int(torch.randint(2, 9, (1,), generator=generator))
        f = random_function(generator, depth, width)
        x = torch.randn(3, width, generator=generator, dtype=D) * float(torch.rand(1, generator=generator) * 3 + 0.2)
        u = torch.randn(3, width, generator=generator, dtype=D).sign()
        reference = torch.func.jvp(f, (x,), (u,))[1]
        values = lambda points: [[f(z[0])] for z in points]  # noqa: E731
        xs, us = [x.to(dtype)], [u.to(dtype)]
        noise = numerics.rounding_noise(values, xs, us, torch.finfo(dtype).eps ** 0.5)  # as the checker measures it
        numerical = numerics.extrapolated_derivative(values, xs, us, numerics.ladder_top(dtype), eps, noise)
        actual = (numerical.value[0] - reference).pow(2).sum().sqrt()
        ratios.append(float(numerical.error[0].pow(2).sum().sqrt() / actual))
    return ratios


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_error_bars_track_the_actual_error(dtype):
    ratios = bar_over_actual(dtype, cases=120, seed=1)
    assert min(ratios) >= 1.0, sorted(ratios)[:5]
    assert max(ratios) <= 40.0, sorted(ratios)[-5:]
    assert 2.0 <= statistics.median(ratios) <= 15.0, statistics.median(ratios)
