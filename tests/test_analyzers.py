"""Analyzers: graph, localization of planted faults, static hazards, graph export and the ``graph`` command."""
import shutil
import sys
from pathlib import Path
from xml.etree import ElementTree

import networkx as nx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradaudit
from gradaudit.cli.graph import graph_command, static_findings
from gradaudit.analyzers.trace import build_graph
from gradaudit.analyzers.render import to_dot, to_svg, write_graph
from gradaudit.analyzers.localize import locate, localize
from gradaudit.case import as_case
from gradaudit.registry import usable_backend
from gradaudit.report import Finding

sys.path.insert(0, str(Path(__file__).parent))
import fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
import bad_gelu  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops run fastest on one thread (and do not fight a busy machine for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load(target):
    return usable_backend("eager").load(as_case(target))


def localized(factory, order=1, kind=None):
    """Check a planted fault without localization, then localize its finding on a freshly loaded program."""
    report = gradaudit.check(factory(), order=order, localize=False)
    findings = [f for f in report.findings if f.kind == (kind or ("faulty_backward" if order == 1 else
                                                                   "faulty_double_backward"))]
    assert findings, report
    finding = findings[0]
    with load(factory()) as program:
        localize(program, finding, seed=0)
    assert "error" not in finding.details["localization"], finding.details["localization"]
    return finding


# ---------------------------------------------------------------- graph
def test_graph_names_nodes_modules_sources_and_leaves():
    with load(bad_gelu.case()) as program:
        graph = build_graph(program)
    by_name = {d["name"]: d for _, d in graph.nodes(data=True)}
    gelu = by_name["BadGeluBackward"]
    assert (gelu["op"], gelu["module"], gelu["source"]) == ("BadGelu", "act", "bad_gelu.py:35")
    assert {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "args[0]"} <= set(by_name)
    assert by_name["fc1.weight"]["kind"] == "leaf"
    addmm = [d for _, d in graph.nodes(data=True) if d["name"] == "AddmmBackward0"]
    assert sorted(d["module"] for d in addmm) == ["fc1", "fc2"]
    assert all(d["op"] == "aten.addmm" for d in addmm)
    assert nx.is_directed_acyclic_graph(graph)
    # edges follow the gradient: output -> fc2 -> BadGelu -> fc1 -> x
    ids = {d["name"]: n for n, d in graph.nodes(data=True) if d["name"] in ("out", "BadGeluBackward", "args[0]")}
    assert nx.has_path(graph, ids["out"], ids["BadGeluBackward"])
    assert nx.has_path(graph, ids["BadGeluBackward"], ids["args[0]"])


def test_custom_op_is_one_node():
    with load(fixtures.custom_op_fault()) as program:
        graph = build_graph(program)
    nodes = [d for _, d in graph.nodes(data=True) if d["kind"] == "node"]
    assert [d["op"] for d in nodes if "softsign" in d["name"]] == ["gradaudit_tests.softsign"]
    assert len(nodes) == 2


def test_tracing_leaves_program_and_rng_alone():
    case = fixtures.dropout_mlp()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with load(case) as program:
        before = [leaf.value.clone() for leaf in program.leaves]
        finding = Finding("faulty_backward", "planted", order=1, wrt="0.weight")
        localize(program, finding)
        assert all(torch.equal(a, leaf.value) for a, leaf in zip(before, program.leaves))
        assert all(not leaf.value.requires_grad for leaf in program.leaves)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in program.module.modules())
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------- localization of planted faults
def test_single_element_fault_is_localized():
    finding = localized(fixtures.single_element_fault)
    assert finding.node == "OneWrongElementBackward" and finding.op == "OneWrongElement"
    assert finding.source.startswith("fixtures.py:")
    loc = finding.details["localization"]
    assert loc["path"][0] == "out" and loc["path"][-1] == "OneWrongElementBackward"
    assert loc["checked"] and loc["confirmed"]


def test_wrong_parameter_gradient_blames_the_function():
    finding = localized(fixtures.wrong_parameter_gradient)
    assert finding.wrt == "fc2.bias"
    assert finding.node == "FnBackward" and finding.op == "Fn"
    assert finding.module is None  # called in the top module's forward


def test_custom_op_fault_is_localized():
    finding = localized(fixtures.custom_op_fault)
    assert finding.op == "gradaudit_tests.softsign"
    assert "softsign" in finding.node


def test_bad_gelu_is_localized_to_module_act():
    finding = localized(bad_gelu.case)
    assert (finding.node, finding.op, finding.module, finding.source) == (
        "BadGeluBackward", "BadGelu", "act", "bad_gelu.py:35")
    assert finding.details["localization"]["path"] == ["out", "AddmmBackward0", "BadGeluBackward"]


def test_detached_second_order_is_localized():
    finding = localized(fixtures.detached_second_order, order=2)
    assert finding.node == "DetachedBackwardBackward" and finding.op == "DetachedBackward"


def test_ctx_intermediate_second_order_is_localized():
    finding = localized(fixtures.ctx_intermediate_second_order, order=2)
    assert finding.node == "CtxIntermediateBackward" and finding.op == "CtxIntermediate"


def test_wrong_forward_ad_is_localized():
    finding = localized(fixtures.wrong_forward_ad, kind="faulty_forward_ad")
    assert finding.node == "WrongJvpSquareCtxBackward" and finding.op == "WrongJvpSquareCtx"
    assert finding.details["localization"]["method"] == "forward_tangents"


@pytest.mark.parametrize("wrt", ["args[0]", "blocks.2.fc1.weight", "blocks.16.norm.bias"])
def test_deep_residual_network_blames_block_17_only(wrt):
    with load(fixtures.residual_net(24, faulty=17)) as program:
        finding = Finding("faulty_backward", "planted", order=1, wrt=wrt)
        before = program.stats.forward_evals
        result = locate(program, finding)
        nodes = [d for _, d in result.graph.nodes(data=True) if d["kind"] == "node"]
        assert len(nodes) > 150
        info = result.trace.infos[result.culprit]
        assert (info.name, info.module) == ("SlopedTanhBackward", "blocks.17.act")
        assert result.details["candidates"] == ["SlopedTanhBackward"]
        assert result.details["method"] == "bisection"
        # bisection: far fewer node tests than nodes
        assert len(result.details["checked"]) < 16
        assert program.stats.forward_evals - before < 80


def test_deep_residual_network_correct_blocks_are_not_blamed_by_local_probes():
    with load(fixtures.residual_net(6, faulty=4)) as program:
        result = locate(program, Finding("faulty_double_backward", "planted", order=2, wrt="args[0]"))
    # the only node whose backward is wrongly differentiated is the faulty tanh (its backward is wrong, so its
    # derivative is too); no built-in node fails its local probe
    assert result.trace.infos[result.culprit].module == "blocks.4.act"


@pytest.mark.slow
def test_deep_residual_network_from_a_real_check():
    case = fixtures.residual_net(12, faulty=8)
    report = gradaudit.check(case, localize=False, mode="fast", probes=1)
    finding = next(f for f in report.findings if f.kind == "faulty_backward")
    with load(fixtures.residual_net(12, faulty=8)) as program:
        localize(program, finding)
    assert (finding.node, finding.module) == ("SlopedTanhBackward", "blocks.8.act")


def test_other_kinds_are_left_alone():
    finding = Finding("nondifferentiable_point", "kink", order=1, wrt="args[0]", severity="warning")
    with load(fixtures.relu_at_zeros()) as program:
        localize(program, finding)
    assert finding.node is None and "localization" not in finding.details


# ---------------------------------------------------------------- hazards
class Once(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad * 2


class Hazardous(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.dead, self.cut = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x):
        y = self.used(x)
        detached = self.cut(x).detach()
        ranks = y.argmax(-1)
        stepped = torch.round(y) + y.floor()
        as_int = y.to(torch.int64)
        saved = y.exp()
        saved.add_(1)
        return Once.apply(y) + detached + stepped + saved, ranks, as_int


def hazards_of(model, *args):
    with load((model, args)) as program:
        return static_findings(program)


def test_hazards_are_found():
    findings = hazards_of(Hazardous().double(), torch.randn(2, 3, dtype=torch.float64))
    assert all(f.kind == "hazard" and f.severity == "warning" for f in findings)
    by_kind = {}
    for f in findings:
        by_kind.setdefault(f.details["hazard"], []).append(f)
    dead = {f.details.get("leaf_kind") and f.message.split()[1] for f in by_kind["no_gradient"]}
    assert dead == {"dead.weight", "dead.bias", "cut.weight", "cut.bias"}
    ops = {f.op for f in by_kind["nondifferentiable_op"]}
    assert {"aten.argmax", "aten.round", "aten.floor", "aten._to_copy", "detach"} <= ops
    assert all(f.source and f.source.startswith("test_analyzers.py:") for f in by_kind["nondifferentiable_op"])
    assert [f.op for f in by_kind["once_differentiable"]] == ["Once"]
    assert [f.node for f in by_kind["inplace_on_saved"]] == ["ExpBackward0"]
    assert "nondeterministic_backward_op" not in by_kind  # CPU run


def test_clean_model_has_no_hazards():
    assert hazards_of(*fixtures.transformer_layer()[:1], *fixtures.transformer_layer()[1]) == []
    case = fixtures.groupnorm_gelu()
    assert hazards_of(case[0], *case[1]) == []


def written_base_of_a_no_grad_view(x):
    with torch.no_grad():
        buffer = torch.zeros(4, dtype=x.dtype)
        head = buffer[:2]  # noqa: F841  (its grad_fn cannot be read once the base is written with grad on)
    buffer.add_(x)
    return buffer * 2


def test_a_view_whose_grad_fn_torch_refuses_to_read_does_not_stop_the_scan():
    """torchdiffeq's adjoint solver makes such views; the scan used to fail on them ("the case raised")."""
    assert hazards_of(written_base_of_a_no_grad_view, torch.randn(4, dtype=torch.float64)) == []


def test_nondeterministic_ops_listed_for_cuda_only():
    from gradaudit.analyzers.trace import trace_program
    from gradaudit.analyzers.hazards import find_hazards
    embedding = nn.Embedding(10, 4).double()
    with load((lambda ids, w: nn.functional.embedding(ids, w).sum(1), (torch.tensor([[1, 2], [3, 1]]),
                                                                       embedding.weight.detach()))) as program:
        trace = trace_program(program)
    assert not [f for f in find_hazards(trace, "cpu") if f.details["hazard"] == "nondeterministic_backward_op"]
    cuda = [f for f in find_hazards(trace, "cuda:0") if f.details["hazard"] == "nondeterministic_backward_op"]
    assert [f.node for f in cuda] == ["EmbeddingBackward0"]


# ---------------------------------------------------------------- export and command
def test_exports_highlight_the_culprit(tmp_path):
    with load(bad_gelu.case()) as program:
        result = locate(program, Finding("faulty_backward", "x", order=1, wrt="fc1.weight"))
    graph = result.graph
    for suffix in ("graphml", "dot", "svg"):
        write_graph(graph, tmp_path / f"g.{suffix}", culprit=result.culprit)
    loaded = nx.read_graphml(tmp_path / "g.graphml")
    culprits = [d["name"] for _, d in loaded.nodes(data=True) if d.get("culprit")]
    assert culprits == ["BadGeluBackward"]
    dot = (tmp_path / "g.dot").read_text()
    assert dot.startswith("digraph") and "#e74c3c" in dot and "BadGeluBackward" in dot
    svg = ElementTree.parse(tmp_path / "g.svg").getroot()
    assert svg.tag.endswith("svg")
    assert "#e74c3c" in (tmp_path / "g.svg").read_text()
    assert to_dot(graph) and to_svg(graph)


def test_graph_command(tmp_path):
    runner = CliRunner()
    out = tmp_path / "graph.svg"
    result = runner.invoke(graph_command, [str(ROOT / "examples/bad_gelu.py") + ":case", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "BadGeluBackward" in result.output and "act" in result.output
    assert out.read_text().startswith("<svg")
    result = runner.invoke(graph_command, [str(ROOT / "examples/bad_gelu.py") + ":fixed", "--out",
                                           str(tmp_path / "g.dot")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(graph_command, [str(ROOT / "examples/bad_gelu.py") + ":case", "--out",
                                           str(tmp_path / "g.txt")])
    assert result.exit_code == 2
    result = runner.invoke(graph_command, ["no/such/file.py:case", "--out", str(tmp_path / "g.svg")])
    assert result.exit_code == 2


def test_svg_without_graphviz_is_the_builtin_drawing_and_png_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADAUDIT_NO_DOT", "1")
    runner = CliRunner()
    case = str(ROOT / "examples/bad_gelu.py") + ":case"
    result = runner.invoke(graph_command, [case, "--out", str(tmp_path / "g.svg")])
    assert result.exit_code == 1, result.output
    svg = (tmp_path / "g.svg").read_text()
    assert svg.startswith("<svg") and "Generated by graphviz" not in svg and "#e74c3c" in svg
    result = runner.invoke(graph_command, [case, "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "install graphviz" in result.output
    assert not (tmp_path / "g.png").exists()


def test_a_failing_dot_falls_back_to_the_builtin_svg(tmp_path, monkeypatch, caplog):
    from gradaudit.analyzers import render

    graph = nx.DiGraph([("out:y", "n0"), ("n0", "leaf:x")])
    for node, kind in (("out:y", "output"), ("n0", "node"), ("leaf:x", "leaf")):
        graph.nodes[node].update(kind=kind, name=node)
    fake_dot = tmp_path / "dot"
    fake_dot.write_text("#!/bin/sh\necho 'Error: syntax error in line 1' >&2\nexit 1\n")
    fake_dot.chmod(0o755)
    monkeypatch.setattr(render.shutil, "which", lambda name: str(fake_dot))
    monkeypatch.delenv("GRADAUDIT_NO_DOT", raising=False)
    render.write_graph(graph, tmp_path / "g.svg", culprit="n0")
    assert (tmp_path / "g.svg").read_text() == render.to_svg(graph)
    assert "Graphviz dot failed (exit 1): Error: syntax error" in caplog.text
    with pytest.raises(OSError, match="Graphviz dot failed") as failed:
        render.write_graph(graph, tmp_path / "g.png", culprit="n0")
    assert failed.value.filename == str(tmp_path / "g.png")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_lays_out_svg_and_png_with_the_culprit_in_red(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADAUDIT_NO_DOT", raising=False)
    runner = CliRunner()
    case = str(ROOT / "examples/bad_gelu.py") + ":case"
    result = runner.invoke(graph_command, [case, "--out", str(tmp_path / "g.svg")])
    assert result.exit_code == 1, result.output
    text = (tmp_path / "g.svg").read_text()
    assert text.startswith("<svg") and "Generated by graphviz" not in text  # the prolog is cut: embeddable
    svg = ElementTree.fromstring(text)
    nodes = [group for group in svg.iter("{http://www.w3.org/2000/svg}g") if group.get("class") == "node"]
    culprits = [group for group in nodes if any(shape.get("fill") == "#e74c3c" for shape in group.iter())]
    assert len(culprits) == 1 and "BadGeluBackward" in "".join(culprits[0].itertext())
    result = runner.invoke(graph_command, [case, "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 1, result.output
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
