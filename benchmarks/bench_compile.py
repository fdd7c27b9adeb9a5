"""gradaudit's compile backend against ``torch.autograd.gradcheck`` run on the compiled function, as inputs grow.

Run from the repository root:

    .venv/bin/python benchmarks/bench_compile.py                          # inductor, sizes 10, 100, 400
    .venv/bin/python benchmarks/bench_compile.py --compiler aot_eager     # another dynamo backend
    .venv/bin/python benchmarks/bench_compile.py --sizes 10,100

The case: ``x -> sin(tanh(x @ W1) @ W2)`` with x of n float64 elements, W1 n x 16, W2 16 x 4 (fixed, not
differentiated). Tools:

* ``gradaudit``: ``gradaudit.check(f, (x,), backend="compile")``, first order, its defaults;
* ``gradcheck slow``: ``torch.autograd.gradcheck(torch.compile(f), (x,))`` (full Jacobians);
* ``gradcheck fast``: the same with ``fast_mode=True``.

Each (tool, size) runs in a fresh Python process, so no run reuses another's compiled code (the on-disk
inductor caches are off in both). ``seconds`` includes compiling; ``compiles`` is the number of graphs dynamo
compiled (gradaudit: ``stats.compilations``; gradcheck: dynamo's ``unique_graphs`` counter). Timings are wall
seconds on a shared machine; compare within one table. Results also go to ``benchmarks/results/compile.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compile.json"
TOOLS = ("gradaudit", "gradcheck slow", "gradcheck fast")


def make_case(n: int):
    """The function and its input of n elements."""
    import torch

    generator = torch.Generator().manual_seed(0)
    w1 = torch.randn(n, 16, generator=generator, dtype=torch.float64) / n ** 0.5
    w2 = torch.randn(16, 4, generator=generator, dtype=torch.float64) / 4
    x = torch.randn(n, generator=generator, dtype=torch.float64)

    def f(x):
        return torch.sin(torch.tanh(x @ w1) @ w2)
    return f, x


def run_one(tool: str, n: int, compiler: str) -> dict:
    """One tool at one size, in this process."""
    import torch
    import torch._functorch.config
    import torch._inductor.config
    from torch._dynamo.utils import counters

    import gradaudit

    f, x = make_case(n)
    started = time.perf_counter()
    if tool == "gradaudit":
        report = gradaudit.check(f, (x,), backend="compile")
        ok, compiles = report.ok, report.stats["compilations"]
    else:
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            compiled = torch.compile(f, backend=compiler, dynamic=False)
            ok = torch.autograd.gradcheck(compiled, (x.clone().requires_grad_(),),
                                          fast_mode=tool == "gradcheck fast")
        compiles = counters["stats"]["unique_graphs"]
    return {"tool": tool, "n": n, "compiler": compiler, "ok": bool(ok), "compiles": compiles,
            "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,400")
    parser.add_argument("--compiler", default="inductor")
    parser.add_argument("--one", nargs=2, metavar=("TOOL", "N"), help=argparse.SUPPRESS)  # a child process
    options = parser.parse_args()
    if options.one:
        print(json.dumps(run_one(options.one[0], int(options.one[1]), options.compiler)))
        return
    rows = []
    print(f"{'n':>5}  {'tool':<15} {'ok':<5} {'compiles':>8} {'seconds':>8}   ({options.compiler})")
    for n in [int(s) for s in options.sizes.split(",")]:
        for tool in TOOLS:
            env = {"GRADAUDIT_COMPILE_BACKEND": options.compiler}
            done = subprocess.run([sys.executable, __file__, "--compiler", options.compiler, "--one", tool, str(n)],
                                  capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env})
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"tool": tool, "n": n, "ok": None, "compiles": None,
                                                        "seconds": None, "error": done.stderr[-300:]}
            rows.append(row)
            print(f"{n:>5}  {tool:<15} {str(row['ok']):<5} {str(row['compiles']):>8} {str(row['seconds']):>8}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
