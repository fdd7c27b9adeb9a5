"""A small model whose custom GELU has a planted bug in its backward: gradaudit catches it.

    gradaudit run examples/bad_gelu.py:case            # fails, naming the wrong gradient
    gradaudit run examples/bad_gelu.py:fixed --order 2 # the corrected version passes
"""
import math

import torch
from torch import nn


class BadGelu(torch.autograd.Function):
    """tanh-approximation GELU whose backward forgets the derivative of the tanh argument's cubic term."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
        t = torch.tanh(inner)
        d_inner = math.sqrt(2 / math.pi)  # bug: should be sqrt(2/pi) * (1 + 3 * 0.044715 * x**2)
        return grad * (0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * d_inner)


class Act(nn.Module):
    def __init__(self, fixed: bool = False):
        super().__init__()
        self.fixed = fixed

    def forward(self, x):
        return nn.functional.gelu(x, approximate="tanh") if self.fixed else BadGelu.apply(x)


class Block(nn.Module):
    def __init__(self, fixed: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = Act(fixed)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def case():
    torch.manual_seed(0)
    return Block().double(), (torch.randn(5, 8, dtype=torch.float64),)


def fixed():
    torch.manual_seed(0)
    return Block(fixed=True).double(), (torch.randn(5, 8, dtype=torch.float64),)
