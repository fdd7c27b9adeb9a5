"""The eager backend: plain PyTorch on CPU, or CUDA (with TF32 switched off) when present."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from gradaudit.case import Case, InputSlots, choose_leaves, differentiated_outputs, flatten_outputs
from gradaudit.errors import AuditError
from gradaudit.backends.base import Availability, Backend, Leaf, Program, Stats


def cast_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast a floating tensor to ``dtype`` and a complex one to the complex type of the same precision."""
    if dtype is None:
        return tensor
    if tensor.is_complex():
        return tensor.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    if tensor.is_floating_point():
        return tensor.to(dtype)
    return tensor


def complex_precision_notes(leaves: list[Leaf], dtype: torch.dtype | None) -> list[dict]:
    """torch has no complex half or bfloat16: complex leaves run in complex64 then, and the report says so."""
    complex_leaves = [leaf.name for leaf in leaves if leaf.value.is_complex()]
    if dtype not in (torch.float16, torch.bfloat16) or not complex_leaves:
        return []
    return [{"what": f"{str(dtype)[6:]} for complex tensors",
             "reason": f"torch has no complex {str(dtype)[6:]}: {', '.join(complex_leaves)} ran in complex64 "
                       "(float32 precision)"}]


class RngState:
    """Snapshot of the CPU (and CUDA) generators, so every evaluation draws the same dropout masks."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda and torch.cuda.is_available()
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if self.cuda else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda_states)


@contextmanager
def full_fp32_precision(device: torch.device):
    """TF32 would make correct float32 CUDA gradients look wrong; audits run at full precision."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class EagerProgram(Program):
    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device = str(device)
        self.stats = Stats()
        self._user_rng = RngState(cuda=device.type == "cuda")  # given back on close()
        self._precision = full_fp32_precision(device)
        self._precision.__enter__()
        try:
            self._setup(case, device, dtype)
        except BaseException:
            self.close()
            raise

    def _setup(self, case: Case, device: torch.device, dtype: torch.dtype | None) -> None:
        choice = choose_leaves(case)  # on the user's tensors, whose requires_grad flags the copies lose
        tree_map = torch.utils._pytree.tree_map
        place = lambda t: t.detach().to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        cast = lambda t: cast_tensor(t, dtype) if isinstance(t, torch.Tensor) else t  # noqa: E731
        placed_args, placed_kwargs = tuple(tree_map(place, case.args)), tree_map(place, case.kwargs)
        # Lazy modules infer their shapes from the inputs in the module's own dtype, before both are cast.
        self.module = self._private_module(case.fn, device, dtype, placed_args, placed_kwargs)
        args, kwargs = tuple(tree_map(cast, placed_args)), tree_map(cast, placed_kwargs)
        self._call = case.fn if self.module is None else self.module

        self.inputs = InputSlots.of(args, kwargs, set(choice.inputs))
        params = [] if self.module is None else [
            (name, p) for name, p in self.module.named_parameters() if name in choice.parameters]
        self._param_names = [name for name, _ in params]
        self.leaves = [Leaf(name, p.detach().clone(), "parameter") for name, p in params]
        self.leaves += [Leaf(name, self.inputs.values[slot].detach().clone(), "input")
                        for name, slot in zip(self.inputs.names, self.inputs.slots)]
        if not self.leaves:
            raise AuditError("nothing to differentiate: no floating-point or complex tensor in args/kwargs "
                             "and no trainable parameter")
        for leaf in self.leaves:
            if torch.isnan(leaf.value).any():
                raise AuditError(f"{leaf.name} contains NaN; gradients cannot be checked there")

        self._buffers = [] if self.module is None else [
            (b, b.detach().clone()) for b in self.module.buffers()]
        self._rng = RngState(cuda=device.type == "cuda")
        outputs = self._first_evaluation(case)
        self.notes += complex_precision_notes(self.leaves, dtype)
        self.stats.forward_evals = 0
        for name, out in zip(self.output_names, outputs):
            if not torch.isfinite(out).all():
                raise AuditError(f"{case.label} produced NaN or Inf in {name}")

    def _first_evaluation(self, case: Case) -> list[torch.Tensor]:
        """Evaluate once with the leaves requiring grad, to learn the outputs' names and which of them are
        differentiable: outputs that do not require grad (torch's non-differentiable outputs such as
        native_layer_norm's mean, or detached ones) are left out, as gradcheck does, and the report says so."""
        with torch.enable_grad():
            values = [leaf.value.detach().requires_grad_() for leaf in self.leaves]
            tensors, names = flatten_outputs(self._call_case(values, first=True))
        self.output_names, self._keep, self.notes = differentiated_outputs(tensors, names, case.label)
        return [t.detach() for t, keep in zip(tensors, self._keep) if keep]

    def _private_module(self, fn, device, dtype, args, kwargs) -> nn.Module | None:
        """A copy of the user's module on the device and dtype, lazy parameters initialized: the user's own
        module, parameters and buffers are never touched."""
        if not isinstance(fn, nn.Module):
            return None
        try:
            module = copy.deepcopy(fn)
        except Exception as exc:
            raise AuditError(f"cannot copy module {type(fn).__name__} for auditing: {exc}") from exc
        module.to(device)
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
            rng = RngState(cuda=device.type == "cuda")
            with torch.no_grad():
                module(*args, **kwargs)  # lazy modules infer their shapes on the first call
            rng.restore()
        if dtype is not None:
            module._apply(lambda t: cast_tensor(t, dtype))
        return module

    def _call_case(self, values, first: bool = False):
        """The case's raw output with the leaves replaced by ``values`` (RNG and buffers reset first)."""
        self.stats.forward_evals += 1
        for buffer, saved in self._buffers:  # train-mode batch norm updates running stats on every call
            with torch.no_grad():
                buffer.copy_(saved)
        self._rng.restore()
        n = len(self._param_names)
        args, kwargs = self.inputs.rebuild(list(values[n:]))
        try:
            if self.module is None:
                return self._call(*args, **kwargs)
            return torch.func.functional_call(self.module, dict(zip(self._param_names, values[:n])), args, kwargs)
        except AuditError:
            raise
        except Exception as exc:
            if first:  # the very first call: the case itself is broken
                raise AuditError(f"calling the case raised {type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
            raise

    def _evaluate(self, values):
        tensors, _ = flatten_outputs(self._call_case(values))
        return [t for t, keep in zip(tensors, self._keep) if keep]

    def __call__(self, values):
        return self._evaluate(values)

    def close(self) -> None:
        if getattr(self, "_buffers", None):
            for buffer, saved in self._buffers:
                with torch.no_grad():
                    buffer.copy_(saved)
        self._user_rng.restore()
        if self._precision is not None:
            self._precision.__exit__(None, None, None)
            self._precision = None


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch eager mode on CPU, or CUDA with TF32 disabled"

    def availability(self) -> Availability:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        return Availability(True, f"torch {torch.__version__}", devices)

    def default_device(self) -> str:
        return "cpu"

    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> EagerProgram:
        try:
            torch_device = torch.device(device or self.default_device())
        except RuntimeError as exc:
            raise AuditError(f"invalid device {device!r} for the eager backend") from exc
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise AuditError("device 'cuda' requested but CUDA is not available here")
        return EagerProgram(case, torch_device, dtype)
