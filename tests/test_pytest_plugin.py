"""The pytest plugin and gradaudit.assert_gradients: a planted fault fails a user's test with the finding, a
correct function passes, the marker sets defaults (order 2), --gradaudit-backend overrides the backend."""
import re
import subprocess
import sys

import pytest

import fixtures
from gradaudit.testing import GradientAssertionError, assert_gradients

pytest_plugins = ["pytester"]

INNER = '''
import pytest
import torch
from torch import nn


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class BadBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return x @ weight.t() + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight, grad.t() @ x, grad.mean(0)  # the bias gradient should be grad.sum(0)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 3).double()

    def forward(self, x):
        return BadBias.apply(x, self.head.weight, self.head.bias)


class DetachedBackward(torch.autograd.Function):
    """Correct first derivative of x**3, computed from detached values: its second derivative is zero."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x.detach() ** 2


def detached(x):
    return DetachedBackward.apply(x).sin()


def test_planted_fault(gradaudit):
    torch.manual_seed(0)
    gradaudit(Net(), (randn(5, 4),))


def test_correct_function(gradaudit):
    report = gradaudit(lambda x, y: (x * y.exp()).sum(1) ** 2, (randn(3, 4), randn(3, 4, seed=1)))
    assert report.ok and report.backend == "eager"


def test_first_order_only_passes(gradaudit):
    gradaudit(detached, (randn(3, 2),))


@pytest.mark.gradaudit(order=2)
def test_marker_second_order(gradaudit):
    gradaudit(detached, (randn(3, 2),))


@pytest.mark.gradaudit(order=2)
def test_call_overrides_marker(gradaudit):
    report = gradaudit(detached, (randn(3, 2),), order=1)
    assert report.settings["order"] == 1
'''


def outcomes(result):
    """{test name: outcome} from a verbose pytest run."""
    found = {}
    for line in result.outlines:
        if "::" in line and any(w in line for w in (" PASSED", " FAILED", " ERROR")):
            nodeid, outcome = line.split(" ", 1)
            found[nodeid.split("::")[-1]] = outcome.split()[0]
    return found


def test_fixture_and_marker(pytester):
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    assert outcomes(result) == {"test_planted_fault": "FAILED", "test_correct_function": "PASSED",
                                "test_first_order_only_passes": "PASSED", "test_marker_second_order": "FAILED",
                                "test_call_overrides_marker": "PASSED"}, result.stdout.str()
    out = result.stdout.str()
    # the finding, readable: kind, wrt, worst element, analytical vs numerical, where
    assert "faulty_backward (order 1, wrt head.bias, reverse)" in out
    assert re.search(r"worst element \[\d\]", out) and "analytical" in out and "vs numerical" in out
    assert "at node BadBiasBackward, op BadBias" in out and "source test_inner.py:" in out
    assert "faulty_double_backward (order 2, wrt args[0]" in out and "DetachedBackwardBackward" in out
    assert "GradientAssertionError: wrong gradients" in out
    # the plugin's own frames are hidden: the traceback points at the user's call
    assert "pytest_plugin.py" not in out and "api.py" not in out


BACKEND_TESTS = '''
import torch


def test_backend(gradaudit):
    report = gradaudit(torch.sin, (torch.randn(3, dtype=torch.float64),))
    assert report.backend == "eager"
'''


def test_backend_option(pytester):
    pytester.makepyfile(test_backend=BACKEND_TESTS)
    pytester.makeini("[pytest]\ngradaudit_backend = eager\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--gradaudit-backend", "no_such_backend")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AuditError: unknown backend 'no_such_backend'*"])
    result = pytester.runpytest("-p", "no:cacheprovider")  # the ini option alone
    result.assert_outcomes(passed=1)


def test_option_and_marker_precedence(pytester):
    """call kwargs > --gradaudit-backend > marker, checked on the defaults the fixture hands out (no audit)."""
    pytester.makepyfile(test_defaults='''
import pytest

pytestmark = pytest.mark.gradaudit(seed=7, order=2)


@pytest.mark.gradaudit(backend="xla", order=1)
def test_defaults(gradaudit):
    assert gradaudit.defaults == {"seed": 7, "order": 1, "backend": "onnx"}


def test_module_mark(gradaudit):
    assert gradaudit.defaults == {"seed": 7, "order": 2, "backend": "onnx"}
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "--gradaudit-backend", "onnx")
    result.assert_outcomes(passed=2)
    # without the option, a marker's backend beats the ini default
    pytester.makeini("[pytest]\ngradaudit_backend = onnx\n")
    pytester.makepyfile(test_defaults='''
import pytest


@pytest.mark.gradaudit(backend="xla")
def test_marker_over_ini(gradaudit):
    assert gradaudit.defaults == {"backend": "xla"}


def test_ini(gradaudit):
    assert gradaudit.defaults == {"backend": "onnx"}
''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_assert_gradients_directly():
    report = assert_gradients(*fixtures.plain_function())
    assert report.ok
    with pytest.raises(GradientAssertionError) as info:
        assert_gradients(*fixtures.wrong_parameter_gradient())
    message = str(info.value)
    assert isinstance(info.value, AssertionError) and not info.value.report.ok
    assert "wrt fc2.bias" in message and "at node FnBackward" in message and "tensor(" not in message
    assert len(message.splitlines()) < 20


def test_gradaudit_imports_without_pytest(tmp_path):
    """pytest_plugin must not import pytest at import time (gradaudit may export assert_gradients from it)."""
    code = ("import sys; sys.modules['pytest'] = None; import gradaudit.testing as p; "
            "assert callable(p.assert_gradients); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
