# gradaudit repro: nn.functional.avg_pool1d[sample 6] on torch.compile (inductor) (float64) against eager float64 on the CPU, order 1
import itertools
import random

import numpy
import torch
from torch.testing._internal.common_methods_invocations import op_db  # pip install expecttest hypothesis
from torch.utils._pytree import tree_leaves, tree_map

def gap(got, expected, what):
    """Largest |got - expected| relative to expected's scale; inf for another form or NaN on one side."""
    if len(got) != len(expected):
        print(f"{what}: {len(got)} results, eager has {len(expected)}")
        return float("inf")
    worst = 0.0
    for a, b in zip(got, expected):
        # Complex results come back as their real view: torch-xla 2.9 drops imaginary parts copying to the host.
        a, b = [torch.view_as_real(t.detach().resolve_conj()).cpu() if t.is_complex() else t.detach().cpu()
                for t in (a, b)]
        if a.shape != b.shape or (a.dtype != b.dtype and b.dtype != torch.float64):
            print(f"{what}: {tuple(a.shape)} {a.dtype} on the backend, {tuple(b.shape)} {b.dtype} on eager")
            return float("inf")
        a, b = a.double(), b.double()
        both = (a.isnan() & b.isnan()) | (a.isinf() & (a == b))
        diff = torch.where(both, torch.zeros_like(a), (a - b).abs()).nan_to_num(nan=float("inf"), posinf=float("inf"))
        scale = b.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs().max().item() if b.numel() else 0.0
        worst = max(worst, (diff.max().item() if diff.numel() else 0.0) / (scale or 1.0))
    print(f"{what}: largest gap {worst:.3g} of the result's scale")
    return worst

op = next(o for o in op_db if (o.name, o.variant_test_name) == ('nn.functional.avg_pool1d', ''))
random.seed(0); numpy.random.seed(0); torch.manual_seed(0)
sample = next(itertools.islice(op.sample_inputs("cpu", torch.float64, requires_grad=True), 6, None))


def prepared(device, dtype):
    """The sample's arguments on ``device``, floating tensors in ``dtype``, and the ones torch differentiates."""
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        moved = t.detach().to(device, dtype if t.is_floating_point() else t.dtype)
        return moved.requires_grad_(t.requires_grad)
    args, kwargs = tree_map(move, ([sample.input, *sample.args], sample.kwargs))
    return args, kwargs, [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.requires_grad]


def outputs(args, kwargs):
    out = sample.output_process_fn_grad(op.gradcheck_wrapper(op.get_op(), *args, **kwargs))
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]

def run(compiled):
    """Forward and gradient (seeded ±1 cotangents) of the op, eagerly in float64 or through torch.compile."""
    args, kwargs, leaves = prepared("cpu", torch.float64 if compiled else torch.float64)
    forward = torch.compile(outputs, backend='inductor', dynamic=False) if compiled else outputs
    outs = forward(args, kwargs)
    generator = torch.Generator().manual_seed(1)

    def signs(tensors):  # ±1 cotangents (±1 ± 1j for complex results)
        drawn = [torch.randint(0, 2, (*t.shape, 2) if t.is_complex() else t.shape, generator=generator) * 2.0 - 1
                 for t in tensors]
        return [(torch.view_as_complex(s) if t.is_complex() else s).to(t.device, t.dtype)
                for s, t in zip(drawn, tensors)]
    differentiable = [o for o in outs if o.requires_grad]
    grads = torch.autograd.grad(differentiable, leaves, signs(differentiable), allow_unused=True,
                                materialize_grads=True) if differentiable and leaves else []
    return outs, list(grads), []  # (a compiled backward has no double backward)


expected = run(False)
got = run(True)

tolerance = 64 * torch.finfo(torch.float64).eps
forward = gap(got[0], expected[0], "forward")
gradient = gap(got[1], expected[1], "gradient") if expected[1] else 0.0
second = gap(got[2], expected[2], "second derivative") if expected[2] else 0.0
drift = max(forward, torch.finfo(torch.float64).eps)
phases = [name for name, value, limit in (("forward", forward, tolerance), ("gradient", gradient, 64 * drift),
                                           ("second derivative", second, 64 * drift)) if not value <= limit]
print("verdict:", "diverges in " + ", ".join(phases) if phases else "agrees")
