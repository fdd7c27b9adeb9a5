"""A compile-only gradient fault: softsign as a torch.library op whose backward is an op of its own. Eager runs
its kernels; the compilers that use inductor's decomposition table (inductor, aot_eager_decomp_partition) run
whatever decomposition is registered there for the backward op instead, and the planted one forgets the square.

tests/test_compile.py imports the op from here and plants the fault for one test at a time; as a TARGET
(tests/test_process.py), ``faulty_decomposition`` plants it for the rest of the audit's worker process."""
import torch
from torch import Tensor, nn


@torch.library.custom_op("gradaudit_compile_test::softsign", mutates_args=())
def softsign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


@softsign.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("gradaudit_compile_test::softsign_backward", mutates_args=())
def softsign_backward(grad: Tensor, x: Tensor) -> Tensor:
    return grad / (1 + x.abs()) ** 2


@softsign_backward.register_fake
def _(grad, x):
    return torch.empty_like(grad)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return softsign_backward(grad, x)


softsign.register_autograd(_backward, setup_context=_setup_context)


def faulty_softsign_backward(grad: Tensor, x: Tensor) -> Tensor:
    return grad / (1 + x.abs())  # the square is missing


def _plant_faulty_decomposition():
    from torch._inductor import decomposition

    decomposition.decompositions[torch.ops.gradaudit_compile_test.softsign_backward.default] = faulty_softsign_backward
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
