"""Compare gradaudit with torch's own gradient checkers on the same cases.

Run from the repository root:

    .venv/bin/python benchmarks/bench_core.py            # every row
    .venv/bin/python benchmarks/bench_core.py --quick    # skip the slowest rows (TransformerEncoderLayer)
    .venv/bin/python benchmarks/bench_core.py --quick --before old.json   # ratios before and after, side by side

Cases come from ``tests/fixtures.py``: planted faults (a checker should catch them) and correct cases
(a checker should pass them). Each case is checked by

* gradaudit: ``gradaudit.check(..., order=1 or 2, mode="auto")`` (its defaults otherwise);
* ``torch.autograd.gradcheck`` in fast mode and in slow (default) mode;
* for order-2 rows also ``torch.autograd.gradgradcheck`` in slow and in fast mode.

Torch's checkers take a function of tensors only, so modules are wrapped: their parameters and floating
arguments become explicit inputs (``torch.func.functional_call``) and pytree outputs are flattened to a tuple
of floating tensors. Torch's checkers run at their defaults (eps, atol, rtol), also in float32, which they
are not meant for: that is what "at defaults" measures.

Verdicts: faults are ``caught`` / ``missed``; correct cases ``pass`` / ``FALSE ALARM``; a checker that
raises shows ``error: <reason>``. In float32 rows a torch ``caught*`` says little: torch at its default
tolerances fails every float32 case, correct or not.

Times are wall seconds (``--clock cpu``: the process's CPU seconds, steadier when other processes load the
machine; the cases run on one thread). Each tool first runs once untimed (that run gives the verdict and pays first-call
costs); if it took over 5 s its time is reported as is (1 run), else the median of 5 further timed runs.
``ratio`` is gradaudit's time over torch's fast mode for the same orders: gradcheck fast at order 1, gradcheck
fast plus gradgradcheck fast at order 2 (gradaudit checks both orders there); the summary gives its geometric
mean and its maximum over the rows, and ``--before`` a results file of an earlier run to set beside them.
Everything runs single-threaded by default (``--threads``): these cases are tiny, and on a shared machine
intra-op threads fighting other processes made timings swing by 10-50x. The table is also written to
``benchmarks/results/core.json`` (``core-quick.json`` with ``--quick``), with every run's time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils import _pytree as pytree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fixtures  # noqa: E402

import gradaudit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "core.json"
SLOW_RUN_S = 5.0  # a first run longer than this is not repeated
RUNS = 5
DROPOUT_SEED = 1234


# ---------------------------------------------------------------- the rows
@dataclass
class Row:
    case: str
    dtype: torch.dtype | None  # None: the factory's own dtype (float64, complex128)
    order: int
    fault: bool
    slow: bool = False  # skipped by --quick
    note: str = ""


def rows() -> list[Row]:
    f32, c64 = torch.float32, torch.complex64
    dropout_note = "torch: RNG re-seeded at each call of the wrapper (dropout mask frozen)"
    out = [
        Row("single_element_fault", None, 1, True, note="1 of 400 inputs has a 2x gradient; f32 n/a (fixed f64 "
            "weight)"),
        Row("wrong_parameter_gradient", None, 1, True), Row("wrong_parameter_gradient", f32, 1, True),
        Row("custom_op_fault", None, 1, True), Row("custom_op_fault", f32, 1, True),
        Row("detached_second_order", None, 2, True), Row("detached_second_order", f32, 2, True),
        Row("ctx_intermediate_second_order", None, 2, True), Row("ctx_intermediate_second_order", f32, 2, True),
    ]
    for name in ("conv_batchnorm", "lstm", "multihead_attention", "dropout_mlp", "groupnorm_gelu",
                 "plain_function"):
        note = dropout_note if name == "dropout_mlp" else ""
        out += [Row(name, None, 1, False, note=note), Row(name, f32, 1, False, note=note)]
    out += [Row("complex_function", None, 1, False), Row("complex_function", c64, 1, False)]
    out += [Row("transformer_layer", None, 1, False, slow=True, note="d_model 16"),
            Row("transformer_layer", f32, 1, False, slow=True, note="d_model 16")]
    return out


def build(row: Row) -> tuple[Callable, tuple, dict]:
    """The case at the row's dtype: through the factory's ``dtype`` where it has one, else by casting."""
    factory = getattr(fixtures, row.case)
    takes_dtype = "dtype" in factory.__code__.co_varnames[:factory.__code__.co_argcount]
    made = factory(dtype=row.dtype) if (row.dtype is not None and takes_dtype) else factory()
    fn, args, kwargs = (*made, {}) if len(made) == 2 else made
    if row.dtype is not None and not takes_dtype:  # the faults without a dtype argument
        cast = lambda t: t.to(row.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa
        args = tuple(cast(a) for a in args)
        if isinstance(fn, torch.nn.Module):
            fn = fn.to(row.dtype)
    return fn, args, kwargs


def dtype_name(row: Row, args: tuple) -> str:
    if row.dtype is not None:
        return str(row.dtype).replace("torch.", "")
    tensors = [a for a in args if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex())]
    return str(tensors[0].dtype).replace("torch.", "") if tensors else "?"


# ---------------------------------------------------------------- torch's checkers need tensor functions
def tensor_function(fn: Callable, args: tuple, kwargs: dict, freeze_rng: bool):
    """``(func, inputs)`` for torch's checkers: module parameters and floating/complex args become inputs."""
    is_float = lambda t: isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())  # noqa
    arg_slots = [i for i, a in enumerate(args) if is_float(a)]
    params = dict(fn.named_parameters()) if isinstance(fn, torch.nn.Module) else {}
    names = [name for name, p in params.items() if p.requires_grad]
    leaves = [params[name] for name in names] + [args[i] for i in arg_slots]
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in leaves)

    def func(*tensors):
        if freeze_rng:
            torch.manual_seed(DROPOUT_SEED)
        params, free = tensors[:len(names)], tensors[len(names):]
        call_args = list(args)
        for slot, tensor in zip(arg_slots, free):
            call_args[slot] = tensor
        if isinstance(fn, torch.nn.Module):
            out = torch.func.functional_call(fn, dict(zip(names, params)), tuple(call_args), kwargs)
        else:
            out = fn(*call_args, **kwargs)
        return tuple(t for t in pytree.tree_leaves(out) if is_float(t))

    return func, inputs


# ---------------------------------------------------------------- running and timing
@dataclass
class Result:
    verdict: str
    seconds: float | None
    times: list[float] = field(default_factory=list)
    detail: str = ""


def verdict(passed: bool, fault: bool) -> str:
    if fault:
        return "missed" if passed else "caught"
    return "pass" if passed else "FALSE ALARM"


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:70]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def once(run: Callable[[], bool]) -> tuple[bool, float]:
    started = clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about float32 inputs on every call
        passed = run()
    return passed, clock() - started


def timed(run: Callable[[], bool], fault: bool) -> Result:
    """The verdict of a first run; its time if over SLOW_RUN_S, else the median of RUNS more runs."""
    try:
        passed, first = once(run)
        times = [first] if first > SLOW_RUN_S else [once(run)[1] for _ in range(RUNS)]
    except Exception as exc:  # noqa: BLE001 - a checker's crash is a result
        return Result(f"error: {short(exc)}", None)
    return Result(verdict(passed, fault), statistics.median(times), [round(t, 5) for t in times])


def gradaudit_run(fn, args, kwargs, order: int) -> tuple[Callable[[], bool], list]:
    reports: list = []

    def run() -> bool:
        report = gradaudit.check(fn, args, kwargs, order=order, mode="auto")
        reports.append(report)
        return report.ok
    return run, reports


def torch_runs(fn, args, kwargs, order: int, freeze_rng: bool) -> dict[str, Callable[[], bool]]:
    func, inputs = tensor_function(fn, args, kwargs, freeze_rng)
    runs = {
        "gradcheck fast": lambda: torch.autograd.gradcheck(func, inputs, fast_mode=True, raise_exception=False),
        "gradcheck slow": lambda: torch.autograd.gradcheck(func, inputs, fast_mode=False, raise_exception=False),
    }
    if order == 2:
        runs["gradgradcheck slow"] = lambda: torch.autograd.gradgradcheck(func, inputs, fast_mode=False,
                                                                          raise_exception=False)
        runs["gradgradcheck fast"] = lambda: torch.autograd.gradgradcheck(func, inputs, fast_mode=True,
                                                                          raise_exception=False)
    return runs


LOW_PRECISION = (torch.float32, torch.complex64)
TOOLS = ("gradaudit auto", "gradcheck fast", "gradcheck slow", "gradgradcheck slow", "gradgradcheck fast")


def measure(row: Row) -> dict:
    fn, args, kwargs = build(row)
    results: dict[str, Result] = {}
    run, reports = gradaudit_run(fn, args, kwargs, row.order)
    results["gradaudit auto"] = timed(run, row.fault)
    if reports:
        results["gradaudit auto"].detail = "; ".join(f"{f.severity} {f.kind}: {f.message[:90]}"
                                                     for f in reports[0].findings)
    try:
        checks = torch_runs(fn, args, kwargs, row.order, freeze_rng="dropout" in row.case)
    except Exception as exc:  # noqa: BLE001
        checks = {}
        for tool in TOOLS[1:3 if row.order == 1 else 5]:
            results[tool] = Result(f"error: wrapper: {short(exc)}", None)
    for tool, check in checks.items():
        results[tool] = timed(check, row.fault)
        if row.dtype in LOW_PRECISION and results[tool].verdict == "caught":
            results[tool].verdict = "caught*"
    return {"case": row.case, "dtype": dtype_name(row, args), "order": row.order,
            "expected": "fault" if row.fault else "correct", "note": row.note,
            "results": {tool: asdict(r) for tool, r in results.items()}}


# ---------------------------------------------------------------- printing
def cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    seconds = "" if entry["seconds"] is None else f" {entry['seconds']:.3f}s"
    return f"{entry['verdict']}{seconds}"


def fast_ratio(record: dict) -> float:
    """gradaudit's time over torch fast mode's for the row's orders (nan where a time is missing)."""
    results = record["results"]
    tools = ["gradcheck fast"] + (["gradgradcheck fast"] if record["order"] == 2 else [])
    torch_seconds = [results.get(tool, {}).get("seconds") for tool in tools]
    mine = results["gradaudit auto"]["seconds"]
    if mine is None or any(t is None for t in torch_seconds):
        return float("nan")
    return mine / sum(torch_seconds)


def ratio_cell(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}x"


def table(records: list[dict], before: dict[tuple, dict] | None = None) -> str:
    header = ["case", "dtype", "ord", "expected", *TOOLS, "ratio"] + (["ratio before"] if before else [])
    lines = [[r["case"], r["dtype"], str(r["order"]), r["expected"],
              *(cell(r["results"].get(tool)) for tool in TOOLS), ratio_cell(fast_ratio(r))]
             + ([ratio_cell(fast_ratio(before[key(r)]) if key(r) in before else None)] if before else [])
             for r in records]
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa
    out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
    notes = sorted({f"{r['case']}: {r['note']}" for r in records if r["note"]})
    notes.append("caught*: a torch catch in float32, where torch at default tolerances fails every case")
    notes.append("ratio: gradaudit auto / torch fast mode (gradcheck fast; + gradgradcheck fast at order 2)")
    if not any(r["case"] == "transformer_layer" for r in records):
        notes.append("transformer_layer rows skipped (--quick)")
    return "\n".join(out + [""] + [f"note  {n}" for n in notes])


def key(record: dict) -> tuple:
    return record["case"], record["dtype"], record["order"]


def ratio_summary(records: list[dict], label: str) -> str:
    """Geometric mean and maximum of the rows' ratios, and how many rows exceed the 3x target."""
    ratios = [x for x in (fast_ratio(r) for r in records) if x == x and x > 0]
    if not ratios:
        return f"{label}: no ratios"
    geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    worst = max(records, key=lambda r: fast_ratio(r) if fast_ratio(r) == fast_ratio(r) else 0)
    return (f"{label}: gradaudit / torch fast mode geomean {geomean:.1f}x, max {max(ratios):.1f}x "
            f"({worst['case']} {worst['dtype']}), {sum(x > 3 for x in ratios)} of {len(ratios)} rows over 3x")


def summary(records: list[dict]) -> list[str]:
    def find(case, dtype="float64"):
        return next((r for r in records if r["case"] == case and r["dtype"] == dtype), None)

    def ratio(a, b):
        return a / b if a and b else float("nan")

    lines = []
    single = find("single_element_fault")
    if single:
        ga, fast = single["results"]["gradaudit auto"], single["results"]["gradcheck fast"]
        r = ratio(ga["seconds"], fast["seconds"])
        lines.append(f"(1) single_element_fault: gradaudit default mode {ga['verdict']}; torch fast mode "
                     f"{fast['verdict']}; time ratio gradaudit/torch fast = {r:.1f}x "
                     f"({ga['seconds']:.3f}s / {fast['seconds']:.4f}s; target <= 3x: {'met' if r <= 3 else 'NOT met'})")
    layer = find("transformer_layer")
    if layer:
        ga, slow = layer["results"]["gradaudit auto"], layer["results"]["gradcheck slow"]
        r = ratio(slow["seconds"], ga["seconds"])
        lines.append(f"(2) TransformerEncoderLayer d_model 16 (float64): torch slow/gradaudit = {r:.1f}x "
                     f"({slow['seconds']:.3f}s / {ga['seconds']:.3f}s; target >= 10x: "
                     f"{'met' if r >= 10 else 'NOT met'})")
    else:
        lines.append("(2) TransformerEncoderLayer: skipped (--quick)")
    lines.append(ratio_summary(records, "(4) speed"))
    correct = [r for r in records if r["expected"] == "correct"]
    for label, dtypes in (("float64/complex128", ("float64", "complex128")),
                          ("float32/complex64", ("float32", "complex64"))):
        subset = [r for r in correct if r["dtype"] in dtypes]
        counts = {tool: sum(not r["results"][tool]["verdict"].startswith("pass") for r in subset)
                  for tool in ("gradaudit auto", "gradcheck fast", "gradcheck slow")}
        lines.append(f"(3) false alarms (incl. errors) on {len(subset)} correct cases in {label}: "
                     + ", ".join(f"{tool} {n}" for tool, n in counts.items()) + " (target for gradaudit: 0)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the slowest rows")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall seconds (default), or the process's CPU seconds: steadier on a shared machine")
    parser.add_argument("--before", type=Path, help="results JSON of an earlier run: its ratios beside these")
    options = parser.parse_args()
    before = load_before(options.before) if options.before else None
    global clock
    clock = CLOCKS[options.clock]
    torch.set_num_threads(options.threads)
    warm_up()
    records = []
    for row in rows():
        if options.quick and row.slow:
            continue
        print(f"... {row.case} {row.dtype or ''} order {row.order}", file=sys.stderr, flush=True)
        records.append(measure(row))
    print(table(records, before))
    print()
    lines = summary(records)
    if before:
        lines.append(ratio_summary([before[key(r)] for r in records if key(r) in before],
                                   f"(4) before ({options.before.name})"))
    print("\n".join(lines))
    path = RESULTS.with_name("core-quick.json") if options.quick else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "gradaudit": getattr(gradaudit, "__version__", "?"),
            "threads": torch.get_num_threads(), "quick": options.quick, "clock": options.clock, "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"torch {meta['torch']}, {meta['threads']} thread(s), {meta['clock']} clock, {meta['cpus']} CPUs, "
          f"load average {meta['load_average_at_end'][0]}")
    path.write_text(json.dumps({"meta": meta, "rows": records, "summary": lines}, indent=1))
    print(f"\nwritten {path.relative_to(ROOT)}")


def load_before(path: Path) -> dict[tuple, dict]:
    """The rows of an earlier results file, by (case, dtype, order)."""
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"bench_core.py: error: --before {path}: {exc}") from None
    return {key(r): r for r in rows}


def warm_up() -> None:
    """One untimed pass of each tool on a small case, so first-call costs (imports, dispatch) are not timed."""
    fn, args = fixtures.custom_op_fault()
    gradaudit.check(fn, args, order=2)
    func, inputs = tensor_function(fn, args, {}, freeze_rng=False)
    for fast in (True, False):
        torch.autograd.gradcheck(func, inputs, fast_mode=fast, raise_exception=False)
        torch.autograd.gradgradcheck(func, inputs, fast_mode=fast, raise_exception=False)


if __name__ == "__main__":
    main()
