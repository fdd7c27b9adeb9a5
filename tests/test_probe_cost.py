"""The probe's arithmetic on large leaves (issue 24): shifted points written into reused buffers, and per-leaf sums
of g in place of products over every parameter, give the numbers of the plain formulas."""
from __future__ import annotations

import torch

from gradaudit.core import numerics
from gradaudit.core.numerics import CotangentRows, Direction, NumericalDerivative, probe_tests
from gradaudit.core.probe import ProbeSpace


def test_buffered_shifted_points_are_the_plain_sums_each_a_tensor_of_its_own():
    x = [torch.randn(300, 400, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    assert x[0].numel() >= numerics.REUSED_SHIFT_ELEMENTS  # (the buffered path)
    u = [numerics.rademacher_like(t, torch.Generator().manual_seed(1)) * 1.7 for t in x]
    steps = [5.8e-3, -5.8e-3, 2.9e-3, -2.9e-3, 0.37, 1e-7]
    points = numerics.shifted_points(x, u, steps)
    assert len({p[0].data_ptr() for p in points}) == len(steps)
    for point, step in zip(points, steps):
        expected = numerics.shifted(x, u, step)
        assert all(torch.equal(a, b) for a, b in zip(point, expected))  # (bit for bit: x + t * u)
        assert point[0].storage_offset() == 0
        assert torch.equal(point[0].as_strided((2, 2), (1, 2), 0), expected[0].as_strided((2, 2), (1, 2), 0))
    again = numerics.shifted_points(x, u, [-0.37])  # (a later call reuses the buffers: the values are its own)
    assert torch.equal(again[0][0], numerics.shifted(x, u, -0.37)[0])


def test_per_leaf_sums_give_the_tolerance_of_the_full_products():
    """A balanced direction's tolerance from per-leaf sums of |g| and g^2 equals the one from products over every
    element (a frozen element and an infinite leaf element included), to rounding."""
    g = torch.Generator().manual_seed(2)
    x = [torch.randn(50, 40, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)]
    x[1][3] = float("-inf")
    frozen = [torch.zeros(50, 40, dtype=torch.bool), None]
    frozen[0][7] = True
    space = ProbeSpace.seeded(x, ["w", "b"], torch.float64, 0, frozen=frozen)
    cotangents = [[torch.randn(6, generator=g, dtype=torch.float64)] for _ in range(3)]
    grads = [[torch.randn(50, 40, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)]
             for _ in range(3)]
    rows = CotangentRows(cotangents, grads)
    direction = space.direction([0, 1]).scaled([0.25, 1.0])
    numerical = NumericalDerivative([torch.randn(6, generator=g, dtype=torch.float64)],
                                    [torch.zeros(6, dtype=torch.float64)])  # (the floor alone: built from g)
    fast = probe_tests(rows, numerical, direction, 2.2e-16)
    plain = probe_tests(rows, numerical, list(direction), 2.2e-16)
    for (a, n, tol), (a2, n2, tol2) in zip(fast, plain):
        assert abs(a - a2) <= 1e-12 * abs(a2) and n == n2
        assert abs(tol - tol2) <= 1e-12 * tol2


def test_points_in_pairs_through_two_buffers_give_the_values_of_one_call():
    """``values_along`` evaluates a line of points a pair at a time through the same buffers (a large leaf): the
    values are those of every point evaluated at once, also where f returns a view of its shifted input."""
    x = [torch.randn(70000, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    u = [numerics.rademacher_like(t, torch.Generator().manual_seed(3)) for t in x]
    ts = [k * 1e-3 for k in range(1, 9)]

    def f(points):  # (the first output a view of the large leaf's point, the second computed)
        return [[z[0][:10], (z[0] * z[1].sum()).sin()] for z in points]
    expected = [[y.clone() for y in value] for value in f([numerics.shifted(x, u, t) for t in ts])]
    numerics._SHIFT_BUFFERS.clear()
    got = numerics.values_along(f, x, u, ts)
    assert len(numerics._SHIFT_BUFFERS[id(x[0])]) == numerics.PAIR  # (two buffers served eight points)
    assert all(torch.equal(a, b) for value, wanted in zip(got, expected) for a, b in zip(value, wanted))


def test_a_view_of_a_large_input_resolves_as_an_identity_does():
    """f(x) = x.view(-1) on a leaf shifted in reused buffers: its noise line and ladders see exact values (a view
    kept past its buffer's reuse would read a later point's and report a resolution of ~4e-6)."""
    import gradaudit

    x = torch.randn(70000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = gradaudit.check(lambda t: t.view(-1), (x,))
    assert report.ok
    assert max(c.resolution for c in report.checks) < 1e-8
