"""Fused kernels in the Liger-Kernel style: custom autograd Functions that take bf16/fp16 tensors, upcast to
float32 inside, and cast back. Each has a planted bug that lives only on its low-precision path, so the
float64 shadow that the numerical checks run on never sees it: only the comparison of the low-precision
gradients with the float64 ones (``dtype_parity``) can catch it.

    gradaudit run examples/fused_kernels.py:rmsnorm --dtype bfloat16                 # passes
    gradaudit run examples/fused_kernels.py:rmsnorm_dropped_term --dtype bfloat16    # fails
    gradaudit run examples/fused_kernels.py:swiglu_gate_scaled --dtype float16       # fails
    gradaudit run examples/fused_kernels.py:cross_entropy_no_grad_output --dtype bfloat16

Bugs (``bug=`` of each Function): ``"dropped_term"`` (RMSNorm's projection term left out), ``"scale"`` (SwiGLU's
gate derivative 10 % off), ``"no_grad_output"`` (cross-entropy's backward never multiplies by grad_output); a
float ``eps`` plants that relative error in RMSNorm's projection term or SwiGLU's gate derivative.
"""
from __future__ import annotations

import torch
from torch import nn

LOW = (torch.bfloat16, torch.float16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs (the kernel's upcast), the input's own dtype otherwise."""
    return torch.float32 if x.dtype in LOW else x.dtype


class FusedRMSNorm(torch.autograd.Function):
    """y = x / rms(x) * w over the last dim; backward dx = rstd * (g w - x_hat mean(g w x_hat))."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, bug: str | None):
        work = _compute_dtype(x)
        xf = x.to(work)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.bug = bug
        return (xf * rstd * weight.to(work)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        work = rstd.dtype
        x_hat, g = x.to(work) * rstd, grad.to(work)
        gw = g * weight.to(work)
        projection = x_hat * (gw * x_hat).mean(-1, keepdim=True)
        if ctx.bug == "dropped_term" and x.dtype in LOW:
            projection = torch.zeros_like(projection)
        elif isinstance(ctx.bug, float) and x.dtype in LOW:  # a relative error planted in the projection term
            projection = projection * (1 - ctx.bug)
        dx = rstd * (gw - projection)
        dw = (g * x_hat).reshape(-1, x.shape[-1]).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None, None


class FusedSwiGLU(torch.autograd.Function):
    """y = silu(a) * b; da = g b s (1 + a (1 - s)) with s = sigmoid(a); db = g silu(a)."""

    @staticmethod
    def forward(ctx, a, b, bug: str | None):
        ctx.save_for_backward(a, b)
        ctx.bug = bug
        work = _compute_dtype(a)
        return (torch.nn.functional.silu(a.to(work)) * b.to(work)).to(a.dtype)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        work = _compute_dtype(a)
        af, bf, g = a.to(work), b.to(work), grad.to(work)
        s = torch.sigmoid(af)
        gate = s * (1 + af * (1 - s))
        if ctx.bug == "scale" and a.dtype in LOW:
            gate = gate * 1.1
        elif isinstance(ctx.bug, float) and a.dtype in LOW:  # a relative error planted in the gate derivative
            gate = gate * (1 + ctx.bug)
        return (g * bf * gate).to(a.dtype), (g * af * s).to(b.dtype), None


class FusedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``logits`` against class indices; like Liger's kernel, the gradient is computed in
    the forward (softmax - one_hot) / n and the backward scales it by grad_output."""

    @staticmethod
    def forward(ctx, logits, target, bug: str | None):
        work = _compute_dtype(logits)
        z = logits.to(work)
        lse = torch.logsumexp(z, -1)
        loss = (lse - z.gather(-1, target[:, None])[:, 0]).mean()
        softmax = torch.softmax(z, -1)
        one_hot = torch.nn.functional.one_hot(target, z.shape[-1]).to(work)
        ctx.save_for_backward(((softmax - one_hot) / z.shape[0]).to(logits.dtype))
        ctx.bug = bug
        return loss.to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        (gradient,) = ctx.saved_tensors
        if ctx.bug == "no_grad_output" and gradient.dtype in LOW:
            return gradient, None, None  # grad_output never applied
        work = _compute_dtype(gradient)
        return (gradient.to(work) * grad.to(work)).to(gradient.dtype), None, None


class RMSNormSwiGLU(nn.Module):
    """A Llama-style MLP block on fused kernels: RMSNorm, gate/up projections, SwiGLU, down projection."""

    def __init__(self, width: int = 32, hidden: int = 64, norm_bug: str | None = None,
                 swiglu_bug: str | None = None) -> None:
        super().__init__()
        self.norm_weight = nn.Parameter(1 + 0.1 * torch.randn(width))
        self.gate, self.up = nn.Linear(width, hidden, bias=False), nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.norm_bug, self.swiglu_bug = norm_bug, swiglu_bug

    def forward(self, x):
        h = FusedRMSNorm.apply(x, self.norm_weight, 1e-6, self.norm_bug)
        return x + self.down(FusedSwiGLU.apply(self.gate(h), self.up(h), self.swiglu_bug))


class CrossEntropyHead(nn.Module):
    """Logits from a linear head, the fused cross-entropy, the loss scaled by ``scale``."""

    def __init__(self, width: int = 32, classes: int = 16, bug: str | None = None, scale: float = 3.0) -> None:
        super().__init__()
        self.head = nn.Linear(width, classes)
        self.bug, self.scale = bug, scale

    def forward(self, x, target):
        return self.scale * FusedCrossEntropy.apply(self.head(x), target, self.bug)


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rmsnorm_case(bug: str | None = None, rows: int = 4, width: int = 64):
    """(fn, args) of the fused RMSNorm alone: x and weight both differentiated."""
    weight = (1 + 0.1 * _x(width, seed=2)).requires_grad_()
    return (lambda x, w: FusedRMSNorm.apply(x, w, 1e-6, bug)), (_x(rows, width).requires_grad_(), weight)


def swiglu_case(bug: str | None = None, rows: int = 4, width: int = 64):
    return (lambda a, b: FusedSwiGLU.apply(a, b, bug)), (_x(rows, width), _x(rows, width, seed=2))


def cross_entropy_case(bug: str | None = None, rows: int = 8, width: int = 32, classes: int = 16):
    torch.manual_seed(0)
    target = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(3))
    return CrossEntropyHead(width, classes, bug).double(), (_x(rows, width), target)


def block_case(norm_bug: str | None = None, swiglu_bug: str | None = None):
    torch.manual_seed(0)
    return RMSNormSwiGLU(norm_bug=norm_bug, swiglu_bug=swiglu_bug).double(), (_x(4, 32),)


# TARGETs for `gradaudit run` (cast with --dtype bfloat16 / float16)
def rmsnorm():
    return rmsnorm_case()


def rmsnorm_dropped_term():
    return rmsnorm_case("dropped_term")


def swiglu():
    return swiglu_case()


def swiglu_gate_scaled():
    return swiglu_case("scale")


def cross_entropy():
    return cross_entropy_case()


def cross_entropy_no_grad_output():
    return cross_entropy_case("no_grad_output")


def block():
    return block_case()


def block_dropped_term():
    return block_case(norm_bug="dropped_term")


def block_gate_scaled():
    return block_case(swiglu_bug="scale")


PLANTED = {"rmsnorm_dropped_term": rmsnorm_dropped_term, "swiglu_gate_scaled": swiglu_gate_scaled,
           "cross_entropy_no_grad_output": cross_entropy_no_grad_output, "block_dropped_term": block_dropped_term,
           "block_gate_scaled": block_gate_scaled}
CORRECT = {"rmsnorm": rmsnorm, "swiglu": swiglu, "cross_entropy": cross_entropy, "block": block}
