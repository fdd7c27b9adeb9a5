"""Audit suites: cases per minute, serial vs a local process pool vs Ray; zoo coverage; a full eager run.

Run from the repository root:

    .venv/bin/python benchmarks/bench_suite.py                    # subset throughput + coverage
    .venv/bin/python benchmarks/bench_suite.py --full             # also the whole torch.nn zoo, eager, orders 1+2
    .venv/bin/python benchmarks/bench_suite.py --subset 8 --executors serial,local

The subset is the first N cases of every ``--stride``-th zoo case (a spread of linear, conv, norm, activation,
recurrent, attention and loss cases), on eager, orders 1 and 2; each case is one worker process (orders share
it). "cases/min" counts (case, backend) jobs; "results/min" counts (case, backend, order) records. The full run
counts false alarms: records that are not a pass or a skip (every zoo case is correct torch code in float64, so
any fail is a false alarm of the checker, and any error a case the audit could not run). Timings are wall
seconds on a shared machine. Results also go to ``benchmarks/results/suite.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "suite.json"


def subset_names(count: int, stride: int) -> list[str]:
    from gradaudit.suite.zoos.torch_nn import torch_nn_zoo

    cases = torch_nn_zoo()
    return [c.name for c in cases[::stride]][:count]


def timed_run(names: list[str], executor: str, workers: int | None, backends: list[str]) -> dict:
    from gradaudit.suite.runner import run_suite, summary_counts

    wanted = set(names)
    started = time.perf_counter()
    records = run_suite("torch.nn", backends, (1, 2), executor=executor, workers=workers, timeout=300,
                        only=lambda name: name in wanted)
    seconds = time.perf_counter() - started
    jobs = len(names) * len(backends)
    return {"executor": executor, "workers": workers, "jobs": jobs, "records": len(records),
            "seconds": round(seconds, 1), "cases_per_min": round(60 * jobs / seconds, 1),
            "results_per_min": round(60 * len(records) / seconds, 1), "counts": summary_counts(records)}


def coverage() -> dict:
    from gradaudit.registry import describe_backends
    from gradaudit.suite.zoos import module_types
    from gradaudit.suite.zoos.torch_nn import torch_nn_zoo

    cases = torch_nn_zoo()
    return {"zoo_cases": len(cases), "module_types": len(module_types(cases)),
            "order2_cases": sum(2 in c.orders for c in cases),
            "train_eval_pairs": sum(c.name.endswith("[train]") for c in cases),
            "backends": {name: availability.usable for name, availability, _ in describe_backends()}}


def full_run(workers: int | None) -> dict:
    from gradaudit.suite.runner import run_suite, summary_counts

    started = time.perf_counter()
    done = [0]

    def progress(record, finished, total):
        done[0] = finished
        if finished % 25 == 0:
            print(f"  full run: {finished}/{total} records, {time.perf_counter() - started:.0f}s", flush=True)
    records = run_suite("torch.nn", ["eager"], (1, 2), executor="local", workers=workers, timeout=300,
                        progress=progress)
    seconds = time.perf_counter() - started
    alarms = [{"case": r["case"], "order": r["order"], "status": r["status"], "reason": r["reason"]}
              for r in records if r["status"] in ("fail", "error")]
    return {"records": len(records), "seconds": round(seconds, 1), "counts": summary_counts(records),
            "false_alarms": alarms,
            "slowest": sorted(((r["seconds"], r["case"], r["order"]) for r in records), reverse=True)[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", type=int, default=12, help="cases in the throughput subset")
    parser.add_argument("--stride", type=int, default=12, help="take every N-th zoo case for the subset")
    parser.add_argument("--executors", default="serial,local,ray")
    parser.add_argument("--workers", type=int, default=None, help="local pool size (default: CPU count)")
    parser.add_argument("--full", action="store_true", help="also run the whole zoo on eager, orders 1 and 2")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    out = {"cpu_count": os.cpu_count(), "coverage": coverage(), "throughput": []}
    print(json.dumps(out["coverage"], indent=1), flush=True)
    names = subset_names(args.subset, args.stride)
    out["subset"] = names
    print(f"subset ({len(names)} cases, eager, orders 1+2): {', '.join(names)}", flush=True)
    for executor in args.executors.split(","):
        if executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                print("ray: not installed, skipped")
                continue
        row = timed_run(names, executor, args.workers if executor == "local" else None, ["eager"])
        out["throughput"].append(row)
        print(f"{executor:7} {row['seconds']:7.1f}s  {row['cases_per_min']:6.1f} cases/min  "
              f"{row['results_per_min']:6.1f} results/min  {row['counts']}", flush=True)
    if args.full:
        out["full_eager"] = full_run(args.workers)
        full = out["full_eager"]
        print(f"full eager run: {full['records']} records in {full['seconds']}s, {full['counts']}, "
              f"{len(full['false_alarms'])} false alarms", flush=True)
        for alarm in full["false_alarms"]:
            print(f"  {alarm}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
