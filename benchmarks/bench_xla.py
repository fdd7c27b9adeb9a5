"""gradaudit's XLA backend against ``torch.autograd.gradcheck`` run on XLA tensors, as inputs grow.

Run from the repository root:

    .venv/bin/python benchmarks/bench_xla.py                      # sizes 10, 100, 400, 1000
    .venv/bin/python benchmarks/bench_xla.py --sizes 10,100       # fewer rows
    .venv/bin/python benchmarks/bench_xla.py --slow-limit 100     # slow gradcheck only up to 100 elements

The case: ``x -> sin(tanh(x @ W1) @ W2)`` with x of n float64 elements, W1 n x 16, W2 16 x 4 (fixed,
not differentiated), on the XLA device (PJRT CPU unless PJRT_DEVICE says otherwise). Tools:

* ``gradaudit``: ``gradaudit.check(f, (x,), backend="xla")``, first order, its defaults (probes, forward
  mode, follow-ups);
* ``gradcheck slow``: ``torch.autograd.gradcheck(f, (x_xla,))`` (full Jacobians, fast_mode=False);
* ``gradcheck fast``: the same with ``fast_mode=True``.

Each (tool, size) runs in a fresh Python process, so no run reuses another's compiled graphs. In that process
the tool runs twice: ``cold`` is the first run (what a user pays: tracing and compiling included),
``warm`` the second (graphs cached; skipped when the cold run took over 20 s). ``compiles`` is the
``UncachedCompile`` delta of the cold run (``torch_xla.debug.metrics``), ``executions`` its
``ExecuteComputation`` delta. Importing torch_xla (~10 s) is not timed. Timings are wall seconds on a shared
machine; compare within one table. Results also go to ``benchmarks/results/xla.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "xla.json"
TOOLS = ("gradaudit", "gradcheck slow", "gradcheck fast")
WARM_LIMIT_S = 20.0


def make_case(n: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    w1 = torch.randn(n, 16, generator=generator, dtype=torch.float64) / n ** 0.5
    w2 = torch.randn(16, 4, generator=generator, dtype=torch.float64) / 4
    x = torch.randn(n, generator=generator, dtype=torch.float64)
    on_device = {}

    def f(x):
        if x.device not in on_device:  # moved once per device, not on every call
            on_device[x.device] = (w1.to(x.device), w2.to(x.device))
        a, b = on_device[x.device]
        return (torch.tanh(x @ a) @ b).sin()
    return f, x


def run_one(tool: str, n: int) -> dict:
    """One (tool, size) in this process: cold and warm runs, with compilation counts."""
    import torch

    import gradaudit
    from gradaudit.backends.xla import import_xla

    xla = import_xla()
    counter = lambda name: xla.metrics.counter_value(name) or 0  # noqa: E731
    f, x = make_case(n)

    def once():
        if tool == "gradaudit":
            report = gradaudit.check(f, (x,), backend="xla")
            return "pass" if report.ok else "FAIL"
        x_xla = x.to(xla.device).requires_grad_()
        ok = torch.autograd.gradcheck(f, (x_xla,), fast_mode=tool.endswith("fast"), raise_exception=False)
        return "pass" if ok else "FAIL"

    row = {"tool": tool, "n": n}
    compiles, executions = counter("UncachedCompile"), counter("ExecuteComputation")
    started = time.perf_counter()
    row["verdict"] = once()
    row["cold_s"] = round(time.perf_counter() - started, 3)
    row["compiles"] = counter("UncachedCompile") - compiles
    row["executions"] = counter("ExecuteComputation") - executions
    if row["cold_s"] <= WARM_LIMIT_S:
        compiles = counter("UncachedCompile")
        started = time.perf_counter()
        once()
        row["warm_s"] = round(time.perf_counter() - started, 3)
        row["warm_compiles"] = counter("UncachedCompile") - compiles
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,400,1000", help="input sizes (elements), comma-separated")
    parser.add_argument("--slow-limit", type=int, default=400, help="largest size for slow gradcheck")
    parser.add_argument("--one", nargs=2, metavar=("TOOL", "N"), help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return

    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for tool in TOOLS:
            if tool == "gradcheck slow" and n > args.slow_limit:
                rows.append({"tool": tool, "n": n, "verdict": f"skipped (> {args.slow_limit} elements)"})
                continue
            done = subprocess.run([sys.executable, __file__, "--one", tool, str(n)], capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"tool": tool, "n": n, "verdict": f"error: {error[:80]}"})
            else:
                rows.append(json.loads(lines[-1]))
            print(format_row(rows[-1]), flush=True)

    print()
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"case": "sin(tanh(x @ W1[n,16]) @ W2[16,4]), float64, first order",
                                   "rows": rows}, indent=1) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")


def format_row(row: dict) -> str:
    def cell(key, fmt="{}"):
        return fmt.format(row[key]) if key in row else "-"
    return (f"{row['n']:>6}  {row['tool']:<15} {row['verdict']:<8} {cell('cold_s', '{:.2f}'):>8} "
            f"{cell('warm_s', '{:.2f}'):>8} {cell('compiles'):>9} {cell('executions'):>11}")


def table(rows: list[dict]) -> str:
    header = f"{'n':>6}  {'tool':<15} {'verdict':<8} {'cold s':>8} {'warm s':>8} {'compiles':>9} {'executions':>11}"
    lines = [header, "-" * len(header)] + [format_row(r) for r in rows]
    speedups = []
    for n in sorted({r["n"] for r in rows}):
        mine = next((r for r in rows if r["n"] == n and r["tool"] == "gradaudit" and "cold_s" in r), None)
        for other in ("gradcheck slow", "gradcheck fast"):
            theirs = next((r for r in rows if r["n"] == n and r["tool"] == other and "cold_s" in r), None)
            if mine and theirs:
                speedups.append(f"n={n}: {theirs['cold_s'] / mine['cold_s']:.1f}x vs {other}")
    if speedups:
        lines += ["", "gradaudit speed-up (cold): " + "; ".join(speedups)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
