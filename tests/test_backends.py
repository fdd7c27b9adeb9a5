"""The backend contract: the shared loader (PreparedCase), declared capabilities, RNG snapshots, and entry
points checked on load."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

import fixtures as fx
from gradaudit.backends.base import Availability, Capabilities, Program
from gradaudit.backends.eager import EagerProgram
from gradaudit.case import Case, prepare_case
from gradaudit.errors import AuditError, Unsupported
from gradaudit.registry import get_backend, usable_backend
from gradaudit.rng import RngSnapshot, preserved_rng


# ------------------------------------------------------------------ the shared loader
def test_prepared_case_is_a_private_copy_with_leaves_in_order():
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    prepared = prepare_case(Case(model, (x,)), torch.float32)
    assert prepared.module is not model
    assert [leaf.name for leaf in prepared.leaves] == ["0.weight", "0.bias", "args[0]"]
    assert [leaf.kind for leaf in prepared.leaves] == ["parameter", "parameter", "input"]
    assert all(leaf.value.dtype == torch.float32 for leaf in prepared.leaves)
    assert model[0].weight.dtype == torch.float64  # the user's module is untouched
    out = prepared.call([leaf.value for leaf in prepared.leaves])
    assert torch.allclose(out.double(), model(x), atol=1e-5)


def test_prepared_case_initializes_lazy_modules_without_moving_the_rng():
    torch.manual_seed(0)
    model, x = nn.LazyLinear(2), torch.randn(3, 4)
    state = torch.get_rng_state()
    prepared = prepare_case(Case(model, (x,)))
    assert torch.equal(torch.get_rng_state(), state)
    assert prepared.module.weight.shape == (2, 4)
    assert isinstance(model.weight, nn.parameter.UninitializedParameter)  # the user's one stays lazy


@pytest.mark.parametrize("case, message", [
    (Case(torch.sin, (torch.arange(3),)), "nothing to differentiate"),
    (Case(torch.sin, (torch.tensor([float("nan")]),)), "contains NaN"),
])
def test_prepared_case_refuses_what_cannot_be_audited(case, message):
    with pytest.raises(AuditError, match=message):
        prepare_case(case)


def test_first_outputs_leaves_out_outputs_without_grad_and_names_a_broken_case():
    prepared = prepare_case(Case(lambda x: (x.sin(), x.detach()), (torch.randn(3),)))
    first = prepared.first_outputs()
    assert first.names == ["out[0]"] and first.keep == [True, False] and first.notes

    def broken(x):
        raise RuntimeError("boom\nmore")
    with pytest.raises(AuditError, match="calling the case raised RuntimeError: boom$"):
        prepare_case(Case(broken, (torch.randn(3),))).first_outputs()


def test_private_copy_casts_and_does_not_share_buffers():
    prepared = prepare_case(Case(nn.BatchNorm1d(3).double(), (torch.randn(4, 3, dtype=torch.float64),)))
    copy = prepared.private_copy(torch.float32)
    assert copy.module is not prepared.module
    assert copy.module.running_mean.dtype == torch.float32
    copy.call([leaf.value.float() for leaf in prepared.leaves])  # train mode: updates the copy's stats only
    assert torch.equal(prepared.module.running_mean, torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------------ capabilities
def test_eager_declares_itself_the_reference_and_a_batching_program():
    with get_backend("eager").load(Case(*fx.groupnorm_gelu())) as program:
        assert program.capabilities == Capabilities(reference=True, batch_evaluation=True)
        assert program.capabilities.autograd and program.supports_autograd
        assert program.notes == [] and program.fallback_counts == {}
        assert program.module is not None
        with pytest.raises(Unsupported):
            program.module_outputs()
        with pytest.raises(Unsupported):
            program.node_modules()
        point = [leaf.value for leaf in program.leaves]
        batched = program.evaluate_batch([point, point])
        assert len(batched) == 2 and all(torch.equal(a, b) for a, b in zip(batched[0], program(point)))


def test_each_backend_declares_what_it_can_do():
    from gradaudit.backends.onnx import OnnxProgram
    from gradaudit.backends.xla import XlaProgram  # (torch_xla itself is imported on first use only)

    assert XlaProgram.capabilities == Capabilities(fallback_ops=True)
    onnx = OnnxProgram.capabilities
    assert not (onnx.autograd or onnx.forward_ad or onnx.double_backward or onnx.reference)
    assert onnx.batch_evaluation and onnx.module_outputs and onnx.node_modules


def test_capabilities_are_frozen():
    with pytest.raises(Exception):
        Capabilities().autograd = False  # type: ignore[misc]


def test_a_program_implements_place_and_evaluate_only():
    class Doubling(Program):
        def __init__(self, case):
            super().__init__("cpu")
            self._load(case, None)

        def _place(self, prepared):
            self.leaves, self.output_names, self._call = prepared.leaves, ["out"], prepared.call

        def _evaluate(self, values):
            return [2 * self._call(values)]

    program = Doubling(Case(torch.sin, (torch.zeros(2),)))
    assert program.capabilities == Capabilities()
    assert program([torch.ones(2)])[0].tolist() == pytest.approx([2 * 0.8414709848] * 2)


def test_a_failed_load_closes_the_program():
    closed = []

    class Failing(EagerProgram):
        def close(self):
            closed.append(True)
            super().close()

    with pytest.raises(AuditError, match="contains NaN"):
        Failing(Case(torch.sin, (torch.tensor([float("nan")]),)), torch.device("cpu"), None)
    assert closed


# ------------------------------------------------------------------ rng
def test_rng_snapshot_rewinds_and_preserved_rng_restores():
    torch.manual_seed(1)
    with preserved_rng() as snapshot:
        first = torch.rand(3)
        snapshot.restore()
        assert torch.equal(torch.rand(3), first)
    assert torch.equal(torch.rand(3), first)  # given back: the caller draws what it would have drawn
    assert not RngSnapshot().cuda or torch.cuda.is_initialized()


# ------------------------------------------------------------------ entry points, checked on load
BAD_PLUGIN = """\
[gradaudit.backends]
broken_import = gradaudit_no_such_module:Backend
not_a_backend = os:getcwd

[gradaudit.zoos]
not_a_zoo = string:ascii_letters
"""


@pytest.fixture(scope="module")
def bad_plugin(tmp_path_factory) -> Path:
    """A folder holding the dist-info of a distribution 'badplugin' that registers broken entry points."""
    root = tmp_path_factory.mktemp("plugins")
    info = root / "badplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: badplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(BAD_PLUGIN)
    return root


def run_with(plugin_dir: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
               COLUMNS="400", GRADAUDIT_NO_FORK="1")
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=300)


def test_a_broken_entry_point_is_one_clear_error_naming_it_and_its_distribution(bad_plugin):
    script = textwrap.dedent("""
        from gradaudit.errors import AuditError
        from gradaudit.registry import get_backend, load_zoo_entry_point
        for load, name in [(get_backend, "broken_import"), (get_backend, "not_a_backend"),
                           (load_zoo_entry_point, "not_a_zoo")]:
            try:
                load(name)
            except AuditError as exc:
                print(exc)
            else:
                print("loaded", name)
        """)
    result = run_with(bad_plugin, "-c", script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert lines[0].startswith("backend 'broken_import' failed to load: ModuleNotFoundError")
    assert lines[1].startswith("backend 'not_a_backend' is broken: os:getcwd is a builtin_function_or_method, "
                               "not a subclass of gradaudit.backends.base.Backend")
    assert lines[2].startswith("zoo 'not_a_zoo' is broken: string:ascii_letters is a str")
    assert all("from distribution badplugin 0.1" in line for line in lines), lines


def test_gradaudit_backends_lists_a_broken_backend_with_its_reason(bad_plugin):
    quick = run_with(bad_plugin, "-m", "gradaudit", "backends")  # nothing loaded: what the files tell
    assert quick.returncode == 0, quick.stderr
    rows = {line.split()[0]: line for line in quick.stdout.splitlines() if line.strip()}
    assert " yes " in rows["eager"]
    assert " no " in rows["broken_import"] and "module gradaudit_no_such_module not found" in rows["broken_import"]
    assert " unknown " in rows["not_a_backend"] and "no class getcwd" in rows["not_a_backend"]
    assert "badplugin 0.1" in rows["broken_import"] and "badplugin 0.1" in rows["not_a_backend"]
    result = run_with(bad_plugin, "-m", "gradaudit", "backends", "--check")  # each one loaded: the whole truth
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "eager" in rows and " yes " in rows["eager"]
    assert " no " in rows["not_a_backend"] and "badplugin 0.1" in rows["not_a_backend"]
    assert "ModuleNotFoundError" in rows["broken_import"]


# ------------------------------------------------------------------ skip or error: by type
def test_the_suite_skips_what_a_backend_cannot_do_by_its_type():
    from gradaudit.suite.worker import classify

    assert classify(Unsupported("any words at all")) == ("skip", "any words at all")
    assert classify(AuditError("a real problem")) == ("error", "a real problem")
    # torch's own messages carry no type to tell them by: their text decides
    assert classify(RuntimeError("the derivative for 'foo' is not implemented"))[0] == "skip"
    assert classify(ValueError("not supported"))[0] == "error"


def test_a_backend_says_unsupported_for_what_it_cannot_do():
    pytest.importorskip("onnxruntime")
    from gradaudit.backends.onnx import OnnxBackend

    with pytest.raises(Unsupported, match="exports real tensors only"):
        OnnxBackend().load(Case(torch.abs, (torch.randn(3, dtype=torch.complex64),)))
    switched_off = Availability(False, "switched off")
    with mock.patch("gradaudit.backends.eager.EagerBackend.availability", return_value=switched_off):
        with pytest.raises(Unsupported, match="backend 'eager' is not usable here: switched off"):
            usable_backend("eager")
