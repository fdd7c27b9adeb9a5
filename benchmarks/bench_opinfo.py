"""gradaudit against torch's gradcheck/gradgradcheck on PyTorch's own op (and module) database.

Run from the repository root (needs the ``opinfo`` extra: ``pip install -e '.[opinfo]'``):

    .venv/bin/python benchmarks/bench_opinfo.py                            # op_db, 2 samples, orders 1 and 2
    .venv/bin/python benchmarks/bench_opinfo.py --only '^(tanh|log|sqrt)\\['   # a subset (regex on case names)
    .venv/bin/python benchmarks/bench_opinfo.py --modules                  # module_db instead
    .venv/bin/python benchmarks/bench_opinfo.py --shard 1/4 ...            # every 4th case, from the first
    .venv/bin/python benchmarks/bench_opinfo.py --summarize ROWS.jsonl...  # the table of finished rows/shards

Cases are the ``torch.ops`` / ``torch.modules`` zoos (``gradaudit/suite/zoos/torch_ops.py``): the first ``--samples``
sample inputs of every op with float64 autograd on the CPU (every float64 module, train mode, and eval mode
where torch says the modes differ), float64, at each of ``--orders``; order 2 only where torch supports
double backward. A row is one (case, order); each tool gets freshly built inputs.

* gradaudit: ``gradaudit.check(fn, args, kwargs, order=o)`` in-process with its defaults (mode auto, 3 probes,
  seed 0, localization on). The op's sample is handed over as it comes, ``(sample.input, *sample.args),
  sample.kwargs`` with torch's ``requires_grad`` flags (``--flat``: the same function of the differentiated
  tensors only that gradcheck gets). ``check(order=2)`` checks orders 1 and 2; the order-2 row counts only
  order-2 findings as its verdict (order-1 ones are the order-1 row's), and its time includes order 1.
* torch: what ``test_ops_gradients.py`` / ``test_modules.py`` run, simplified. The function of the tensors
  with ``requires_grad=True`` (the op through ``op.gradcheck_wrapper`` and ``sample.output_process_fn_grad``;
  modules through ``torch.func.functional_call`` over trainable parameters and inputs, RNG frozen, outputs
  flattened). Order 1: ``gradcheck(fn, inputs, check_batched_grad=False, check_forward_ad=
  op.supports_forward_ad, nondet_tol=op.gradcheck_nondet_tol, fast_mode=op.gradcheck_fast_mode)``, otherwise
  defaults (slow mode, eps 1e-6, atol 1e-5, rtol 1e-3, check_undefined_grad). Order 2: ``gradgradcheck(fn,
  inputs, check_batched_grad=False, check_fwd_over_rev=op.supports_fwgrad_bwgrad, ...)`` (contiguous grad
  outputs only). Modules: no forward AD. A ``GradcheckError`` is a failure, any other exception an error.

Verdicts: ``pass``, ``fail``, ``skip`` (gradaudit ran no check at the row's order: torch has no double
backward there), ``error`` (an exception: for gradaudit an ``AuditError``, "the audit could not
run"), ``crash`` (gradaudit only: any other exception — a bug to fix), ``timeout`` (``--limit-seconds`` per
tool and row, by SIGALRM: soft, a long C++ kernel finishes first), ``died`` (the process ended during it;
found on resume). Agreement is counted over rows where both tools gave pass/fail.

Rows are appended to a JSONL file as they finish (``--rows``, default ``benchmarks/results/opinfo_rows*.jsonl``
named after the selection); re-running the same command resumes, and a row whose process died is recorded
as ``died`` instead of being run again. ``--json OUT`` writes settings, environment, summary and every row
(the first line of each gradaudit finding's message, any exception). Progress goes to stderr. Runs
single-threaded by default (``--threads``); both tools see the same threads.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
TOOLS = ("gradaudit", "gradcheck")
SHORT = {"gradaudit": "ga", "gradcheck": "gc"}
DEFAULT_LIMIT_S = 60.0


# ---------------------------------------------------------------------------------------------- time limit
class CaseTimeout(BaseException):
    """Raised by SIGALRM. A BaseException, so that an ``except Exception`` in the audited code (or in a
    best-effort phase of a checker) does not swallow it."""


@contextmanager
def time_limit(seconds: float | None):
    if not seconds or seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(text: Any, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


# ---------------------------------------------------------------------------------------------- the cases
def tag_value(case, prefix: str) -> str | None:
    for tag in case.tags:
        if isinstance(tag, str) and tag.startswith(prefix):
            return tag[len(prefix):]
    return None


def load_cases(modules: bool, samples: int, only: str | None, shard: tuple[int, int] | None, both_modes: bool):
    from gradaudit.suite.zoos import torch_ops as zoo_opinfo

    cases = (zoo_opinfo.module_zoo(samples, both_modes=both_modes) if modules
             else zoo_opinfo.opinfo_zoo(samples))
    if only:
        pattern = re.compile(only)
        cases = [c for c in cases if pattern.search(c.name)]
    if shard:
        k, n = shard
        cases = [c for i, c in enumerate(cases) if i % n == k - 1]
    return cases


def torch_function(case, modules: bool) -> tuple[Callable, tuple, dict]:
    """The function torch's checkers get, its inputs (the tensors with requires_grad=True, flattened) and
    the settings its gradient tests use for this op or module."""
    import torch
    from torch.utils import _pytree as pytree
    from gradaudit.suite.zoos import torch_ops as zoo_opinfo

    if modules:
        return module_torch_function(case)
    op = zoo_opinfo.find_op(tag_value(case, "opinfo:"))
    sample = zoo_opinfo.op_sample(op, int(tag_value(case, "sample:")))
    fn = zoo_opinfo.op_function(op, sample)
    leaves, spec = pytree.tree_flatten(((sample.input, *sample.args), dict(sample.kwargs)))
    slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and leaf.requires_grad]

    def of_inputs(*inputs):
        flat = list(leaves)
        for slot, value in zip(slots, inputs):
            flat[slot] = value
        args, kwargs = pytree.tree_unflatten(flat, spec)
        return fn(*args, **kwargs)

    settings = {"nondet_tol": op.gradcheck_nondet_tol, "fast_mode": bool(op.gradcheck_fast_mode),
                "forward_ad": bool(op.supports_forward_ad), "fwd_over_rev": bool(op.supports_fwgrad_bwgrad)}
    return of_inputs, tuple(leaves[i] for i in slots), settings


def module_torch_function(case) -> tuple[Callable, tuple, dict]:
    import torch
    from torch.utils import _pytree as pytree
    from gradaudit.suite.zoos import torch_ops as zoo_opinfo

    info = zoo_opinfo.find_module(tag_value(case, "module:"))
    training = "train" in case.tags
    module, args, kwargs = zoo_opinfo.module_case(info, training, int(tag_value(case, "sample:")))
    if isinstance(module, torch.nn.modules.lazy.LazyModuleMixin):
        with torch.no_grad(), frozen_rng():
            module(*args, **kwargs)
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    params = [p for name, p in module.named_parameters() if p.requires_grad]
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and leaf.requires_grad]

    def of_inputs(*inputs):
        flat = list(leaves)
        for slot, value in zip(slots, inputs[: len(slots)]):
            flat[slot] = value
        call_args, call_kwargs = pytree.tree_unflatten(flat, spec)
        with frozen_rng():
            output = torch.func.functional_call(module, dict(zip(names, inputs[len(slots):])), call_args,
                                                call_kwargs)
        return tuple(t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor))

    settings = {"nondet_tol": 0.0, "fast_mode": bool(info.gradcheck_fast_mode), "forward_ad": False,
                "fwd_over_rev": False}
    return of_inputs, tuple(leaves[i] for i in slots) + tuple(params), settings


@contextmanager
def frozen_rng():
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


# ---------------------------------------------------------------------------------------------- the tools
def crash_site(exc: BaseException) -> str:
    """The innermost gradaudit frame of a traceback (and the innermost frame, where that is elsewhere)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}gradaudit{os.sep}" in f.filename]
    parts = []
    if ours:
        f = ours[-1]
        parts.append(f"{Path(f.filename).name}:{f.lineno} in {f.name}: {first_line(f.line, 120)}")
    if frames and (not ours or frames[-1] is not ours[-1]):
        f = frames[-1]
        parts.append(f"innermost {Path(f.filename).name}:{f.lineno} in {f.name}")
    return "; ".join(parts)


def run_gradaudit(case, order: int, modules: bool, flat: bool, limit: float | None) -> dict:
    import gradaudit

    result: dict[str, Any] = {}
    try:
        if flat:
            fn, inputs, _ = torch_function(case, modules)
            target, args, kwargs = fn, inputs, {}
        else:
            target, args, kwargs = (list(case.build()) + [{}])[:3]
    except Exception as exc:
        return {"verdict": "build_error", "exception": describe(exc), "seconds": 0.0}
    started = time.perf_counter()
    try:
        with time_limit(limit):
            report = gradaudit.check(target, args, kwargs, order=order, name=case.name)
    except CaseTimeout as exc:
        result |= {"verdict": "timeout", "exception": f"timeout: {exc}"}
    except gradaudit.AuditError as exc:
        result |= {"verdict": "error", "exception": describe(exc)}
    except Exception as exc:
        result |= {"verdict": "crash", "exception": describe(exc), "where": crash_site(exc)}
    else:
        findings = [{"kind": f.kind, "order": f.order, "severity": f.severity, "wrt": f.wrt,
                     "node": f.node, "message": first_line(f.message)} for f in report.findings]
        errors = [f for f in report.findings if f.severity == "error"]
        here = [f for f in errors if f.order in (order, None)]
        failed_here = [c for c in report.failed_checks if c.order == order]
        lower = [f for f in errors if f.order is not None and f.order < order] or \
                [c for c in report.failed_checks if c.order < order]
        ran_here = any(c.order == order for c in report.checks)
        verdict = "fail" if (here or failed_here) else ("pass" if ran_here else "skip")
        result |= {"verdict": verdict, "findings": findings,
                   "lower_order_fail": bool(lower) and order > 1,
                   "skipped": [first_line(f"{s.get('what')}: {s.get('reason')}", 200) for s in report.skipped]}
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


def run_gradcheck(case, order: int, modules: bool, limit: float | None) -> dict:
    import torch
    from torch.autograd.gradcheck import GradcheckError

    try:
        fn, inputs, settings = torch_function(case, modules)
    except Exception as exc:
        return {"verdict": "build_error", "exception": describe(exc), "seconds": 0.0}
    if not inputs:
        return {"verdict": "error", "exception": "no input requires grad", "seconds": 0.0}
    started = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        with time_limit(limit):
            if order == 1:
                torch.autograd.gradcheck(fn, inputs, check_batched_grad=False,
                                         check_forward_ad=settings["forward_ad"], nondet_tol=settings["nondet_tol"],
                                         fast_mode=settings["fast_mode"])
            else:
                torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=False,
                                             check_fwd_over_rev=settings["fwd_over_rev"],
                                             nondet_tol=settings["nondet_tol"], fast_mode=settings["fast_mode"])
        result["verdict"] = "pass"
    except CaseTimeout as exc:
        result |= {"verdict": "timeout", "exception": f"timeout: {exc}"}
    except GradcheckError as exc:
        result |= {"verdict": "fail", "message": first_line(exc)}
    except Exception as exc:
        result |= {"verdict": "error", "exception": describe(exc)}
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


# ---------------------------------------------------------------------------------------------- rows on disk
def row_key(case_name: str, order: int) -> str:
    return f"{case_name}|o{order}"


class RowFile:
    """Appends ``{"key", "tool", "result"}`` lines and ``{"key", "tool", "started": true}`` markers; a tool that
    started but has no result died with its process."""

    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict[str, dict]] = defaultdict(dict)
        self.meta: dict[str, dict] = {}
        started: set[tuple[str, str]] = set()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short when the process died
                if entry.get("started"):
                    started.add((entry["key"], entry["tool"]))
                elif "result" in entry:
                    self.results[entry["key"]][entry["tool"]] = entry["result"]
                if "meta" in entry:
                    self.meta[entry["key"]] = entry["meta"]
        for key, tool in started:
            if tool not in self.results.get(key, {}):
                result = {"verdict": "died", "exception": "died: the process ended during this tool's run "
                                                          "(crash, kill or out of memory)", "seconds": None}
                self.results[key][tool] = result
                self._write({"key": key, "tool": tool, "result": result})
        path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, entry: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def start(self, key: str, tool: str, meta: dict) -> None:
        self.meta[key] = meta
        self._write({"key": key, "tool": tool, "started": True, "meta": meta})

    def finish(self, key: str, tool: str, result: dict) -> None:
        self.results[key][tool] = result
        self._write({"key": key, "tool": tool, "result": result})


def load_rows(paths: list[Path]) -> list[dict]:
    """Rows (one per key, both tools) from row files, later files winning."""
    merged: dict[str, dict] = {}
    for path in paths:
        store = RowFile(path)
        for key, results in store.results.items():
            row = merged.setdefault(key, dict(store.meta.get(key, {"key": key})))
            row.update(store.meta.get(key, {}))
            for tool, result in results.items():
                row[tool] = result
    rows = [row for row in merged.values() if all(tool in row for tool in TOOLS)]
    for row in rows:  # rows written before "skip" existed: an order-2 pass whose order 2 did not run
        ga = row["gradaudit"]
        if (row.get("order") == 2 and ga.get("verdict") == "pass"
                and any(str(note).startswith("order 2") for note in ga.get("skipped", []))):
            row["gradaudit"] = ga | {"verdict": "skip"}
    return rows


# ---------------------------------------------------------------------------------------------- summary
DECIDED = ("pass", "fail")


def summarize(rows: list[dict]) -> dict:
    summary: dict[str, Any] = {"rows": len(rows), "by_order": dict(Counter(r["order"] for r in rows)),
                               "cases": len({r["case"] for r in rows}),
                               "targets": len({r.get("target") for r in rows})}
    for tool in TOOLS:
        verdicts = Counter(r[tool]["verdict"] for r in rows)
        exceptions = Counter(r[tool]["exception"].split(":", 1)[0] for r in rows
                             if r[tool].get("exception") and r[tool]["verdict"] not in DECIDED)
        times = [r[tool]["seconds"] for r in rows if isinstance(r[tool].get("seconds"), (int, float))]
        summary[tool] = {"verdicts": dict(verdicts), "exceptions": dict(exceptions),
                         "total_s": round(sum(times), 2), "median_s": round(statistics.median(times), 4) if times
                         else None}
    both = [r for r in rows if r["gradaudit"]["verdict"] in DECIDED and r["gradcheck"]["verdict"] in DECIDED]
    agree = [r for r in both if r["gradaudit"]["verdict"] == r["gradcheck"]["verdict"]]
    ga_only = [r for r in both if r["gradaudit"]["verdict"] == "fail" and r["gradcheck"]["verdict"] == "pass"]
    gc_only = [r for r in both if r["gradaudit"]["verdict"] == "pass" and r["gradcheck"]["verdict"] == "fail"]
    summary |= {"both_decided": len(both), "agree": len(agree), "both_pass": sum(
        r["gradaudit"]["verdict"] == "pass" for r in agree), "both_fail": sum(
        r["gradaudit"]["verdict"] == "fail" for r in agree), "gradaudit_only_failures": len(ga_only),
        "gradaudit_only_known_to_torch": sum(bool(r.get("torch_known")) for r in ga_only),
        "gradcheck_only_failures": len(gc_only),
        "gradaudit_crashes": sum(r["gradaudit"]["verdict"] == "crash" for r in rows),
        "gradaudit_fail_while_gradcheck_errors": sum(r["gradaudit"]["verdict"] == "fail" and
                                                     r["gradcheck"]["verdict"] not in DECIDED for r in rows)}
    warnings_seen = Counter(f["kind"] for r in rows for f in r["gradaudit"].get("findings", [])
                            if f.get("severity") == "warning")
    summary["gradaudit_warnings"] = dict(warnings_seen)
    return summary


def main_finding(result: dict, order: int) -> str:
    findings = [f for f in result.get("findings", []) if f.get("severity") == "error" and f.get("order") in
                (order, None)] or [f for f in result.get("findings", []) if f.get("severity") == "error"]
    if findings:
        f = findings[0]
        more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        return f"{f['kind']}: {f['message']}{more}"
    return result.get("exception") or ""


def render(summary: dict, rows: list[dict], title: str) -> str:
    ga, gc = summary["gradaudit"], summary["gradcheck"]
    pct = 100.0 * summary["agree"] / summary["both_decided"] if summary["both_decided"] else 0.0
    orders = ", ".join(f"order {o}: {n}" for o, n in sorted(summary["by_order"].items()))
    lines = [f"{title}: {summary['rows']} rows ({orders}); {summary['cases']} cases of {summary['targets']} "
             "ops/modules", ""]
    width = 34
    lines.append(f"{'':{width}}{'gradaudit':>12}{'gradcheck':>12}")
    for verdict in ("pass", "fail", "skip", "error", "crash", "timeout", "died", "build_error"):
        a, b = ga["verdicts"].get(verdict, 0), gc["verdicts"].get(verdict, 0)
        if a or b or verdict in ("pass", "fail", "error"):
            lines.append(f"{verdict:{width}}{a:>12}{b:>12}")
    lines.append(f"{'total time (s)':{width}}{ga['total_s']:>12.1f}{gc['total_s']:>12.1f}")
    lines.append(f"{'median time per row (s)':{width}}{(ga['median_s'] or 0):>12.4f}{(gc['median_s'] or 0):>12.4f}")
    lines += ["", f"agreement where both decided: {summary['agree']}/{summary['both_decided']} ({pct:.1f} %): "
              f"{summary['both_pass']} both pass, {summary['both_fail']} both fail",
              f"gradaudit-only failures: {summary['gradaudit_only_failures']} "
              f"({summary['gradaudit_only_known_to_torch']} where torch marks the test as failing/skipped)",
              f"gradcheck-only failures: {summary['gradcheck_only_failures']}",
              f"gradaudit fails where gradcheck raised: {summary['gradaudit_fail_while_gradcheck_errors']}"]
    for tool in TOOLS:
        exc = summary[tool]["exceptions"]
        lines.append(f"{tool} exceptions by type: " + (", ".join(f"{k} {v}" for k, v in
                                                                 sorted(exc.items(), key=lambda kv: -kv[1]))
                                                       or "none"))
    if summary["gradaudit_warnings"]:
        lines.append("gradaudit warnings: " + ", ".join(f"{k} {v}" for k, v in summary["gradaudit_warnings"].items()))

    crashes = [r for r in rows if r["gradaudit"]["verdict"] in ("crash", "died")]
    if crashes:
        lines += ["", f"!!! GRADAUDIT CRASHES (exceptions other than AuditError): {len(crashes)}"]
        for r in sorted(crashes, key=lambda r: r["key"]):
            lines.append(f"  {r['case']} o{r['order']}: {r['gradaudit'].get('exception')}")
            if r["gradaudit"].get("where"):
                lines.append(f"      {r['gradaudit']['where']}")
    ga_only = [r for r in rows if r["gradaudit"]["verdict"] == "fail" and r["gradcheck"]["verdict"] == "pass"]
    if ga_only:
        lines += ["", f"gradaudit-only failures ({len(ga_only)}):"]
        for r in sorted(ga_only, key=lambda r: r["key"]):
            known = f"  [torch knows: {', '.join(r['torch_known'])}]" if r.get("torch_known") else ""
            lines.append(f"  {r['case']} o{r['order']}: {main_finding(r['gradaudit'], r['order'])}{known}")
    gc_only = [r for r in rows if r["gradaudit"]["verdict"] == "pass" and r["gradcheck"]["verdict"] == "fail"]
    if gc_only:
        lines += ["", f"gradcheck-only failures ({len(gc_only)}):"]
        for r in sorted(gc_only, key=lambda r: r["key"]):
            known = f"  [torch knows: {', '.join(r['torch_known'])}]" if r.get("torch_known") else ""
            lines.append(f"  {r['case']} o{r['order']}: {r['gradcheck'].get('message')}{known}")
    errors = [r for r in rows if r["gradaudit"]["verdict"] in ("error", "timeout", "build_error")]
    if errors:
        lines += ["", f"gradaudit errors (AuditError, timeouts; {len(errors)}), by message:"]
        grouped = Counter(re.sub(r"[-+]?\d[\d.e+-]*", "N", r["gradaudit"].get("exception", ""))[:150]
                          for r in errors)
        for message, count in grouped.most_common():
            lines.append(f"  {count:4d}  {message}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- driving
def environment() -> dict:
    import torch
    import gradaudit

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return None
    return {"torch": torch.__version__, "gradaudit": gradaudit.__version__, "git_commit": git("rev-parse", "HEAD"),
            "git_dirty_files": (git("status", "--porcelain", "--untracked-files=no") or "").splitlines(),
            "python": sys.version.split()[0], "threads": torch.get_num_threads()}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise SystemExit(f"--shard must be K/N with 1 <= K <= N, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def default_rows_path(args, shard) -> Path:
    if args.json:
        return Path(args.json).with_suffix(".rows.jsonl")
    name = "opinfo_rows_modules" if args.modules else "opinfo_rows"
    if args.only:
        name += "_only-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", args.only)[:40]
    if args.flat:
        name += "_flat"
    name += f"_s{args.samples}_o{''.join(map(str, args.orders))}"
    if shard:
        name += f"_shard{shard[0]}of{shard[1]}"
    return RESULTS / f"{name}.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="regex searched in case names, e.g. '^(tanh|log)\\[' or 'fft'")
    parser.add_argument("--samples", type=int, default=2, help="first N samples per op/module (default 2)")
    parser.add_argument("--orders", default="1,2", help="comma-separated orders (default 1,2)")
    parser.add_argument("--limit-seconds", type=float, default=DEFAULT_LIMIT_S,
                        help=f"per tool and row, SIGALRM (default {DEFAULT_LIMIT_S:g}; 0: none)")
    parser.add_argument("--json", help="write settings, summary and every row here")
    parser.add_argument("--rows", help="the resumable JSONL row file (default under benchmarks/results/)")
    parser.add_argument("--modules", action="store_true", help="module_db instead of op_db")
    parser.add_argument("--both-modes", action="store_true",
                        help="modules: eval too where torch says train and eval do not differ")
    parser.add_argument("--shard", help="K/N: every N-th case starting at the K-th (1-based)")
    parser.add_argument("--flat", action="store_true",
                        help="hand gradaudit gradcheck's function of the requires_grad tensors only")
    parser.add_argument("--tools", default="gradaudit,gradcheck", help="run only some tools (rows stay partial)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--fresh", action="store_true", help="ignore (delete) the row file and start over")
    parser.add_argument("--summarize", nargs="+", metavar="ROWS", help="only print the table of these row files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-row progress")
    args = parser.parse_args(argv)
    try:
        args.orders = sorted({int(o) for o in args.orders.split(",") if o.strip()})
    except ValueError:
        parser.error("--orders must be comma-separated integers")
    if not args.orders or not set(args.orders) <= {1, 2}:
        parser.error("--orders must be among 1, 2")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    shard = parse_shard(args.shard)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not set(tools) <= set(TOOLS) or not tools:
        parser.error(f"--tools must be among {', '.join(TOOLS)}")

    if args.summarize:
        rows = load_rows([Path(p) for p in args.summarize])
        summary = summarize(rows)
        print(render(summary, rows, "summary of " + ", ".join(args.summarize)))
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str) + "\n")
        return 0

    import torch
    import gradaudit
    from gradaudit.suite.zoos import torch_ops as zoo_opinfo

    warnings.simplefilter("ignore")
    torch.set_num_threads(max(1, args.threads))
    try:
        cases = load_cases(args.modules, args.samples, args.only, shard, args.both_modes)
    except gradaudit.AuditError as exc:
        print(f"bench_opinfo: {exc}", file=sys.stderr)
        return 2
    if not cases:
        print(f"bench_opinfo: no case matches {args.only!r}", file=sys.stderr)
        return 2
    rows_path = Path(args.rows) if args.rows else default_rows_path(args, shard)
    if args.fresh and rows_path.exists():
        rows_path.unlink()
    store = RowFile(rows_path)
    units = [(case, order) for case in cases for order in args.orders if order in case.orders]
    unsupported = sum(1 for case in cases for order in args.orders if order not in case.orders)
    print(f"bench_opinfo: {len(cases)} cases, {len(units)} rows ({unsupported} (case, order) pairs without "
          f"double backward left out); rows in {rows_path}", file=sys.stderr)
    keys = []
    started_all = time.perf_counter()
    for index, (case, order) in enumerate(units, 1):
        key = row_key(case.name, order)
        keys.append(key)
        target = tag_value(case, "module:") if args.modules else tag_value(case, "opinfo:")
        meta = {"key": key, "case": case.name, "target": target, "order": order,
                "kind": "module" if args.modules else "op", "torch_known": zoo_opinfo.torch_known(case, order),
                "tags": [t for t in case.tags if isinstance(t, str) and not t.startswith(("module:", "opinfo:"))]}
        done = store.results.get(key, {})
        line = []
        for tool in tools:
            if tool in done:
                line.append(f"{SHORT[tool]}:{done[tool]['verdict']}(stored)")
                continue
            store.start(key, tool, meta)
            if tool == "gradaudit":
                result = run_gradaudit(case, order, args.modules, args.flat, args.limit_seconds)
            else:
                result = run_gradcheck(case, order, args.modules, args.limit_seconds)
            store.finish(key, tool, result)
            line.append(f"{SHORT[tool]}:{result['verdict']} {result.get('seconds') or 0:.2f}s")
        if not args.quiet:
            results = store.results.get(key, {})
            note = ""
            ga = results.get("gradaudit", {})
            if ga.get("verdict") in ("fail", "crash", "error", "timeout"):
                note = "  " + (main_finding(ga, order) or "")[:160]
            print(f"[{index}/{len(units)}] {case.name} o{order}  {'  '.join(line)}{note}", file=sys.stderr,
                  flush=True)
    selected = set(keys)
    rows = [row for row in load_rows([rows_path]) if row["key"] in selected]
    summary = summarize(rows) if rows else {}
    title = ("module_db" if args.modules else "op_db") + (f" (shard {args.shard})" if shard else "") + \
        (f" (--only {args.only})" if args.only else "")
    if rows:
        print(render(summary, rows, title))
    else:
        print("no complete rows (run with both tools to compare)")
    print(f"wall time {time.perf_counter() - started_all:.1f} s; rows in {rows_path}", file=sys.stderr)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("summarize",)}
        document = {"settings": settings, "environment": environment(), "summary": summary, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(document, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
