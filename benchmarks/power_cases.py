"""Models with a planted relative error in one gradient formula, for ``benchmarks/bench_power.py``.

Every builder takes ``eps`` (the planted relative error; ``0.0`` is the correct model, built the same way, so
a pass at ``eps=0`` is a check for false alarms on exactly the graph that is probed) and ``dtype``, and returns
``(module, args)``. The forward never changes with ``eps``: only one backward formula is multiplied by
``1 + eps``.

How a relative error is planted without touching the forward:

* a parameter's gradient: the module uses ``ScaleGrad.apply(param, eps)`` (identity forward, backward times
  ``1 + eps``) in place of ``param``;
* an op's first derivative: a custom ``autograd.Function`` whose forward is the exact op and whose backward
  returns the exact gradient times ``1 + eps`` (GELU, softmax, SiLU);
* an op's second derivative: ``Softplus`` whose backward is ``SoftplusGrad.apply(x, grad)`` (exact:
  ``grad * sigmoid(x)``), a second custom Function whose own backward has the term ``grad * sigmoid'(x)``
  multiplied by ``1 + eps``: the first derivative is exact, the second is off by ``eps``.

Parameters are initialised from a fixed seed (torch's default inits), inputs from a fixed generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

D = torch.float64


# ---------------------------------------------------------------- planted-fault Functions
class ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``1 + eps``."""

    @staticmethod
    def forward(ctx, x, eps):
        ctx.scale = 1.0 + eps
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class ScaledGelu(torch.autograd.Function):
    """Exact (erf) GELU; backward ``(Phi(x) + x phi(x)) * (1 + eps)``."""

    @staticmethod
    def forward(ctx, x, eps):
        ctx.save_for_backward(x)
        ctx.scale = 1.0 + eps
        return F.gelu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return grad * (cdf + x * pdf) * ctx.scale, None


class ScaledSoftmax(torch.autograd.Function):
    """Softmax over the last dim; backward ``y * (g - sum(g y)) * (1 + eps)``."""

    @staticmethod
    def forward(ctx, x, eps):
        y = torch.softmax(x, dim=-1)
        ctx.save_for_backward(y)
        ctx.scale = 1.0 + eps
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return y * (grad - (grad * y).sum(-1, keepdim=True)) * ctx.scale, None


class ScaledSilu(torch.autograd.Function):
    """SiLU; backward ``(s + x s (1 - s)) * (1 + eps)`` with ``s = sigmoid(x)``."""

    @staticmethod
    def forward(ctx, x, eps):
        ctx.save_for_backward(x)
        ctx.scale = 1.0 + eps
        return F.silu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s + x * s * (1.0 - s)) * ctx.scale, None


class SoftplusGrad(torch.autograd.Function):
    """``(x, g) -> g * sigmoid(x)`` (softplus's backward); its own backward has the second-derivative term
    ``g * sigmoid'(x)`` scaled by ``1 + eps`` (the ``d/dg`` term, ``sigmoid(x)``, is exact)."""

    @staticmethod
    def forward(ctx, x, grad, eps):
        ctx.save_for_backward(x, grad)
        ctx.scale = 1.0 + eps
        return grad * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, gg):
        x, grad = ctx.saved_tensors
        s = torch.sigmoid(x)
        return gg * grad * s * (1.0 - s) * ctx.scale, gg * s, None


class Softplus(torch.autograd.Function):
    """Exact softplus; exact first derivative, computed by ``SoftplusGrad`` (second derivative off by eps)."""

    @staticmethod
    def forward(ctx, x, eps):
        ctx.save_for_backward(x)
        ctx.eps = eps
        return F.softplus(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return SoftplusGrad.apply(x, grad, ctx.eps), None


# ---------------------------------------------------------------- modules
class PlantedLinear(nn.Linear):
    """``nn.Linear`` whose bias (or weight) gradient is scaled by ``1 + eps``."""

    def __init__(self, n_in: int, n_out: int, eps: float = 0.0, which: str = "bias") -> None:
        super().__init__(n_in, n_out)
        self.eps, self.which = eps, which

    def forward(self, x):
        weight, bias = self.weight, self.bias
        if self.which == "bias":
            bias = ScaleGrad.apply(bias, self.eps)
        else:
            weight = ScaleGrad.apply(weight, self.eps)
        return F.linear(x, weight, bias)


class TanhMLP(nn.Module):
    """``depth`` layers ``tanh(Linear(width, width))``; layer ``planted`` has a bias gradient scaled by
    ``1 + eps`` (``act`` = ``"softplus2"``: layer ``planted`` uses the second-order-faulty softplus instead of
    tanh and all biases are plain)."""

    def __init__(self, width: int, depth: int, planted: int, eps: float, fault: str = "bias") -> None:
        super().__init__()
        self.fault, self.planted, self.eps = fault, planted, eps
        self.layers = nn.ModuleList(
            PlantedLinear(width, width, eps) if fault == "bias" and i == planted else nn.Linear(width, width)
            for i in range(depth))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = Softplus.apply(x, self.eps) if (self.fault == "softplus2" and i == self.planted) else torch.tanh(x)
        return x


class Block(nn.Module):
    """Pre-norm residual MLP block ``x + fc2(act(fc1(LayerNorm(x))))``; the planted block's activation is
    the faulty custom op (``gelu``: first order, ``softplus2``: second order), the others ``nn.GELU``."""

    def __init__(self, width: int, hidden: int, act: str | None, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.act, self.eps = act, eps

    def forward(self, x):
        h = self.fc1(self.norm(x))
        if self.act == "gelu":
            h = ScaledGelu.apply(h, self.eps)
        elif self.act == "softplus2":
            h = Softplus.apply(h, self.eps)
        else:
            h = F.gelu(h)
        return x + self.fc2(h)


class ResidualNet(nn.Module):
    def __init__(self, width: int, hidden: int, blocks: int, planted: int, eps: float, act: str = "gelu"):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width, hidden, act if i == planted else None, eps)
                                      for i in range(blocks)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.norm(self.blocks(x)))


class Attention(nn.Module):
    """Single-head-per-split self-attention written out, with a softmax whose backward is scaled by
    ``1 + eps`` when ``planted``."""

    def __init__(self, d: int, heads: int, planted: bool, eps: float) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.heads, self.planted, self.eps = heads, planted, eps

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        attn = ScaledSoftmax.apply(scores, self.eps) if self.planted else torch.softmax(scores, -1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, d))


class AttnBlock(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, planted: bool, eps: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, planted, eps)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SoftmaxTransformer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, layers: int, planted: int, eps: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[AttnBlock(d, heads, ff, i == planted, eps) for i in range(layers)])
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        return self.head(self.layers(x))


class PlantedTransformerEncoder(nn.Module):
    """``nn.TransformerEncoder`` (torch's own ``MultiheadAttention``, dropout 0) whose layer ``planted`` has
    its ``self_attn.in_proj_weight`` gradient scaled by ``1 + eps`` (a ``ScaleGrad`` parametrization)."""

    def __init__(self, d: int, heads: int, ff: int, layers: int, planted: int, eps: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        torch.nn.utils.parametrize.register_parametrization(
            self.encoder.layers[planted].self_attn, "in_proj_weight", _ScaleGradParam(eps))
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


class _ScaleGradParam(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, w):
        return ScaleGrad.apply(w, self.eps)


class ConvNet(nn.Module):
    """``blocks`` x [Conv2d 3x3 -> norm -> act], then a mean over space and a Linear head. Norms alternate
    GroupNorm(2) and BatchNorm2d (eval mode, non-trivial running statistics); block ``planted``'s activation
    is SiLU with a backward scaled by ``1 + eps``, the others ``nn.SiLU``."""

    def __init__(self, channels: int, blocks: int, planted: int, eps: float) -> None:
        super().__init__()
        convs, norms = [], []
        for i in range(blocks):
            convs.append(nn.Conv2d(2 if i == 0 else channels, channels, 3, padding=1))
            if i % 2 == 0:
                norms.append(nn.GroupNorm(2, channels))
            else:
                bn = nn.BatchNorm2d(channels)
                bn.running_mean.uniform_(-0.2, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                norms.append(bn)
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.planted, self.eps = planted, eps
        self.head = nn.Linear(channels, 2)

    def forward(self, x):
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            x = ScaledSilu.apply(x, self.eps) if i == self.planted else F.silu(x)
        return self.head(x.mean(dim=(-1, -2)))


class SoftplusFn(nn.Module):
    """Elementwise softplus with the second-order fault (no parameters; the input is the leaf)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return Softplus.apply(x, self.eps)


# ---------------------------------------------------------------- the cases
@dataclass
class PowerCase:
    name: str
    family: str
    order: int  # the order the fault lives at, and the order it is checked at
    build: Callable[[float, torch.dtype], tuple[nn.Module, tuple]]
    planted: str  # where the error is planted (a leaf name, or the op)
    note: str = ""
    quick: bool = False  # part of --quick
    float32: bool = False  # also run a float32 variant
    nodes: tuple = ()  # autograd node names a correct localization names (informational)


def _inputs(*shape, dtype=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _made(module_fn: Callable[[], nn.Module], x: torch.Tensor, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    module = module_fn().to(dtype)
    return module, (x.to(dtype),)


def tanh_mlp(depth: int, planted: int, width: int = 8, batch: int = 2):
    def build(eps: float, dtype: torch.dtype = D):
        return _made(lambda: TanhMLP(width, depth, planted, eps), _inputs(batch, width), dtype)
    return build


def softplus_mlp(depth: int, planted: int, width: int = 8, batch: int = 2):
    def build(eps: float, dtype: torch.dtype = D):
        return _made(lambda: TanhMLP(width, depth, planted, eps, fault="softplus2"), _inputs(batch, width), dtype)
    return build


def residual(blocks: int, planted: int, act: str = "gelu", width: int = 8, hidden: int = 8, batch: int = 2):
    def build(eps: float, dtype: torch.dtype = D):
        return _made(lambda: ResidualNet(width, hidden, blocks, planted, eps, act), _inputs(batch, width), dtype)
    return build


def softmax_transformer(layers: int, planted: int, d: int = 8, heads: int = 2, ff: int = 16, seq: int = 4):
    def build(eps: float, dtype: torch.dtype = D):
        return _made(lambda: SoftmaxTransformer(d, heads, ff, layers, planted, eps), _inputs(1, seq, d), dtype)
    return build


def torch_encoder(layers: int, planted: int, d: int = 8, heads: int = 2, ff: int = 16, seq: int = 4):
    def build(eps: float, dtype: torch.dtype = D):
        return _made(lambda: PlantedTransformerEncoder(d, heads, ff, layers, planted, eps), _inputs(1, seq, d),
                     dtype)
    return build


def convnet(blocks: int, planted: int, channels: int = 4, size: int = 5):
    def build(eps: float, dtype: torch.dtype = D):
        return _made(lambda: ConvNet(channels, blocks, planted, eps), _inputs(1, 2, size, size), dtype)
    return build


def softplus_fn(n: int = 6):
    def build(eps: float, dtype: torch.dtype = D):
        return SoftplusFn(eps).to(dtype), (_inputs(n, seed=3).to(dtype).requires_grad_(True),)
    return build


NODES = {"ScaleGrad": ("ScaleGradBackward",), "ScaledGelu": ("ScaledGeluBackward",),
         "ScaledSoftmax": ("ScaledSoftmaxBackward",), "ScaledSilu": ("ScaledSiluBackward",),
         "SoftplusGrad": ("SoftplusBackward", "SoftplusGradBackward")}


def _nodes(case: PowerCase) -> PowerCase:
    for word, nodes in NODES.items():
        if case.planted.startswith(word):
            case.nodes = nodes
    if not case.nodes:  # a parameter's gradient: the ScaleGrad in front of it
        case.nodes = NODES["ScaleGrad"]
    return case


def cases() -> list[PowerCase]:
    return [_nodes(c) for c in _cases()]


def _cases() -> list[PowerCase]:
    return [
        # 1. deep narrow tanh MLPs, width 8: one layer's bias gradient scaled
        PowerCase("tanh_mlp_d4", "tanh MLP", 1, tanh_mlp(4, 2), "layers.2.bias", "width 8, bias of layer 2/4",
                  quick=True),
        PowerCase("tanh_mlp_d16", "tanh MLP", 1, tanh_mlp(16, 8), "layers.8.bias", "width 8, bias of layer 8/16",
                  float32=True),
        PowerCase("tanh_mlp_d48", "tanh MLP", 1, tanh_mlp(48, 24), "layers.24.bias",
                  "width 8, bias of layer 24/48 (the issue's case)", quick=True),
        # 2. residual blocks with LayerNorm and GELU: the custom GELU's backward scaled, in block k
        PowerCase("resid_gelu_b4_k1", "residual LN+GELU", 1, residual(4, 1), "ScaledGelu (block 1/4)",
                  "width 8, hidden 8", quick=True, float32=True),
        PowerCase("resid_gelu_b8_k2", "residual LN+GELU", 1, residual(8, 2), "ScaledGelu (block 2/8)",
                  "width 8, hidden 8"),
        # 3. attention
        PowerCase("attn_softmax_l2_k0", "attention", 1, softmax_transformer(2, 0),
                  "ScaledSoftmax (layer 0/2)", "d 8, 2 heads, seq 4, softmax backward scaled", quick=True),
        PowerCase("torch_encoder_l2_k0", "attention", 1, torch_encoder(2, 0),
                  "encoder.layers.0.self_attn.parametrizations.in_proj_weight.original",
                  "nn.TransformerEncoder d 8, 2 heads, seq 4; in_proj_weight grad scaled"),
        # 4. conv + norm (GroupNorm, BatchNorm2d eval) + custom SiLU
        PowerCase("conv_norm_b2_k1", "conv+norm", 1, convnet(2, 1), "ScaledSilu (block 1/2)",
                  "4 ch, 5x5, GroupNorm + BatchNorm2d(eval)", quick=True),
        PowerCase("conv_norm_b4_k0", "conv+norm", 1, convnet(4, 0), "ScaledSilu (block 0/4)",
                  "4 ch, 5x5, GN/BN alternating"),
        # 5. second-order faults: first derivative exact, second derivative scaled
        PowerCase("softplus2_fn", "2nd order", 2, softplus_fn(6), "SoftplusGrad backward",
                  "elementwise softplus on 6 inputs", quick=True),
        PowerCase("softplus2_mlp_d8_k4", "2nd order", 2, softplus_mlp(8, 4), "SoftplusGrad backward (layer 4/8)",
                  "tanh MLP width 8, softplus at layer 4", float32=True),
        PowerCase("softplus2_resid_b4_k1", "2nd order", 2, residual(4, 1, act="softplus2"),
                  "SoftplusGrad backward (block 1/4)", "residual LN, width 8, hidden 8"),
    ]


# ---------------------------------------------------------------- low precision: bugs on the bf16/fp16 path only
def low_precision_cases() -> dict[str, Callable[[float], tuple]]:
    """Fused kernels (examples/fused_kernels.py, float32 inside) with a relative error ``eps`` planted on their
    bf16/fp16 path only: the float64 shadow never sees it, so only dtype parity can catch it. Each builder
    returns ``(fn, args)`` in float64; the audit casts it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import fused_kernels

    return {"swiglu_gate": lambda eps: fused_kernels.swiglu_case(eps),
            "rmsnorm_projection": lambda eps: fused_kernels.rmsnorm_case(eps),
            "block_gate": lambda eps: fused_kernels.block_case(swiglu_bug=eps)}
