"""Targets for tests/test_extensions.py (also runnable as ``gradaudit run tests/data/extension_targets.py:NAME``):
C++ custom Functions built from tests/data/cpp_functions.cpp, and Python Functions with planted faults that only
second order, two backward passes, or NaN-aware messages show."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("cpp_functions.cpp")


@functools.lru_cache(maxsize=None)
def cpp_module():
    """The compiled extension, built once per user and source (torch caches it in TORCH_EXTENSIONS_DIR, by
    default ~/.cache/torch_extensions): about 40 s the first time on 2 cores, a second after."""
    from torch.utils.cpp_extension import load

    return load("gradaudit_test_cpp_functions", [str(SOURCE)], extra_cflags=["-O0"], verbose=False)


def _x(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ C++ Functions
def cpp_cube():
    """x^3 in C++ with a right backward made of differentiable ops (double backward works)."""
    module = cpp_module()
    return (lambda x: module.cube(x, 3.0)), (_x(),)


def cpp_wrong_cube():
    """x^3 in C++ whose backward multiplies by 2.9 x^2 instead of 3 x^2."""
    module = cpp_module()
    return (lambda x: module.cube(x, 2.9)), (_x(),)


def cpp_once_cube():
    """x^3 in C++ whose backward is a C++ Function that refuses double backward (as torchvision's ops do)."""
    module = cpp_module()
    return module.once_cube, (_x(),)


# ------------------------------------------------------------------------------------------ planted Python faults
class GraphlessScale(torch.autograd.Function):
    """2 x, linear, whose backward computes its gradient under no_grad: right at order 1, and at order 2 with the
    cotangent held fixed (the derivative in x is 0 either way); wrong in grad_output, as gradgradcheck sees."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        with torch.no_grad():
            return 2 * grad


def graphless_scale():
    return GraphlessScale.apply, (_x(),)


class StoresGradientsInInputs(torch.autograd.Function):
    """silu(a) * b whose backward writes its gradients into the saved inputs and returns them (liger-kernel
    0.5.10's SwiGLU does this in its Triton kernel to save memory): its first pass is right, a second pass of
    the same graph reads gradients where it expects a and b."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return F.silu(a) * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        sigmoid = torch.sigmoid(a)
        silu = a * sigmoid
        da = grad * b * (sigmoid + silu * (1 - sigmoid))
        db = grad * silu
        a.data.copy_(da)  # (.data: no version bump, like a kernel writing through a pointer)
        b.data.copy_(db)
        return a, b


def stores_gradients_in_inputs():
    return StoresGradientsInInputs.apply, (_x(6, 1), _x(6, 2))


class NanAtOneElement(torch.autograd.Function):
    """x^2 whose backward returns NaN at element 1."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        gradient = 2 * x * grad
        gradient[1] = float("nan")
        return gradient


def nan_at_one_element():
    return NanAtOneElement.apply, (_x(),)


# ------------------------------------------------------------------------------------------ whose exception
class SquareBackward(torch.autograd.Function):
    """The backward of ``PythonOnceSquare``: 2 x g, refusing to be differentiated (torchvision's old Python ops)."""

    @staticmethod
    def forward(ctx, grad, x):
        return 2 * x * grad

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("double backwards on python_once_square not supported")


class PythonOnceSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return SquareBackward.apply(grad, x)


def python_once_square():
    return PythonOnceSquare.apply, (_x(),)


class RaisingBackward(torch.autograd.Function):
    """x^2 whose (first) backward raises: a primary quantity, the case's own failure."""

    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("planted failure in the backward")


def raising_backward():
    return RaisingBackward.apply, (_x(),)
