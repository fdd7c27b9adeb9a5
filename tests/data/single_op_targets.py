"""Single-op cases with a planted backend-only divergence: the case is one op (no submodule to blame), so a
divergence must be named by that op (tests/test_single_op_divergence.py)."""
import torch
from torch import nn

D = torch.float64


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def multilabel_margin_loss():
    """torch.nn's MultiLabelMarginLoss: its ONNX export (torch 2.9.1) reads the targets after the -1 that ends
    each row's list, so the exported loss differs from eager's (a real exporter bug, not a planted one)."""
    return nn.MultiLabelMarginLoss(), (_randn(2, 4), torch.tensor([[3, 0, -1, 1], [1, 2, 3, -1]]))


class WrongOnXlaSquare(torch.autograd.Function):
    """x**2 whose backward forgets the factor 2 on XLA only (a planted backward divergence)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x if x.device.type == "xla" else grad * 2 * x


def _square_on_xla_wrong(x):
    return WrongOnXlaSquare.apply(x)


def xla_backward_single_op():
    return _square_on_xla_wrong, (_randn(3, 4),)


def _tanh_off_on_xla(x):
    """One op on each backend: tanh on the CPU, and on XLA an op that computes something else (sinh)."""
    return torch.sinh(x) if x.device.type == "xla" else torch.tanh(x)


def xla_forward_single_op():
    return _tanh_off_on_xla, (_randn(3, 4),)


def _scaled_on_xla(x):
    """tanh, then on XLA only one more op that scales it: the op the backend adds is where it parts."""
    y = torch.tanh(x)
    return y * 1.01 if y.device.type == "xla" else y


def xla_forward_extra_op():
    return _scaled_on_xla, (_randn(3, 4),)


def compile_backward_single_op():
    """The softsign op alone, with its faulty decomposition planted (for the rest of the worker process) in the
    table that aot_eager_decomp_partition and inductor use: a compile-only backward divergence of one op."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from compile_targets import _plant_faulty_decomposition, softsign

    _plant_faulty_decomposition()
    return softsign, (_randn(4, 6),)


def onnx_backward_single_op():
    """tanh alone in eager; under torch.onnx.export, tanh's value at the audited point plus a slope of 0.5 from
    there: the exported graph agrees in its forward value and differs in its derivative (a planted backward
    divergence of the export)."""
    x = _randn(3, 4)
    at = x.clone()

    def tanh_exported_with_another_slope(v):
        if torch.onnx.is_in_onnx_export():
            return torch.tanh(at) + 0.5 * (v - at)
        return torch.tanh(v)

    return tanh_exported_with_another_slope, (x,)
