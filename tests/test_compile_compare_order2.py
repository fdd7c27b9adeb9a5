"""compare on the compile backend at order 2: the compiled backward is not differentiable, so order 2 is not
audited there and says so (a suite records a skip), never a backend crash or a pass on eager's formulas."""
from __future__ import annotations

import pytest
import torch

import gradaudit
from gradaudit.outcome import orders_not_run


@pytest.mark.parametrize("compiler", ["aot_eager"])
def test_compare_order_two_on_compile_is_not_run_with_its_reason(compiler, monkeypatch):
    monkeypatch.setenv("GRADAUDIT_COMPILE_BACKEND", compiler)
    x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(2, 3).requires_grad_()
    # max_pool2d's compiled backward raised "torch.compile with aot_autograd does not currently support double
    # backward" under parity's double backward: a backend_error (crash) where the backend declares no order 2.
    report = gradaudit.compare(lambda t: torch.sin(t).exp(), (x,), backends=("compile",), order=2)
    assert report.ok, report
    assert not [f for f in report.findings if f.kind == "backend_error"]
    assert {c.order for c in report.checks} == {0, 1}
    assert orders_not_run(report) == [(2, "on compile: the backend has no double backward")]

