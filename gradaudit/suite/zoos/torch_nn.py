"""The ``torch.nn`` zoo: small float64 cases for more than 60 torch.nn module types, in train and eval mode where
they differ, first and second order where torch supports them."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gradaudit.suite.zoos import D, ZooCase, away_from_zero, build, rand, randint, randn


class _Cases:
    """Collects cases: ``add(name, factory, ...)`` and ``both(name, make)`` for train and eval."""

    def __init__(self) -> None:
        self.cases: list[ZooCase] = []

    def add(self, name: str, factory: Callable[[], tuple], orders=(1, 2), module: str | None = None,
            tags: tuple = ()) -> None:
        module = module or name.split("[", 1)[0]
        self.cases.append(ZooCase(name, factory, tuple(orders), (f"module:{module}",) + tuple(tags)))

    def both(self, name: str, make: Callable[[bool], tuple], orders=(1, 2), module: str | None = None,
             tags: tuple = ()) -> None:
        """Cases ``name[train]`` and ``name[eval]``: ``make(train)`` returns the case in that mode."""
        self.add(f"{name}[train]", lambda: make(True), orders, module or name, tags + ("train",))
        self.add(f"{name}[eval]", lambda: make(False), orders, module or name, tags + ("eval",))


def _unary(cls: Callable[[], nn.Module], *shape: int, x: Callable[[], torch.Tensor] | None = None):
    def factory():
        return build(cls), ((x() if x else randn(*shape)),)
    return factory


class _LossOfLogProbs(nn.Module):
    """A loss whose first input must be log-probabilities: differentiate the logits instead."""

    def __init__(self, loss: nn.Module, dim: int = -1):
        super().__init__()
        self.loss, self.dim = loss, dim

    def forward(self, logits, *rest):
        return self.loss(torch.log_softmax(logits, self.dim), *rest)


class _WithTarget(nn.Module):
    """A loss that rejects a differentiable target: the target is kept as a buffer."""

    def __init__(self, loss: nn.Module, target: torch.Tensor):
        super().__init__()
        self.loss = loss
        self.register_buffer("target", target)

    def forward(self, prediction):
        return self.loss(prediction, self.target)


class _LossOfProbs(nn.Module):
    """A loss whose first input is a probability: differentiate logits through a sigmoid."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits, target, *rest):
        return self.loss(torch.sigmoid(logits), target, *rest)


# ---------------------------------------------------------------------------------------------- torch.nn
def _linear(z: _Cases) -> None:
    """Linear layers."""
    z.add("Identity", _unary(nn.Identity, 2, 3))
    z.add("Linear", _unary(lambda: nn.Linear(4, 3), 2, 4))
    z.add("Bilinear", lambda: (build(lambda: nn.Bilinear(3, 2, 4)), (randn(2, 3), randn(2, 2, seed=1))))
    z.add("LazyLinear", _unary(lambda: nn.LazyLinear(3), 2, 4))


def _convolutions(z: _Cases) -> None:
    """Convolutions."""
    z.add("Conv1d", _unary(lambda: nn.Conv1d(2, 3, 3, padding=1), 2, 2, 6))
    z.add("Conv1d[stride2,dilation2]", _unary(lambda: nn.Conv1d(2, 2, 3, stride=2, dilation=2), 1, 2, 9),
          module="Conv1d")
    z.add("Conv2d", _unary(lambda: nn.Conv2d(2, 3, 3, padding=1), 1, 2, 5, 5))
    z.add("Conv2d[groups2,reflect]", _unary(lambda: nn.Conv2d(4, 4, 3, groups=2, padding=1,
                                                              padding_mode="reflect"), 1, 4, 4, 4), module="Conv2d")
    z.add("Conv3d", _unary(lambda: nn.Conv3d(2, 2, 2), 1, 2, 3, 3, 3))
    z.add("ConvTranspose1d", _unary(lambda: nn.ConvTranspose1d(2, 3, 3, stride=2), 1, 2, 4))
    z.add("ConvTranspose2d", _unary(lambda: nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1), 1, 2, 3, 3))
    z.add("ConvTranspose3d", _unary(lambda: nn.ConvTranspose3d(2, 2, 2), 1, 2, 2, 2, 2))
    z.add("Fold", _unary(lambda: nn.Fold((3, 3), 2), 1, 8, 4))
    z.add("Unfold", _unary(lambda: nn.Unfold(2), 1, 2, 3, 3))


def _pooling(z: _Cases) -> None:
    """Pooling."""
    z.add("MaxPool1d", _unary(lambda: nn.MaxPool1d(2), 2, 2, 6))
    z.add("MaxPool2d", _unary(lambda: nn.MaxPool2d(2), 1, 2, 4, 4))
    z.add("MaxPool3d", _unary(lambda: nn.MaxPool3d(2), 1, 1, 4, 4, 2))
    z.add("MaxUnpool2d", lambda: _max_unpool(), module="MaxUnpool2d")
    z.add("AvgPool1d", _unary(lambda: nn.AvgPool1d(2), 2, 2, 6))
    z.add("AvgPool2d", _unary(lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), 1, 2, 5, 5))
    z.add("AvgPool3d", _unary(lambda: nn.AvgPool3d(2), 1, 1, 4, 4, 2))
    z.add("AdaptiveAvgPool1d", _unary(lambda: nn.AdaptiveAvgPool1d(3), 2, 2, 7))
    z.add("AdaptiveAvgPool2d", _unary(lambda: nn.AdaptiveAvgPool2d((2, 3)), 1, 2, 5, 5))
    z.add("AdaptiveAvgPool3d", _unary(lambda: nn.AdaptiveAvgPool3d(2), 1, 1, 3, 3, 3))
    z.add("AdaptiveMaxPool1d", _unary(lambda: nn.AdaptiveMaxPool1d(3), 2, 2, 7))
    z.add("AdaptiveMaxPool2d", _unary(lambda: nn.AdaptiveMaxPool2d((2, 2)), 1, 2, 5, 5))
    z.add("AdaptiveMaxPool3d", _unary(lambda: nn.AdaptiveMaxPool3d(2), 1, 1, 3, 3, 3))
    z.add("LPPool1d", _unary(lambda: nn.LPPool1d(2, 2), 2, 2, 6))
    z.add("LPPool2d", _unary(lambda: nn.LPPool2d(2, 2), 1, 2, 4, 4))
    z.add("FractionalMaxPool2d", _unary(lambda: nn.FractionalMaxPool2d(2, output_size=(3, 3)), 1, 2, 5, 5))
    z.add("FractionalMaxPool3d", _unary(lambda: nn.FractionalMaxPool3d(2, output_size=(2, 2, 2)), 1, 1, 4, 4, 4))


def _shapes(z: _Cases) -> None:
    """Padding, shapes, upsampling."""
    z.add("ZeroPad2d", _unary(lambda: nn.ZeroPad2d((1, 0, 2, 1)), 1, 2, 3, 3))
    z.add("ConstantPad1d", _unary(lambda: nn.ConstantPad1d(2, 0.5), 2, 2, 3))
    z.add("ReflectionPad2d", _unary(lambda: nn.ReflectionPad2d(1), 1, 2, 3, 3))
    z.add("ReplicationPad1d", _unary(lambda: nn.ReplicationPad1d(2), 2, 2, 4))
    z.add("CircularPad2d", _unary(lambda: nn.CircularPad2d(1), 1, 2, 3, 3))
    z.add("Flatten", _unary(lambda: nn.Flatten(), 2, 3, 2))
    z.add("Unflatten", _unary(lambda: nn.Unflatten(1, (2, 3)), 2, 6))
    z.add("PixelShuffle", _unary(lambda: nn.PixelShuffle(2), 1, 8, 2, 2))
    z.add("PixelUnshuffle", _unary(lambda: nn.PixelUnshuffle(2), 1, 2, 4, 4))
    z.add("ChannelShuffle", _unary(lambda: nn.ChannelShuffle(2), 1, 4, 2, 2))
    z.add("Upsample[nearest]", _unary(lambda: nn.Upsample(scale_factor=2, mode="nearest"), 1, 2, 3, 3),
          module="Upsample")
    z.add("Upsample[bilinear]", _unary(lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                       1, 2, 3, 3), module="Upsample")
    z.add("Upsample[bicubic]", _unary(lambda: nn.Upsample(size=(5, 5), mode="bicubic", align_corners=True),
                                      1, 1, 3, 3), module="Upsample")
    z.add("UpsamplingBilinear2d", _unary(lambda: nn.UpsamplingBilinear2d(scale_factor=2), 1, 2, 2, 2))
    z.add("UpsamplingNearest2d", _unary(lambda: nn.UpsamplingNearest2d(scale_factor=2), 1, 2, 2, 2))


def _normalization(z: _Cases) -> None:
    """Normalization."""
    z.both("BatchNorm1d", lambda train: (build(lambda: nn.BatchNorm1d(3), train), (randn(4, 3),)))
    z.both("BatchNorm2d", lambda train: (build(lambda: nn.BatchNorm2d(2), train), (randn(3, 2, 3, 3),)))
    z.both("BatchNorm3d", lambda train: (build(lambda: nn.BatchNorm3d(2), train), (randn(2, 2, 2, 2, 2),)))
    z.add("LayerNorm", _unary(lambda: nn.LayerNorm(4), 2, 3, 4))
    z.add("GroupNorm", _unary(lambda: nn.GroupNorm(2, 4), 2, 4, 3))
    z.both("InstanceNorm1d", lambda train: (build(lambda: nn.InstanceNorm1d(2, affine=True,
                                                                            track_running_stats=True), train),
                                            (randn(2, 2, 5),)))
    z.add("InstanceNorm2d", _unary(lambda: nn.InstanceNorm2d(2, affine=True), 2, 2, 3, 3))
    z.add("InstanceNorm3d", _unary(lambda: nn.InstanceNorm3d(2), 1, 2, 2, 2, 3))
    z.add("LocalResponseNorm", _unary(lambda: nn.LocalResponseNorm(3), 1, 4, 3, 3))
    z.add("RMSNorm", _unary(lambda: nn.RMSNorm(4), 2, 3, 4))


def _activations(z: _Cases) -> None:
    """Activations (inputs away from the kinks of the piecewise ones)."""
    smooth = {
        "ELU": lambda: nn.ELU(), "SELU": lambda: nn.SELU(), "CELU": lambda: nn.CELU(0.7),
        "GELU": lambda: nn.GELU(), "SiLU": lambda: nn.SiLU(), "Mish": lambda: nn.Mish(),
        "Softplus": lambda: nn.Softplus(beta=2.0), "Softsign": lambda: nn.Softsign(), "Tanh": lambda: nn.Tanh(),
        "Sigmoid": lambda: nn.Sigmoid(), "LogSigmoid": lambda: nn.LogSigmoid(), "Tanhshrink": lambda: nn.Tanhshrink(),
    }
    for name, make in smooth.items():
        z.add(name, _unary(make, 3, 4))
    z.add("GELU[tanh]", _unary(lambda: nn.GELU(approximate="tanh"), 3, 4), module="GELU")
    kinked = {
        "ReLU": (lambda: nn.ReLU(), 0.0), "LeakyReLU": (lambda: nn.LeakyReLU(0.1), 0.0),
        "PReLU": (lambda: nn.PReLU(3), 0.0), "ReLU6": (lambda: nn.ReLU6(), 0.0),
        "Hardtanh": (lambda: nn.Hardtanh(-1.0, 1.0), 0.0), "Hardswish": (lambda: nn.Hardswish(), 0.0),
        "Hardsigmoid": (lambda: nn.Hardsigmoid(), 0.0), "Threshold": (lambda: nn.Threshold(0.2, -1.0), 0.0),
        "Softshrink": (lambda: nn.Softshrink(0.3), 0.0), "Hardshrink": (lambda: nn.Hardshrink(0.3), 0.0),
    }
    kinks = {"ReLU6": (0.0, 6.0), "Hardtanh": (-1.0, 1.0), "Hardswish": (-3.0, 3.0), "Hardsigmoid": (-3.0, 3.0),
             "Threshold": (0.2,), "Softshrink": (-0.3, 0.3), "Hardshrink": (-0.3, 0.3)}
    no_double_backward = {"Hardsigmoid"}  # aten::hardsigmoid_backward has no derivative
    for name, (make, _) in kinked.items():
        z.add(name, _unary(make, x=lambda name=name: _away_from(kinks.get(name, (0.0,)), 4, 3, scale=2.0)),
              orders=(1,) if name in no_double_backward else (1, 2))
    z.add("RReLU[eval]", _unary(lambda: nn.RReLU().eval(), x=lambda: away_from_zero(4, 3)), module="RReLU",
          tags=("eval",))
    z.add("RReLU[train]", _unary(lambda: nn.RReLU().train(), x=lambda: away_from_zero(4, 3)), module="RReLU",
          tags=("train",))
    z.add("Softmax", _unary(lambda: nn.Softmax(dim=-1), 3, 4))
    z.add("LogSoftmax", _unary(lambda: nn.LogSoftmax(dim=1), 3, 4))
    z.add("Softmin", _unary(lambda: nn.Softmin(dim=-1), 3, 4))
    z.add("Softmax2d", _unary(lambda: nn.Softmax2d(), 1, 3, 2, 2))
    z.add("GLU", _unary(lambda: nn.GLU(dim=-1), 3, 4))
    z.add("CosineSimilarity", lambda: (build(lambda: nn.CosineSimilarity(dim=1)), (randn(3, 4), randn(3, 4, seed=1))))
    z.add("PairwiseDistance", lambda: (build(lambda: nn.PairwiseDistance()), (randn(3, 4), randn(3, 4, seed=1))))


def _dropout(z: _Cases) -> None:
    """Dropout (the audit freezes the RNG: train mode is checkable)."""
    z.both("Dropout", lambda train: (build(lambda: nn.Dropout(0.3), train), (randn(3, 4),)))
    z.both("Dropout1d", lambda train: (build(lambda: nn.Dropout1d(0.3), train), (randn(2, 3, 4),)))
    z.both("Dropout2d", lambda train: (build(lambda: nn.Dropout2d(0.3), train), (randn(2, 3, 2, 2),)))
    z.both("Dropout3d", lambda train: (build(lambda: nn.Dropout3d(0.3), train), (randn(1, 3, 2, 2, 2),)))
    z.both("AlphaDropout", lambda train: (build(lambda: nn.AlphaDropout(0.3), train), (randn(3, 4),)))
    z.both("FeatureAlphaDropout", lambda train: (build(lambda: nn.FeatureAlphaDropout(0.3), train),
                                                 (randn(2, 3, 2, 2),)))


def _recurrent(z: _Cases) -> None:
    """Recurrent."""
    z.add("RNN", lambda: (build(lambda: nn.RNN(3, 4, batch_first=True)), (randn(2, 3, 3),)))
    z.add("RNN[relu,2layers]", lambda: (build(lambda: nn.RNN(3, 3, num_layers=2, nonlinearity="relu")),
                                        (randn(3, 2, 3),)), module="RNN")
    z.add("LSTM", lambda: (build(lambda: nn.LSTM(3, 4, batch_first=True)), (randn(2, 3, 3),)))
    z.add("LSTM[bidirectional,proj]", lambda: (build(lambda: nn.LSTM(3, 4, bidirectional=True, proj_size=2)),
                                               (randn(3, 2, 3),)), module="LSTM")
    z.add("GRU", lambda: (build(lambda: nn.GRU(3, 4, batch_first=True)), (randn(2, 3, 3),)))
    z.both("GRU[dropout,2layers]", lambda train: (build(lambda: nn.GRU(3, 3, num_layers=2, dropout=0.3), train),
                                                  (randn(3, 2, 3),)), module="GRU")
    z.add("RNNCell", lambda: (build(lambda: nn.RNNCell(3, 4)), (randn(2, 3), randn(2, 4, seed=1))))
    z.add("LSTMCell", lambda: (build(lambda: nn.LSTMCell(3, 4)), (randn(2, 3), (randn(2, 4, seed=1),
                                                                                 randn(2, 4, seed=2)))))
    z.add("GRUCell", lambda: (build(lambda: nn.GRUCell(3, 4)), (randn(2, 3), randn(2, 4, seed=1))))


def _attention(z: _Cases) -> None:
    """Attention and transformers (dropout 0; the eval fast path is a different kernel from train)."""
    z.both("MultiheadAttention", lambda train: (build(lambda: nn.MultiheadAttention(8, 2, batch_first=True), train),
                                                (randn(2, 3, 8), randn(2, 4, 8, seed=1), randn(2, 4, 8, seed=2)),
                                                {"need_weights": False}))
    z.add("MultiheadAttention[kdim,mask,weights]", lambda: _mha_masked(), module="MultiheadAttention")
    z.both("TransformerEncoderLayer", lambda train: (
        build(lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True), train),
        (randn(2, 3, 8),)))
    z.add("TransformerEncoderLayer[norm_first,gelu]", lambda: (
        build(lambda: nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, activation="gelu",
                                                 norm_first=True)), (randn(3, 2, 8),)),
        module="TransformerEncoderLayer")
    z.both("TransformerDecoderLayer", lambda train: (
        build(lambda: nn.TransformerDecoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True), train),
        (randn(2, 3, 8), randn(2, 4, 8, seed=1))))
    z.add("TransformerEncoder", lambda: (
        build(lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
                                            2, enable_nested_tensor=False)), (randn(2, 3, 8),)))
    z.add("Transformer", lambda: (
        build(lambda: nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True)),
        (randn(2, 3, 8), randn(2, 2, 8, seed=1))))


def _embeddings(z: _Cases) -> None:
    """Embeddings."""
    z.add("Embedding", lambda: (build(lambda: nn.Embedding(6, 3)), (randint(6, 2, 4),)))
    z.add("Embedding[sparse]", lambda: (build(lambda: nn.Embedding(6, 3, sparse=True)), (randint(6, 2, 4),)),
          module="Embedding", tags=("sparse",))
    z.add("Embedding[max_norm]", lambda: (build(lambda: nn.Embedding(6, 3, max_norm=10.0)), (randint(6, 2, 4),)),
          module="Embedding")
    z.add("EmbeddingBag[mean]", lambda: (build(lambda: nn.EmbeddingBag(6, 3, mode="mean")), (randint(6, 2, 4),)),
          module="EmbeddingBag")
    z.add("EmbeddingBag[sum,weights]", lambda: (build(lambda: nn.EmbeddingBag(6, 3, mode="sum")),
                                                (randint(6, 7), torch.tensor([0, 3])),
                                                {"per_sample_weights": rand(7, seed=1, low=0.5, high=1.5)}),
          module="EmbeddingBag", orders=(1,))  # _embedding_bag_backward has no derivative
    z.add("EmbeddingBag[max]", lambda: (build(lambda: nn.EmbeddingBag(6, 3, mode="max")), (randint(6, 2, 4),)),
          module="EmbeddingBag")


def _losses(z: _Cases) -> None:
    """Losses (the prediction is differentiated; targets are passed as they come)."""
    z.add("MSELoss", lambda: (build(nn.MSELoss), (randn(3, 4), randn(3, 4, seed=1))))
    z.add("L1Loss", lambda: (build(nn.L1Loss), (randn(3, 4), randn(3, 4, seed=1))))
    z.add("SmoothL1Loss", lambda: (build(lambda: nn.SmoothL1Loss(beta=0.5)), (randn(3, 4), randn(3, 4, seed=1))))
    z.add("HuberLoss", lambda: (build(lambda: nn.HuberLoss(delta=0.7)), (randn(3, 4), randn(3, 4, seed=1))))
    z.add("CrossEntropyLoss", lambda: (build(nn.CrossEntropyLoss), (randn(4, 5), randint(5, 4))))
    z.add("CrossEntropyLoss[probs,smoothing]", lambda: (
        build(lambda: nn.CrossEntropyLoss(label_smoothing=0.1)),
        (randn(3, 4, 2), torch.softmax(randn(3, 4, 2, seed=1), 1))), module="CrossEntropyLoss")
    z.add("NLLLoss", lambda: (build(lambda: _LossOfLogProbs(nn.NLLLoss(), 1)), (randn(4, 5), randint(5, 4))),
          module="NLLLoss")
    z.add("BCELoss", lambda: (build(lambda: _LossOfProbs(nn.BCELoss())), (randn(3, 4), rand(3, 4, seed=1))),
          module="BCELoss")
    z.add("BCEWithLogitsLoss", lambda: (build(lambda: nn.BCEWithLogitsLoss(pos_weight=torch.full((4,), 1.5))),
                                        (randn(3, 4), rand(3, 4, seed=1))))
    z.add("KLDivLoss", lambda: (build(lambda: _LossOfLogProbs(nn.KLDivLoss(reduction="batchmean"))),
                                (randn(3, 4), torch.softmax(randn(3, 4, seed=1), -1))), module="KLDivLoss")
    z.add("PoissonNLLLoss", lambda: (build(nn.PoissonNLLLoss), (randn(3, 4), rand(3, 4, seed=1, high=3.0))))
    z.add("GaussianNLLLoss", lambda: (build(nn.GaussianNLLLoss),
                                      (randn(3, 4), randn(3, 4, seed=1), rand(3, 4, seed=2, low=0.5, high=1.5))))
    z.add("CosineEmbeddingLoss", lambda: (build(lambda: nn.CosineEmbeddingLoss(margin=-0.9)),
                                          (randn(3, 4), randn(3, 4, seed=1), torch.tensor([1.0, -1.0, 1.0], dtype=D))))
    z.add("MarginRankingLoss", lambda: (build(lambda: nn.MarginRankingLoss(margin=10.0)),
                                        (randn(4), randn(4, seed=1), torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=D))))
    z.add("HingeEmbeddingLoss", lambda: (build(lambda: nn.HingeEmbeddingLoss(margin=5.0)),
                                         (randn(3, 4), torch.tensor([[1.0, -1.0, 1.0, -1.0]] * 3, dtype=D))))
    z.add("TripletMarginLoss", lambda: (build(lambda: nn.TripletMarginLoss(margin=10.0)),
                                        (randn(3, 4), randn(3, 4, seed=1), randn(3, 4, seed=2))))
    z.add("TripletMarginWithDistanceLoss", lambda: (
        build(lambda: nn.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(), margin=10.0)),
        (randn(3, 4), randn(3, 4, seed=1), randn(3, 4, seed=2))))
    z.add("SoftMarginLoss", lambda: (build(lambda: _WithTarget(nn.SoftMarginLoss(), torch.sign(randn(3, 4, seed=1)))),
                                     (randn(3, 4),)), module="SoftMarginLoss")
    z.add("MultiLabelSoftMarginLoss", lambda: (build(nn.MultiLabelSoftMarginLoss),
                                               (randn(3, 4), (randn(3, 4, seed=1) > 0).to(D))))
    z.add("MultiMarginLoss", lambda: (build(lambda: nn.MultiMarginLoss(margin=10.0)), (randn(3, 4), randint(4, 3))),
          orders=(1,))  # multi_margin_loss_backward has no derivative
    z.add("MultiLabelMarginLoss", lambda: (build(nn.MultiLabelMarginLoss),
                                           (randn(2, 4), torch.tensor([[3, 0, -1, 1], [1, 2, 3, -1]]))),
          orders=(1,))  # multilabel_margin_loss_backward has no derivative
    z.add("CTCLoss", lambda: _ctc(), orders=(1,))


def torch_nn_zoo() -> list[ZooCase]:
    """Small float64 cases for the torch.nn modules people use: more than 60 module types, in train and eval
    mode where they differ, first and second order where torch supports them."""
    z = _Cases()
    for section in (_linear, _convolutions, _pooling, _shapes, _normalization, _activations,
                    _dropout, _recurrent, _attention, _embeddings, _losses):
        section(z)
    return z.cases


def _away_from(points: tuple[float, ...], *shape: int, scale: float = 1.0, margin: float = 0.15) -> torch.Tensor:
    """Normal values (times ``scale``) kept at least ``margin`` from each kink point."""
    x = randn(*shape) * scale
    for p in points:
        close = (x - p).abs() < margin
        x = torch.where(close, p + margin * torch.where(x >= p, 1.0, -1.0).to(D) * 1.5, x)
    return x


def _max_unpool():
    class PoolUnpool(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

        def forward(self, x):
            y, indices = self.pool(x)
            return self.unpool(y * 2.0, indices)
    return build(PoolUnpool), (randn(1, 2, 4, 4),)


def _mha_masked():
    attention = build(lambda: nn.MultiheadAttention(6, 2, kdim=4, vdim=5, batch_first=True, bias=False))
    mask = torch.tensor([[False, False, True], [False, False, False]])
    return attention, (randn(2, 2, 6), randn(2, 3, 4, seed=1), randn(2, 3, 5, seed=2)), {
        "key_padding_mask": mask, "need_weights": True, "average_attn_weights": False}


def _ctc():
    class CTC(nn.Module):
        def __init__(self):
            super().__init__()
            self.loss = nn.CTCLoss()

        def forward(self, logits, targets, input_lengths, target_lengths):
            return self.loss(logits.log_softmax(-1), targets, input_lengths, target_lengths)
    return build(CTC), (randn(6, 2, 4), torch.tensor([[1, 2, 1], [3, 1, 0]]), torch.tensor([6, 5]),
                        torch.tensor([3, 2]))


__all__ = ["torch_nn_zoo"]
