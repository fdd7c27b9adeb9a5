"""Audit suites: the torch.nn zoo, isolated workers (crashes, hangs), executors, resuming, the CLI."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gradaudit.errors import AuditError, Unsupported
from gradaudit.suite.executors import make_batches, run_batch_in_subprocess, run_job_in_subprocess
from gradaudit.suite.runner import run_suite
from gradaudit.cli.suite import suite_command
from gradaudit.suite.worker import classify, run_job
from gradaudit.suite.zoos import ZooCase, load_zoo, module_types
from gradaudit.suite.zoos.torch_nn import torch_nn_zoo

DATA = Path(__file__).parent / "data"
PLANTED = f"{DATA / 'suite_zoo.py'}:zoo"
TIMEOUT = 25  # seconds per job: a worker starts in ~5 s on a busy 2-core machine


def counting_command(count_file: Path) -> list[str]:
    """The worker, but each launch appends a line to count_file first."""
    code = ("import sys; open(sys.argv[1], 'a').write('launch\\n'); "
            "from gradaudit.suite.worker import main; sys.exit(main())")
    return [sys.executable, "-c", code, str(count_file)]


def launches(count_file: Path) -> int:
    return len(count_file.read_text().splitlines()) if count_file.exists() else 0


def statuses(records) -> dict:
    return {(r["case"], r["backend"], r["order"]): r["status"] for r in records}


# A zoo for batched workers: passing cases around a case that exits, one that segfaults and one that hangs.
BATCH_ZOO = """
import ctypes
import os
import time

import torch

from gradaudit.suite.zoos import ZooCase


def passes():
    return torch.sin, (torch.linspace(-1, 1, 5, dtype=torch.float64),)


def exits():
    os._exit(3)


def segfaults():
    ctypes.string_at(0)


def hangs():
    time.sleep(3600)


def zoo():
    return [ZooCase("first", passes), ZooCase("exits", exits), ZooCase("second", passes),
            ZooCase("segfaults", segfaults), ZooCase("third", passes), ZooCase("hangs", hangs),
            ZooCase("fourth", passes)]
"""


@pytest.fixture(scope="module")
def batch_zoo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("batch") / "batch_zoo.py"
    path.write_text(BATCH_ZOO)
    return f"{path}:zoo"


# ---------------------------------------------------------------------------------------------- the zoo
def test_torch_nn_zoo_covers_at_least_60_module_types():
    cases = torch_nn_zoo()
    types = module_types(cases)
    assert len(types) >= 60, sorted(types)
    assert all(hasattr(torch.nn, t) for t in types), sorted(t for t in types if not hasattr(torch.nn, t))
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    for expected in ("Linear", "Conv2d", "ConvTranspose3d", "BatchNorm2d[train]", "BatchNorm2d[eval]", "LSTM",
                     "MultiheadAttention[train]", "TransformerDecoderLayer[eval]", "Embedding[sparse]",
                     "CrossEntropyLoss", "Dropout[train]", "CTCLoss"):
        assert expected in names


def test_zoo_factories_build_small_float64_cases():
    for case in load_zoo("torch.nn"):
        built = case.factory()
        assert isinstance(built, tuple) and len(built) in (2, 3), case.name
        module, args = built[0], built[1]
        floats = [a for a in torch.utils._pytree.tree_leaves((args, built[2:])) if isinstance(a, torch.Tensor)
                  and a.is_floating_point()]
        if isinstance(module, torch.nn.Module):
            floats += [p for p in module.parameters() if not isinstance(p, torch.nn.parameter.UninitializedParameter)]
        assert floats and all(t.dtype == torch.float64 for t in floats), case.name
        assert sum(t.numel() for t in floats) < 2000, case.name
        assert set(case.orders) <= {1, 2}


def test_load_zoo_from_a_file_in_both_forms_and_bad_specs():
    cases = load_zoo(PLANTED)
    assert [c.name for c in cases] == ["good", "faulty", "segfault", "abort", "hang"]
    pairs = load_zoo(f"{DATA / 'suite_zoo.py'}:pairs")
    assert [(c.name, c.orders) for c in pairs] == [("good", (1, 2)), ("faulty", (1, 2))]
    assert all(isinstance(c, ZooCase) for c in pairs)
    for bad, words in [("no.such.zoo", "unknown zoo"), (f"{DATA / 'nope.py'}:zoo", "no such file"),
                       (f"{DATA / 'suite_zoo.py'}:missing", "no attribute"),
                       (f"{DATA / 'suite_zoo.py'}:good", "expected a list")]:
        with pytest.raises(AuditError, match=words):
            load_zoo(bad)


# ---------------------------------------------------------------------------------------------- the worker
def test_worker_records_pass_fail_and_classifies_errors():
    records = []
    run_job({"zoo": PLANTED, "case": "good", "backend": "eager", "orders": [1, 2]}, records.append)
    assert [(r["order"], r["status"]) for r in records] == [(1, "pass"), (2, "pass")]
    assert records[0]["report"]["ok"] is True and records[0]["seconds"] > 0
    records = []
    run_job({"zoo": PLANTED, "case": "faulty", "backend": "eager", "orders": [1, 2]}, records.append)
    assert [(r["order"], r["status"]) for r in records] == [(1, "fail"), (2, "skip")]
    assert "faulty_backward" in records[0]["reason"]
    records = []
    run_job({"zoo": PLANTED, "case": "good", "backend": "nonesuch", "order": 1}, records.append)
    assert records[0]["status"] == "error" and "unknown backend" in records[0]["reason"]
    assert classify(Unsupported("backend 'xla' is not usable here: torch-xla is not installed"))[0] == "skip"
    assert classify(RuntimeError("derivative for aten::foo_backward is not implemented"))[0] == "skip"
    assert classify(ValueError("boom\nmore")) == ("error", "ValueError: boom")


def test_a_segfaulting_worker_becomes_an_error_record():
    job = {"zoo": PLANTED, "case": "segfault", "backend": "eager", "orders": [1, 2]}
    records = run_job_in_subprocess(job, timeout=TIMEOUT)
    assert [(r.order, r.status, r.reason) for r in records] == [
        (1, "error", "crashed: signal 11 (SIGSEGV)"), (2, "error", "crashed: signal 11 (SIGSEGV)")]


def test_a_worker_runs_a_list_of_jobs_in_order_and_refuses_bad_input():
    jobs = [{"zoo": PLANTED, "case": name, "backend": "eager", "orders": [1]} for name in ("good", "faulty")]
    done = subprocess.run([sys.executable, "-m", "gradaudit.suite.worker"], input=json.dumps(jobs),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["case"], r["status"]) for r in records] == [("good", "pass"), ("faulty", "fail")]
    for bad in ("[]", '[{"zoo": "z.py:zoo"}]', '"text"'):
        done = subprocess.run([sys.executable, "-m", "gradaudit.suite.worker"], input=bad, capture_output=True,
                              text=True, timeout=TIMEOUT)
        assert done.returncode == 2 and "bad job" in done.stderr and not done.stdout, bad


def test_batches_keep_the_order_and_one_backend_each():
    jobs = [{"case": c, "backend": b} for c in "abc" for b in ("eager", "xla")]
    batches = make_batches(jobs, 2)
    assert [[(j["case"], j["backend"]) for j in batch] for batch in batches] == [
        [("a", "eager"), ("b", "eager")], [("c", "eager")], [("a", "xla"), ("b", "xla")], [("c", "xla")]]
    assert make_batches(jobs, 1) == [[job] for job in jobs[::2] + jobs[1::2]]


# ---------------------------------------------------------------------------------------------- batches
@pytest.mark.slow
def test_a_crash_an_exit_or_a_hang_in_a_batch_costs_only_that_job(batch_zoo, tmp_path):
    count, settled = tmp_path / "launches.txt", {}
    records = run_suite(batch_zoo, ["eager"], (1, 2), executor="serial", timeout=TIMEOUT, jobs_per_worker=7,
                        command=counting_command(count),
                        progress=lambda record, done, total: settled.setdefault(record["case"], time.monotonic()))
    got = {(r["case"], r["order"]): (r["status"], r["reason"]) for r in records}
    for name in ("first", "second", "third", "fourth"):
        assert got[(name, 1)] == ("pass", None) and got[(name, 2)] == ("pass", None), name
    for order in (1, 2):
        assert got[("exits", order)] == ("error", "the factory of exits called os._exit(3)")
        assert got[("segfaults", order)] == ("error", "crashed: signal 11 (SIGSEGV)")
        assert got[("hangs", order)] == ("error", f"timed out after {TIMEOUT} s")
    assert launches(count) == 3  # the batch, then its rest after the segfault, then after the hang
    # Each job is settled as it finishes, not when its batch does: the hang's timeout separates them.
    assert settled["hangs"] - settled["third"] >= TIMEOUT - 1
    assert settled["fourth"] > settled["hangs"]


@pytest.mark.slow
def test_batched_workers_give_the_same_records_as_one_job_per_worker(batch_zoo, tmp_path):
    def suite(jobs_per_worker: int, count: Path) -> list[dict]:
        return run_suite(batch_zoo, ["eager"], (1, 2), workers=2, timeout=TIMEOUT, only="first,second,third,segf",
                         jobs_per_worker=jobs_per_worker, command=counting_command(count))
    one, three = suite(1, tmp_path / "one.txt"), suite(3, tmp_path / "three.txt")
    assert launches(tmp_path / "one.txt") == 4
    assert launches(tmp_path / "three.txt") == 2  # [first, second, segfaults], [third]
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "report")} for r in one]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "report")} for r in three]
    assert statuses(one)[("segfaults", "eager", 2)] == "error"
    assert [r["report"]["checks"] for r in one if r["report"]] == [r["report"]["checks"] for r in three if r["report"]]


def test_run_batch_in_subprocess_streams_each_job_and_keeps_run_job_in_subprocess():
    jobs = [{"zoo": PLANTED, "case": name, "backend": "eager", "orders": [1]}
            for name in ("good", "segfault", "faulty")]
    finished = []
    for job, records in run_batch_in_subprocess(jobs, timeout=TIMEOUT):
        finished.append((job["case"], [(r.status, r.reason) for r in records]))
    assert finished[:2] == [("good", [("pass", None)]), ("segfault", [("error", "crashed: signal 11 (SIGSEGV)")])]
    (status, reason), = finished[2][1]
    assert finished[2][0] == "faulty" and status == "fail" and reason.startswith("faulty_backward")
    assert [r.status for r in run_job_in_subprocess(jobs[0], timeout=TIMEOUT)] == ["pass"]


# ---------------------------------------------------------------------------------------------- suites
@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """The planted zoo on eager, orders 1 and 2, two workers at once, results stored."""
    root = tmp_path_factory.mktemp("suite")
    count = root / "launches.txt"
    seen = []
    records = run_suite(PLANTED, ["eager"], (1, 2), executor="local", workers=2, timeout=TIMEOUT,
                        results_dir=root / "results", command=counting_command(count),
                        progress=lambda record, done, total: seen.append((done, total)))
    return {"records": records, "root": root, "count": count, "progress": seen}


@pytest.mark.slow
def test_crashes_and_hangs_become_errors_while_the_rest_passes(planted_run):
    records = planted_run["records"]
    assert len(records) == 10
    got = {(r["case"], r["order"]): (r["status"], r["reason"]) for r in records}
    assert got[("good", 1)][0] == "pass" and got[("good", 2)][0] == "pass"
    assert got[("faulty", 1)][0] == "fail" and "faulty_backward" in got[("faulty", 1)][1]
    assert got[("faulty", 2)] == ("skip", "order 2 is not supported by this case (orders [1])")
    for order in (1, 2):
        assert got[("segfault", order)] == ("error", "crashed: signal 11 (SIGSEGV)")
        assert got[("abort", order)] == ("error", "crashed: signal 6 (SIGABRT)")
        assert got[("hang", order)] == ("error", f"timed out after {TIMEOUT} s")
    assert launches(planted_run["count"]) == 5  # one worker per case; orders share it
    assert sorted(planted_run["progress"]) == [(i, 10) for i in range(1, 11)]
    good = next(r for r in records if r["case"] == "good" and r["order"] == 2)
    assert {c["order"] for c in good["report"]["checks"]} >= {1, 2}


@pytest.mark.slow
def test_resume_skips_jobs_already_done(planted_run):
    count, results = planted_run["count"], planted_run["root"] / "results"
    before = launches(count)
    again = run_suite(PLANTED, ["eager"], (1, 2), workers=2, timeout=TIMEOUT, results_dir=results,
                      command=counting_command(count))
    assert launches(count) == before  # nothing ran again
    assert statuses(again) == statuses(planted_run["records"])
    assert all(r.get("resumed") for r in again)
    # Another seed is another key: the job runs again.
    other = run_suite(PLANTED, ["eager"], (1,), workers=2, timeout=TIMEOUT, results_dir=results,
                      command=counting_command(count), only="good", seed=1)
    assert launches(count) == before + 1 and [r["status"] for r in other] == ["pass"]
    stored = list(results.glob("*.json"))
    assert len(stored) == 11
    assert json.loads(stored[0].read_text())["key"]["torch"] == torch.__version__.split("+")[0]


@pytest.mark.slow
def test_editing_the_zoo_file_runs_its_jobs_again(tmp_path):
    zoo_file = tmp_path / "my_zoo.py"
    zoo_file.write_text((DATA / "suite_zoo.py").read_text())
    count, results = tmp_path / "launches.txt", tmp_path / "results"

    def again() -> list[dict]:
        return run_suite(f"{zoo_file}:zoo", ["eager"], (1,), timeout=TIMEOUT, results_dir=results,
                         command=counting_command(count), only="good")
    assert [r["status"] for r in again()] == ["pass"] and launches(count) == 1
    assert again()[0].get("resumed") and launches(count) == 1  # unchanged: the stored record
    zoo_file.write_text(zoo_file.read_text() + "\n# edited\n")
    rerun = again()
    assert launches(count) == 2 and not rerun[0].get("resumed")  # edited: the job ran again
    assert len(list(results.glob("*.json"))) == 2


def test_records_round_trip_and_tolerate_hand_written_ones():
    from gradaudit.suite.records import SuiteRecord, SuiteStatus

    job = {"zoo": "z.py:zoo", "case": "c", "backend": "eager", "seed": 3, "dtype": None}
    record = SuiteRecord.of_job(job, 2, "fail", "why", {"ok": False}, 1.5, module="Linear")
    data = record.to_dict()
    assert list(data) == ["zoo", "case", "backend", "order", "seed", "dtype", "module", "status", "reason",
                          "report", "seconds"]
    assert data["status"] == "fail" and json.loads(json.dumps(data)) == data
    assert SuiteRecord.from_dict(data) == record
    odd = SuiteRecord.from_dict({"case": "x", "status": "weird", "order": "?", "seconds": float("nan")})
    assert (odd.status, odd.order, odd.seconds, odd.backend) == (SuiteStatus.ERROR, 1, 0.0, "?")
    assert "torch_known" not in data and "resumed" not in data


@pytest.mark.slow
def test_suite_runs_a_zoo_subset_on_eager_xla_and_onnx():
    records = run_suite("torch.nn", ["eager", "xla", "onnx"], (1, 2), workers=2, timeout=120,
                        only="GELU[tanh]")
    expected = {("GELU[tanh]", b, o): "pass" for b in ("eager", "xla", "onnx") for o in (1, 2)}
    expected[("GELU[tanh]", "onnx", 2)] = "skip"  # no double backward in an exported graph: never a silent pass
    assert statuses(records) == expected
    assert {r["report"]["backend"] for r in records} == {"eager", "xla", "onnx"}


@pytest.mark.slow
def test_serial_executor_gives_the_same_records(planted_run):
    records = run_suite(PLANTED, ["eager"], (1,), executor="serial", timeout=TIMEOUT, only="good,faulty")
    expected = {k: v for k, v in statuses(planted_run["records"]).items() if k[0] in ("good", "faulty") and k[2] == 1}
    assert statuses(records) == expected


@pytest.mark.slow
def test_ray_executor_gives_the_same_statuses_as_local(planted_run):
    pytest.importorskip("ray")
    records = run_suite(PLANTED, ["eager"], (1, 2), executor="ray", timeout=TIMEOUT, only="good,faulty,segfault")
    expected = {k: v for k, v in statuses(planted_run["records"]).items() if k[0] in ("good", "faulty", "segfault")}
    assert statuses(records) == expected
    assert next(r for r in records if r["case"] == "segfault")["reason"] == "crashed: signal 11 (SIGSEGV)"


def test_ray_executor_without_ray_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(AuditError, match="needs Ray"):
        run_suite(PLANTED, ["eager"], (1,), executor="ray", only="good")


@pytest.mark.slow
def test_ray_executor_streams_the_jobs_of_a_batch(batch_zoo):
    pytest.importorskip("ray")
    records = run_suite(batch_zoo, ["eager"], (1,), executor="ray", workers=1, timeout=TIMEOUT, jobs_per_worker=5,
                        only="first,exits,second,segfaults,third")
    assert [(r["case"], r["status"]) for r in records] == [
        ("first", "pass"), ("exits", "error"), ("second", "pass"), ("segfaults", "error"), ("third", "pass")]
    assert records[3]["reason"] == "crashed: signal 11 (SIGSEGV)"


def test_bad_suite_arguments():
    for kwargs, words in [({"executor": "dask"}, "unknown executor"), ({"orders": (3,)}, "orders"),
                          ({"only": "nothing-matches"}, "no case"), ({"timeout": 0}, "timeout"),
                          ({"jobs_per_worker": 0}, "jobs per worker"), ({"shard": "3/2"}, "shard")]:
        with pytest.raises(AuditError, match=words):
            run_suite(PLANTED, ["eager"], **kwargs)


# ---------------------------------------------------------------------------------------------- the CLI
def test_cli_bad_zoo_and_options_exit_2():
    runner = CliRunner()
    result = runner.invoke(suite_command, ["no.such.zoo"])
    assert result.exit_code == 2 and "unknown zoo" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(suite_command, [PLANTED, "--orders", "1,x"])
    assert result.exit_code == 2 and "orders" in result.output
    result = runner.invoke(suite_command, [PLANTED, "--executor", "dask"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_cli_exit_codes_and_reports_from_stored_results(planted_run, tmp_path):
    """Same settings as the planted run, so every record comes from its results directory."""
    runner = CliRunner()
    results = str(planted_run["root"] / "results")
    before = launches(planted_run["count"])
    json_path, junit = tmp_path / "suite.json", tmp_path / "suite.xml"
    result = runner.invoke(suite_command, [PLANTED, "--backends", "eager", "--orders", "1,2", "--results-dir",
                                           results, "--json", str(json_path), "--junit", str(junit),
                                           "--html", str(tmp_path / "suite.html")])
    assert result.exit_code == 1, result.output
    assert "2 pass, 1 fail, 1 skip, 6 error" in result.output
    records = json.loads(json_path.read_text())["records"]
    assert statuses(records) == statuses(planted_run["records"])
    assert junit.read_text().lstrip().startswith("<?xml") and (tmp_path / "suite.html").exists()
    result = runner.invoke(suite_command, [PLANTED, "--only", "good", "--results-dir", results])
    assert result.exit_code == 0, result.output
    assert launches(planted_run["count"]) == before
