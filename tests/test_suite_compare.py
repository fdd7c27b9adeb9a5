"""Cross-backend suites (``--compare``) and shards (``--shard K/N``): the plan, real workers on eager and XLA,
resuming from a results directory, the CLI."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradaudit.cli.suite import suite_command
from gradaudit.errors import AuditError
from gradaudit.suite.plan import parse_shard, plan
from gradaudit.suite.runner import run_suite
from gradaudit.suite.worker import run_job
from test_suite import counting_command, launches

DATA = Path(__file__).parent / "data"
PLANTED = f"{DATA / 'suite_zoo.py'}:zoo"
TIMEOUT = 60  # seconds per job: a worker that imports torch_xla starts in ~10 s on a busy 2-core machine

# A case that computes something else on an XLA device than on the CPU: a real divergence from eager float64.
DEVICE_ZOO = '''
import torch
from gradaudit.suite.zoos import ZooCase


def _x():
    return torch.linspace(-1, 1, 6, dtype=torch.float64)


def same():
    return torch.sin, (_x(),)


def device_dependent():
    return (lambda x: x * 2 if x.device.type == "cpu" else x * 3), (_x(),)


def zoo():
    return [ZooCase("same", same), ZooCase("device_dependent", device_dependent, orders=(1,))]
'''


@pytest.fixture(scope="module")
def device_zoo(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("zoo") / "device_zoo.py"
    path.write_text(DEVICE_ZOO)
    return f"{path}:zoo"


def cells(records) -> dict:
    return {(r["case"], r["backend"], r["order"]): r["status"] for r in records}


# ---------------------------------------------------------------------------------------------- the plan
def test_compare_plans_no_job_for_the_eager_reference_unless_it_is_alone():
    both = plan(PLANTED, ["eager", "xla"], (1,), compare=True)
    alone = plan(PLANTED, ["xla"], (1,), compare=True)
    assert both.jobs == alone.jobs
    assert {job["backend"] for job in both.jobs} == {"xla"} and all(job["compare"] for job in both.jobs)
    eager = plan(PLANTED, ["eager"], (1,), compare=True)
    assert {job["backend"] for job in eager.jobs} == {"eager"} and all(job["compare"] for job in eager.jobs)
    checked = plan(PLANTED, ["eager", "xla"], (1,))
    assert {job["backend"] for job in checked.jobs} == {"eager", "xla"}
    assert not any("compare" in job for job in checked.jobs)


def test_shards_partition_the_selected_cases_in_order():
    everything = [c.name for c in plan(PLANTED, ["eager"], (1,)).cases]
    assert len(everything) == 5
    for count in (1, 2, 3, 5):
        shards = [[c.name for c in plan(PLANTED, ["eager"], (1,), shard=f"{k}/{count}").cases]
                  for k in range(1, count + 1)]
        assert sorted(sum(shards, [])) == sorted(everything)  # the union is everything, nothing twice
        assert sum(len(s) for s in shards) == len(everything)
        for k, shard in enumerate(shards, 1):
            assert shard == [name for i, name in enumerate(everything) if i % count == k - 1]
    # after --only: positions among the selected cases
    assert [c.name for c in plan(PLANTED, ["eager"], (1,), only="good,segfault,hang", shard="2/2").cases] == \
        ["segfault"]
    assert [job["case"] for job in plan(PLANTED, ["eager"], (1,), shard=(2, 3)).jobs] == ["faulty", "hang"]


def test_bad_shards_are_one_line_errors():
    assert parse_shard(None) is None and parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "x", "1/0", "1/2/3", "-1/2", "a/b"):
        with pytest.raises(AuditError, match="shard must be K/N"):
            parse_shard(bad)
    with pytest.raises(AuditError, match="holds no case"):
        plan(PLANTED, ["eager"], (1,), only="good", shard="2/2")
    runner = CliRunner()
    for bad in ("0/2", "3/2", "x"):
        result = runner.invoke(suite_command, [PLANTED, "--shard", bad])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and "shard" in lines[0], (bad, result.output)


# ---------------------------------------------------------------------------------------------- the worker
def test_a_compare_job_compares_against_eager_float64():
    job = {"zoo": PLANTED, "case": "good", "backend": "eager", "orders": [1, 2], "dtype": "float32",
           "compare": True}
    records = []
    run_job(job, records.append)
    assert [(r["order"], r["status"], r.get("compare")) for r in records] == [(1, "pass", True), (2, "pass", True)]
    assert {c["method"] for c in records[1]["report"]["checks"]} == {"forward_parity", "backend_parity"}
    assert {c["order"] for c in records[1]["report"]["checks"] if c["method"] == "backend_parity"} == {1, 2}
    checked = []
    run_job(job | {"compare": False}, checked.append)
    assert "backend_parity" not in {c["method"] for c in checked[0]["report"]["checks"]}
    assert "compare" not in checked[0]


# ---------------------------------------------------------------------------------------------- suites
@pytest.mark.slow
def test_compare_suite_on_xla_finds_a_planted_divergence(device_zoo, tmp_path):
    json_path = tmp_path / "suite.json"
    result = CliRunner().invoke(suite_command, [device_zoo, "--backends", "eager,xla", "--compare", "--orders", "1,2",
                                                "--jobs-per-worker", "2", "--timeout", str(TIMEOUT), "--json",
                                                str(json_path), "-q"])
    assert result.exit_code == 1, result.output
    records = json.loads(json_path.read_text())["records"]
    assert cells(records) == {("same", "xla", 1): "pass", ("same", "xla", 2): "pass",
                              ("device_dependent", "xla", 1): "fail", ("device_dependent", "xla", 2): "skip"}
    assert all(r["compare"] is True for r in records)
    failed = next(r for r in records if r["status"] == "fail")
    assert failed["reason"].startswith("forward_divergence") and failed["report"]["backend"] == "xla"
    assert {c["method"] for c in failed["report"]["checks"]} >= {"forward_parity"}


def test_compare_records_resume_only_as_compare_records(tmp_path):
    count, results = tmp_path / "launches.txt", tmp_path / "results"

    def suite(compare: bool) -> list[dict]:
        return run_suite(PLANTED, ["eager"], (1,), timeout=TIMEOUT, results_dir=results, only="good,faulty",
                         command=counting_command(count), compare=compare, jobs_per_worker=2)
    first = suite(compare=True)
    assert cells(first) == {("good", "eager", 1): "pass", ("faulty", "eager", 1): "pass"}  # eager == eager
    assert launches(count) == 1 and all(r["compare"] and not r.get("resumed") for r in first)
    again = suite(compare=True)
    assert launches(count) == 1 and all(r["compare"] and r["resumed"] for r in again)
    assert cells(again) == cells(first)
    checked = suite(compare=False)  # the stored compare records are not check records: it runs
    assert launches(count) == 2 and not any(r.get("resumed") or r.get("compare") for r in checked)
    assert cells(checked) == {("good", "eager", 1): "pass", ("faulty", "eager", 1): "fail"}
    keys = [json.loads(p.read_text())["key"] for p in results.glob("*.json")]
    assert sorted(bool(k.get("compare")) for k in keys) == [False, False, True, True]
    assert suite(compare=True)[0]["resumed"] and launches(count) == 2
