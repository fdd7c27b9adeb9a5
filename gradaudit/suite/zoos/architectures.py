"""Zoos of real architectures: Hugging Face ``transformers`` (Llama, Qwen2, Mistral, GPT-2, BERT, T5, ViT) and
``timm`` (ViT, ConvNeXt, ResNet, EfficientNet), built from tiny configurations with random weights, in float64.

Nothing is downloaded: every model comes from a config written here, seeded, so a case built in a worker process is
the same everywhere. Each model is audited in train and eval mode, as the training loss and as its hidden states
(the loss goes through the library's own loss code, float32 casts included)::

    pip install 'gradaudit[transformers]'      # or [timm]
    gradaudit suite transformers --backends eager
    gradaudit suite timm --backends eager,xla --compare

A missing library is one line (``AuditError``) naming the extra that brings it.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import nn

from gradaudit.errors import AuditError
from gradaudit.suite.zoos import D, ZooCase, randint, randn

VOCAB, SEQUENCE, BATCH, IMAGE = 64, 6, 2, 16


def _require(library: str) -> Any:
    try:
        return importlib.import_module(library)
    except ImportError as exc:
        raise AuditError(f"the {library} zoo needs {library}, which does not import here ({exc}); "
                         f"pip install 'gradaudit[{library}]'") from exc


def _seeded(make: Callable[[], nn.Module], train: bool) -> nn.Module:
    """``make()`` in float64 from seed 0, without moving the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = make().to(D)
    return module.train(train)


class Loss(nn.Module):
    """The model's own training loss (``labels`` given, as a training step computes it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs).loss


class Hidden(nn.Module):
    """The model's last hidden states (a head-less model's main output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = self.model(*args, **kwargs)
        return output.last_hidden_state if hasattr(output, "last_hidden_state") else output


# ---------------------------------------------------------------------------------------------- transformers
def _decoder_config(config_class: Callable) -> Any:
    return config_class(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                        attn_implementation="eager")


def _transformers_models(t: Any) -> dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], str]]:
    """name -> (the model with a loss head, the bare model, the kind of input): tiny configs, eager attention."""
    def gpt2():
        return t.GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
                            eos_token_id=0, attn_implementation="eager")

    def bert():
        return t.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32, attn_implementation="eager")

    def t5():
        return t.T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                          decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, attn_implementation="eager")

    def vit():
        return t.ViTConfig(image_size=IMAGE, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=32, num_labels=4, attn_implementation="eager")

    return {
        "llama": (lambda: t.LlamaForCausalLM(_decoder_config(t.LlamaConfig)),
                  lambda: t.LlamaModel(_decoder_config(t.LlamaConfig)), "tokens"),
        "qwen2": (lambda: t.Qwen2ForCausalLM(_decoder_config(t.Qwen2Config)),
                  lambda: t.Qwen2Model(_decoder_config(t.Qwen2Config)), "tokens"),
        "mistral": (lambda: t.MistralForCausalLM(_decoder_config(t.MistralConfig)),
                    lambda: t.MistralModel(_decoder_config(t.MistralConfig)), "tokens"),
        "gpt2": (lambda: t.GPT2LMHeadModel(gpt2()), lambda: t.GPT2Model(gpt2()), "tokens"),
        "bert": (lambda: t.BertForMaskedLM(bert()), lambda: t.BertModel(bert()), "tokens"),
        "t5": (lambda: t.T5ForConditionalGeneration(t5()), lambda: t.T5EncoderModel(t5()), "tokens"),
        "vit": (lambda: t.ViTForImageClassification(vit()), lambda: t.ViTModel(vit()), "image"),
    }


def _tokens() -> torch.Tensor:
    return randint(VOCAB, BATCH, SEQUENCE, seed=1)


def _image() -> torch.Tensor:
    return randn(BATCH, 3, IMAGE, IMAGE, seed=1)


def _loss_case(make: Callable[[], nn.Module], inputs: str, train: bool) -> tuple:
    model = Loss(_seeded(make, train)).train(train)
    if inputs == "image":
        return model, (_image(),), {"labels": randint(4, BATCH, seed=2)}
    return model, (), {"input_ids": _tokens(), "labels": _tokens()}


def _hidden_case(make: Callable[[], nn.Module], inputs: str, train: bool) -> tuple:
    model = Hidden(_seeded(make, train)).train(train)
    return (model, (_image(),)) if inputs == "image" else (model, (), {"input_ids": _tokens()})


def transformers_zoo() -> list[ZooCase]:
    """Hugging Face models from tiny configs: each as its training loss and as hidden states, train and eval."""
    models = _transformers_models(_require("transformers"))
    cases = []
    for name, (with_loss, bare, inputs) in models.items():
        for train in (True, False):
            mode = "train" if train else "eval"
            cases.append(ZooCase(f"{name}.loss[{mode}]", _bind(_loss_case, with_loss, inputs, train),
                                 tags=(f"module:{name}", mode, "loss")))
            cases.append(ZooCase(f"{name}.hidden[{mode}]", _bind(_hidden_case, bare, inputs, train),
                                 tags=(f"module:{name}", mode, "hidden")))
    return cases


def _bind(case: Callable, *arguments: Any) -> Callable[[], tuple]:
    return lambda: case(*arguments)


# ---------------------------------------------------------------------------------------------- timm
def _timm_models(timm: Any) -> dict[str, Callable[[], nn.Module]]:
    """name -> a tiny model with 4 classes for 16x16 images (widths and depths cut down; no weights)."""
    from timm.models import efficientnet
    from timm.models.resnet import BasicBlock, ResNet

    return {
        "vit": lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=IMAGE,
                                         patch_size=8, embed_dim=16, depth=2, num_heads=2),
        # (stem stride 2 and the last stage dilated: at stride 32 a 16x16 image is 1x1 before the last 2x2
        # downsampling convolution, which raises)
        "convnext": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=4,
                                              depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), patch_size=2,
                                              output_stride=16),
        # (the last stages dilated, at stride 8: at stride 32 a 16x16 image is 1x1 there, where train-mode
        # BatchNorm over a batch of 2 normalizes 2 values to about +-1 whatever they are, so the loss hardly
        # depends on anything before it: gradients of 1e-6..1e-8 that cost EfficientNet 4,324 evaluations.
        # ResNet's last norm of each block starts at weight 1, as a trained one is: timm's zero_init_last makes
        # every residual branch's gradient exactly 0, and a wrong conv backward there invisible)
        "resnet": lambda: ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 8, 16, 16), stem_width=8,
                                 num_classes=4, output_stride=8, zero_init_last=False),
        "efficientnet": lambda: efficientnet._gen_efficientnet("efficientnet_b0", pretrained=False, num_classes=4,
                                                               channel_multiplier=0.25, depth_multiplier=0.25,
                                                               output_stride=8),
    }


class _CrossEntropy(nn.Module):
    """A classifier's training loss (timm models return logits)."""

    def __init__(self, model: nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("labels", labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(images), self.labels)


def _timm_case(make: Callable[[], nn.Module], train: bool, loss: bool) -> tuple:
    model = _seeded(make, train) if train else _calibrated(_seeded(make, True))
    return (_CrossEntropy(model, randint(4, BATCH, seed=2)).train(train) if loss else model), (_image(),)


CALIBRATION_BATCH = 8


def _calibrated(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its BatchNorm statistics those of a batch of images, as a trained model's are:
    with the initial ones (mean 0, variance 1) an untrained EfficientNet's activations shrank some 5x per block,
    to 1e-6 at its logits, and its eval-mode loss was log(4) whatever the weights."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:  # (ViT, ConvNeXt: nothing to calibrate)
        return model.eval()
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # (a cumulative average: after one batch, that batch's statistics)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        model.train()(randn(CALIBRATION_BATCH, 3, IMAGE, IMAGE, seed=3))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


def timm_zoo() -> list[ZooCase]:
    """timm image models from tiny configs: as the cross-entropy loss and as logits, train and eval."""
    models = _timm_models(_require("timm"))
    cases = []
    for name, make in models.items():
        for train in (True, False):
            mode = "train" if train else "eval"
            cases.append(ZooCase(f"{name}.loss[{mode}]", _bind(_timm_case, make, train, True),
                                 tags=(f"module:{name}", mode, "loss")))
            cases.append(ZooCase(f"{name}.logits[{mode}]", _bind(_timm_case, make, train, False),
                                 tags=(f"module:{name}", mode, "logits")))
    return cases


__all__ = ["transformers_zoo", "timm_zoo", "Loss", "Hidden"]
