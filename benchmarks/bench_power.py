"""Detection power: the smallest planted relative error in a gradient formula that each checker catches.

Run from the repository root:

    .venv/bin/python benchmarks/bench_power.py                      # every case: 15 min wall (7.6 min CPU)
    .venv/bin/python benchmarks/bench_power.py --quick              # a subset
    .venv/bin/python benchmarks/bench_power.py --json power.json    # also write the rows
    .venv/bin/python benchmarks/bench_power.py --only tanh,softplus # cases whose name contains a word
    .venv/bin/python benchmarks/bench_power.py --no-torch           # gradaudit only (~40% of the time)
    .venv/bin/python benchmarks/bench_power.py --quick --no-torch   # for iterating on the error model
    .venv/bin/python benchmarks/bench_power.py --low-precision      # bf16/fp16 rows (~1 min)

Measured on a shared 2-core machine (load 4-5): gradaudit 365 s and torch 560 s of the 926 s, of which
gradcheck on the 48-layer MLP alone 170 s.

The cases (``benchmarks/power_cases.py``) plant a relative error ``eps`` in one gradient formula of a model in
float64 (deep narrow tanh MLPs, residual LayerNorm+GELU blocks, attention, conv + norm, and second-order
faults: a softplus whose first derivative is exact and whose second is off by ``eps``), without changing the
forward. Each case is built for eps = 1e-2, 1e-3, ..., 1e-8 and for eps = 0 (the same graph with the exact
gradient: any failure there is a false alarm), and checked by

* gradaudit: ``gradaudit.check(model, args, order=<the fault's order>)`` at its defaults (seed 0). "Caught"
  means ``not report.ok`` with an error finding of the fault's kind at its order (``faulty_backward`` at order
  1, ``faulty_double_backward`` at order 2); a failure of another kind or order is shown as ``?``;
* torch: ``torch.autograd.gradcheck`` (order 1) or ``gradgradcheck`` (order 2) at their defaults (slow mode,
  eps 1e-6, atol 1e-5, rtol 1e-3), on ``torch.func.functional_call`` over the same leaves (parameters + the
  floating inputs), ``torch.manual_seed(0)`` before each call (gradgradcheck draws its grad_outputs).

"Smallest caught" is read from the top of the eps list down: the smallest eps of the contiguous run of catches
starting at 1e-2 (``-`` when 1e-2 is missed). A catch below the first miss is reported as non-monotonic. The
``pattern`` column shows every eps from 1e-2 to 1e-8: ``x`` caught, ``.`` missed, ``?`` failed with another
kind/order, ``E`` the checker raised.

For every gradaudit run the check closest to failing at the fault's order is kept: its ``|err|`` and
``error bar`` (``max_abs_err`` and ``tolerance`` of the check, over every leaf group, with the largest
err/bar), so a miss shows how far the bar is from the error. The table prints that err/bar at eps = 0 (the
arithmetic's own error against the bar: how conservative the bar is; above 1 is a false alarm), at 1e-6 and at
1e-8 (above 1: caught). ``loc`` counts the caught eps whose finding names the planted autograd node
(localization, for information: not part of "caught"). Below the table, each case that misses 1e-6 lists, per
eps, the planted leaf's and the closest check's |err| and error bar, and the numbers quoted in the finding's
message where there is one.

Float32 variants of some cases run ``gradaudit.check(..., dtype="float32")`` (checked numerically on its
float64 shadow, plus dtype parity) and gradcheck in float32 at its defaults. In float32 ``1 + eps`` rounds to
1 for eps < 6e-8, so torch's float32 run has no fault at 1e-8 (the float64 shadow keeps it).

Times are wall seconds of the single eps = 0 run (no follow-ups, no localization) per checker, 1 thread.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.autograd.gradcheck import GradcheckError
from torch.utils import _pytree as pytree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import power_cases  # noqa: E402

import gradaudit  # noqa: E402

EPSILONS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
KIND = {1: "faulty_backward", 2: "faulty_double_backward"}
TARGET_EPS = 1e-6  # the bar: every case catches this or smaller


# ---------------------------------------------------------------- torch's checkers on the same leaves
def tensor_function(module: torch.nn.Module, args: tuple):
    """``(func, inputs)``: the module's trainable parameters and its floating args as explicit inputs."""
    is_float = lambda t: isinstance(t, torch.Tensor) and t.is_floating_point()  # noqa: E731
    slots = [i for i, a in enumerate(args) if is_float(a)]
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    params = dict(module.named_parameters())
    leaves = [params[n] for n in names] + [args[i] for i in slots]
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in leaves)

    def func(*tensors):
        call = list(args)
        for slot, tensor in zip(slots, tensors[len(names):]):
            call[slot] = tensor
        out = torch.func.functional_call(module, dict(zip(names, tensors[:len(names)])), tuple(call))
        return tuple(t for t in pytree.tree_leaves(out) if is_float(t))

    return func, inputs


def torch_check(module, args, order: int) -> dict:
    func, inputs = tensor_function(module, args)
    checker = torch.autograd.gradcheck if order == 1 else torch.autograd.gradgradcheck
    torch.manual_seed(0)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checker(func, inputs)  # defaults: slow mode, eps 1e-6, atol 1e-5, rtol 1e-3, raise_exception
        failed, detail = False, ""
    except GradcheckError as exc:
        failed, detail = True, first_line(exc)
    except Exception as exc:  # noqa: BLE001 - a crash is a result
        return {"verdict": "error", "detail": f"{type(exc).__name__}: {first_line(exc)}",
                "seconds": time.perf_counter() - started}
    return {"verdict": "fail" if failed else "pass", "detail": detail, "seconds": time.perf_counter() - started}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


# ---------------------------------------------------------------- gradaudit
def closest_check(report, order: int) -> dict | None:
    """The check at ``order`` with the largest err/bar (the one closest to failing, or failing most)."""
    best, best_ratio = None, -1.0
    for c in report.checks:
        if c.order != order or c.method == "dtype_parity":
            continue
        ratio = c.max_abs_err / c.tolerance if c.tolerance > 0 else (float("inf") if c.max_abs_err > 0 else 0.0)
        if ratio > best_ratio:
            best, best_ratio = c, ratio
    if best is None:
        return None
    return {"wrt": best.wrt, "method": best.method, "err": best.max_abs_err, "bar": best.tolerance,
            "ratio": best_ratio, "status": best.status}


def planted_check(report, order: int, planted: str) -> dict | None:
    for c in report.checks:
        if c.order == order and c.wrt == planted and c.method != "dtype_parity":
            return {"wrt": c.wrt, "method": c.method, "err": c.max_abs_err, "bar": c.tolerance, "status": c.status}
    return None


ERR_BAR = re.compile(r"\|err\| ([0-9.eE+-]+), error bar ([0-9.eE+-]+)")


def gradaudit_check(module, args, order: int, dtype: str | None, planted: str) -> dict:
    started = time.perf_counter()
    try:
        report = gradaudit.check(module, args, order=order, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        return {"verdict": "error", "detail": f"{type(exc).__name__}: {first_line(exc)}",
                "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    errors = [f for f in report.findings if f.severity == "error"]
    right = [f for f in errors if f.kind == KIND[order] and f.order == order]
    if report.ok:
        verdict = "pass"
    elif right:
        verdict = "fail"
    else:
        verdict = "other"
    finding = (right or errors or [None])[0]
    out = {"verdict": verdict, "seconds": seconds, "stats": report.stats,
           "findings": [{"kind": f.kind, "order": f.order, "wrt": f.wrt, "severity": f.severity,
                         "node": f.node, "op": f.op, "method": f.details.get("method"),
                         "message": f.message.splitlines()[0][:300]} for f in report.findings],
           "closest": closest_check(report, order), "planted": planted_check(report, order, planted)}
    if finding is not None:
        m = ERR_BAR.search(finding.message)
        if m:
            out["message_err"], out["message_bar"] = float(m.group(1)), float(m.group(2))
    return out


# ---------------------------------------------------------------- a sweep
@dataclass
class Row:
    case: str
    family: str
    order: int
    dtype: str
    planted: str
    note: str
    leaves: int = 0
    gradaudit: dict = field(default_factory=dict)  # eps (as str) -> run
    torch: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def count_leaves(module, args) -> int:
    n = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return n + sum(a.numel() for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())


def localized(runs: dict, nodes: tuple) -> str:
    """``k/n``: of the n caught eps, k had their finding localized to the planted node."""
    caught = [runs[repr(e)] for e in EPSILONS if runs[repr(e)]["verdict"] == "fail"]
    good = sum(1 for run in caught if any(f["node"] in nodes for f in run["findings"]
                                          if f["severity"] == "error"))
    return f"{good}/{len(caught)}"


def summarize(runs: dict, fault_verdict: str = "fail") -> dict:
    """smallest eps of the contiguous run of catches from the top; pattern; non-monotonic catches."""
    pattern, smallest, broken, below = "", None, False, []
    for eps in EPSILONS:
        v = runs[repr(eps)]["verdict"]
        caught = v == fault_verdict
        pattern += {"fail": "x", "pass": ".", "other": "?", "error": "E"}[v]
        if caught and not broken:
            smallest = eps
        elif caught and broken:
            below.append(eps)
        else:
            broken = True
    zero = runs[repr(0.0)]["verdict"]
    return {"smallest": smallest, "pattern": pattern, "nonmonotonic": below,
            "at_zero": {"pass": "pass", "fail": "FALSE ALARM", "other": "FALSE ALARM", "error": "error"}[zero],
            "seconds_at_zero": runs[repr(0.0)]["seconds"]}


def sweep(case: power_cases.PowerCase, dtype: torch.dtype, log, run_torch: bool = True) -> Row:
    dname = str(dtype).replace("torch.", "")
    module, args = case.build(0.0, dtype)
    row = Row(case.name, case.family, case.order, dname, case.planted, case.note, count_leaves(module, args))
    for eps in [0.0] + EPSILONS:
        module, args = case.build(eps, dtype)
        ga = gradaudit_check(module, args, case.order, None if dtype == torch.float64 else dname, case.planted)
        tc = torch_check(module, args, case.order) if run_torch else {"verdict": "-", "seconds": 0.0}
        row.gradaudit[repr(eps)] = ga
        if run_torch:
            row.torch[repr(eps)] = tc
        close = ga.get("closest") or {}
        log(f"  {case.name:<24} {dname:<8} eps={eps:<6g} gradaudit {ga['verdict']:<5} ({ga['seconds']:6.2f}s"
            f"{', |err| %.3g bar %.3g on %s' % (close['err'], close['bar'], close['wrt']) if close else ''})"
            f"  torch {tc['verdict']:<5} ({tc['seconds']:6.2f}s)")
    row.summary = {"gradaudit": summarize(row.gradaudit), "torch": summarize(row.torch) if run_torch else {}}
    row.summary["gradaudit"]["localized"] = localized(row.gradaudit, case.nodes)
    return row


# ---------------------------------------------------------------- output
def fmt_eps(eps) -> str:
    return "-" if eps is None else f"{eps:.0e}"


def ratio_at(runs: dict, eps: float) -> str:
    close = runs[repr(eps)].get("closest")
    if not close:
        return "-"
    return f"{close['ratio']:.2g}"


def smallest_shown(summary: dict) -> str:
    """A checker that fails the correct model catches nothing: its smallest is not a detection limit."""
    if summary["at_zero"] != "pass":
        return "n/a"
    return fmt_eps(summary["smallest"])


def table(rows: list[Row]) -> str:
    head = (f"{'case':<22} {'dtype':<7} {'ord':>3} {'leaves':>6} | {'gradaudit':>9} {'pattern':<7} {'@0':<11} "
            f"{'e/b@0':>6} {'e/b@1e-6':>8} {'e/b@1e-8':>8} {'loc':>5} {'t@0':>5} | {'torch':>5} {'pattern':<7} "
            f"{'@0':<11} {'t@0':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        g, t = r.summary["gradaudit"], r.summary["torch"]
        lines.append(
            f"{r.case:<22} {r.dtype:<7} {r.order:>3} {r.leaves:>6} | {smallest_shown(g):>9} {g['pattern']:<7} "
            f"{g['at_zero']:<11} {ratio_at(r.gradaudit, 0.0):>6} {ratio_at(r.gradaudit, 1e-6):>8} "
            f"{ratio_at(r.gradaudit, 1e-8):>8} {g['localized']:>5} {g['seconds_at_zero']:5.1f} | ")
        if t:
            lines[-1] += (f"{smallest_shown(t):>5} {t['pattern']:<7} {t['at_zero']:<11} "
                          f"{t['seconds_at_zero']:5.1f}")
        else:
            lines[-1] += "(not run)"
    notes = []
    for r in rows:
        for tool in ("gradaudit", "torch"):
            s = r.summary.get(tool)
            if s and s["nonmonotonic"]:
                notes.append(f"non-monotonic: {r.case} ({r.dtype}) {tool} also caught "
                             f"{', '.join(fmt_eps(e) for e in s['nonmonotonic'])} below its first miss")
            if s and s["at_zero"] != "pass":
                notes.append(f"{r.case} ({r.dtype}) {tool}: {s['at_zero']} on the correct model, so its "
                             f"catches (pattern {s['pattern']}) say nothing")
    return "\n".join(lines + ([""] + notes if notes else []))


def bars(rows: list[Row]) -> str:
    """For each case gradaudit misses at TARGET_EPS or above: the planted leaf's and the closest check's
    |err| and error bar at the eps values it missed."""
    out = []
    for r in rows:
        smallest = r.summary["gradaudit"]["smallest"]
        if smallest is not None and smallest <= TARGET_EPS:
            continue
        out.append(f"{r.case} ({r.dtype}, order {r.order}): smallest caught {fmt_eps(smallest)}")
        for eps in [0.0] + EPSILONS:
            run = r.gradaudit[repr(eps)]
            if eps and run["verdict"] == "fail" and eps != smallest:
                continue
            parts = [f"    eps={eps:<6g} {run['verdict']:<5}"]
            for label in ("planted", "closest"):
                c = run.get(label)
                if c:
                    parts.append(f"{label} {c['wrt']}: |err| {c['err']:.3g} bar {c['bar']:.3g} "
                                 f"(err/bar {c['err'] / c['bar'] if c['bar'] else float('inf'):.2g})")
            if "message_err" in run:
                parts.append(f"message: |err| {run['message_err']:.3g} bar {run['message_bar']:.3g}")
            out.append("  ".join(parts))
    return "\n".join(out) if out else f"every case catches {TARGET_EPS:g} or smaller"


def git_state() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty_gradaudit": git("status", "--short", "gradaudit"),
            "gradaudit_tree": git("rev-parse", "HEAD:gradaudit")}


# ---------------------------------------------------------------- low precision (bf16 / fp16)
LOW_EPSILONS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3]


def low_gradcheck(fn, args, dtype: torch.dtype) -> str:
    """gradcheck at its defaults on the case in ``dtype`` (it is meant for float64 only: in bf16/fp16 it warns
    and judges at float64 tolerances) and in float64 (where these bugs do not exist)."""
    verdicts = []
    for d in (dtype, torch.float64):
        inputs = tuple(a.detach().to(d).requires_grad_() for a in args if a.is_floating_point())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.autograd.gradcheck(fn, inputs)
            verdicts.append("pass")
        except GradcheckError:
            verdicts.append("fail")
        except Exception as exc:  # noqa: BLE001 - a crash is a result
            verdicts.append(f"error ({type(exc).__name__})")
    return "/".join(verdicts)


def low_precision_rows(log) -> list[str]:
    """Fused kernels with a relative error planted on their bf16/fp16 path only (power_cases.low_precision_cases):
    which planted sizes gradaudit catches, with the dtype's eps and gradcheck's verdicts (low dtype / float64)."""
    lines = [f"{'case':<20} {'dtype':<9} {'eps(dtype)':>10} | gradaudit @0 pattern(1e-1..1e-3) smallest "
             f"| gradcheck(low/float64) @0 and @1e-1"]
    for name, build in power_cases.low_precision_cases().items():
        for dtype in (torch.bfloat16, torch.float16):
            dname = str(dtype).replace("torch.", "")
            verdicts = {}
            for eps in [0.0] + LOW_EPSILONS:
                fn, args = build(eps)
                report = gradaudit.check(fn, args, dtype=dname, localize=False)
                verdicts[eps] = "x" if not report.ok else "."
                log(f"  {name} {dname} eps={eps:g}: {'caught' if not report.ok else 'passed'}")
            pattern = "".join(verdicts[e] for e in LOW_EPSILONS)
            caught = [e for e in LOW_EPSILONS if verdicts[e] == "x"]
            at_zero = "FALSE ALARM" if verdicts[0.0] == "x" else "pass"
            fn0, args0 = build(0.0)
            fn1, args1 = build(1e-1)
            if isinstance(fn0, torch.nn.Module):
                torch_cell = "n/a (module)"
            else:
                torch_cell = f"{low_gradcheck(fn0, args0, dtype)} {low_gradcheck(fn1, args1, dtype)}"
            lines.append(f"{name:<20} {dname:<9} {torch.finfo(dtype).eps:>10.2g} | {at_zero:<12} {pattern:<18} "
                         f"{fmt_eps(min(caught)) if caught else '-':>8} | {torch_cell}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the cases marked quick (and their float32)")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--no-float32", action="store_true", help="skip the float32 variants")
    parser.add_argument("--json", metavar="OUT", help="write the rows as JSON")
    parser.add_argument("--no-torch", action="store_true", help="gradaudit only (no gradcheck/gradgradcheck)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-run lines")
    parser.add_argument("--low-precision", action="store_true",
                        help="only the bf16/fp16 rows: bugs on a fused kernel's low-precision path")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    log = (lambda s: None) if opts.quiet else (lambda s: print(s, flush=True))
    if opts.low_precision:
        print("\n".join(low_precision_rows(log)))
        return 0

    chosen = [c for c in power_cases.cases() if (c.quick or not opts.quick)]
    if opts.only:
        words = [w.strip() for w in opts.only.split(",") if w.strip()]
        chosen = [c for c in chosen if any(w in c.name for w in words)]
    plan = [(c, torch.float64) for c in chosen]
    if not opts.no_float32:
        plan += [(c, torch.float32) for c in chosen if c.float32]

    code = git_state()  # at the start: the checker's code is what was imported now
    started = time.perf_counter()
    rows = []
    for case, dtype in plan:
        log(f"{case.name} ({dtype}): {case.note}; planted in {case.planted}")
        rows.append(sweep(case, dtype, log, run_torch=not opts.no_torch))
    total = time.perf_counter() - started

    print()
    print(f"smallest planted relative error caught (eps 1e-2 .. 1e-8; pattern x caught . missed ? other E error);"
          f" @0: verdict on the correct model; t@0 seconds; torch = gradcheck (order 1) / gradgradcheck (order 2)")
    print(table(rows))
    print()
    print(f"gradaudit misses at {TARGET_EPS:g} or above (|err| vs error bar):")
    print(bars(rows))
    print(f"\ntotal {total:.0f} s, torch {torch.__version__}, gradaudit {gradaudit.__version__} at "
          f"{code['commit'][:10]}{' + local changes' if code['dirty_gradaudit'] else ''}, {opts.threads} thread(s)")
    if opts.json:
        payload = {"epsilons": EPSILONS, "torch": torch.__version__, "gradaudit": gradaudit.__version__,
                   "git": code, "seconds": total, "rows": [asdict(r) for r in rows]}
        Path(opts.json).write_text(json.dumps(payload, indent=1, default=str))
        print(f"rows written to {opts.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
