"""False alarms of low-precision audits on correct code: the torch.nn zoo in bfloat16 and float16, order 1.

    .venv/bin/python benchmarks/bench_lowprec_zoo.py [--dtypes bfloat16,float16] [--only WORD]

Each zoo case runs ``gradaudit.check(..., dtype=D, localize=False)``; the dtype-parity checks' largest
err/bar (1 or more fails) is listed, with every case that fails or raises.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import gradaudit
from gradaudit.suite.zoos.torch_nn import torch_nn_zoo


def run(dtype: str, only: str) -> tuple[int, int, list[str]]:
    passed, failed, lines = 0, 0, []
    for case in torch_nn_zoo():
        if only and only not in case.name:
            continue
        started = time.perf_counter()
        try:
            report = gradaudit.check(*case.factory(), dtype=dtype, localize=False)
        except Exception as exc:  # noqa: BLE001 - an audit that cannot run is a result (e.g. no bf16 kernel)
            lines.append(f"  {dtype:9} {case.name:<40} could not run: {str(exc).splitlines()[0][:100]}")
            continue
        parity = [c for c in report.checks if c.method == "dtype_parity"]
        worst = max((c.max_abs_err / c.tolerance if c.tolerance else 0.0 for c in parity), default=0.0)
        verdict = "pass" if report.ok else "FAIL"
        passed, failed = passed + report.ok, failed + (not report.ok)
        line = f"  {dtype:9} {case.name:<40} {verdict} parity err/bar {worst:6.3f} ({time.perf_counter() - started:.2f}s)"
        if not report.ok:
            line += "\n      " + "\n      ".join(f.message[:300] for f in report.findings if f.severity == "error")
        lines.append(line)
    return passed, failed, lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--only", default="")
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    for dtype in opts.dtypes.split(","):
        passed, failed, lines = run(dtype, opts.only)
        print("\n".join(lines))
        print(f"{dtype}: {passed} pass, {failed} fail", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
