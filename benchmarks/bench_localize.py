"""Cost of localizing a failed check, as a multiple of the plain check, on residual networks of growing depth.

    .venv/bin/python benchmarks/bench_localize.py [--blocks 6,24,96] [--mode auto] [--threads 1]

For each depth the network (tests/fixtures.py:residual_net, the fault in the tanh of block 17/24 of the depth)
is checked with ``gradaudit.check(..., localize=False)`` (mode auto by default), then the finding is localized
on a freshly loaded program. Reported: autograd nodes, wall time and forward/backward evaluations of both, and
the ratio. Targets: localization at most 10x a plain check at 24 blocks; sub-linear growth in the nodes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fixtures  # noqa: E402

import gradaudit  # noqa: E402
from gradaudit.analyzers.localize import locate, apply  # noqa: E402
from gradaudit.case import as_case  # noqa: E402
from gradaudit.registry import usable_backend  # noqa: E402


def run(blocks: int, mode: str, probes: int) -> dict:
    faulty = blocks * 17 // 24
    started = time.perf_counter()
    report = gradaudit.check(fixtures.residual_net(blocks, faulty), mode=mode, probes=probes, localize=False)
    check_seconds = time.perf_counter() - started
    finding = next(f for f in report.findings if f.kind == "faulty_backward")
    with usable_backend("eager").load(as_case(fixtures.residual_net(blocks, faulty))) as program:
        started = time.perf_counter()
        result = locate(program, finding)
        seconds = time.perf_counter() - started
        apply(finding, result)
    nodes = sum(1 for _, d in result.graph.nodes(data=True) if d["kind"] == "node")
    details = finding.details["localization"]
    return {"blocks": blocks, "nodes": nodes, "check_s": check_seconds,
            "check_fwd": report.stats["forward_evals"], "check_bwd": report.stats["backward_evals"],
            "loc_s": seconds, "loc_fwd": details["forward_evals"], "loc_bwd": details["backward_evals"],
            "tested": len(details["checked"]), "ratio": seconds / check_seconds,
            "found": f"{finding.node} @ {finding.module}", "ok": finding.module == f"blocks.{faulty}.act"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="6,24,96")
    parser.add_argument("--mode", default="auto", choices=["auto", "fast"])
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny ops: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(int(b), args.mode, args.probes) for b in args.blocks.split(",")]
    header = (f"{'blocks':>6} {'nodes':>6} | {'check s':>8} {'fwd':>6} {'bwd':>4} | {'localize s':>10} {'fwd':>4} "
              f"{'bwd':>3} {'tested':>6} | {'ratio':>6} | found")
    print(f"plain check: gradaudit.check(mode={args.mode}, probes={args.probes}, localize=False); "
          f"torch threads {args.threads}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['blocks']:>6} {r['nodes']:>6} | {r['check_s']:>8.2f} {r['check_fwd']:>6} {r['check_bwd']:>4} | "
              f"{r['loc_s']:>10.3f} {r['loc_fwd']:>4} {r['loc_bwd']:>3} {r['tested']:>6} | {r['ratio']:>6.3f} | "
              f"{r['found']}{'' if r['ok'] else '  WRONG'}")


if __name__ == "__main__":
    main()
