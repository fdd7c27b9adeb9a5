"""A zoo for the suite tests: correct cases, a planted faulty backward, a crash, an abort and a hang."""
import os
import signal
import time

import torch
from torch import nn

from gradaudit.suite.zoos import ZooCase

D = torch.float64


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


class WrongTanh(torch.autograd.Function):
    """tanh whose backward forgets the square: 1 - y instead of 1 - y**2."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y)


def good():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.Tanh()).to(D), (_x(2, 3),)


def faulty():
    return WrongTanh.apply, (_x(3, 2),)


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def abort():
    os.abort()


def hang():
    time.sleep(3600)


def zoo():
    return [ZooCase("good", good), ZooCase("faulty", faulty, orders=(1,)), ZooCase("segfault", segfault),
            ZooCase("abort", abort), ZooCase("hang", hang)]


def pairs():
    """The (name, factory) form of a zoo."""
    return [("good", good), ("faulty", faulty)]
