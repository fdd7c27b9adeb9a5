"""The torch.ops / torch.modules zoos built from PyTorch's OpInfo and ModuleInfo databases, and the op-database
benchmark's harness."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradaudit
from gradaudit.suite.zoos import torch_ops as zoo_opinfo
from gradaudit.suite.zoos import zoo_names

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("expecttest", reason="the opinfo extra is not installed")
pytest.importorskip("hypothesis", reason="the opinfo extra is not installed")


def ops(*names: str, samples: int = 2):
    wanted = set(names)
    return zoo_opinfo.opinfo_zoo(samples, only=lambda name: name in wanted)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.requires_grad == b.requires_grad and torch.equal(a.detach(), b.detach()))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def test_the_zoos_are_registered():
    assert {"torch.ops", "torch.modules"} <= set(zoo_names())


def test_named_ops_load_with_names_orders_and_tags():
    cases = ops("sin", "cat", "max.reduction_with_dim", "nn.functional.hardsigmoid", "cov")
    names = [c.name for c in cases]
    assert {"sin[sample 0]", "cat[sample 0]", "cat[sample 1]", "max.reduction_with_dim[sample 1]",
            "nn.functional.hardsigmoid[sample 0]"} <= set(names), names
    by_name = {c.name: c for c in cases}
    assert by_name["sin[sample 0]"].orders == (1, 2)
    assert by_name["nn.functional.hardsigmoid[sample 0]"].orders == (1,)  # torch has no double backward for it
    assert by_name["sin[sample 0]"].module_type == "sin"
    assert "sample:1" in by_name["cat[sample 1]"].tags
    # torch's own known failures of its gradient tests are recorded, per order
    cov = by_name["cov[sample 0]"]
    assert any(t.startswith("torch-xfail:test_fn_grad") for t in cov.tags), cov.tags
    assert zoo_opinfo.torch_known(cov, 1) and all("gradgrad" not in t for t in zoo_opinfo.torch_known(cov, 1))
    assert zoo_opinfo.torch_known(by_name["sin[sample 0]"], 1) == []


def test_a_case_keeps_torchs_requires_grad_flags_and_is_deterministic():
    case = ops("addcmul")[0]
    rng = torch.get_rng_state()
    fn, args, kwargs = case.build()
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    tensors = [x for x in args if isinstance(x, torch.Tensor)]
    assert tensors and all(t.requires_grad for t in tensors)
    again = case.build()
    assert same(args, again[1]) and same(kwargs, again[2])
    torch.manual_seed(123)  # another global RNG state: same sample
    assert same(args, case.build()[1])


@pytest.mark.parametrize("name", ["sin[sample 0]", "cat[sample 0]", "nn.functional.linear[sample 0]"])
def test_known_good_op_cases_pass_gradaudit(name):
    case = next(c for c in ops(name.split("[")[0]) if c.name == name)
    for order in case.orders:
        report = gradaudit.check(case.build(), order=order)
        assert report.ok, report


def test_the_worker_rebuilds_an_op_case_by_name():
    from gradaudit.suite.worker import run_job

    records = []
    run_job({"zoo": "torch.ops", "case": "cat[sample 1]", "backend": "eager", "orders": [1, 2]}, records.append)
    assert [(r["order"], r["status"]) for r in records] == [(1, "pass"), (2, "pass")], records
    assert records[0]["module"] == "cat"


def test_module_zoo_cases_build_and_pass():
    cases = zoo_opinfo.module_zoo(1, only=lambda name: name in {"nn.Linear", "nn.BatchNorm1d"})
    names = {c.name for c in cases}
    assert {"nn.Linear[train][sample 0]", "nn.BatchNorm1d[train][sample 0]", "nn.BatchNorm1d[eval][sample 0]"} <= names
    linear = next(c for c in cases if c.name == "nn.Linear[train][sample 0]")
    module, args, kwargs = linear.build()
    assert isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float64
    assert gradaudit.check(module, args, kwargs).ok


def test_a_missing_extra_is_one_line_naming_the_extra():
    code = ("import sys; sys.modules['expecttest'] = None\n"
            "from gradaudit import AuditError\n"
            "from gradaudit.suite.zoos import load_zoo\n"
            "try:\n    load_zoo('torch.ops')\nexcept AuditError as exc:\n    print(exc)\nelse:\n    print('LOADED')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert "\n" not in message and "gradaudit[opinfo]" in message and "expecttest" in message, message


def test_a_fresh_process_draws_the_same_samples_and_keeps_its_argv_rng_and_flags():
    """Importing torch.testing._internal parses sys.argv, seeds torch and freezes torch.backends flags: none
    of that may leak; and a worker process rebuilding a case by name gets the same tensors as this one."""
    code = ("import sys, torch; sys.argv = ['prog', '--seed', 'not-a-number', '--help']; torch.manual_seed(7)\n"
            "state = torch.get_rng_state()\n"
            "from gradaudit.suite.zoos.torch_ops import op_case, find_op\n"
            "fn, args, kw = op_case(find_op('atan2'), 1)\n"
            "assert sys.argv == ['prog', '--seed', 'not-a-number', '--help'], sys.argv\n"
            "assert torch.equal(torch.get_rng_state(), state)\n"
            "assert not torch.backends.flags_frozen()\n"
            "print(repr(args[0].sum().item()), repr(args[1].sum().item()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-500:] + out.stderr[-2000:]
    _, args, _ = zoo_opinfo.op_case(zoo_opinfo.find_op("atan2"), 1)
    assert out.stdout.split()[-2:] == [repr(args[0].sum().item()), repr(args[1].sum().item())]


@pytest.mark.slow
def test_bench_opinfo_runs_a_subset_and_resumes(tmp_path):
    rows, report = tmp_path / "rows.jsonl", tmp_path / "out.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_opinfo.py"), "--only", r"^(sin|cat)\[sample 0\]$",
               "--rows", str(rows), "--json", str(report), "-q"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "agreement where both decided: 4/4" in first.stdout, first.stdout
    document = json.loads(report.read_text())
    assert document["summary"]["rows"] == 4 and {r["case"] for r in document["rows"]} == {"sin[sample 0]",
                                                                                         "cat[sample 0]"}
    lines = len(rows.read_text().splitlines())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and len(rows.read_text().splitlines()) == lines  # nothing re-run


def test_suite_records_say_what_torch_already_knows():
    from gradaudit.suite.worker import run_job

    records = []
    run_job({"zoo": "torch.ops", "case": "as_strided_scatter[sample 0]", "backend": "eager", "orders": [1]},
            records.append)
    (record,) = records
    assert record["status"] == "fail" and record["reason"].startswith("(torch knows) "), record["reason"]
    assert any(tag.startswith("torch-") for tag in record["torch_known"])
    records = []
    run_job({"zoo": "torch.ops", "case": "nn.functional.hardsigmoid[sample 0]", "backend": "eager",
             "orders": [1]}, records.append)
    assert records[0]["status"] == "fail" and "torch_known" not in records[0]  # new: torch does not know
