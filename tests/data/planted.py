"""Pieces the hostile test targets share (imported by hostile_targets.py and process_targets.py, which sit beside
this file: a target file's folder is importable while gradaudit loads it)."""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack


class WrongTanh(torch.autograd.Function):
    """tanh whose backward forgets the square: a fault the checks find before any optional phase runs."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y)  # the square is missing


def under_analyzer() -> bool:
    """Whether an analyzer's dispatch mode traces the forward now (localization, the hazard scan, graph export):
    the optional phases, not the checks (whose own precision scan is a dispatch mode of the core)."""
    return any(type(mode).__module__.startswith("gradaudit.analyzers") for mode in _get_current_dispatch_mode_stack())
