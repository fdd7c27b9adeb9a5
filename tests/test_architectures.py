"""The zoos of real architectures (gradaudit/suite/zoos/architectures.py): Hugging Face transformers and timm models
from tiny configs, audited as users train them; a planted backward bug in one block is caught and named."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradaudit
from gradaudit.suite.zoos import load_zoo

pytest.importorskip("transformers", reason="the transformers extra is not installed")
pytest.importorskip("timm", reason="the timm extra is not installed")

ROOT = Path(__file__).resolve().parent.parent


def case(zoo: str, name: str) -> tuple:
    return {c.name: c for c in load_zoo(zoo)}[name].build()


def test_the_zoos_cover_each_architecture_as_loss_and_hidden_states_in_both_modes():
    names = {c.name for c in load_zoo("transformers")}
    for model in ("llama", "qwen2", "mistral", "gpt2", "bert", "t5", "vit"):
        assert {f"{model}.{kind}[{mode}]" for kind in ("loss", "hidden") for mode in ("train", "eval")} <= names
    names = {c.name for c in load_zoo("timm")}
    for model in ("vit", "convnext", "resnet", "efficientnet"):
        assert {f"{model}.{kind}[{mode}]" for kind in ("loss", "logits") for mode in ("train", "eval")} <= names


@pytest.mark.parametrize("zoo", ["transformers", "timm"])
def test_every_case_of_the_zoos_runs_its_forward(zoo):
    """(timm 1.0's ConvNeXt reached 1x1 before its last 2x2 downsampling at 16x16 and raised: 8 suite errors.)"""
    for zoo_case in load_zoo(zoo):
        fn, args, *kwargs = zoo_case.build()
        with torch.no_grad():
            fn(*args, **(kwargs[0] if kwargs else {}))


def test_train_mode_batchnorm_in_the_timm_zoo_normalizes_more_than_a_pair_of_values():
    """At stride 32 ResNet's and EfficientNet's last stages saw 1x1 images: BatchNorm over a batch of 2 maps any
    two values to about +-1, so the loss barely depended on the layers before it (gradients of 1e-6..1e-8: no
    test of those layers, and 4,324 evaluations for EfficientNet)."""
    for zoo_case in load_zoo("timm"):
        fn, args = zoo_case.build()
        counts = []
        for module in fn.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                module.register_forward_pre_hook(lambda m, a: counts.append(a[0].numel() // a[0].shape[1]))
        with torch.no_grad():
            fn(*args)
        assert min(counts, default=8) >= 8, (zoo_case.name, counts)


@pytest.mark.parametrize("model", ["resnet", "efficientnet"])
def test_every_parameter_of_the_timm_cnns_in_eval_mode_has_a_gradient(model):
    """An untrained EfficientNet with its initial BatchNorm statistics shrank its activations to 1e-6 at the
    logits (gradients down to 4e-13), and timm's zero-initialized last norms gave ResNet's residual branches an
    exactly 0 gradient: a wrong backward there was invisible to the zoo."""
    fn, args = case("timm", f"{model}.loss[eval]")
    names, parameters = zip(*fn.named_parameters())
    sizes = [float(g.abs().max()) for g in torch.autograd.grad(fn(*args), parameters)]
    assert min(sizes) > 1e-4 * max(sizes), min(zip(sizes, names))


def test_cases_are_the_same_in_every_process_and_leave_the_global_rng_alone():
    before = torch.random.get_rng_state()
    first, second = case("transformers", "gpt2.hidden[eval]"), case("transformers", "gpt2.hidden[eval]")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(first[0].state_dict().values(), second[0].state_dict().values()))
    assert first[0].model.dtype == torch.float64 and not first[0].training


def test_a_tiny_gpt2_passes():
    report = gradaudit.check(*case("transformers", "gpt2.hidden[eval]"), localize=False)
    assert report.ok, report


def test_a_missing_library_is_one_line_naming_the_extra():
    code = ("import sys; sys.modules['timm'] = None\n"
            "from gradaudit.suite.zoos import load_zoo\n"
            "load_zoo('timm')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "AuditError: the timm zoo needs timm" in result.stderr and "gradaudit[timm]" in result.stderr
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['transformers'] = None\n"
                             "from gradaudit.cli import main; main(['suite', 'transformers'])"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "the transformers zoo needs transformers" in result.stderr


class WrongSiLU(torch.autograd.Function):
    """SiLU whose backward drops the x * s * (1 - s) term: the planted bug."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return nn.functional.silu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


class PlantedSiLU(nn.Module):
    def forward(self, x):
        return WrongSiLU.apply(x)


@pytest.mark.slow
def test_a_planted_backward_bug_in_one_llama_block_is_caught_and_named():
    model, args, kwargs = case("transformers", "llama.hidden[train]")
    model.model.layers[1].mlp.act_fn = PlantedSiLU()
    report = gradaudit.check(model, args, kwargs, wrt="model.layers.1.*")
    assert not report.ok
    finding = report.findings[0]
    assert finding.kind == "faulty_backward"
    assert (finding.node, finding.module) == ("WrongSiLUBackward", "model.layers.1.mlp.act_fn"), report
    failed = {c.wrt for c in report.checks if not c.ok}
    assert "model.layers.1.mlp.gate_proj.weight" in failed and "model.layers.1.mlp.up_proj.weight" not in failed


@pytest.mark.slow
def test_a_timm_resnet_passes_in_train_mode():
    report = gradaudit.check(*case("timm", "resnet.loss[train]"), localize=False)
    assert report.ok, report


@pytest.mark.slow
def test_the_suite_command_runs_a_zoo_case():
    result = subprocess.run([sys.executable, "-m", "gradaudit", "suite", "transformers", "--only", "bert.hidden[eval]",
                             "--orders", "1", "--workers", "1"], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 results: 1 pass" in result.stdout + result.stderr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vit_hidden_states_through_its_float32_softmax_pass(seed):
    """HF ViT's eager attention runs its softmax in float32. Its key bias's JVP is 0 in exact arithmetic (a shift
    shared by a row), computed as float32 rounding up to 1.3e-9 where 4 pairs of jittered points measured
    1e-10: a false faulty_forward_ad on seeds 0, 1 and 2 (transformers 5.25)."""
    report = gradaudit.check(*case("transformers", "vit.hidden[eval]"), localize=False, seed=seed)
    assert report.ok, [(c.wrt, c.method, c.analytical, c.numerical, c.tolerance) for c in report.failed_checks]
