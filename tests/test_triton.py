"""A real Triton kernel pair (examples/triton_swiglu.py: forward and hand-written backward kernels), run on CPU
tensors in Triton's interpreter (TRITON_INTERPRET=1) where there is no GPU: it passes in float32 and bf16, and a
planted bug in its backward kernel is caught."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (it ships with torch on Linux x86-64)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import triton_swiglu  # noqa: E402

import gradaudit  # noqa: E402

if not torch.cuda.is_available() and not triton_swiglu.triton.knobs.runtime.interpret:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set and there is no GPU",
                allow_module_level=True)


def test_the_kernels_compute_swiglu():
    a, b = triton_swiglu._inputs(2, 300)  # (not a multiple of the block: the masks matter)
    a, b = a.requires_grad_(), b.requires_grad_()
    y = triton_swiglu.swiglu(a, b)
    assert torch.allclose(y, torch.nn.functional.silu(a) * b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_correct_kernels_pass(dtype):
    report = gradaudit.assert_gradients(*triton_swiglu.case(), dtype=dtype, device=triton_swiglu.DEVICE,
                                        localize=False)
    assert any(c.method == "dtype_parity" for c in report.checks)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_planted_bug_in_the_backward_kernel_is_caught(dtype):
    report = gradaudit.check(*triton_swiglu.buggy(), dtype=dtype, device=triton_swiglu.DEVICE, localize=False)
    assert not report.ok
    assert {f.kind for f in report.findings if f.severity == "error"} == {"faulty_backward"}
    assert report.findings[0].wrt == "args[0]"  # the gate input: the one whose derivative lost a term
