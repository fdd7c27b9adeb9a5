"""Cross-backend audits against eager float64 on CPU: real torch-xla (PJRT CPU) and onnxruntime."""
import pytest
import torch
from click.testing import CliRunner

import fixtures as fx
import gradaudit
from gradaudit.cli import main
from gradaudit.pipeline import Listener, listening

pytest.importorskip("torch_xla", reason="torch-xla is not installed")


def errors(report):
    return [f for f in report.findings if f.severity == "error"]


def test_correct_module_agrees_across_eager_and_xla_at_order_2():
    report = gradaudit.compare(*fx.groupnorm_gelu(), backends=["eager", "xla"], order=2)
    assert report.ok, report
    assert {c.backend for c in report.checks} == {"eager", "xla"}
    assert {c.order for c in report.checks} == {0, 1, 2}


def test_float32_xla_is_judged_within_float32_noise():
    report = gradaudit.compare(*fx.conv_batchnorm(), backends=["xla"], dtype="float32", order=2)
    assert report.ok, report


def test_random_ops_cannot_be_compared_across_backends():
    with pytest.raises(gradaudit.AuditError, match="random numbers .*bernoulli.* eval mode"):
        gradaudit.compare(*fx.dropout_mlp(), backends=["xla"])


def test_backward_divergence_is_localized_to_its_node_and_module():
    report = gradaudit.compare(*fx.xla_backward_divergence(), backends=["eager", "xla"])
    found = errors(report)
    assert [f.kind for f in found] == ["backward_divergence"], report
    assert found[0].details["backend"] == "xla"
    assert found[0].node == "WrongOnXlaSquareBackward" and found[0].module == "1", found[0]
    assert all(c.ok for c in report.checks if c.backend == "eager")


def test_compare_publishes_its_verdict_before_localizing():
    """As in ``check``: the listener hears the verdict (the divergence found, not yet placed), then the
    localization, which places it in the same report."""
    heard = []

    class Recorder(Listener):
        def phase(self, name):
            heard.append(name)

        def verdict(self, report):
            heard.append(("verdict", [f.node for f in errors(report)]))

    with listening(Recorder()):
        report = gradaudit.compare(*fx.xla_backward_divergence(), backends=["xla"])
    assert heard == ["the checks", ("verdict", [None]), "localization (xla)"]
    assert errors(report)[0].node == "WrongOnXlaSquareBackward"


def test_forward_divergence_is_localized_to_the_op_that_causes_it():
    report = gradaudit.compare(*fx.xla_forward_divergence(), backends=["xla"])
    forward = [f for f in errors(report) if f.kind == "forward_divergence"]
    assert forward, report
    assert forward[0].module == "1" and forward[0].op == "aten.mul", forward[0]


def test_kink_conventions_are_not_backend_bugs():
    x = fx.randn(8)
    x[2], x[5] = 6.0, 0.0
    report = gradaudit.compare(torch.nn.functional.relu6, (x,), backends=["xla"])
    assert not [f for f in errors(report) if f.kind == "backward_divergence"], report


def test_onnx_export_divergence_is_found_by_compare():
    pytest.importorskip("onnxruntime")
    report = gradaudit.compare(*fx.export_divergent_activation(dtype=torch.float32), backends=["onnx"])
    kinds = {f.kind for f in errors(report)}
    assert "forward_divergence" in kinds, report
    assert next(f for f in errors(report) if f.kind == "forward_divergence").module == "1"


def test_compare_cli_exit_codes():
    runner = CliRunner()
    bad = runner.invoke(main, ["compare", "tests/fixtures.py:xla_backward_divergence", "--backends", "xla"])
    assert bad.exit_code == 1, bad.output
    good = runner.invoke(main, ["compare", "tests/fixtures.py:plain_function", "--backends", "xla", "--json", "-"])
    assert good.exit_code == 0, good.output
    unknown = runner.invoke(main, ["compare", "tests/fixtures.py:plain_function", "--backends", "nope"])
    assert unknown.exit_code == 2
