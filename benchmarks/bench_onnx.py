"""ONNX backend: session runs and wall time per check as the number of input elements grows.

    .venv/bin/python benchmarks/bench_onnx.py [--sizes 10,100,1000] [--json PATH]

For each size, a small MLP (Linear(10, 8), Tanh, Linear(8, 3)) is audited at an input of ``size`` elements
(``size / 10`` rows of 10) on the onnx backend, twice:
  * ``sequential``: one onnxruntime session run per perturbation (``SequentialAuditor``);
  * ``batched``: the checker as it is: the 4 points of each directional derivative (x +- h u, x +- h/2 u)
    go to ``OnnxProgram.evaluate_batch``, one Scan session run.
Both must reach the same verdict with the same numbers (the batched graph runs the same kernels).
Export time is reported separately: it is paid once per check, whatever the batching.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from gradaudit.backends.onnx import OnnxBackend
from gradaudit.case import Case
from gradaudit.core.checks import Auditor, Settings
from gradaudit.registry import usable_backend


class SequentialAuditor(Auditor):
    """The audit with every finite-difference point in a session run of its own: what the checker would do
    for a backend without ``evaluate_batch`` (the baseline the batched default is measured against)."""

    def numeric_values(self, f):
        leaves = self.numeric.leaves
        return lambda points: [self.numeric([zi.to(dtype=leaf.value.dtype, device=leaf.value.device)
                                             for zi, leaf in zip(z, leaves)]) for z in points]


def mlp_case(size: int) -> Case:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(max(1, size // 10), 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return Case(model, (x,), name=f"mlp[{size}]")


def audit(case: Case, batched: bool) -> dict:
    started = time.perf_counter()
    program = OnnxBackend().load(case, "cpu", torch.float32)
    loaded = time.perf_counter()
    reference = usable_backend("eager").load(case, "cpu", torch.float64)
    try:
        auditor_class = Auditor if batched else SequentialAuditor
        checks, findings, _ = auditor_class(reference, Settings(), numeric=program).run()
    finally:
        reference.close()
    done = time.perf_counter()
    return {"session_runs": program.session_runs, "points": program.points_evaluated,
            "export_s": round(loaded - started, 3), "check_s": round(done - loaded, 3),
            "ok": all(c.ok for c in checks) and not any(f.severity == "error" for f in findings),
            "worst": max(c.max_abs_err / max(c.tolerance, 1e-300) for c in checks)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--json", default=None)
    options = parser.parse_args(argv)
    sizes = [int(s) for s in options.sizes.split(",")]
    rows = []
    header = (f"{'elements':>8} {'mode':>10} {'session runs':>12} {'points':>7} {'export s':>9} {'check s':>8} "
              f"{'ok':>5} {'worst err/tol':>13}")
    print(header)
    print("-" * len(header))
    for size in sizes:
        for batched in (False, True):
            row = {"elements": size, "mode": "batched" if batched else "sequential"} | audit(mlp_case(size), batched)
            rows.append(row)
            print(f"{row['elements']:>8} {row['mode']:>10} {row['session_runs']:>12} {row['points']:>7} "
                  f"{row['export_s']:>9.2f} {row['check_s']:>8.3f} {str(row['ok']):>5} {row['worst']:>13.3g}")
    if options.json:
        Path(options.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
