"""Localization on forwards that create tensors (issue 23): the trace holds factory outputs, so torch detaches
them once more there than in a re-run; re-runs must still line up with the trace. Also NaN second derivatives
at removable singularities, an ldexp-like integer-power backward, and the text report's line when no node can
be named."""
import sys
from pathlib import Path

import pytest
import torch

import gradaudit
from gradaudit.analyzers.localize import PASSIVE_OPS, OpAligner, _Diverged, localize
from gradaudit.analyzers.trace import trace_program
from gradaudit.case import as_case
from gradaudit.registry import usable_backend
from gradaudit.renderers.text import render_text

sys.path.insert(0, str(Path(__file__).parent))
import localize_cases as cases  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def localized(factory, order=1, kind=None, **check):
    """Check without localization, then localize the first finding of ``kind`` on a freshly loaded program."""
    kind = kind or ("faulty_backward" if order == 1 else "faulty_double_backward")
    report = gradaudit.check(factory(), order=order, localize=False, **check)
    finding = next((f for f in report.findings if f.kind == kind), None)
    assert finding is not None, report
    with usable_backend("eager").load(as_case(factory())) as program:
        localize(program, finding, seed=0)
    return finding


# ---------------------------------------------------------------- the cause, and the alignment
def test_the_trace_sees_one_more_detach_after_a_factory():
    """The cause: the recorder holds the factory's output, so torch's factory binding detaches it once more."""
    with usable_backend("eager").load(as_case(cases.after_arange())) as program:
        names = [op.name for op in trace_program(program).ops]
    assert names[:2] == ["aten.arange", "aten.detach"]


class _Op:
    def __init__(self, name):
        self.name, self.module, self.source = name, "blocks.1", "model.py:7"


def test_aligner_skips_passive_ops_on_either_side_and_names_a_real_divergence():
    aligner = OpAligner([_Op(n) for n in ["aten.arange", "aten.detach", "aten.add", "aten.mul"]])
    assert [aligner.index_of(n) for n in ["aten.arange", "aten.add", "aten.detach", "aten.mul"]] == [0, 2, None, 3]
    aligner.finish()
    other = OpAligner([_Op(n) for n in ["aten.add", "aten.mul", "aten.tanh"]])
    other.index_of("aten.add")
    with pytest.raises(_Diverged, match=r"aten.sub, the trace had aten.mul \(op 1, module blocks.1, model.py:7\)"):
        other.index_of("aten.sub")
    short = OpAligner([_Op(n) for n in ["aten.add", "aten.tanh", "aten.detach"]])
    short.index_of("aten.add")
    with pytest.raises(_Diverged, match="stopped after 1 ops; the trace went on with 1 more, from aten.tanh"):
        short.finish()
    assert "aten.detach" in PASSIVE_OPS and "aten.add" not in PASSIVE_OPS


# ---------------------------------------------------------------- factories before a planted fault
def test_after_arange_names_the_wrong_function():
    finding = localized(cases.after_arange)
    assert (finding.node, finding.op) == ("ScaleByTwoWrongBackward", "ScaleByTwoWrong")
    assert finding.details["localization"]["method"] == "bisection"
    assert finding.details["localization"]["confirmed"]


def test_after_empty_like_names_the_wrong_function():
    finding = localized(cases.after_empty_like)
    assert (finding.node, finding.op) == ("SinIntoFreshBufferBackward", "SinIntoFreshBuffer")
    assert finding.source.startswith("localize_cases.py:")


def test_after_zeros_names_the_ldexp_like_op():
    finding = localized(cases.after_zeros)
    assert finding.op == "gradaudit_h2.ldexp_int" and "ldexp_int" in finding.node


def test_ldexp_like_regression_is_localized():
    """torch 2.13's ldexp bug (2**e in integer arithmetic: the gradient of a negative exponent's term is 0),
    planted in a torch.library op with the regression's backward formula."""
    finding = localized(cases.ldexp_like_regression)
    assert finding.op == "gradaudit_h2.ldexp_int"
    assert finding.details["localization"]["path"][-1] == finding.node


# ---------------------------------------------------------------- NaN second derivatives
def test_sinc_nan_double_backward_at_zero_is_localized():
    finding = localized(cases.sinc_at_zero, order=2)
    assert (finding.node, finding.op) == ("SincBackward0", "aten.sinc")
    probe = finding.details["localization"]["local_probes"]["SincBackward0"]
    assert probe["failed"] and not probe["kink"]  # smooth at 0: no nearby pass excuses it


def test_sinc_wrong_forward_over_reverse_at_zero_is_localized():
    finding = localized(cases.sinc_at_zero, order=2, kind="faulty_forward_ad")
    assert finding.order == 2 and finding.node == "SincBackward0"


def test_a_kink_is_still_not_blamed_on_relu():
    """The removable-singularity rule keeps the kink rule: relu probed exactly at 0 is non-smooth there."""
    from gradaudit.analyzers.local_probe import local_probe
    x = torch.tensor([0.0, 0.3, -0.2], dtype=torch.float64)
    result = local_probe(lambda xs: [torch.relu(xs[0])], [x], "reverse", torch.Generator().manual_seed(0))
    assert not result.failed


# ---------------------------------------------------------------- a whole transformer
def test_transformer_with_a_wrong_layer_is_localized():
    finding = localized(cases.tiny_transformer, mode="fast", probes=1)
    assert (finding.node, finding.op, finding.module) == ("WrongSiLUBackward", "WrongSiLU", "layers.1.mlp.1")
    localization = finding.details["localization"]
    assert localization["confirmed"] and localization["seconds"] < 10


def test_transformer_without_a_wrong_layer_passes():
    model, args = cases.tiny_transformer(wrong_layer=-1)
    assert gradaudit.check(model, args, mode="fast", probes=1, localize=False).ok


# ---------------------------------------------------------------- when no node can be named
def test_text_report_says_why_localization_named_no_node():
    report = gradaudit.check(cases.hooked_autotuned(), localize=True)
    finding = next(f for f in report.findings if f.kind == "faulty_backward")
    assert finding.node is None
    localization = finding.details["localization"]
    assert "another path" in localization["not_localized"]
    lines = [line for line in render_text(report).splitlines() if "not localized:" in line]
    assert len(lines) >= 1
    assert "none of the" in lines[0] and "failed its local probe test" in lines[0]
    assert "re-runs of the forward took another path" in lines[0]


def test_a_kernel_writing_outside_dispatch_is_localized_by_probing_nodes():
    """The Function's output is last seen at the factory's detach, which a re-run does not dispatch: the re-run
    says so instead of silently not perturbing it, and probing nodes one by one names the Function."""
    finding = localized(cases.kernel_wrapper)
    assert (finding.node, finding.op) == ("KernelWrittenSinBackward", "KernelWrittenSin")
    localization = finding.details["localization"]
    assert localization["method"] == "local_probe" and "never dispatched aten.detach" in localization["rerun"]
