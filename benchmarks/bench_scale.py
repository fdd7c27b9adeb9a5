"""Cost of an order-1 audit as models grow: gradaudit vs ``torch.autograd.gradcheck`` (fast mode; slow mode where
its full Jacobian is small enough to finish), on TransformerEncoders of growing size (up to 12x256, 9.5 M
parameters), a ResNet-like conv net and a 21 M-parameter MLP in three large tensors.

    .venv/bin/python benchmarks/bench_scale.py [--only NAME,...] [--xla] [--threads 1]

Each measurement runs in a fresh subprocess, so its peak memory (ru_maxrss) is its own; "train step" is the peak
of one forward + backward of the same model, the memory target's yardstick (an audit within 3x of it).
Printed per model: parameter tensors and count, forward / backward evaluations, compilations (with --xla),
seconds and peak memory of each tool, and two ratios: ``steps``, the tool's seconds over one training step
(forward + backward, the fastest of 3 after a warm-up, timed in the same process just before the tool runs, so
that both see the same load), and ``x fast``, its seconds over gradcheck fast mode's. ``--tools
gradaudit,gradaudit_batch`` adds gradaudit with ``batch=True`` (each probe's points in one torch.func.vmap call).
gradcheck's slow mode runs only where its estimated time (two forwards per Jacobian column) is under
SLOW_MODE_SECONDS.
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

SLOW_MODE_SECONDS = 120.0  # gradcheck's slow mode is not run where two forwards per column would take longer


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
    if name == "mlp-21m":  # (21 M parameters in three large weights: the cost of per-tensor temporaries)
        model = nn.Sequential(nn.Linear(2048, 4096), nn.Tanh(), nn.Linear(4096, 2048), nn.Tanh(),
                              nn.Linear(2048, 2048))
        return model.double().eval(), torch.randn(8, 2048).double()
    if name.startswith("transformer"):
        layers, width = (int(v) for v in name.split("-")[1].split("x"))
        # (feed-forward 4x the width, as the models: 0.8 M parameters at 4x128, 6.3 M at 8x256)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, batch_first=True, dropout=0.0)
        model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        x = torch.randn(2, 8, width)
    else:
        model, x = resnet_like(), torch.randn(2, 3, 16, 16)
    return model.double().eval(), x.double()


CASES = ["transformer-2x64", "transformer-4x128", "transformer-8x256", "transformer-12x256", "resnet-4x32",
         "conv1d-gn-gelu-linear", "mlp-21m"]


def train_step_seconds(model: nn.Module, x: torch.Tensor) -> float:
    """One forward + backward: the fastest of 3 after a warm-up (gradients cleared after)."""
    times = []
    for _ in range(4):
        started = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - started)
    model.zero_grad(set_to_none=True)
    return min(times[1:])


def measure(name: str, tool: str, device: str | None) -> dict:
    """One tool on one model, in this process: evaluations, seconds, verdict. ``device`` "xla" or "xla2"
    audits on torch-xla at order 1 or 2."""
    model, x = model_and_input(name)
    order = 2 if device == "xla2" else 1
    step = train_step_seconds(model, x)
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
    result["train_step"] = step
    result["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def in_subprocess(name: str, tool: str, device: str | None, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", name, tool, device or "", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(name: str) -> tuple[int, int]:
    model, x = model_and_input(name)
    params = list(model.parameters())
    return len(params), sum(p.numel() for p in params)


def slow_mode_seconds(name: str) -> float:
    """gradcheck slow mode's time, estimated: two forwards per Jacobian column (parameters and input)."""
    model, x = model_and_input(name)
    columns = sum(p.numel() for p in model.parameters()) + x.numel()
    with torch.no_grad():
        model(x)
        started = time.perf_counter()
        model(x)
        return 2 * columns * (time.perf_counter() - started)


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
             f"{'comp':>5} {'seconds':>8} {'steps':>6} {'x fast':>6} {'peak MB':>8}"
    print(header)
    print("-" * len(header))
    for name in cases:
        tensors, count = describe(name)
        runs = [(tool, None) for tool in tools] + ([("gradaudit", "xla")] if args.xla else [])
        if args.xla and name == "conv1d-gn-gelu-linear":
            runs.append(("gradaudit", "xla2"))
        # (gradcheck fast first: the other rows' "x fast" needs its time)
        runs.sort(key=lambda run: run[0] != "gradcheck_fast")
        fast = None
        for tool, device in runs:
            if tool == "gradcheck_slow" and (estimate := slow_mode_seconds(name)) > SLOW_MODE_SECONDS:
                print(f"{name:<18} {tensors:>7} {count:>9}  {tool:<16} (not run: ~{estimate:.0f} s for "
                      f"{count} columns)")
                continue
            r = in_subprocess(name, tool, device, args.threads)
            label = tool + {None: "", "xla": "/xla", "xla2": "/xla o2"}[device]
            if "error" in r:
                print(f"{name:<18} {tensors:>7} {count:>9}  {label:<16} error: {r['error']}")
                continue
            fast = r["seconds"] if tool == "gradcheck_fast" else fast
            steps = f"{r['seconds'] / r['train_step']:.1f}" if r.get("train_step") else ""
            versus = f"{r['seconds'] / fast:.2f}" if fast else ""
            print(f"{name:<18} {tensors:>7} {count:>9}  {label:<16} {str(r['ok']):<5} {r.get('forward', ''):>6} "
                  f"{r.get('backward', ''):>5} {r.get('compilations', ''):>5} {r['seconds']:>8} {steps:>6} "
                  f"{versus:>6} {r['peak_mb']:>8}", flush=True)


if __name__ == "__main__":
    main()
