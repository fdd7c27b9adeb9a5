"""Cases for the tests and benchmarks: correct modules and functions, and planted faults.

Each factory returns ``(fn_or_module, args[, kwargs])``, so each is also a gradaudit TARGET
(``tests/fixtures.py:lstm``).
"""
import torch
from torch import nn

D = torch.float64


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=D, seed=0):
    return torch.randn(*shape, generator=_generator(seed), dtype=dtype)


def _module(build, dtype=D, seed=0):
    torch.manual_seed(seed)
    return build().to(dtype)


# ---------------------------------------------------------------- correct cases
def conv_batchnorm(dtype=D):
    model = _module(lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh()), dtype).train()
    return model, (randn(2, 2, 5, 5, dtype=dtype),)


def lstm(dtype=D):
    return _module(lambda: nn.LSTM(3, 4, batch_first=True), dtype), (randn(2, 3, 3, dtype=dtype),)


def multihead_attention(dtype=D):
    attention = _module(lambda: nn.MultiheadAttention(8, 2, batch_first=True), dtype)
    q, k = randn(2, 3, 8, dtype=dtype, seed=1), randn(2, 4, 8, dtype=dtype, seed=2)
    return attention, (q, k, k), {"need_weights": True, "average_attn_weights": False}


def dropout_mlp(dtype=D):
    model = _module(lambda: nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.3), nn.Tanh(), nn.Linear(6, 2)),
                    dtype).train()
    return model, (randn(3, 4, dtype=dtype),)


class SparseEmbeddingBag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 4, sparse=True)
        self.project = nn.Linear(4, 3)

    def forward(self, ids, scale):
        return torch.tanh(self.project(self.embedding(ids) * scale))


def sparse_embedding(dtype=D):
    return _module(SparseEmbeddingBag, dtype), (torch.tensor([[1, 2, 4], [4, 3, 9]]), randn(2, 3, 1, dtype=dtype))


def transformer_layer(dtype=D, d_model=16):
    layer = _module(lambda: nn.TransformerEncoderLayer(d_model, 2, dim_feedforward=32, dropout=0.0,
                                                       batch_first=True), dtype)
    return layer, (randn(2, 3, d_model, dtype=dtype),)


def groupnorm_gelu(dtype=D):
    model = _module(lambda: nn.Sequential(nn.Conv1d(4, 4, 1), nn.GroupNorm(2, 4), nn.GELU()), dtype)
    return model, (randn(2, 4, 5, dtype=dtype),)


def plain_function(dtype=D):
    def f(x, y, *, power=2):
        return (x * y.exp()).sum(dim=1) ** power, {"ratio": x / (1 + y ** 2)}
    return f, (randn(3, 4, dtype=dtype), randn(3, 4, dtype=dtype, seed=1)), {"power": 3}


def complex_function(dtype=torch.complex128):
    def f(z, w):
        return (z * z.conj() * w).sin() + z.exp() * w.abs()
    return f, (randn(3, 2, dtype=dtype), randn(3, 2, dtype=dtype, seed=1))


def relu_at_zeros():
    x = randn(3, 4)
    x[0, 1] = x[2, 3] = 0.0
    return torch.relu, (x,)


# ---------------------------------------------------------------- planted faults
class ScaledSinBackward(torch.autograd.Function):
    """sin with its gradient scaled by 1.5."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 1.5 * grad * x.cos()


class WrongForNegatives(torch.autograd.Function):
    """x * |x| whose backward forgets the sign for negative inputs."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x  # right only for x > 0: the derivative is 2|x|


class OneWrongElement(torch.autograd.Function):
    """A linear map whose gradient is wrong in exactly one input element (index 137)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return weight @ x

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = weight.t() @ grad
        grad_x[137] = grad_x[137] * 2.0  # a 100 % error in one element out of 400
        return grad_x, None


def single_element_fault(n_in=400, n_out=120):
    weight = randn(n_out, n_in, seed=3) / n_in ** 0.5
    return (lambda x: OneWrongElement.apply(x, weight)), (randn(n_in),)


class BadBiasLinear(nn.Module):
    """A Linear whose custom Function gets the weight gradient right and the bias gradient wrong."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(x, weight)
            return x @ weight.t() + bias

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            return grad @ weight, grad.t() @ x, grad.mean(0)  # bias gradient should be grad.sum(0)

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        hidden = torch.tanh(self.fc1(x))
        return self.Fn.apply(hidden, self.fc2.weight, self.fc2.bias)


def wrong_parameter_gradient():
    return _module(BadBiasLinear), (randn(6, 4),)


class DetachedBackward(torch.autograd.Function):
    """Correct first derivative of x**3, computed from detached values: its second derivative is zero."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x.detach() ** 2


class CtxIntermediate(torch.autograd.Function):
    """exp(x) whose backward reuses the forward output kept on ctx as a plain attribute (no graph)."""

    @staticmethod
    def forward(ctx, x):
        ctx.result = x.exp()
        return ctx.result.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.result


def detached_second_order():
    return (lambda x: DetachedBackward.apply(x).sin()), (randn(3, 2),)


def ctx_intermediate_second_order():
    return (lambda x: CtxIntermediate.apply(x) * x), (randn(4),)


# Defined once per process: loading tests/fixtures.py by path reuses this module (gradaudit.case). Running the
# file again would define the op anew and free the definition this softsign still calls (issue 22's segfault).
@torch.library.custom_op("gradaudit_tests::softsign", mutates_args=())
def softsign(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + x.abs())


@softsign.register_fake
def _(x):
    return torch.empty_like(x)


def _softsign_setup(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


def _softsign_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad / (1 + x.abs())  # wrong: the derivative is 1 / (1 + |x|)**2


softsign.register_autograd(_softsign_backward, setup_context=_softsign_setup)


def custom_op_fault():
    return (lambda x: softsign(x) * 2), (randn(3, 3),)


class SquareForgetsConj(torch.autograd.Function):
    """z**2 for complex z whose backward forgets torch's conjugate (Wirtinger) convention."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * 2 * z  # should be grad * (2 * z).conj()


def complex_fault():
    return SquareForgetsConj.apply, (randn(3, 2, dtype=torch.complex128),)


class NoisyBackward(torch.autograd.Function):
    """A correct backward plus run-to-run noise, like an atomic-add kernel."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2 + 1e-7 * torch.randn_like(grad)


def nondeterministic():
    return NoisyBackward.apply, (randn(5),)


class WrongInFloat32(torch.autograd.Function):
    """tanh whose backward takes a shortcut that is wrong only in float32."""

    @staticmethod
    def forward(ctx, x):
        y = x.tanh()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        if y.dtype == torch.float32:
            return grad * (1 - y)  # wrong: should be 1 - y**2
        return grad * (1 - y * y)


def float32_only_fault():
    return nn.Sequential(nn.Linear(3, 4).double(), _Apply(WrongInFloat32)), (randn(2, 3),)


class _Apply(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function.apply(x)


def wrong_for_negatives(positive_only=False):
    x = randn(4, 3)
    return WrongForNegatives.apply, (x.abs() + 0.1 if positive_only else x,)


def scaled_backward():
    return ScaledSinBackward.apply, (randn(6),)


def lazy_linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyLinear(3), nn.Tanh()).double(), (randn(2, 5),)


# ---------------------------------------------------------------- for the analyzers (localization, hazards)
class SlopedTanh(torch.autograd.Function):
    """tanh whose backward uses 1 - t instead of 1 - t**2."""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        ctx.save_for_backward(t)
        return t

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return grad * (1 - t)


class SlopedTanhModule(nn.Module):
    def forward(self, x):
        return SlopedTanh.apply(x)


class ResidualBlock(nn.Module):
    def __init__(self, width, act):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.act = act
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return x + 0.5 * self.fc2(self.act(self.fc1(self.norm(x))))


class ResidualNet(nn.Module):
    def __init__(self, blocks=24, width=8, faulty=None):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBlock(width, SlopedTanhModule() if i == faulty else nn.Tanh()) for i in range(blocks))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def residual_net(blocks=24, faulty=17, width=8):
    """A residual network (LayerNorm, Linear, activation, Linear per block; ~10 autograd nodes a block) whose
    block ``faulty`` (17 of 24 by default; None: no fault) has a tanh with a wrong backward."""
    return _module(lambda: ResidualNet(blocks, width, faulty)), (randn(4, width, seed=5),)


class WrongJvpSquareCtx(torch.autograd.Function):
    """x**2 with a right backward and a forward-mode formula (jvp) that forgets the factor 2."""

    @staticmethod
    def forward(x):
        return x ** 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.x = x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x

    @staticmethod
    def jvp(ctx, tangent):
        return tangent * ctx.x  # wrong: the JVP of x**2 is 2 x tangent


def wrong_forward_ad():
    return (lambda x: torch.sin(WrongJvpSquareCtx.apply(x.exp()))), (randn(3, 2),)


# ---------------------------------------------------------------- for the onnx backend
class ExportOnlySwish(nn.Module):
    """x * sigmoid(x) in eager, but x * sigmoid(1.5 x) when traced by torch.onnx.export."""

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return x * torch.sigmoid(1.5 * x)
        return x * torch.sigmoid(x)


def export_divergent_activation(dtype=D):
    """An MLP whose activation takes a different code path under ``torch.onnx.is_in_onnx_export()``."""
    model = _module(lambda: nn.Sequential(nn.Linear(4, 5), ExportOnlySwish(), nn.Linear(5, 2)), dtype)
    return model, (randn(3, 4, dtype=dtype),)


def mlp(dtype=D):
    return _module(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), dtype), (randn(5, 4, dtype=dtype),)


def small_conv(dtype=D):
    model = _module(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Softplus(), nn.Conv2d(3, 1, 2)), dtype)
    return model, (randn(2, 2, 5, 5, dtype=dtype),)


# ---------------------------------------------------------------- backend-dependent behaviour
class WrongOnXlaSquare(torch.autograd.Function):
    """x**2 whose backward takes an XLA-only shortcut that forgets the factor 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x if x.device.type == "xla" else grad * 2 * x


class XlaBackwardAct(nn.Module):
    def forward(self, x):
        return WrongOnXlaSquare.apply(x)


class XlaForwardAct(nn.Module):
    """tanh that computes something else on XLA (a forward divergence)."""

    def forward(self, x):
        y = torch.tanh(x)
        return y * 1.01 if x.device.type == "xla" else y


def xla_backward_divergence(dtype=D):
    model = _module(lambda: nn.Sequential(nn.Linear(4, 5), XlaBackwardAct(), nn.Linear(5, 2)), dtype)
    return model, (randn(3, 4, dtype=dtype),)


def xla_forward_divergence(dtype=D):
    model = _module(lambda: nn.Sequential(nn.Linear(4, 5), XlaForwardAct(), nn.Linear(5, 2)), dtype)
    return model, (randn(3, 4, dtype=dtype),)


# ---------------------------------------------------------------- planted faults that must survive the op-db fixes
class SaturatedTanhWrongSecond(torch.autograd.Function):
    """tanh whose backward is right but whose second derivative is off by 1e-3 (relative): a double backward
    computed with ``1 - t**2`` scaled wrongly, at inputs where tanh saturates (|x| > 4)."""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        ctx.save_for_backward(x)
        return t

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * SaturatedTanhGrad.apply(x)


class SaturatedTanhGrad(torch.autograd.Function):
    """x -> 1 - tanh(x)^2 with a derivative scaled by (1 + 1e-3)."""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        ctx.save_for_backward(t)
        return 1 - t * t

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return grad * (-2 * t * (1 - t * t)) * (1 + 1e-3)


def saturated_wrong_second_order():
    x = torch.tensor([4.6, -5.3, 6.1, 7.5856719161270245], dtype=D)
    return SaturatedTanhWrongSecond.apply, (x,)


class SincNanBackward(torch.autograd.Function):
    """sin(x)/x with sinc(0) = 1 in the forward, but a backward that divides by x: NaN at the removable
    singularity x = 0, where the function is smooth (derivative 0)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (torch.cos(x) / x - torch.sin(x) / x ** 2)


def sinc_nan_backward():
    x = randn(5)
    x[2] = 0.0
    return SincNanBackward.apply, (x,)


class CoshcNanDoubleBackward(torch.autograd.Function):
    """x sin(x): the first derivative is right everywhere, the second is computed by a formula that divides by
    x (NaN at x = 0, a removable singularity: the true value there is 2)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sin(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * XSinGrad.apply(x)


class XSinGrad(torch.autograd.Function):
    """x -> sin(x) + x cos(x), whose derivative 2 cos(x) - x sin(x) is written as (2 x cos x - x^2 sin x) / x."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x) + x * torch.cos(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (2 * x * torch.cos(x) - x * x * torch.sin(x)) / x


def nan_double_backward_at_removable_singularity():
    x = randn(4)
    x[1] = 0.0
    return CoshcNanDoubleBackward.apply, (x,)


class ScaledSinWithIndex(torch.autograd.Function):
    """(sin(x) with its gradient scaled by 1.5, a float mask marked non-differentiable)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        mask = (x > 0).to(x.dtype)
        ctx.mark_non_differentiable(mask)
        return torch.sin(x), mask

    @staticmethod
    def backward(ctx, grad, _):
        (x,) = ctx.saved_tensors
        return 1.5 * grad * torch.cos(x)


def fault_beside_nondifferentiable_output():
    return ScaledSinWithIndex.apply, (randn(6),)
