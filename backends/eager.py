"""The eager backend: plain PyTorch on CPU, or CUDA (with TF32 switched off) when present."""
from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from gradaudit.case import Case, PreparedCase, call_failed
from gradaudit.errors import AuditError, Unsupported, backend_failure
from gradaudit.outcome import first_line
from gradaudit.backends.base import Availability, Backend, Capabilities, Program
from gradaudit.backends.fastcall import DirectCall, differentiable_leaves
from gradaudit.rng import RngSnapshot

__all__ = ["EagerBackend", "EagerProgram", "full_fp32_precision"]


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
    """The case run by PyTorch itself (CPU, or CUDA at full float32 precision): the reference every other
    backend is held against. Every evaluation resets the module's buffers and the RNG first."""

    capabilities = Capabilities(reference=True, batch_evaluation=True)

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype | None) -> None:
        super().__init__(str(device))
        self._torch_device = device
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._user_rng = RngSnapshot(cuda=device.type == "cuda")  # given back on close()
        self._precision = full_fp32_precision(device)
        self._precision.__enter__()
        self._load(case, dtype)

    def _place(self, prepared: PreparedCase) -> None:
        self._prepared, self.module, self.inputs = prepared, prepared.module, prepared.inputs
        self.leaves = prepared.leaves
        self._call = DirectCall.of(prepared)  # prepared.call, its per-call name resolution done once
        self._buffers = [] if self.module is None else [
            (b, b.detach().clone()) for b in self.module.buffers()]
        self._rng = RngSnapshot(cuda=self._torch_device.type == "cuda")
        self._vmap_failure: str | None = None  # why batches run one call per point, once vmap failed
        self._batch_verified = False
        first = prepared.first_outputs(lambda values: self._call_case(values, first=True))
        self.output_names, self._keep = first.names, first.keep
        self.notes += first.notes
        self.stats.forward_evals = 0
        # A backend held against eager (XLA) may give NaN where eager does not: forward parity names that
        # element as a divergence. Eager itself cannot be differentiated there.
        for name, out in zip(self.output_names, first.values if self.capabilities.reference else []):
            if not torch.isfinite(out.detach().cpu()).all():  # on the CPU: no device graph for a check
                raise Unsupported(f"{prepared.label} produced NaN or Inf in {name}: eager cannot differentiate it "
                                  "there")

    def _call_case(self, values, first: bool = False):
        """The case's raw output with the leaves replaced by ``values`` (RNG and buffers reset first); on the
        very first call, an exception means the case itself is broken (an AuditError saying so)."""
        self.stats.forward_evals += 1
        self._reset_buffers()  # train-mode batch norm updates running stats on every call
        self._rng.restore()
        try:
            return self._call(values)
        except AuditError:
            raise
        except Exception as exc:
            if first and not self.capabilities.reference:  # eager ran it (or will say so): the device fails
                raise backend_failure(self.device, "the forward", exc) from exc
            if first:
                raise call_failed(exc) from exc
            raise

    def holding_values(self) -> AbstractContextManager[None]:
        # (functional_call, the fallback for parameters outside the module's dicts, always puts them back)
        return self._call.holding() if isinstance(self._call, DirectCall) else nullcontext()

    def _reset_buffers(self) -> None:
        if not self._buffers:  # (entering no_grad costs as much as a tiny forward's op)
            return
        with torch.no_grad():
            for buffer, saved in self._buffers:
                buffer.copy_(saved)

    def _evaluate(self, values):
        tensors = differentiable_leaves(self._call_case(values))  # (flatten_outputs' tensors, no names)
        return [t for t, keep in zip(tensors, self._keep) if keep]

    def evaluate_batch(self, points: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """The outputs at many points in one vectorized call of the case (``torch.func.vmap``; a leaf that no
        point moves is passed once, unbatched). Where vmap cannot run the case (an op without a batching
        rule, data-dependent control flow, train-mode batch norm writing its running statistics) or its first
        batch does not give the single evaluations' values (a random op drawing per point), this and every
        later batch run one call per point, and ``stats.batching`` says why."""
        if len(points) < 2 or self._vmap_failure is not None:
            return super().evaluate_batch(points)
        counted = self.stats.forward_evals
        try:
            batch = self._vmapped(points)
        except Exception as exc:
            self.stats.forward_evals = counted  # (the failed call evaluated nothing)
            # One by one: what the points themselves raise (a domain check) propagates, and vmap stays on.
            single = super().evaluate_batch(points)
            return self._batching_failed(f"vmap cannot run the case ({first_line(exc)})", single)
        if not self._batch_verified:
            self._batch_verified = True
            single = super().evaluate_batch(points[-1:])[0]
            if not all(same_values(a, b) for a, b in zip(batch[-1], single)):
                return self._batching_failed("vmap gives other values than single calls",
                                             super().evaluate_batch(points))
        self.stats.batched_evals += len(points)
        self.stats.batching = "vmap"
        return batch

    def _batching_failed(self, why: str, results: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        self._vmap_failure = why
        self.stats.batching = f"one call per point: {why}"
        return results

    def _vmapped(self, points: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        moved = [any(p[i] is not points[0][i] for p in points) for i in range(len(points[0]))]
        stacked = [torch.stack([p[i] for p in points]) if m else points[0][i] for i, m in enumerate(moved)]

        def one(*values):
            return tuple(self._evaluate(list(values)))
        # randomness="same": the RNG is restored before every call, so every point sees the same random draws
        outputs = torch.func.vmap(one, in_dims=tuple(0 if m else None for m in moved), randomness="same")(*stacked)
        self.stats.forward_evals += len(points) - 1  # (the vmapped call counted one)
        return [[out[j] for out in outputs] for j in range(len(points))]

    def close(self) -> None:
        """Give back the module's buffers, the caller's RNG state and the precision flags."""
        self._reset_buffers()
        self._user_rng.restore()
        if self._precision is not None:
            self._precision.__exit__(None, None, None)
            self._precision = None


class EagerBackend(Backend):
    """PyTorch itself, on the CPU or a CUDA device: the backend every other one is compared with."""

    name = "eager"
    description = "PyTorch eager mode on CPU, or CUDA with TF32 disabled"
    required_modules = ("torch",)  # the quick check (Backend.required_modules)
    packages = ("torch",)  # whose versions decide its results (Backend.packages)

    def availability(self) -> Availability:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        return Availability(True, f"torch {torch.__version__}", devices)

    def default_device(self) -> str:
        return "cpu"

    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> EagerProgram:
        return EagerProgram(case, local_device(device or self.default_device(), self.name), dtype)


def same_values(batched: torch.Tensor, single: torch.Tensor) -> bool:
    """Whether a batched evaluation gave a single call's values, up to the rounding of other kernels."""
    if batched.shape != single.shape or batched.dtype != single.dtype:
        return False
    if not (batched.is_floating_point() or batched.is_complex()):
        return bool(torch.equal(batched, single))
    eps = torch.finfo(batched.real.dtype if batched.is_complex() else batched.dtype).eps
    scale = float(single.detach().abs().max()) if single.numel() else 0.0
    return bool(torch.allclose(batched.detach(), single.detach(), rtol=0.0, atol=256 * eps * max(scale, 1e-300),
                               equal_nan=True))


def local_device(device: str, backend: str) -> torch.device:
    """A CPU or CUDA device of torch's own, or an AuditError saying why it cannot be used here."""
    try:
        torch_device = torch.device(device)
    except RuntimeError as exc:
        raise AuditError(f"invalid device {device!r} for the {backend} backend") from exc
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise AuditError("device 'cuda' requested but CUDA is not available here")
    return torch_device
