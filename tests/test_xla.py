"""The XLA backend on real torch-xla (PJRT CPU): correct cases pass, planted faults fail like on eager, a fault
only XLA has is found, graphs are reused, and nothing of the user's is touched."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

os.environ.setdefault("PJRT_DEVICE", "CPU")  # what the backend does itself; set before importorskip imports it
pytest.importorskip("torch_xla", reason="torch-xla is not installed or does not import with this torch")

import fixtures  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import gradaudit  # noqa: E402
from gradaudit.backends.xla import XlaBackend, import_xla  # noqa: E402
from gradaudit.case import Case  # noqa: E402
from gradaudit.cli import main  # noqa: E402
from gradaudit.errors import AuditError  # noqa: E402

_availability = XlaBackend().availability()
if not _availability.usable:
    pytest.skip(f"xla backend not usable: {_availability.reason}", allow_module_level=True)

XLA = import_xla()


def compiles() -> int:
    return XLA.metrics.counter_value("UncachedCompile") or 0


def kinds(report):
    return sorted((f.kind, f.wrt) for f in report.findings)


# ---------------------------------------------------------------- correct cases pass, faults fail like eager
@pytest.mark.parametrize("name", ["plain_function", "groupnorm_gelu"])
def test_correct_cases_pass_at_second_order(name):
    report = gradaudit.check(getattr(fixtures, name)(), backend="xla", order=2)
    assert report.ok, report
    assert report.backend == "xla" and report.dtype == "float64"
    assert {c.order for c in report.checks} == {0, 1, 2}  # 0: forward parity with eager float64
    assert report.stats["compilations"] > 0


@pytest.mark.slow
def test_lstm_passes_at_second_order():
    report = gradaudit.check(fixtures.lstm(), backend="xla", order=2)
    assert report.ok, report


def test_dropout_mlp_passes_and_leaves_the_user_state_alone():
    model, args = fixtures.dropout_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cpu_rng = torch.get_rng_state()
    xla_rng = XLA.xm.get_rng_state()
    precision = XLA.backends.get_mat_mul_precision()

    report = gradaudit.check(model, args, backend="xla", order=2)

    assert report.ok, report  # dropout masks are the same in every evaluation
    assert all(p.device.type == "cpu" for p in model.parameters()) and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert args[0].device.type == "cpu" and not args[0].requires_grad
    assert torch.equal(torch.get_rng_state(), cpu_rng)
    assert XLA.xm.get_rng_state() == xla_rng
    assert XLA.backends.get_mat_mul_precision() == precision


@pytest.mark.parametrize("name,order", [("scaled_backward", 2), ("wrong_parameter_gradient", 1)])
def test_planted_faults_fail_like_on_eager(name, order):
    on_xla = gradaudit.check(getattr(fixtures, name)(), backend="xla", order=order)
    on_eager = gradaudit.check(getattr(fixtures, name)(), backend="eager", order=order)
    assert not on_xla.ok and not on_eager.ok
    assert kinds(on_xla) == kinds(on_eager)
    assert ("faulty_backward", "args[0]" if name == "scaled_backward" else "fc2.bias") in kinds(on_xla)


class WrongOnXla(torch.autograd.Function):
    """exp(x) * x whose backward takes an XLA-only shortcut that drops the product rule's exp(x) term."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp() * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if x.device.type == "xla":
            return grad * x.exp() * x
        return grad * x.exp() * (x + 1)


def test_a_fault_only_xla_has_is_found_on_xla_only():
    case = lambda: (WrongOnXla.apply, (fixtures.randn(4, 3),))  # noqa: E731
    assert gradaudit.check(case(), backend="eager").ok
    report = gradaudit.check(case(), backend="xla")
    assert not report.ok
    assert ("faulty_backward", "args[0]") in kinds(report)


def test_lazy_modules_are_initialized_on_a_private_copy():
    model, args = fixtures.lazy_linear()
    report = gradaudit.check(model, args, backend="xla")
    assert report.ok, report
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)


# ---------------------------------------------------------------- graphs: materialized, reused, bounded
def test_evaluations_materialize_outputs_and_reuse_one_graph():
    case = Case(lambda x, w: torch.tanh(x @ w).sum(0), (fixtures.randn(5, 3), fixtures.randn(3, 4, seed=1)))
    with XlaBackend().load(case) as program:
        x = [leaf.value for leaf in program.leaves]
        program([x[0] + 0.5 * torch.ones_like(x[0]), x[1]])  # compiles the graphs of this call pattern
        before = compiles()
        for t in (0.1, -0.2, 1e-3, 7.0):  # Python scalars are device data: same graph every time
            outputs = program([x[0] + t * torch.ones_like(x[0]), x[1]])
        assert compiles() == before
        text = XLA.torch_xla._XLAC._get_xla_tensors_text(outputs)
        assert "device_data" in text and "aten::" not in text  # no pending graph carried forward
        assert program.stats.forward_evals == 5


def test_compilations_do_not_grow_with_input_size():
    def case(n):
        weight = torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / n ** 0.5
        return (lambda x: torch.tanh(x @ weight.to(x.device)).sin()), (fixtures.randn(n),)

    counts = []
    for n in (5, 10, 300):  # the first also compiles the graphs on output-shaped data, which the others reuse
        report = gradaudit.check(case(n), backend="xla")
        assert report.ok, report
        counts.append(report.stats["compilations"])
    assert counts[1] == counts[2] and counts[0] < 40, counts


# ---------------------------------------------------------------- fallbacks, precision, errors
def test_ops_without_xla_lowering_are_listed_as_fallbacks():
    with XlaBackend().load(Case(lambda x: torch.lgamma(x) * x, (fixtures.randn(3).abs() + 1,))) as program:
        program([leaf.value for leaf in program.leaves])
        assert program.fallback_ops == ["aten::lgamma"]
    with XlaBackend().load(Case(lambda x: x.sin(), (fixtures.randn(3),))) as program:
        float(program([leaf.value for leaf in program.leaves])[0].sum())  # value reads are not fallbacks
        assert program.fallback_ops == []


def test_float32_runs_at_full_matmul_precision_and_restores_it():
    before = XLA.backends.get_mat_mul_precision()
    model, args = fixtures.dropout_mlp()
    with XlaBackend().load(Case(model, args), dtype=torch.float32) as program:
        assert program.dtype == torch.float32 and program.leaves[0].value.device.type == "xla"
        assert XLA.backends.get_mat_mul_precision() == "highest"
    assert XLA.backends.get_mat_mul_precision() == before


def test_bad_input_and_devices_are_audit_errors():
    with pytest.raises(AuditError, match="xla devices"):
        XlaBackend().load(Case(torch.sin, (fixtures.randn(3),)), device="cpu")
    captured = fixtures.randn(3, 2)
    with pytest.raises(AuditError, match="CPU tensor captured"):
        XlaBackend().load(Case(lambda x: x @ captured, (fixtures.randn(3),)))
    with pytest.raises(AuditError, match="sparse gradients"):
        XlaBackend().load(Case(*fixtures.sparse_embedding()))
    with pytest.raises(AuditError, match="contains NaN"):
        XlaBackend().load(Case(torch.sin, (torch.tensor([1.0, float("nan")], dtype=torch.float64),)))


# ---------------------------------------------------------------- discovery
def test_cli_lists_xla_as_usable():
    result = CliRunner().invoke(main, ["backends", "--check"])  # --check: loaded and probed, not only installed
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.split() and line.split()[0] == "xla")
    assert "yes" in row


def test_gradaudit_imports_without_torch_xla_and_says_why_xla_is_unusable():
    script = (
        "import sys; sys.modules['torch_xla'] = None\n"  # as if torch-xla were not installed
        "import gradaudit, gradaudit.backends.xla as x\n"
        "a = x.XlaBackend().availability()\n"
        "assert not a.usable and 'torch-xla' in a.reason and '\\n' not in a.reason, a\n"
        "print(a.reason)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not installed" in done.stdout


def test_an_xla_only_fault_is_localized_to_its_node_and_module():
    report = gradaudit.check(*fixtures.xla_backward_divergence(), backend="xla")
    fault = next(f for f in report.findings if f.kind == "faulty_backward")
    assert fault.node == "WrongOnXlaSquareBackward" and fault.module == "1", fault
    assert gradaudit.check(*fixtures.xla_backward_divergence(), backend="eager").ok


def test_a_fault_of_the_code_itself_is_localized_on_xla_too():
    report = gradaudit.check(*fixtures.wrong_parameter_gradient(), backend="xla")
    fault = next(f for f in report.findings if f.kind == "faulty_backward")
    assert fault.node == "FnBackward", fault


# ---------------------------------------------------------------- the backend raising where eager runs
def eval_batch_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).double().eval()
    return model, (torch.randn(2, 2, 6, 6, dtype=torch.float64),)


def test_a_backward_torch_xla_cannot_run_is_a_backend_error_finding():
    """torch-xla 2.9 fails the backward of an eval-mode BatchNorm2d that eager runs: a finding about the
    backend (exit 1), not an audit that could not run; the same case on eager passes."""
    report = gradaudit.check(*eval_batch_norm(), backend="xla")
    assert not report.ok
    errors = [f for f in report.findings if f.severity == "error"]
    assert [(f.kind, f.order) for f in errors] == [("backend_error", 1)], report
    assert "raised where eager float64 runs" in errors[0].message
    assert "size of mean" in errors[0].details["exception"]
    assert gradaudit.check(*eval_batch_norm()).ok


def test_a_forward_torch_xla_cannot_run_is_a_backend_error_finding():
    """torch-xla 2.9 refuses dim=0 on a 0-d tensor (amax, logsumexp, index_select), which eager accepts: a
    finding about the backend at order 0 with the orders it stopped named, not an audit that could not run
    (it was an error record in suites); a forward eager cannot run either stays the case's own error."""
    report = gradaudit.check(lambda x: torch.amax(x, dim=0), (torch.tensor(1.5, dtype=torch.float64),),
                             backend="xla", order=2)
    assert [(f.kind, f.order, f.severity) for f in report.findings] == [("backend_error", 0, "error")], report
    assert "Value out of range" in report.findings[0].details["exception"]
    assert [note["what"] for note in report.skipped] == ["order 1", "order 2"] and not report.ok
    with pytest.raises(AuditError, match="the case raised IndexError"):
        gradaudit.check(lambda x: torch.amax(x, dim=3), (torch.ones(2, dtype=torch.float64),), backend="xla")


def test_the_users_own_exception_on_xla_is_still_the_case_raising():
    calls = {"xla": 0}

    def fn(x):
        calls["xla"] += x.device.type == "xla"
        if calls["xla"] == 8:  # (a later call: the first ones are the backend loading and forward parity)
            raise RuntimeError("planted failure")
        return torch.sin(x)

    with pytest.raises(AuditError, match="the case raised RuntimeError: planted failure"):
        gradaudit.check(fn, (torch.ones(3, dtype=torch.float64),), backend="xla")


def test_complex_results_and_leaves_survive_the_host_copy():
    """torch-xla 2.9 drops the imaginary parts when a complex tensor is copied to the host; the checker's
    numerics copy through the real view (view_as_complex was a false faulty_backward: numerical 0)."""
    real_input = gradaudit.check(lambda x: torch.view_as_complex(x) * 2, (fixtures.randn(3, 2),), backend="xla")
    assert real_input.ok, real_input
    complex_leaf = gradaudit.check(lambda z: (z * z).real + z.exp().imag, (fixtures.randn(4, dtype=torch.complex128),),
                                   backend="xla")
    assert complex_leaf.ok, complex_leaf


def test_forward_mode_raising_on_xla_keeps_the_reverse_mode_verdict():
    """torch-xla 2.9's forward mode of var gives a tangent of the input's shape: forward mode is turned off
    there and reported as the backend's error, while the reverse-mode checks run and pass."""
    report = gradaudit.check(lambda x: x.var(), (fixtures.randn(5, 5),), backend="xla")
    assert {c.method for c in report.checks if c.order == 1} == {"reverse"}
    assert all(c.ok for c in report.checks if c.order == 1)
    errors = [f for f in report.findings if f.severity == "error"]
    assert [(f.kind, f.order) for f in errors] == [("backend_error", 1)]
    assert errors[0].message.startswith("forward-mode AD on xla")
    assert any(s["what"] == "forward-mode AD (order 1)" for s in report.skipped)
