"""Cases for localization on forwards that create tensors (issue 23): factories (``arange``, ``empty_like``,
``zeros``) before a planted wrong backward, a small causal transformer with one wrong layer, NaN second
derivatives at removable singularities, an ldexp-like backward that computes 2**e in integer arithmetic, and a
forward that localization genuinely cannot take apart. Each factory returns ``(fn_or_module, args)``."""
from __future__ import annotations

import math

import torch
from torch import nn

D = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


class ScaleByTwoWrong(torch.autograd.Function):
    """2 x, with a backward that returns 3 g."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 3


class SinIntoFreshBuffer(torch.autograd.Function):
    """sin(x) written into a buffer made by ``empty_like`` (as a kernel wrapper does); the backward forgets the
    cosine's sign (returns g |cos x|)."""

    @staticmethod
    def forward(ctx, x):
        out = torch.empty_like(x)
        out.copy_(torch.sin(x))
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x).abs()


# Defined once per process (pytest imports this module once): a torch.library op whose backward computes 2**e in
# integer arithmetic, as torch 2.13's ldexp did: for a negative exponent 2**e floors to 0, the gradient with it.
@torch.library.custom_op("gradaudit_h2::ldexp_int", mutates_args=())
def ldexp_int(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    return x * torch.pow(2.0, e)


@ldexp_int.register_fake
def _(x, e):
    return torch.empty_like(x)


def _ldexp_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _ldexp_backward(ctx, grad):
    (e,) = ctx.saved_tensors
    return grad * torch.pow(2, e), None  # wrong: integer pow, 0 for e < 0 (torch.pow(2.0, e) is right)


ldexp_int.register_autograd(_ldexp_backward, setup_context=_ldexp_setup)


def after_arange():
    """Positions from ``torch.arange`` added to x, then a wrong custom Function."""
    def f(x):
        positions = torch.arange(x.shape[-1], dtype=x.dtype)
        return torch.tanh(ScaleByTwoWrong.apply(x + positions))
    return f, (randn(3, 5),)


def after_empty_like():
    """A wrong Function that writes into ``empty_like``'s buffer, after a scale made by ``empty_like`` too."""
    def f(x):
        scale = torch.empty_like(x).fill_(3.0)
        return SinIntoFreshBuffer.apply(x * scale) * x
    return f, (randn(4, 3, seed=1),)


def after_zeros():
    """x padded with ``torch.zeros``, then the ldexp-like op with exponents made in the forward."""
    def f(x):
        padded = torch.cat([x, torch.zeros(2, dtype=x.dtype)])
        exponents = torch.tensor([1, -2, 0, -1, 2, 1, -3], dtype=torch.int32)
        return torch.sin(ldexp_int(padded, exponents))
    return f, (randn(5, seed=2),)


def ldexp_like_regression():
    """The ldexp report's shape: ``ldexp(stack(t, t**2), [1, -2])``; its gradient drops the t**2/4 term."""
    def f(t):
        return ldexp_int(torch.stack((t, t * t)), torch.tensor([[1], [-2]], dtype=torch.int32)).sum(0)
    return f, (randn(3, seed=3),)


def sinc_at_zero():
    """torch.sinc at 0: its double backward is NaN there (a removable singularity: sinc is smooth at 0)."""
    x = randn(4, seed=4)
    x[1] = 0.0
    return (lambda x: torch.sinc(x) * torch.ones_like(x)), (x,)


# ------------------------------------------------------------------------------------------ a small transformer
class WrongSiLU(torch.autograd.Function):
    """x sigmoid(x), whose backward drops the product rule's second term (returns g sigmoid(x))."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class Act(nn.Module):
    def __init__(self, wrong: bool) -> None:
        super().__init__()
        self.wrong = wrong

    def forward(self, x):
        return WrongSiLU.apply(x) if self.wrong else nn.functional.silu(x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        weights = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, wrong: bool) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), Act(wrong), nn.Linear(2 * width, width))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token and position embeddings (positions from ``torch.arange``), causal attention (mask from
    ``torch.ones(...).triu``), LayerNorm, an MLP per block, a final norm and a head."""

    def __init__(self, vocab: int = 13, width: int = 8, heads: int = 2, layers: int = 2, wrong_layer: int = 1,
                 length: int = 6) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, width), nn.Embedding(length, width)
        self.layers = nn.ModuleList(Block(width, heads, i == wrong_layer) for i in range(layers))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        x = self.embed(tokens) + self.position(positions)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def tiny_transformer(wrong_layer: int = 1):
    torch.manual_seed(0)
    model = TinyTransformer(wrong_layer=wrong_layer).to(D)
    tokens = torch.randint(0, 13, (1, 6), generator=torch.Generator().manual_seed(5))
    return model, (tokens,)


# ------------------------------------------------------------------------------------------ cannot localize
class Autotuned(nn.Module):
    """Picks one of two equivalent implementations on each call, as an autotuner does (so no two forwards run
    the same ops), and scales the gradient of its hidden state by 2 in a tensor hook: a wrong gradient that no
    node's backward creates. Localization cannot name a node here, and must say so."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        hidden = self.linear(x)
        hidden = hidden * 2 if self.calls % 2 else hidden + hidden
        if hidden.requires_grad:
            hidden.register_hook(lambda grad: grad * 2)
        return torch.tanh(hidden)


def hooked_autotuned():
    torch.manual_seed(0)
    return Autotuned().to(D), (randn(3, 4, seed=6),)


class KernelWrittenSin(torch.autograd.Function):
    """sin(x) written into an ``empty_like`` buffer by code torch does not dispatch (numpy here, a Triton kernel
    in a real wrapper), with the backward forgetting the cosine's sign."""

    @staticmethod
    def forward(ctx, x):
        out = torch.empty_like(x)
        out.numpy()[...] = torch.sin(x).numpy()
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.cos(x).abs()


def kernel_wrapper():
    return (lambda x: KernelWrittenSin.apply(x * 3.0) * x), (randn(4, 3, seed=7),)
