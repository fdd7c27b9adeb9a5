"""Batched evaluation on eager programs: the finite differences' points run in one ``torch.func.vmap`` call
where the case allows it, give the values single calls give, and fall back to one call per point (saying why in
``stats.batching``) where it does not. Verdicts do not depend on it."""
from __future__ import annotations

import torch
from torch import nn

import gradaudit
from gradaudit.backends.eager import EagerBackend, same_values
from gradaudit.case import Case
from fixtures import dropout_mlp, lstm, plain_function

D = torch.float64


class VmappableWrongElement(torch.autograd.Function):
    """A linear map whose gradient is wrong in one input element; written for functorch (setup_context and a
    generated vmap rule), so its forward runs batched."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight):
        return weight @ x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = weight.t() @ grad
        return grad_x * (torch.arange(grad_x.shape[-1]) == 7).to(grad_x.dtype) + grad_x, None


def program_of(fn, args, kwargs=None):
    return EagerBackend().load(Case(fn, tuple(args), kwargs or {}), "cpu", D)


def points_near(program, count: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [[leaf.value + 1e-3 * torch.randn(leaf.value.shape, generator=generator, dtype=leaf.value.dtype)
             for leaf in program.leaves] for _ in range(count)]


def test_a_batch_gives_the_values_of_single_calls_even_with_dropout():
    for fn, args, *rest in (plain_function(), dropout_mlp()):
        with program_of(fn, args, *rest) as program:
            points = points_near(program, 6)
            batch = program.evaluate_batch(points)
            assert program.stats.batching == "vmap", program.stats.batching
            for point, batched in zip(points, batch):
                single = program(point)
                assert all(same_values(a, b) for a, b in zip(batched, single))


def test_an_audit_runs_its_points_in_batches_when_asked_and_counts_every_point():
    fn, args, kwargs = plain_function()
    batched = gradaudit.check(fn, args, kwargs=kwargs, batch=True)
    assert batched.ok, batched
    assert batched.stats["batching"] == "vmap"
    assert 0 < batched.stats["batched_evals"] < batched.stats["forward_evals"]
    single = gradaudit.check(fn, args, kwargs=kwargs)
    assert single.stats["batching"] == "none" and single.stats["batched_evals"] == 0
    # the same points: one more evaluation, the first batch's check against a single call
    assert batched.stats["forward_evals"] == single.stats["forward_evals"] + 1
    assert [c.to_dict() for c in batched.checks] == [c.to_dict() for c in single.checks]


def test_a_case_vmap_cannot_run_falls_back_and_says_why():
    model, args = lstm()
    report = gradaudit.check(model, args, batch=True)
    assert report.ok, report
    assert report.stats["batching"].startswith("one call per point: vmap cannot run the case")
    assert "lstm" in report.stats["batching"]
    assert report.stats["batched_evals"] == 0


def test_a_planted_fault_is_caught_with_batched_points():
    weight = torch.randn(5, 12, dtype=D, generator=torch.Generator().manual_seed(1))
    report = gradaudit.check(lambda x: VmappableWrongElement.apply(x, weight), (torch.randn(12, dtype=D),),
                             batch=True)
    assert report.stats["batching"] == "vmap" and report.stats["batched_evals"] > 0
    assert not report.ok
    assert report.findings[0].kind == "faulty_backward"
    assert report.findings[0].details["worst_index"] == [7]


def test_a_domain_error_of_the_points_propagates_and_keeps_batching_on():
    class Checked(nn.Module):
        def forward(self, x):
            return nn.functional.binary_cross_entropy(torch.sigmoid(x) * 1.5, torch.full_like(x, 0.5))

    with program_of(Checked(), (torch.zeros(4, dtype=D),)) as program:
        inside = [[torch.full((4,), -2.0, dtype=D)], [torch.full((4,), -1.0, dtype=D)]]
        assert len(program.evaluate_batch(inside)) == 2
        outside = [[torch.full((4,), 3.0, dtype=D)], [torch.full((4,), 4.0, dtype=D)]]
        try:
            program.evaluate_batch(outside)
        except RuntimeError as exc:
            assert "between 0 and 1" in str(exc)
        else:
            raise AssertionError("binary_cross_entropy accepted inputs above 1")
        assert program.stats.batching == "vmap"


def test_same_values_tells_rounding_from_other_values():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=D)
    assert same_values(a, a + 1e-15)
    assert not same_values(a, a + 1e-9)
    assert not same_values(a, a.float())
    assert not same_values(a, a[:2])
