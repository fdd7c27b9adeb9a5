"""Cost of an order-1 audit as models grow: gradaudit vs ``torch.autograd.gradcheck`` (fast mode; slow mode where
its full Jacobian is small enough to finish), on TransformerEncoders of growing size and a ResNet-like conv net.

    .venv/bin/python benchmarks/bench_scale.py [--only NAME,...] [--xla] [--threads 1]

Each measurement runs in a fresh subprocess, so its peak memory (ru_maxrss) is its own; "train step" is the peak
of one forward + backward of the same model, the memory target's yardstick (an audit within 3x of it).
Printed per model: parameter tensors and count, forward / backward evaluations, compilations (with --xla),
seconds and peak memory of each tool. ``--tools gradaudit,gradaudit_batch`` adds gradaudit with ``batch=True``
(each probe's points in one torch.func.vmap call).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

SLOW_MODE_LIMIT = 2_000_000  # Jacobian entries above which gradcheck's slow mode is not run (hours)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet_like(blocks: int = 4, channels: int = 32) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), *[ResidualBlock(channels) for _ in range(blocks)],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


def conv1d_groupnorm_gelu_linear() -> nn.Module:
    """The 5-layer case whose XLA compilations grew with its parameter tensors (issue 12: 51 graphs at order 1,
    97 at order 2)."""
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.GELU(), nn.Flatten(),
                         nn.Linear(8 * 6, 5))


def model_and_input(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "conv1d-gn-gelu-linear":
        return conv1d_groupnorm_gelu_linear().double(), torch.randn(2, 4, 6).double()
    if name.startswith("transformer"):
        layers, width = (int(v) for v in name.split("-")[1].split("x"))
        # (feed-forward 4x the width, as the models: 0.8 M parameters at 4x128, 6.3 M at 8x256)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, batch_first=True, dropout=0.0)
        model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        x = torch.randn(2, 8, width)
    else:
        model, x = resnet_like(), torch.randn(2, 3, 16, 16)
    return model.double().eval(), x.double()


CASES = ["transformer-2x64", "transformer-4x128", "transformer-8x256", "resnet-4x32", "conv1d-gn-gelu-linear"]


def measure(name: str, tool: str, device: str | None) -> dict:
    """One tool on one model, in this process: evaluations, seconds, verdict. ``device`` "xla" or "xla2"
    audits on torch-xla at order 1 or 2."""
    model, x = model_and_input(name)
    order = 2 if device == "xla2" else 1
    started = time.perf_counter()
    if tool in ("gradaudit", "gradaudit_batch"):
        import gradaudit

        report = gradaudit.check(model, (x,), backend="xla" if device else "eager", order=order, localize=False,
                                 batch=tool == "gradaudit_batch")
        result = {"ok": report.ok, "forward": report.stats["forward_evals"],
                  "backward": report.stats["backward_evals"], "compilations": report.stats["compilations"]}
    elif tool == "train_step":
        model(x).sum().backward()
        result = {"ok": True}
    else:
        names = [n for n, _ in model.named_parameters()]
        params = [p.detach().requires_grad_() for p in model.parameters()]
        calls = {"n": 0}

        def f(*values):
            calls["n"] += 1
            return torch.func.functional_call(model, dict(zip(names, values[:-1])), (values[-1],))
        ok = torch.autograd.gradcheck(f, (*params, x), fast_mode=tool == "gradcheck_fast", raise_exception=False)
        result = {"ok": bool(ok), "forward": calls["n"]}
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def in_subprocess(name: str, tool: str, device: str | None, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", name, tool, device or "", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def outputs(name: str) -> int:
    model, x = model_and_input(name)
    with torch.no_grad():
        return model(x).numel()


def describe(name: str) -> tuple[int, int]:
    model, x = model_and_input(name)
    params = list(model.parameters())
    return len(params), sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None)
    parser.add_argument("--xla", action="store_true", help="audit on torch-xla (PJRT CPU) too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tools", default="gradaudit,gradcheck_fast,gradcheck_slow,train_step")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, tool, device, threads = args.child
        torch.set_num_threads(int(threads))
        print(json.dumps(measure(name, tool, device or None)))
        return
    cases = args.only.split(",") if args.only else CASES
    tools = args.tools.split(",")
    header = f"{'model':<18} {'tensors':>7} {'params':>9}  {'tool':<16} {'ok':<5} {'fwd':>6} {'bwd':>5} " \
             f"{'comp':>5} {'seconds':>8} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for name in cases:
        tensors, count = describe(name)
        runs = [(tool, None) for tool in tools] + ([("gradaudit", "xla")] if args.xla else [])
        if args.xla and name == "conv1d-gn-gelu-linear":
            runs.append(("gradaudit", "xla2"))
        for tool, device in runs:
            if tool == "gradcheck_slow" and count * outputs(name) > SLOW_MODE_LIMIT:
                print(f"{name:<18} {tensors:>7} {count:>9}  {tool:<16} (not run: a Jacobian of "
                      f"{count} columns)")
                continue
            r = in_subprocess(name, tool, device, args.threads)
            label = tool + {None: "", "xla": "/xla", "xla2": "/xla o2"}[device]
            if "error" in r:
                print(f"{name:<18} {tensors:>7} {count:>9}  {label:<16} error: {r['error']}")
                continue
            print(f"{name:<18} {tensors:>7} {count:>9}  {label:<16} {str(r['ok']):<5} {r.get('forward', ''):>6} "
                  f"{r.get('backward', ''):>5} {r.get('compilations', ''):>5} {r['seconds']:>8} {r['peak_mb']:>8}",
                  flush=True)


if __name__ == "__main__":
    main()
