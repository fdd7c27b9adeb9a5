"""A case that is one op (a bare function, a loss module without submodules) has no submodule to blame, so a
divergence between a backend and eager float64 must be named by that op, on ONNX, XLA and compile, and its
message must name the backend program as the user knows it (not "the cpu program")."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import gradaudit

sys.path.insert(0, str(Path(__file__).parent / "data"))
import single_op_targets as targets  # noqa: E402
from compile_targets import faulty_softsign_backward, softsign  # noqa: E402


def error_findings(report) -> list:
    return [f for f in report.findings if f.severity == "error"]


# ------------------------------------------------------------------------------------------------------ onnx
@pytest.mark.slow  # 12 s on the loaded 2-core machine: the first export pays the exporter's start-up
def test_multilabel_margin_loss_onnx_divergence_names_its_op():
    """A real exporter bug (torch 2.9.1): the exported MultiLabelMarginLoss reads targets past the -1 that ends a
    row's list. The exported graph is the op's decomposition (Gather, Where, ...), so the op is eager's."""
    report = gradaudit.compare(*targets.multilabel_margin_loss(), backends=["onnx"])
    found = error_findings(report)
    assert [f.kind for f in found] == ["forward_divergence"], report
    assert "multilabel_margin_loss" in (found[0].op or "") + (found[0].node or ""), found[0]
    assert found[0].node == "MultilabelMarginLossBackward0", found[0]
    assert found[0].details["localization"]["method"] == "the case's only op"


def test_onnx_backward_divergence_of_one_op_is_named_and_says_onnx():
    report = gradaudit.check(*targets.onnx_backward_single_op(), backend="onnx")
    found = error_findings(report)
    assert [f.kind for f in found] == ["backward_divergence"], report
    assert found[0].op == "aten.tanh" and found[0].node == "TanhBackward0", found[0]
    assert "derivatives of the ONNX export run in onnxruntime differ" in found[0].message
    assert "cpu program" not in found[0].message


def test_a_multi_op_function_is_not_blamed_on_one_op():
    """Two ops and no module: nothing finer than the graph's op list can be said without more evidence."""
    def two_ops(x):
        y = torch.sin(x)
        return torch.tanh(y) * 1.5 if torch.onnx.is_in_onnx_export() else torch.tanh(y)

    report = gradaudit.compare(two_ops, (targets._randn(3, 4),), backends=["onnx"])
    found = error_findings(report)
    assert found and found[0].kind == "forward_divergence", report
    assert found[0].op is None and "Mul" in found[0].details["exported_ops"], found[0]


# ------------------------------------------------------------------------------------------------------- xla
def test_xla_backward_divergence_of_one_function_names_it():
    report = gradaudit.compare(*targets.xla_backward_single_op(), backends=["xla"])
    found = error_findings(report)
    assert [f.kind for f in found] == ["backward_divergence"], report
    assert found[0].node == "WrongOnXlaSquareBackward" and found[0].op == "WrongOnXlaSquare", found[0]
    assert found[0].message.startswith("[xla] gradients of torch-xla disagree with eager float64"), found[0].message


@pytest.mark.parametrize("target, op", [("xla_forward_single_op", "aten.sinh"),
                                        ("xla_forward_extra_op", "aten.mul")])
def test_xla_forward_divergence_of_one_op_names_it(target, op):
    """The op XLA runs in place of eager's (sinh for tanh), or the one it runs beyond eager's (a scaling)."""
    report = gradaudit.compare(*getattr(targets, target)(), backends=["xla"])
    found = error_findings(report)
    assert [f.kind for f in found] == ["forward_divergence"], report
    assert found[0].op == op, found[0]


# --------------------------------------------------------------------------------------------------- compile
@pytest.fixture
def planted_decomposition():
    """softsign's faulty backward decomposition in inductor's table while the test runs, then gone."""
    from torch._inductor import decomposition

    op = torch.ops.gradaudit_compile_test.softsign_backward.default
    decomposition.decompositions[op] = faulty_softsign_backward
    decomposition.fast_random_decomps.cache_clear()
    try:
        yield
    finally:
        del decomposition.decompositions[op]
        decomposition.fast_random_decomps.cache_clear()
        torch._dynamo.reset()


def test_compile_backward_divergence_of_one_op_names_it(planted_decomposition, monkeypatch):
    monkeypatch.setenv("GRADAUDIT_COMPILE_BACKEND", "aot_eager_decomp_partition")
    report = gradaudit.compare(softsign, (targets._randn(4, 6),), backends=["compile"])
    found = error_findings(report)
    assert [f.kind for f in found] == ["backward_divergence"], report
    assert found[0].op == "gradaudit_compile_test.softsign", found[0]
    assert "gradients of torch.compile (aot_eager_decomp_partition) disagree" in found[0].message
