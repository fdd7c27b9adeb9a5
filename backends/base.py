"""The interface every backend implements: a Backend loads a Case into a Program that evaluates it.

Loading is one template for every backend (:meth:`Program._load`): the shared loader
(:func:`gradaudit.case.prepare_case`) makes the private copy of the case (module copied, lazy parameters
initialized, tensors cast, leaves chosen and validated), then the backend only places it (device transfer,
export, compilation: :meth:`Program._place`) and evaluates it (:meth:`Program._evaluate`). What a program can do
beyond evaluating is declared in its :class:`Capabilities`, so the core and the analyzers never guess from
attributes or backend names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from gradaudit.case import Case, Leaf, PreparedCase, prepare_case
from gradaudit.core.kinds import Note
from gradaudit.errors import Unsupported

__all__ = ["Availability", "Backend", "Capabilities", "Leaf", "Program", "Stats"]


@dataclass
class Stats:
    """How much work an audit cost on a program: evaluations of the case, backward passes, compilations."""

    forward_evals: int = 0
    backward_evals: int = 0
    compilations: int = 0
    compile_seconds: float = 0.0  # of the wall time, how much went to compiling (XLA) or exporting (ONNX)
    batched_evals: int = 0  # of the forward evaluations, how many ran in batches (Program.evaluate_batch)
    batching: str = "none"  # how batches run: "none", "vmap", or why they fell back to one call per point

    def counters(self) -> dict[str, float]:
        """The keys of :meth:`to_dict` that add up across programs (all but ``batching``)."""
        return {key: value for key, value in self.to_dict().items() if isinstance(value, (int, float))}

    def to_dict(self) -> dict:
        """The report's ``stats`` keys."""
        return {"forward_evals": self.forward_evals, "backward_evals": self.backward_evals,
                "compilations": self.compilations, "compile_seconds": round(self.compile_seconds, 4),
                "batched_evals": self.batched_evals, "batching": self.batching}


@dataclass
class Availability:
    """Whether a backend can run here (``usable``), why or why not (``reason``), and on which devices."""

    usable: bool
    reason: str = ""
    devices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Capabilities:
    """What a program can do besides evaluating the case at leaf values.

    ``autograd``: its outputs carry a torch autograd graph (False for an exported graph in a runtime: the audit
    then takes finite differences through it and judges them against eager float64 gradients).
    ``forward_ad`` / ``double_backward``: forward-mode AD and second-order reverse mode work through it.
    ``reference``: it runs PyTorch's own eager kernels, the reference other backends are held against (no
    forward parity check against eager float64 is needed).
    ``batch_evaluation``: :meth:`Program.evaluate_batch` runs many points in fewer runs than one per point.
    ``module_outputs`` / ``node_modules``: :meth:`Program.module_outputs` and :meth:`Program.node_modules` map
    its computation back to the module paths of the case.
    ``fallback_ops``: :attr:`Program.fallback_counts` counts ops that ran on the CPU instead of the device.
    ``localizes_divergence``: :meth:`Program.locate_divergence` finds where it parts from eager itself (a
    compiled program, whose traced forward runs eagerly and so cannot be compared node by node).
    """

    autograd: bool = True
    forward_ad: bool = True
    double_backward: bool = True
    reference: bool = False
    batch_evaluation: bool = False
    module_outputs: bool = False
    node_modules: bool = False
    fallback_ops: bool = False
    localizes_divergence: bool = False


class Program(ABC):
    """A case loaded on a backend: ``program(values) -> outputs`` with every evaluation identical (RNG frozen,
    mutable state restored), so finite differences see one deterministic function.

    A subclass calls ``super().__init__(device)``, sets up what its :meth:`close` needs, then calls
    :meth:`_load`; it implements :meth:`_place` and :meth:`_evaluate`, and declares ``capabilities``.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, device: str) -> None:
        self.device = device
        self.stats = Stats()
        self.leaves: list[Leaf] = []  # parameters first, then inputs, as the shared loader orders them
        self.output_names: list[str] = []  # 'out', 'out[0]', 'out[1][h]': the differentiated outputs
        self.notes: list[Note] = []  # what the audit left out or changed, for the report
        self.module: nn.Module | None = None  # the private copy of the case's module (None for a function)

    # -- the loading template -------------------------------------------------------------------------------
    def _load(self, case: Case, dtype: torch.dtype | None) -> None:
        """Prepare the case with the shared loader, then place it; on failure, :meth:`close` gives back what
        the program had changed before the error propagates."""
        try:
            prepared = self._prepare(case, dtype)
            self._place(prepared)
            self.notes += prepared.notes
        except BaseException:
            self.close()
            raise

    def _prepare(self, case: Case, dtype: torch.dtype | None) -> PreparedCase:
        """The private copy of the case on this program's device; backends refine it (XLA initializes lazy
        modules on the CPU first) but do not redo it."""
        return prepare_case(case, dtype, self.device)

    @abstractmethod
    def _place(self, prepared: PreparedCase) -> None:
        """Put the prepared case where this backend runs it (device transfer, export, compilation) and set
        ``leaves``, ``output_names`` and ``module``."""

    @abstractmethod
    def _evaluate(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """The differentiable outputs with the leaves replaced by ``values``."""

    # -- using it -------------------------------------------------------------------------------------------
    def __call__(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Evaluate the case with the leaves replaced by ``values``; returns its differentiable outputs."""
        return self._evaluate(values)

    def evaluate_batch(self, points: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Outputs at many points (each a list of leaf values); one evaluation per point unless the backend
        declares ``capabilities.batch_evaluation``."""
        return [self(point) for point in points]

    def holding_values(self) -> AbstractContextManager[None]:
        """Within this block, the leaf values of each evaluation stay in the module after it returns, until the
        block ends: a backward that calls the module again (an adjoint ODE solver, a recomputing Function)
        then runs on the values it differentiates. Backends that never swap values in have nothing to hold."""
        return nullcontext()

    def module_outputs(self, values: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The value each module path ends with, at ``values`` (default: the leaves), where
        ``capabilities.module_outputs`` says the backend can tell."""
        raise Unsupported(f"the {type(self).__name__} cannot tell module outputs apart")

    def node_modules(self) -> list[tuple[str, str, str, str | None]]:
        """(node name, op type, module path, source ``file:line``) of each node of the backend's graph, where
        ``capabilities.node_modules`` says it has one."""
        raise Unsupported(f"the {type(self).__name__} has no graph of nodes to map onto modules")

    def display_name(self) -> str:
        """The program as its user knows it, for messages ("torch-xla", "the ONNX export run in onnxruntime")."""
        return f"the {self.device} program"

    def locate_divergence(self, reference: "Program", phase: str, seed: int = 0):
        """Where this program's ``phase`` ('forward' or 'backward') parts from ``reference`` (an
        ``analyzers.divergence.Divergence``, or None), where ``capabilities.localizes_divergence`` says it can."""
        raise Unsupported(f"the {type(self).__name__} does not locate divergences itself")

    @property
    def fallback_counts(self) -> dict[str, int]:
        """Ops that ran on the CPU instead of the device, and how often (``capabilities.fallback_ops``)."""
        return {}

    @property
    def supports_autograd(self) -> bool:
        """``capabilities.autograd`` (kept for callers of the older attribute)."""
        return self.capabilities.autograd

    @property
    def supports_forward_ad(self) -> bool:
        """``capabilities.forward_ad`` (kept for callers of the older attribute)."""
        return self.capabilities.forward_ad

    @property
    def supports_double_backward(self) -> bool:
        """``capabilities.double_backward`` (kept for callers of the older attribute)."""
        return self.capabilities.double_backward

    def close(self) -> None:
        """Restore global state (RNG, precision flags, buffers) the program changed."""

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dtype(self) -> torch.dtype:
        """The lowest floating precision among the leaves: what the audit's tolerances are about."""
        real = [leaf.value.real.dtype if leaf.value.is_complex() else leaf.value.dtype for leaf in self.leaves]
        return min(real, key=lambda d: torch.finfo(d).bits)


class Backend(ABC):
    """A plugin, registered under the ``gradaudit.backends`` entry point group: says whether it can run here
    and loads cases into Programs."""

    name: str = ""
    description: str = ""
    # The quick, import-free availability check: the top-level modules this backend needs (("torch",
    # "torch_xla")). `gradaudit backends` without --check calls the backend installed when each one is found
    # (importlib.util.find_spec), importing none of them. It reads this attribute, like `description`, from the
    # class body in the source file (gradaudit.registry.declared), because importing a backend's module imports
    # torch: write both as literals there. None: not declared (the quick listing says "unknown").
    required_modules: ClassVar[tuple[str, ...] | None] = None
    # Also literals, read the same way: the distributions whose versions decide this backend's results (a suite
    # keys its stored records on them), and the settings it takes from environment variables, as
    # {setting: (variable, default)} (a record made with another compiler is another record).
    packages: ClassVar[tuple[str, ...]] = ()
    environment: ClassVar[dict[str, tuple[str, str | None]]] = {}
    # The repro a suite writes for a torch.ops case on this backend (gradaudit.suite.zoos.op_repro), also read as
    # literals (or module-level literals they name): the script's part that runs the op here and on eager
    # float64 (a template: {dtype}, {order}, the environment's settings...), the imports it needs, the name the
    # script's title gives the backend, and the gradient limit where it differs from 64 times the forward's
    # drift. None: no repro.
    repro_run: ClassVar[str | None] = None
    repro_imports: ClassVar[tuple[str, ...]] = ()
    repro_title: ClassVar[str | None] = None
    repro_gradient_limit: ClassVar[str | None] = None
    # True where the backend's own localization attaches a repro of the piece it found (compile), which a report
    # writes beside the op's repro rather than in its place.
    repro_of_localized_piece: ClassVar[bool] = False

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here, and why not: the deep check (imports and probes what it needs)."""

    @abstractmethod
    def default_device(self) -> str:
        """The device ``load`` uses when none is given."""

    @abstractmethod
    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> Program:
        """Place the case on the device, cast floating tensors to ``dtype`` when given, return a Program."""
