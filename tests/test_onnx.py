"""The onnx backend against real onnxruntime: exported graphs, float32 audits, batching, parity, localization."""
import copy

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import fixtures  # noqa: E402
import gradaudit  # noqa: E402
from gradaudit.backends.onnx import (OnnxBackend, intermediate_values, module_outputs,  # noqa: E402
                                     node_modules)
from gradaudit.case import as_case  # noqa: E402
from gradaudit.errors import AuditError  # noqa: E402
from gradaudit.core.parity import forward_checks  # noqa: E402
from gradaudit.registry import usable_backend  # noqa: E402


def load(factory_result, dtype=torch.float32):
    return OnnxBackend().load(as_case(factory_result), "cpu", dtype)


def eager64(factory_result):
    return usable_backend("eager").load(as_case(factory_result), "cpu", torch.float64)


def errors(report):
    return [f for f in report.findings if f.severity == "error"]


@pytest.fixture(scope="module")
def divergent():
    """The activation that differs under torch.onnx.is_in_onnx_export(), loaded once for several tests."""
    case = fixtures.export_divergent_activation()
    return case, load(case)


def test_registered_and_available():
    backend = usable_backend("onnx")
    assert backend.name == "onnx" and backend.default_device() == "cpu"
    availability = backend.availability()
    assert availability.usable and "onnxruntime" in availability.reason and "cpu" in availability.devices


@pytest.mark.parametrize("factory", ["mlp", "small_conv", "groupnorm_gelu", "plain_function"])
def test_correct_cases_pass_in_float32(factory):
    report = gradaudit.check(*getattr(fixtures, factory)(), backend="onnx", dtype="float32")
    assert report.ok, str(report)
    assert not errors(report)
    assert report.backend == "onnx" and report.dtype == "float32"
    assert report.stats["compilations"] == 1


def test_export_only_code_path_fails_on_onnx_and_passes_on_eager():
    model, args = fixtures.export_divergent_activation()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    onnx_report = gradaudit.check(model, args, backend="onnx", dtype="float32")
    assert not onnx_report.ok
    kinds = {f.kind for f in onnx_report.findings}
    assert {"forward_divergence", "backward_divergence"} <= kinds, onnx_report
    finding = next(f for f in onnx_report.findings if f.kind == "backward_divergence")
    assert finding.module == "1" and finding.op is not None, finding  # the export-only activation
    assert gradaudit.check(model, args, backend="eager").ok
    # the user's module and RNG are untouched
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.dtype == torch.float64 for p in model.parameters())


def test_leaves_and_outputs_match_eager(divergent):
    case, program = divergent
    reference = eager64(case)
    assert [(leaf.name, leaf.kind, tuple(leaf.value.shape)) for leaf in program.leaves] == \
        [(leaf.name, leaf.kind, tuple(leaf.value.shape)) for leaf in reference.leaves]
    assert program.output_names == reference.output_names
    assert not program.supports_autograd and not program.supports_forward_ad
    assert not program.supports_double_backward
    outputs = program([leaf.value for leaf in program.leaves])
    assert all(o.dtype == torch.float32 and not o.requires_grad for o in outputs)


def forward_parity(program, reference):
    checks, _ = forward_checks(program, reference)
    return max(c.max_abs_err for c in checks), all(c.ok for c in checks)


def test_forward_parity_catches_the_export_path(divergent):
    case, program = divergent
    max_abs, ok = forward_parity(program, eager64(case))
    assert not ok and max_abs > 1e-2
    good = fixtures.mlp()
    max_abs, ok = forward_parity(load(good), eager64(good))
    assert ok and max_abs < 1e-5


def test_evaluate_batch_is_one_session_run_with_identical_results(divergent):
    _, program = divergent
    x = [leaf.value for leaf in program.leaves]
    generator = torch.Generator().manual_seed(0)
    points = [[xi + 0.01 * torch.randn(xi.shape, generator=generator) for xi in x] for _ in range(24)]
    runs, evals = program.session_runs, program.stats.forward_evals
    batched = program.evaluate_batch(points)
    assert program.session_runs - runs == 1 and program.stats.forward_evals - evals == 1
    single = [program(point) for point in points]
    assert program.session_runs - runs == 25
    assert all(torch.equal(a, b) for bo, so in zip(batched, single) for a, b in zip(bo, so))


def test_localization_points_at_the_diverging_module(divergent):
    case, program = divergent
    rows = node_modules(program)
    assert {module for _, _, module, _ in rows} >= {"0", "1", "2"}
    sigmoid = [row for row in rows if row[1] == "Sigmoid"]
    assert sigmoid and sigmoid[0][2] == "1" and sigmoid[0][3].startswith("fixtures.py:")
    exported = module_outputs(program)
    model, (x,) = case
    eager = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: eager.__setitem__(name, out))
             for name, m in model.named_modules() if name]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert torch.allclose(exported["0"].double(), eager["0"], atol=1e-5)
    assert not torch.allclose(exported["1"].double(), eager["1"], atol=1e-2)
    values = intermediate_values(program)
    assert len(values) > 3


@pytest.mark.slow
def test_float64_falls_back_to_float32_when_a_kernel_is_missing():
    program = load(fixtures.groupnorm_gelu(), dtype=None)  # Conv has no float64 kernel in onnxruntime
    assert program.precision == torch.float32 and program.dtype == torch.float32
    assert program.stats.compilations == 2
    assert program.notes and "float64" in program.notes[0]["reason"] and "Conv" in program.notes[0]["reason"]
    plain = load(fixtures.plain_function(), dtype=None)  # elementwise ops do have float64 kernels
    assert plain.precision == torch.float64 and not plain.notes
    max_abs, ok = forward_parity(plain, eager64(fixtures.plain_function()))
    assert ok and max_abs < 1e-12


def test_train_mode_dropout_is_refused_in_one_line():
    with pytest.raises(AuditError, match="random.*Dropout.*eval") as caught:
        load(fixtures.dropout_mlp(torch.float32))
    assert "\n" not in str(caught.value)
    model, args = fixtures.dropout_mlp(torch.float32)
    assert gradaudit.check(model.eval(), args, backend="onnx").ok


def test_export_failure_is_one_line_audit_error():
    def data_dependent(x):
        return x.sin() if x.sum() > 0 else x.cos()

    with pytest.raises(AuditError, match="torch.onnx.export failed") as caught:
        load((data_dependent, (torch.randn(3),)))
    assert "\n" not in str(caught.value)
    with pytest.raises(AuditError, match="complex"):
        load(fixtures.complex_function())
