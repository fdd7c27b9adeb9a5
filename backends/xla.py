"""The XLA backend: the case runs on a torch-xla device (PJRT; CPU unless ``PJRT_DEVICE`` says otherwise).

torch_xla is imported lazily, inside :meth:`XlaBackend.availability` / :meth:`XlaBackend.load`, so gradaudit
imports (and lists this backend as unusable, with the reason) where torch-xla is missing or broken.

What differs from the eager program it extends:

* tensors live on the XLA device, and every evaluation materializes its outputs, so no pending lazy graph
  grows from one evaluation to the next;
* the XLA generator (what dropout on an XLA device draws from) is frozen per evaluation like the CPU one, and
  given back at close;
* float32 matmuls and convolutions run at full precision (``set_mat_mul_precision('highest')``) while the
  program is open;
* ``stats.compilations`` counts XLA graph compilations (the ``UncachedCompile`` counter) caused while this
  program was the one being evaluated, and ``fallback_ops`` names the aten ops that fell back to the CPU.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from gradaudit.case import Case, PreparedCase, prepare_case
from gradaudit.errors import AuditError, Unsupported, backend_failure
from gradaudit.outcome import one_line
from gradaudit.backends.base import Availability, Backend, Capabilities, Stats
from gradaudit.backends.eager import EagerProgram

# Fallbacks that the audit's own machinery causes, not the case: reading a value back to Python (``float(t)``,
# which the checker does for every scalar it compares) and the zero tensors autograd makes for missing
# tangents. They say nothing about the audited code.
MACHINERY_FALLBACKS = frozenset({"aten::_local_scalar_dense", "aten::_efficientzerotensor"})

_xla: SimpleNamespace | None = None  # the torch_xla modules, once imported
_import_error: AuditError | None = None  # why the import failed, raised again on every later try


def _version_mismatch() -> str | None:
    """torch-xla X.Y only works with torch X.Y; importing a mismatched pair can fail in odd ways (or crash)."""
    try:
        xla_version = importlib.metadata.version("torch-xla")
    except importlib.metadata.PackageNotFoundError:
        return None  # not installed as a distribution (a source build?): let the import decide
    torch_version = torch.__version__.split("+")[0]
    if xla_version.split(".")[:2] != torch_version.split(".")[:2]:
        wanted = ".".join(xla_version.split(".")[:2])
        return f"torch-xla {xla_version} needs torch {wanted}.x, but torch {torch.__version__} is installed"
    return None


def import_xla() -> SimpleNamespace:
    """Import torch_xla (with ``PJRT_DEVICE=CPU`` unless a PJRT device is configured); AuditError if it fails."""
    global _xla, _import_error
    if _xla is not None:
        return _xla
    if _import_error is not None:
        raise type(_import_error)(str(_import_error))
    try:
        mismatch = _version_mismatch()
        if mismatch:
            raise AuditError(mismatch)
        if not os.environ.get("PJRT_DEVICE") and not os.environ.get("XRT_TPU_CONFIG"):
            os.environ["PJRT_DEVICE"] = "CPU"
        try:
            torch_xla = importlib.import_module("torch_xla")
            xm = importlib.import_module("torch_xla.core.xla_model")
            metrics = importlib.import_module("torch_xla.debug.metrics")
            runtime = importlib.import_module("torch_xla.runtime")
            try:
                backends = importlib.import_module("torch_xla.backends")
            except ImportError:  # older torch-xla: no precision switch
                backends = None
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == "torch_xla":
                raise Unsupported("torch-xla is not installed (pip install 'gradaudit[xla]')") from exc
            raise AuditError(f"torch-xla failed to import: {one_line(exc)}") from exc
        except Exception as exc:  # undefined symbols from a torch mismatch, a broken PJRT plugin...
            raise AuditError(f"torch-xla failed to import: {type(exc).__name__}: {one_line(exc)}") from exc
        try:
            device = torch_xla.device()
            device_type = runtime.device_type()
        except Exception as exc:
            raise AuditError(f"torch-xla has no usable device (PJRT_DEVICE={os.environ.get('PJRT_DEVICE')}): "
                             f"{type(exc).__name__}: {one_line(exc)}") from exc
    except AuditError as exc:
        _import_error = exc
        raise
    _xla = SimpleNamespace(torch_xla=torch_xla, xm=xm, metrics=metrics, backends=backends,
                           device=device, device_type=device_type,
                           version=getattr(torch_xla, "__version__", "?"))
    return _xla


def _tangent(tensor: torch.Tensor) -> torch.Tensor | None:
    """The forward-mode tangent of a dual tensor (None outside forward AD)."""
    if not isinstance(tensor, torch.Tensor):
        return None
    return torch.autograd.forward_ad.unpack_dual(tensor).tangent


# ------------------------------------------------------------------------------------------------ accounting
class _Ledger:
    """Gives each XLA compilation and CPU fallback to one program: the one evaluated most recently.

    torch-xla's counters are process-wide, and two programs can be open at once (an audited float32 program
    and its float64 shadow), so "counter after minus counter before" would count shared work twice. The work
    done between two evaluations (the checker's backward passes and numerics on XLA tensors) is work on the
    outputs of the program evaluated last, so it is charged to that one.
    """

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.owner: XlaProgram | None = None
        self.compiles, self.fallbacks = self._read()
        self.compile_ns = self._compile_ns()

    def _read(self) -> tuple[int, dict[str, int]]:
        names = self.metrics.counter_names()
        fallbacks = {n: self.metrics.counter_value(n) or 0 for n in names if n.startswith("aten::")}
        return self.metrics.counter_value("UncachedCompile") or 0, fallbacks

    def _compile_ns(self) -> float:
        """Nanoseconds torch-xla spent compiling so far (its ``CompileTime`` metric's accumulator)."""
        data = self.metrics.metric_data("CompileTime") if "CompileTime" in self.metrics.metric_names() else None
        return float(data[1]) if data else 0.0

    def settle(self) -> None:
        compiles, fallbacks = self._read()
        compile_ns = self._compile_ns()
        if self.owner is not None:
            self.owner._compile_seconds += (compile_ns - self.compile_ns) / 1e9
            self.owner._compilations += compiles - self.compiles
            for name, count in fallbacks.items():
                if count > self.fallbacks.get(name, 0) and name not in MACHINERY_FALLBACKS:
                    self.owner._fallbacks[name] = self.owner._fallbacks.get(name, 0) + count - \
                        self.fallbacks.get(name, 0)
        self.compiles, self.fallbacks, self.compile_ns = compiles, fallbacks, compile_ns

    def switch(self, program: "XlaProgram | None") -> None:
        if program is not self.owner:
            self.settle()
            self.owner = program


_ledger: _Ledger | None = None


def _the_ledger(xla: SimpleNamespace) -> _Ledger:
    global _ledger
    if _ledger is None:
        _ledger = _Ledger(xla.metrics)
    return _ledger


class XlaStats(Stats):
    """Stats whose ``compilations`` is read from torch-xla's counters when asked."""

    def __init__(self, program: "XlaProgram") -> None:
        self._program = program
        super().__init__()

    @property
    def compilations(self) -> int:  # type: ignore[override]
        self._program._settle()
        return self._program._compilations

    @compilations.setter
    def compilations(self, value: int) -> None:
        pass  # counted by the ledger; Stats.__init__ assigns the default

    @property
    def compile_seconds(self) -> float:  # type: ignore[override]
        self._program._settle()
        return self._program._compile_seconds

    @compile_seconds.setter
    def compile_seconds(self, value: float) -> None:
        pass  # timed by the ledger, like compilations


@contextmanager
def _quiet(logger_name: str):
    """torch-xla warns on every precision change; the audit changes it on purpose and restores it (``-vv``
    shows the warnings)."""
    from gradaudit.log import quiet_loggers

    with quiet_loggers(logger_name):
        yield


def refuse_sparse_gradients(fn) -> None:
    """torch-xla has no sparse gradients: an embedding with ``sparse=True`` cannot be audited there."""
    if isinstance(fn, nn.Module):
        sparse = [name for name, m in fn.named_modules()
                  if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse]
        if sparse:
            raise Unsupported(f"torch-xla has no sparse gradients; {sparse[0] or type(fn).__name__} uses "
                              "sparse=True (audit it on the eager backend)")


# ------------------------------------------------------------------------------------------------ program
class XlaProgram(EagerProgram):
    """An :class:`EagerProgram` whose tensors live on an XLA device (see the module docstring)."""

    capabilities = Capabilities(fallback_ops=True)

    def display_name(self) -> str:
        return "torch-xla"

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype | None, xla: SimpleNamespace) -> None:
        # Everything close() needs exists before EagerProgram.__init__ loads the case (which may fail).
        self._xla = xla
        self._compilations = 0
        self._compile_seconds = 0.0
        self._fallbacks: dict[str, int] = {}
        self._ledger = _the_ledger(xla)
        self._closed = False
        self._pending_gradients: list[torch.Tensor] = []
        self._ledger.switch(self)
        self._rng_device = str(xla.device if device.index is None else device)
        self._user_seed = xla.xm.get_rng_state(self._rng_device)
        self._seed = self._user_seed  # frozen per evaluation
        self._saved_precision = None
        if xla.backends is not None and hasattr(xla.backends, "set_mat_mul_precision"):
            current = xla.backends.get_mat_mul_precision()
            if current != "highest":
                with _quiet(xla.backends.__name__):
                    xla.backends.set_mat_mul_precision("highest")
                self._saved_precision = current
        super().__init__(case, device, dtype)
        counts = self.stats
        self.stats = XlaStats(self)  # replaces the plain Stats EagerProgram made, keeping its counts
        self.stats.forward_evals, self.stats.backward_evals = counts.forward_evals, counts.backward_evals
        # Leaves, inputs and saved buffers become device data (casts and clones were still lazy).
        self._sync([leaf.value for leaf in self.leaves] + list(self.inputs.values)
                   + [saved for _, saved in self._buffers])

    # -- hooks into EagerProgram ---------------------------------------------------------------------------
    def _prepare(self, case: Case, dtype: torch.dtype | None) -> PreparedCase:
        refuse_sparse_gradients(case.fn)
        # Moved to XLA, an uninitialized parameter becomes an empty tensor that lazy modules then reject: they
        # infer their shapes on the CPU (from the CPU generator, as eager does), then move.
        prepared = prepare_case(case, dtype, self._torch_device, lazy_init_device=torch.device("cpu"))
        self._set_seed(self._user_seed)  # preparing leaves the XLA generator as the user had it
        module = prepared.module
        self._sync(list(module.parameters()) + list(module.buffers()) if module is not None else [])
        return prepared

    def _call_case(self, values, first: bool = False):
        self._ledger.switch(self)
        # The checker hands over x + t*u with u on some leaves only: made data here, every evaluation traces
        # the same forward graph whichever leaves were perturbed (else one graph per perturbation pattern).
        self._sync(list(values) + [t for t in map(_tangent, values) if t is not None])
        for value in values:
            if value.requires_grad and not getattr(value, "_gradaudit_materialize", False):
                value.register_hook(self._materialize_gradient)
                value._gradaudit_materialize = True
        self._pending_gradients = []  # left over only if a backward pass failed half-way
        self._set_seed(self._seed)
        try:
            output = super()._call_case(values, first)
        except AuditError as exc:
            if first and "Expected XLA tensor" in str(exc):  # the first call: say what usually causes it
                raise AuditError(f"{exc} (a CPU tensor captured by the function, or kept on the module outside its "
                                 "parameters and buffers? create it on the input's device)") from exc
            raise
        finally:
            self._set_seed(self._user_seed)  # whoever loads next (a float64 shadow) sees the user's state
        tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
        try:  # compiling and running happen here, not in the case's code
            self._sync(tensors + [t for t in map(_tangent, tensors) if t is not None])
        except Exception as exc:
            if first:
                raise backend_failure(self.device, "the forward", exc) from exc
            raise
        return output

    # -- XLA specifics --------------------------------------------------------------------------------------
    def _set_seed(self, seed: int) -> None:
        self._xla.xm.set_rng_state(seed, self._rng_device)

    def _sync(self, tensors: list[torch.Tensor]) -> None:
        """Execute the pending graph of ``tensors`` now and keep its results as device data: the next
        evaluation starts from data, not from an ever longer lazy graph."""
        tensors = [t for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "xla"]
        if tensors:
            self._xla.torch_xla._XLAC._xla_sync_multi(tensors, devices=[], wait=True)

    def _materialize_gradient(self, gradient: torch.Tensor) -> None:
        """Tensor hook on the leaves the checker differentiates: their gradients (and, in forward-over-reverse,
        the gradients' tangents) are computed together at the end of the backward pass that makes them. The
        checker then does its arithmetic on device data, so graphs like ``(g * u).sum()`` are one graph
        wherever they occur, instead of one backward-plus-arithmetic graph per call site."""
        if not self._pending_gradients:
            torch.autograd.Variable._execution_engine.queue_callback(self._sync_gradients)
        self._pending_gradients.append(gradient)
        tangent = _tangent(gradient)
        if tangent is not None:
            self._pending_gradients.append(tangent)

    def _sync_gradients(self) -> None:
        pending, self._pending_gradients = self._pending_gradients, []
        self._sync(pending)

    def _settle(self) -> None:
        if not self._closed:
            self._ledger.settle()

    @property
    def fallback_ops(self) -> list[str]:
        """aten ops that torch-xla ran on the CPU (no XLA lowering) during this audit, most frequent first;
        reads of scalar values back to Python are left out."""
        self._settle()
        return sorted(self._fallbacks, key=lambda name: (-self._fallbacks[name], name))

    @property
    def fallback_counts(self) -> dict[str, int]:
        """How often each op of :attr:`fallback_ops` fell back to the CPU."""
        self._settle()
        return dict(self._fallbacks)

    def close(self) -> None:
        if self._closed:
            return
        try:
            super().close()  # buffers back, CPU RNG back
        finally:
            self._ledger.settle()
            if self._ledger.owner is self:
                self._ledger.owner = None
            self._closed = True
            self._set_seed(self._user_seed)
            if self._saved_precision is not None:
                with _quiet(self._xla.backends.__name__):
                    self._xla.backends.set_mat_mul_precision(self._saved_precision)
                self._saved_precision = None


# The repro of a torch.ops case on this backend (gradaudit.suite.zoos.op_repro): a script that runs the op here and
# on eager float64 ({dtype}, {order}... are filled in), read as a literal like the class's other declarations.
REPRO_RUN = '''
def run(device, dtype):
    """Forward, gradient (seeded ±1 cotangents) and second derivative on ``device``."""
    args, kwargs, leaves = prepared(device, dtype)
    outs = outputs(args, kwargs)
    generator = torch.Generator().manual_seed(1)

    def signs(tensors):  # ±1 cotangents (±1 ± 1j for complex results)
        drawn = [torch.randint(0, 2, (*t.shape, 2) if t.is_complex() else t.shape, generator=generator) * 2.0 - 1
                 for t in tensors]
        return [(torch.view_as_complex(s) if t.is_complex() else s).to(t.device, t.dtype)
                for s, t in zip(drawn, tensors)]
    differentiable = [o for o in outs if o.requires_grad]
    grads = torch.autograd.grad(differentiable, leaves, signs(differentiable), create_graph=True, allow_unused=True,
                                materialize_grads=True) if differentiable and leaves else []
    second = []
    if {order} >= 2 and grads and any(g.requires_grad for g in grads):
        second = torch.autograd.grad([g for g in grads if g.requires_grad], leaves,
                                     signs([g for g in grads if g.requires_grad]), allow_unused=True,
                                     materialize_grads=True)
    return outs, list(grads), list(second)


device = torch_xla.device()  # before the first backward: autograd sizes its device queues once
expected = run("cpu", torch.float64)
got = run(device, {dtype})
'''


class XlaBackend(Backend):
    """torch-xla's lazy tensors on a PJRT device; torch_xla is imported on first use, never at import time."""

    name = "xla"
    description = "torch-xla lazy tensors (PJRT; CPU unless PJRT_DEVICE says otherwise)"
    required_modules = ("torch", "torch_xla")  # the quick check (Backend.required_modules)
    packages = ("torch-xla",)  # whose versions decide its results (Backend.packages)
    repro_imports = ("import torch_xla  # noqa: F401  (registers the xla device)",)  # (Backend.repro_run)
    repro_run = REPRO_RUN

    def availability(self) -> Availability:
        try:
            xla = import_xla()
        except AuditError as exc:
            return Availability(False, str(exc))
        return Availability(True, f"torch-xla {xla.version}, PJRT {xla.device_type}", ["xla"])

    def default_device(self) -> str:
        return "xla"

    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> XlaProgram:
        xla = import_xla()
        try:
            torch_device = torch.device(device or self.default_device())
        except RuntimeError as exc:
            raise AuditError(f"invalid device {device!r} for the xla backend") from exc
        if torch_device.type != "xla":
            raise AuditError(f"the xla backend runs on xla devices (e.g. 'xla', 'xla:0'), not {device!r}")
        return XlaProgram(case, torch_device, dtype, xla)
