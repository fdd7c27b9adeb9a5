"""A compile-only gradient fault for tests/test_process.py: softsign as a torch.library op whose backward op has
a wrong decomposition in inductor's table (installed when this file is loaded: in the audit's worker process)."""
import torch
from torch import Tensor, nn


@torch.library.custom_op("gradaudit_process_test::softsign", mutates_args=())
def softsign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


@softsign.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("gradaudit_process_test::softsign_backward", mutates_args=())
def softsign_backward(grad: Tensor, x: Tensor) -> Tensor:
    return grad / (1 + x.abs()) ** 2


@softsign_backward.register_fake
def _(grad, x):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return softsign_backward(grad, x)


softsign.register_autograd(_backward, setup_context=_setup_context)


def _plant_faulty_decomposition():
    from torch._inductor import decomposition

    op = torch.ops.gradaudit_process_test.softsign_backward.default
    decomposition.decompositions[op] = lambda grad, x: grad / (1 + x.abs())  # the square is missing
    decomposition.fast_random_decomps.cache_clear()


class SoftsignNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return softsign(self.fc(x))


def faulty_decomposition():
    _plant_faulty_decomposition()
    module = SoftsignNet().double()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return module, (x,)
