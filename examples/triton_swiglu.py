"""A fused SwiGLU in Triton, forward and hand-written backward kernels, audited by gradaudit.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set here before
the kernels are defined when no CUDA device is present; about 4 ms a call):

    gradaudit run examples/triton_swiglu.py:case --dtype float32      # passes
    gradaudit run examples/triton_swiglu.py:case --dtype bfloat16     # passes (judged by measured bf16 noise)
    gradaudit run examples/triton_swiglu.py:buggy --dtype bfloat16    # fails: the gate derivative misses a term

With a GPU the kernels are compiled and need CUDA tensors: add ``--device cuda`` (``DEVICE`` below says which).

The kernels compute in float32 (float64 for float64 inputs, so the float64 shadow gradaudit checks numerically
is the same kernel) and store in the input's dtype.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when a kernel is decorated, below

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

# where the kernels can run: CPU tensors only in the interpreter, CUDA tensors once compiled
DEVICE = "cpu" if triton.knobs.runtime.interpret else "cuda"

BLOCK = 256


@triton.jit
def swiglu_forward_kernel(a_ptr, b_ptr, y_ptr, n, COMPUTE: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    a = tl.load(a_ptr + offsets, mask=mask).to(COMPUTE)
    b = tl.load(b_ptr + offsets, mask=mask).to(COMPUTE)
    s = 1.0 / (1.0 + tl.exp(-a))
    tl.store(y_ptr + offsets, (a * s * b).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_backward_kernel(g_ptr, a_ptr, b_ptr, da_ptr, db_ptr, n, COMPUTE: tl.constexpr, BUG: tl.constexpr,
                           BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    g = tl.load(g_ptr + offsets, mask=mask).to(COMPUTE)
    a = tl.load(a_ptr + offsets, mask=mask).to(COMPUTE)
    b = tl.load(b_ptr + offsets, mask=mask).to(COMPUTE)
    s = 1.0 / (1.0 + tl.exp(-a))
    if BUG:
        gate = s  # the planted bug: silu'(a) without the product rule's a * s * (1 - s)
    else:
        gate = s * (1.0 + a * (1.0 - s))
    tl.store(da_ptr + offsets, (g * b * gate).to(da_ptr.dtype.element_ty), mask=mask)
    tl.store(db_ptr + offsets, (g * a * s).to(db_ptr.dtype.element_ty), mask=mask)


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


class TritonSwiGLU(torch.autograd.Function):
    """y = silu(a) * b elementwise, both passes in Triton kernels."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, bug: bool = False) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        y = torch.empty_like(a)
        swiglu_forward_kernel[_grid(a.numel())](a, b, y, a.numel(), COMPUTE=_compute(a.dtype), BLOCK=BLOCK)
        ctx.save_for_backward(a, b)
        ctx.bug = bug
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        da, db = torch.empty_like(a), torch.empty_like(b)
        swiglu_backward_kernel[_grid(a.numel())](grad.contiguous(), a, b, da, db, a.numel(),
                                                 COMPUTE=_compute(a.dtype), BUG=ctx.bug, BLOCK=BLOCK)
        return da, db, None


def swiglu(a: torch.Tensor, b: torch.Tensor, bug: bool = False) -> torch.Tensor:
    return TritonSwiGLU.apply(a, b, bug)


def _inputs(rows: int = 4, width: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(rows, width, generator=generator, dtype=torch.float64).to(DEVICE),
            torch.randn(rows, width, generator=generator, dtype=torch.float64).to(DEVICE))


def case():
    """The correct kernel pair (cast with --dtype float32 / bfloat16 / float16)."""
    return swiglu, _inputs()


def buggy():
    """The backward kernel with the planted bug."""
    return (lambda a, b: swiglu(a, b, bug=True)), _inputs()
