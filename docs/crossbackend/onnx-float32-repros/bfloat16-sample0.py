# gradaudit repro: bfloat16[sample 0] on onnx (float32) against eager float64 on the CPU, order 1
import itertools
import random

import numpy
import torch
import onnxruntime
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

op = next(o for o in op_db if (o.name, o.variant_test_name) == ('bfloat16', ''))
random.seed(0); numpy.random.seed(0); torch.manual_seed(0)
sample = next(itertools.islice(op.sample_inputs("cpu", torch.float64, requires_grad=True), 0, None))


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

class Op(torch.nn.Module):
    """The op with the differentiated tensors as inputs, the way gradaudit exports it."""

    def forward(self, *values):
        args, kwargs, leaves = prepared("cpu", torch.float32)
        swap = dict(zip(map(id, leaves), values))
        args, kwargs = tree_map(lambda t: swap.get(id(t), t), (args, kwargs))
        return tuple(outputs(args, kwargs))


def onnx_outputs(values):
    feed = {i.name: v.detach().numpy() for i, v in zip(session.get_inputs(), values)}
    return [torch.from_numpy(r) for r in session.run(None, feed)]


_, _, leaves = prepared("cpu", torch.float32)
exported = torch.onnx.export(Op(), tuple(v.detach() for v in leaves), dynamo=True)
session = onnxruntime.InferenceSession(exported.model_proto.SerializeToString())
args, kwargs, eager_leaves = prepared("cpu", torch.float64)
eager_outs = outputs(args, kwargs)
got_outs = onnx_outputs([v.detach() for v in leaves])
# The gradient along one seeded direction: onnxruntime by central differences, eager by autograd.
generator = torch.Generator().manual_seed(1)
direction = [torch.randn(v.shape, generator=generator, dtype=torch.float64) for v in eager_leaves]
cotangent = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in eager_outs]
step = torch.finfo(torch.float32).eps ** (1 / 3)
shifted = lambda sign: onnx_outputs([(v.detach().double() + sign * step * u).to(torch.float32) for v, u in zip(leaves, direction)])
numerical = sum(((p.double() - m.double()) / (2 * step) * c).sum() for p, m, c in zip(shifted(1), shifted(-1), cotangent))
grads = torch.autograd.grad(eager_outs, eager_leaves, cotangent, allow_unused=True, materialize_grads=True)
analytical = sum((g * u).sum() for g, u in zip(grads, direction))
expected = (eager_outs, [analytical.reshape(1)], [])
got = (got_outs, [numerical.reshape(1)], [])

tolerance = 64 * torch.finfo(torch.float32).eps
forward = gap(got[0], expected[0], "forward")
gradient = gap(got[1], expected[1], "gradient") if expected[1] else 0.0
second = gap(got[2], expected[2], "second derivative") if expected[2] else 0.0
drift = max(forward, torch.finfo(torch.float32).eps)
phases = [name for name, value, limit in (("forward", forward, tolerance), ("gradient", gradient, 64 * max(drift, torch.finfo(torch.float32).eps) + 64 * torch.finfo(torch.float32).eps ** (2 / 3)),
                                           ("second derivative", second, 64 * max(drift, torch.finfo(torch.float32).eps) + 64 * torch.finfo(torch.float32).eps ** (2 / 3))) if not value <= limit]
print("verdict:", "diverges in " + ", ".join(phases) if phases else "agrees")
