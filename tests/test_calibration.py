"""The error model is calibrated, not assumed: the numerical J·u's error bar against its actual error, measured
against a reference far more accurate than the numerics (forward-mode AD in float64), over random smooth
functions of random depth, width and input scale, in float64 and in float32, and with float32 islands inside
float64 (there the analytical gradient's measured noise is calibrated too).

The quantity judged by a probe is a sum over output elements under random signs, so the calibrated figure is
the ratio of the bars' root-sum-square to the actual errors' (issue 14's target: between 1 and ~30).
"""
import statistics

import pytest
import torch

from gradaudit.case import as_case
from gradaudit.core import numerics
from gradaudit.core.checks import measure_gradient_noise
from gradaudit.core.differentiate import ForwardFunction, vjps
from gradaudit.core.precision import detect_precision
from gradaudit.core.probe import ProbeSpace
from gradaudit.registry import usable_backend

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


# ------------------------------------------------------------------------------ float32 islands inside float64
def island_function(generator: torch.Generator, depth: int, width: int):
    """random_function's layers with each activation computed in float32 (cast there and back), as HF's norms
    compute their variance; ``island=False`` is the same function in float64 throughout (the reference)."""
    layers = []
    for _ in range(depth):
        weight = torch.randn(width, width, generator=generator, dtype=D) / width ** 0.5
        layers.append((weight, ACTIVATIONS[int(torch.randint(0, len(ACTIVATIONS), (1,), generator=generator))]))

    def f(x, island=True):
        for weight, act in layers:
            z = x @ weight
            x = (act(z.to(torch.float32)).to(x.dtype) if island else act(z)) + 0.1 * x
        return x
    return f


def island_cases(cases: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(cases):
        depth = int(torch.randint(1, 7, (1,), generator=generator))
        width = int(torch.randint(2, 9, (1,), generator=generator))
        f = island_function(generator, depth, width)
        x = torch.randn(3, width, generator=generator, dtype=D) * float(torch.rand(1, generator=generator) * 3 + 0.2)
        yield f, x, torch.randn(3, width, generator=generator, dtype=D).sign()


def island_numerical_bar_over_actual(cases: int, seed: int) -> list[float]:
    """The numerical J·u's bars as the checker sets them for an island: steps and noise line at the precision
    detected on the path, rounding modelled at the leaves' eps and measured for the rest."""
    ratios = []
    for f, x, u in island_cases(cases, seed):
        dtype = detect_precision(lambda xs: [f(xs[0])], [x]).dtype
        assert dtype == torch.float32
        reference = torch.func.jvp(lambda z: f(z, island=False), (x,), (u,))[1]
        values = lambda points: [[f(z[0])] for z in points]  # noqa: E731
        noise = numerics.rounding_noise(values, [x], [u], numerics.eps_of(dtype) ** 0.5)
        numerical = numerics.extrapolated_derivative(values, [x], [u], numerics.ladder_top(dtype),
                                                     numerics.eps_of(D), noise, center=[f(x)])
        actual = (numerical.value[0] - reference).pow(2).sum().sqrt()
        ratios.append(float(numerical.error[0].pow(2).sum().sqrt() / actual))
    return ratios


def island_gradient_bar_over_actual(cases: int, seed: int) -> list[float]:
    """The analytical gradient's bar (GRADIENT_NOISE_SAFETY times the measured jitter spread) against its actual
    error: the island's gradient against the float64 function's."""
    ratios = []
    for f, x, v in island_cases(cases, seed):
        with usable_backend("eager").load(as_case(f, (x,)), "cpu", D) as program:
            function = ForwardFunction(program)
            space = ProbeSpace.seeded([x], ["x"], D, seed, torch.float32)
            grads = vjps(function, [x], [[v]])
            spread = measure_gradient_noise(function, space, [[v]], grads, seed)[0][0]
        exact = torch.func.vjp(lambda z: f(z, island=False), x)[1](v)[0]
        actual = (grads[0][0] - exact).pow(2).sum().sqrt()
        ratios.append(float(numerics.GRADIENT_NOISE_SAFETY * spread.pow(2).sum().sqrt() / actual))
    return ratios


def test_error_bars_track_the_actual_error_with_float32_islands():
    ratios = island_numerical_bar_over_actual(cases=120, seed=1)
    assert min(ratios) >= 1.0, sorted(ratios)[:5]
    assert max(ratios) <= 30.0, sorted(ratios)[-5:]
    assert 2.0 <= statistics.median(ratios) <= 15.0, statistics.median(ratios)


def test_gradient_noise_bars_track_the_actual_error_with_float32_islands():
    ratios = island_gradient_bar_over_actual(cases=120, seed=1)
    assert min(ratios) >= 1.0, sorted(ratios)[:5]
    assert max(ratios) <= 40.0, sorted(ratios)[-5:]
    assert 2.0 <= statistics.median(ratios) <= 15.0, statistics.median(ratios)


def test_shifted_points_are_the_points_a_storage_reading_op_sees():
    """Points along a line are computed in one batch; each must still be a tensor of its own, since as_strided
    reads its storage offset as an absolute position (a batch's slices made every point read the first)."""
    from gradaudit.core import numerics

    x = [torch.randn(3, 4, dtype=torch.float64)]
    u = [torch.randn(3, 4, dtype=torch.float64)]
    steps = [1e-3, -1e-3, 5e-4, -5e-4]
    for point, step in zip(numerics.shifted_points(x, u, steps), steps):
        expected = numerics.shifted(x, u, step)[0]
        assert torch.equal(point[0], expected) and point[0].storage_offset() == 0
        assert torch.equal(point[0].as_strided((2, 2), (1, 2), 0), expected.as_strided((2, 2), (1, 2), 0))


def test_a_function_reading_its_input_through_as_strided_is_judged_right():
    import gradaudit

    def overlapping_window(x):  # correct: autograd's as_strided backward handles overlapping windows
        return x.as_strided((3, 3), (1, 1), 0).sin()

    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    report = gradaudit.check(overlapping_window, (x,), order=1)
    assert report.ok, report.findings
    assert all(check.tolerance < 1e-6 for check in report.checks), [c.tolerance for c in report.checks]
