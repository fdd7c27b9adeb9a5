"""The eager program's direct call (backends/fastcall.py) computes what PreparedCase.call (torch.func.functional_call)
computes, at leaf values other than the module's own: tied weights, LSTM's cached flat weights, nested and keyword
inputs, pytree outputs."""
import pytest
import torch
from torch import nn

import fixtures
from gradaudit.backends.fastcall import DirectCall, differentiable_leaves
from gradaudit.case import as_case, flatten_outputs, prepare_case


class Tied(nn.Module):
    """An encoder and a decoder sharing one weight (as language models tie embeddings)."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(4, 3, bias=False)
        self.decode = nn.Linear(3, 4, bias=False)
        self.decode.weight = self.encode.weight  # (shapes differ: decode uses it transposed below)

    def forward(self, x):
        return torch.tanh(x @ self.encode.weight.t()) @ self.decode.weight


def nested_inputs():
    def f(pair, scale=1.0, *, extra):
        return {"a": pair[0] * pair[1].sin() * scale, "b": (extra.exp(), None)}
    x, y, z = (fixtures.randn(3, seed=s) for s in (1, 2, 3))
    return f, ((x, y),), {"scale": 2.0, "extra": z}


def tied():
    torch.manual_seed(0)
    return Tied().double(), (fixtures.randn(2, 4),)


CASES = [fixtures.plain_function, fixtures.lstm, fixtures.conv_batchnorm, fixtures.multihead_attention,
         fixtures.complex_function, fixtures.custom_op_fault, nested_inputs, tied]


def moved(leaves):
    """Leaf values away from the module's own, so that a call ignoring them would show."""
    return [leaf.value + 0.25 * torch.ones_like(leaf.value) for leaf in leaves]


@pytest.mark.parametrize("factory", CASES, ids=lambda f: f.__name__)
def test_direct_call_gives_functional_calls_values_and_gradients(factory):
    prepared = prepare_case(as_case(factory(), (), None, None, None))
    direct = DirectCall.of(prepared)
    assert isinstance(direct, DirectCall)
    values = [v.requires_grad_() for v in moved(prepared.leaves)]
    with torch.random.fork_rng():
        expected = flatten_outputs(prepared.call(values))[0]
    with torch.random.fork_rng():
        got = differentiable_leaves(direct(values))
    assert len(got) == len(expected) and len(got) > 0
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    cotangents = [torch.randn_like(t) for t in expected]
    want = torch.autograd.grad(expected, values, cotangents, allow_unused=True)
    have = torch.autograd.grad(got, values, cotangents, allow_unused=True)
    for a, b in zip(have, want):
        assert (a is None and b is None) or torch.equal(a, b)
    # the module's own parameters are back in place
    if prepared.module is not None:
        for name, parameter in prepared.module.named_parameters():
            assert isinstance(parameter, nn.Parameter), name


def test_tied_weight_is_replaced_in_both_places():
    prepared = prepare_case(as_case(tied(), (), None, None, None))
    assert prepared.param_names == ["encode.weight"]
    assert len(DirectCall.of(prepared).slots[0]) == 2


def test_differentiable_leaves_follow_pytree_order_and_skip_integers():
    output = (torch.ones(2), {"k": torch.arange(3), "z": torch.zeros(1, dtype=torch.complex128)},
              [torch.full((1,), 2.0)], torch.return_types.max((torch.ones(1), torch.zeros(1, dtype=torch.long))))
    assert [t.dtype for t in differentiable_leaves(output)] == [t.dtype for t in flatten_outputs(output)[0]]
    assert all(torch.equal(a, b) for a, b in zip(differentiable_leaves(output), flatten_outputs(output)[0]))


class RecomputedInBackward(torch.autograd.Function):
    """The adjoint method's pattern (torchdiffeq's odeint_adjoint): the forward runs the module without a graph
    and saves the parameters it was given; the backward runs the module again and differentiates with respect
    to those saved parameters. Only right when the module still holds those values during the backward."""

    @staticmethod
    def forward(ctx, module, x, *params):
        ctx.module = module
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return module(x)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            grads = torch.autograd.grad(ctx.module(x), [x, *params], grad, allow_unused=True)
        return (None, *grads)


class AdjointBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.dynamics = nn.Sequential(nn.Linear(3, 3), nn.Tanh())

    def forward(self, x):
        return RecomputedInBackward.apply(self.dynamics, x, *self.dynamics.parameters())


def test_a_backward_that_runs_the_module_again_sees_the_audited_values():
    """A false alarm found on torchdiffeq: the values were put back after the forward, so the backward's re-run
    used the module's own tensors and every parameter's gradient came out 0."""
    import gradaudit
    torch.manual_seed(0)
    report = gradaudit.check(AdjointBlock().double(), (fixtures.randn(2, 3),), order=1)
    assert report.ok, report.text()
    assert {c.wrt for c in report.checks} >= {"dynamics.0.weight", "dynamics.0.bias"}
