"""Targets whose code tries to end, interrupt or crash the audit (tests/test_exits.py, benchmarks/fault_injection.py).

Each factory returns a small float64 case. The function counts its calls, so a failure can be planted on the
first call (the loader's), a later one (the checks'), or only under the tracing that localization and the
hazard scan use (a ``TorchDispatchMode`` is active). ``GRADAUDIT_TEST_MARKER``, when set, is a file each call
appends a line to, so a test knows the audit is under way before it sends a signal.
"""
import ctypes
import os
import sys
import time

import torch

from planted import WrongTanh, under_analyzer

D = torch.float64


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=D)


def _on_call(action, when):
    """sin, with ``action()`` run on the calls for which ``when(call_number)`` is true."""
    calls = [0]

    def fn(x):
        calls[0] += 1
        marker = os.environ.get("GRADAUDIT_TEST_MARKER")
        if marker:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()} {calls[0]}\n")
        if when(calls[0]):
            action()
        return torch.sin(x)
    return fn, (_x(3),)


def _raise(exc):
    def action():
        raise exc
    return action


# -- exits -----------------------------------------------------------------------------------------------
def exit0_first_call():
    return _on_call(lambda: sys.exit(0), lambda n: n == 1)


def exit0_fourth_call():
    return _on_call(lambda: sys.exit(0), lambda n: n == 4)


def exit1():
    return _on_call(lambda: sys.exit(1), lambda n: n == 2)


def exit3():
    return _on_call(lambda: sys.exit(3), lambda n: n == 2)


def os_exit0():
    return _on_call(lambda: os._exit(0), lambda n: n == 3)


def os_exit0_swallowed():
    """os._exit inside a try/except Exception of the user's: still not a pass."""
    def action():
        try:
            os._exit(0)
        except Exception:
            pass
    return _on_call(action, lambda n: n == 3)


def exit_in_factory():
    sys.exit(0)


# -- interrupts ------------------------------------------------------------------------------------------
def keyboard_interrupt():
    return _on_call(_raise(KeyboardInterrupt()), lambda n: n == 3)


def slow():
    """A long audit: 0.2 s per call."""
    return _on_call(lambda: time.sleep(0.2), lambda n: True)


# -- exceptions on later calls ---------------------------------------------------------------------------
def raises_on_call_1():
    return _on_call(_raise(RuntimeError("planted failure")), lambda n: n == 1)


def raises_on_call_2():
    return _on_call(_raise(RuntimeError("planted failure")), lambda n: n == 2)


def raises_on_call_5():
    return _on_call(_raise(RuntimeError("planted failure")), lambda n: n == 5)


def raises_under_forward_ad():
    """Raises on the forward-mode check's calls (its inputs carry tangents): the user's exception, not torch's."""
    import torch.autograd.forward_ad as fwAD

    def fn(x):
        if fwAD.unpack_dual(x).tangent is not None:
            raise RuntimeError("planted failure")
        return torch.sin(x)
    return fn, (_x(3),)


def not_implemented_by_user():
    """A NotImplementedError of the user's own on a later call is still the user's failure."""
    return _on_call(_raise(NotImplementedError("planted")), lambda n: n == 3)


# -- crashes in optional phases --------------------------------------------------------------------------
def _segfault_when_traced(x):
    if under_analyzer():
        ctypes.string_at(0)  # a read of address 0: SIGSEGV
    return x


def faulty_crashes_when_traced():
    return (lambda x: WrongTanh.apply(_segfault_when_traced(x))), (_x(3, 2),)


def correct_crashes_when_traced():
    return (lambda x: torch.tanh(_segfault_when_traced(x))), (_x(3, 2),)


# -- builtins and odd dtypes -----------------------------------------------------------------------------
def torch_builtin():
    return torch.sqrt, (_x(4).abs() + 1,)


class WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x


def builtin_apply():
    """A custom Function's ``apply`` handed over directly (no user lambda around it)."""
    return WrongSquare.apply, (_x(4),)


def complex_input():
    return (lambda z: (z * z.conj()).real), (torch.randn(4, dtype=torch.complex128,
                                                         generator=torch.Generator().manual_seed(0)),)


def train_mode_batch_norm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(D).train()
    return model, (_x(5, 3),)


def good():
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).to(D), (_x(2, 3),)
