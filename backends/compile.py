"""The compile backend: the case's forward compiled by ``torch.compile`` (dynamo, then a compiler backend:
``inductor`` by default, ``aot_eager``, or any registered dynamo backend), its backward through AOTAutograd.

The compiler backend and mode come from :class:`CompileBackend`'s arguments, else from the environment
(``GRADAUDIT_COMPILE_BACKEND``, ``GRADAUDIT_COMPILE_MODE``); ``--device`` stays the device (cpu, or cuda).

What differs from the eager program it extends:

* every evaluation calls the compiled forward (``dynamic=False``: one graph per shape); the program compiles
  both variants it needs when it loads, with grad (forward and backward graphs through AOTAutograd) and
  without (the finite differences run under ``no_grad``), so a compiler failure is a load error;
* ``stats.compilations`` counts the graphs dynamo handed to the compiler for this program; graph breaks
  (code that ran eagerly between graphs) are noted; hitting dynamo's recompile limit is an error, never a
  silent fall back to eager;
* forward-mode AD and double backward are not declared: AOTAutograd's compiled backward is not itself
  differentiable, and dual tensors are not audited through compiled code here, so order 2 is skipped with
  that reason instead of passing on eager's formulas;
* each graph dynamo captured is kept (:class:`GraphCapture`), with the inputs of its last recorded call, so
  that a divergence from eager can be searched op by op in it (:mod:`gradaudit.analyzers.compiled`);
* on close, dynamo's caches are reset (``torch._dynamo.reset()``), so no compiled code or guard outlives
  the case; compiler settings the program changes are patched per call and so never leak.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ContextManager, Iterator

import torch

from gradaudit.case import Case, PreparedCase
from gradaudit.core.kinds import Note
from gradaudit.errors import AuditError, Unsupported
from gradaudit.outcome import one_line
from gradaudit.backends.base import Availability, Backend, Capabilities
from gradaudit.backends.eager import EagerProgram, local_device

__all__ = ["CompileBackend", "CompileProgram", "CapturedGraph", "GraphCapture", "COMPILER_ENV", "MODE_ENV"]

COMPILER_ENV = "GRADAUDIT_COMPILE_BACKEND"
MODE_ENV = "GRADAUDIT_COMPILE_MODE"
DEFAULT_COMPILER = "inductor"


@dataclass
class CapturedGraph:
    """One FX graph dynamo handed to the compiler: a copy of it as traced (torch-level ops, with module paths
    and stack traces in each node's ``meta``), the grad mode it was compiled for, and its most recent inputs
    while the capture was recording."""

    module: torch.fx.GraphModule
    grad_enabled: bool
    inputs: list[Any] | None = None
    requires_grad: list[bool] | None = None


@dataclass
class GraphCapture:
    """The dynamo backend a program compiles with: keeps each graph, then compiles it with the real compiler
    (``inductor`` with ``mode``, or a registered backend by name)."""

    compiler: str
    mode: str | None = None
    graphs: list[CapturedGraph] = field(default_factory=list)
    recording: bool = False

    def __post_init__(self) -> None:
        self._compile = compiler_function(self.compiler, self.mode)

    @property
    def __name__(self) -> str:  # what dynamo's errors name the backend by ('backend="inductor" raised')
        return self.compiler

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        # The compiler may rewrite the graph in place: keep a copy of the graph dynamo traced.
        captured = CapturedGraph(torch.fx.GraphModule(gm, copy_graph(gm.graph)), torch.is_grad_enabled())
        self.graphs.append(captured)
        compiled = self._compile(gm, example_inputs)

        def run(*args: Any) -> Any:
            if self.recording:
                captured.inputs = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args]
                captured.requires_grad = [isinstance(a, torch.Tensor) and a.requires_grad for a in args]
            return compiled(*args)
        return run

    def compiled(self, fn: Callable) -> Callable:
        """``fn`` compiled by dynamo with this capture as its backend: static shapes, graph breaks allowed."""
        return torch.compile(fn, backend=self, dynamic=False, fullgraph=False)

    @contextmanager
    def recording_inputs(self) -> Iterator[None]:
        """While inside, each compiled graph keeps the inputs of its latest call."""
        self.recording = True
        try:
            yield
        finally:
            self.recording = False


def copy_graph(graph: torch.fx.Graph) -> torch.fx.Graph:
    """A copy of an FX graph (node metadata copied shallowly, as FX does)."""
    copied = torch.fx.Graph()
    output = copied.graph_copy(graph, {})
    copied.output(output)
    return copied


def compiler_function(name: str, mode: str | None) -> Callable:
    """The dynamo backend ``name`` with ``mode`` applied, as ``torch.compile`` would build it."""
    if name == "inductor":
        return torch._TorchCompileInductorWrapper(mode, None, False)
    return torch._TorchCompileWrapper(name, mode, None, False)


@contextmanager
def audit_compile_settings() -> Iterator[None]:
    """Settings every compiled call of an audit runs under, restored on leaving: past dynamo's recompile
    limit it raises instead of silently running eagerly, and no on-disk cache answers for a compilation (an
    entry from another process, compiled under other registrations, would hide what this one compiles)."""
    import torch._dynamo.config
    import torch._functorch.config
    import torch._inductor.config

    with ExitStack() as stack:
        stack.enter_context(torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, allow_rnn=True))
        stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
        stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
        yield


@dataclass
class CompiledCase(PreparedCase):
    """A prepared case whose ``call`` runs the compiled forward."""

    compiled: Callable[[list], Any] | None = None

    @classmethod
    def of(cls, prepared: PreparedCase, capture: GraphCapture) -> "CompiledCase":
        """``prepared`` with its call compiled through ``capture``."""
        case = cls(**{f.name: getattr(prepared, f.name) for f in fields(prepared)})
        case.compiled = capture.compiled(prepared.call)
        return case

    def call(self, values: list) -> Any:
        """The compiled case's raw output with the leaves replaced by ``values``; the plain case under an
        analyzer's dispatch or function mode (a traced forward): dynamo would run it eagerly anyway, and then
        skip the compiled code for good."""
        if torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():
            return super().call(values)
        return self.compiled(list(values))


def graph_break_count() -> dict[str, int]:
    """Graph breaks dynamo has counted in this process, by reason."""
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"])


def graph_break_reasons(before: dict[str, int]) -> list[str]:
    """Reasons of the graph breaks counted since ``before`` (first lines)."""
    now = graph_break_count()
    return [reason.strip().splitlines()[0] for reason, count in now.items() if count > before.get(reason, 0)]


class CompileProgram(EagerProgram):
    """An :class:`EagerProgram` whose forward is the compiled one (see the module docstring)."""

    capabilities = Capabilities(forward_ad=False, double_backward=False, localizes_divergence=True)

    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype | None, compiler: str,
                 mode: str | None) -> None:
        self.capture = GraphCapture(compiler, mode)
        self.compiler, self.mode = compiler, mode
        self._closed = False
        self._graph_breaks = graph_break_count()
        super().__init__(case, device, dtype)

    def _place(self, prepared: PreparedCase) -> None:
        compiled = CompiledCase.of(prepared, self.capture)
        super()._place(compiled)  # the first call compiles the graph with grad
        with torch.no_grad():  # and the finite differences' graph, now, so that a failure is a load error
            self._call_case([leaf.value for leaf in self.leaves])
        self.stats.forward_evals = 0
        if not any(graph.grad_enabled for graph in self.capture.graphs):
            reasons = graph_break_reasons(self._graph_breaks)
            raise Unsupported(f"torch.compile ({self.compiler}) compiled no graph of this case: dynamo ran it "
                              f"eagerly{' (' + reasons[0] + ')' if reasons else ''}, so there is no compiled "
                              "code to audit")
        self.notes += self._compile_notes()

    def _call_case(self, values, first: bool = False):
        try:
            with audit_compile_settings():
                return super()._call_case(values, first)
        except AuditError:
            raise
        except torch._dynamo.exc.TorchDynamoException as exc:
            raise AuditError(f"torch.compile ({self.compiler}) failed: {type(exc).__name__}: "
                             f"{one_line(exc)}") from exc
        finally:  # a call compiles when no earlier graph's guards pass
            self.stats.compilations = self.compilations

    @property
    def compilations(self) -> int:
        """Graphs compiled for this program so far."""
        return len(self.capture.graphs)

    def _compile_notes(self) -> list[Note]:
        variants = ", ".join(f"{'with' if g.grad_enabled else 'without'} grad" for g in self.capture.graphs)
        notes = [Note(what=f"torch.compile ({self.compiler}{', mode ' + self.mode if self.mode else ''})",
                      note=True,  # how the audit ran, not something it left out
                      reason=f"{self.compilations} graph{'s' * (self.compilations != 1)} compiled ({variants}); "
                             "forward-mode AD and double backward are not audited through compiled code")]
        reasons = graph_break_reasons(self._graph_breaks)
        if reasons:
            notes.append(Note(what="graph breaks", reason="dynamo broke the forward into several graphs "
                              f"(the code between them ran eagerly): {'; '.join(reasons)}"))
        return notes

    def display_name(self) -> str:
        return f"torch.compile ({self.compiler})"

    def compile_alone(self, gm: torch.fx.GraphModule) -> Callable:
        """``gm`` compiled alone as this program compiles (its compiler and mode, static shapes, one graph): how
        the divergence search recompiles a piece of dynamo's graph."""
        return torch.compile(gm, backend=compiler_function(self.compiler, self.mode), dynamic=False, fullgraph=True)

    @staticmethod
    def compile_settings() -> ContextManager[None]:
        """The settings every compiled call of an audit runs under (:func:`audit_compile_settings`)."""
        return audit_compile_settings()

    def locate_divergence(self, reference, phase: str, seed: int = 0):
        """Where this program's ``phase`` ('forward' or 'backward') parts from eager: the op (or fused segment)
        of dynamo's graph that diverges when compiled alone, with a standalone repro."""
        from gradaudit.analyzers.compiled import locate_compiled_divergence

        return locate_compiled_divergence(self, phase, seed)

    def close(self) -> None:
        """Give back what the eager program does, and drop every compiled graph and guard (dynamo reset)."""
        if self._closed:
            return
        self._closed = True
        try:
            super().close()
        finally:
            torch._dynamo.reset()


# The repro of a torch.ops case on this backend (gradaudit.suite.zoos.op_repro): a script that runs the op here and
# on eager float64 ({dtype}, {order}... are filled in), read as a literal like the class's other declarations.
REPRO_RUN = '''
def run(compiled):
    """Forward and gradient (seeded ±1 cotangents) of the op, eagerly in float64 or through torch.compile."""
    args, kwargs, leaves = prepared("cpu", {dtype} if compiled else torch.float64)
    forward = torch.compile(outputs, backend={compiler!r}, dynamic=False) if compiled else outputs
    outs = forward(args, kwargs)
    generator = torch.Generator().manual_seed(1)

    def signs(tensors):  # ±1 cotangents (±1 ± 1j for complex results)
        drawn = [torch.randint(0, 2, (*t.shape, 2) if t.is_complex() else t.shape, generator=generator) * 2.0 - 1
                 for t in tensors]
        return [(torch.view_as_complex(s) if t.is_complex() else s).to(t.device, t.dtype)
                for s, t in zip(drawn, tensors)]
    differentiable = [o for o in outs if o.requires_grad]
    grads = torch.autograd.grad(differentiable, leaves, signs(differentiable), allow_unused=True,
                                materialize_grads=True) if differentiable and leaves else []
    return outs, list(grads), []  # (a compiled backward has no double backward)


expected = run(False)
got = run(True)
'''


class CompileBackend(Backend):
    """``torch.compile`` on the CPU (or CUDA): the compiler backend is ``compiler`` (default: the
    ``GRADAUDIT_COMPILE_BACKEND`` variable, else inductor), with ``mode`` (``GRADAUDIT_COMPILE_MODE``)."""

    name = "compile"
    description = "torch.compile (inductor unless GRADAUDIT_COMPILE_BACKEND names another dynamo backend)"
    required_modules = ("torch",)  # the quick check (Backend.required_modules)
    packages = ("torch",)  # whose versions decide its results (Backend.packages)
    # (Backend.environment: an aot_eager record is no inductor one)
    environment = {"compiler": ("GRADAUDIT_COMPILE_BACKEND", "inductor"), "mode": ("GRADAUDIT_COMPILE_MODE", None)}
    repro_run = REPRO_RUN  # (Backend.repro_run)
    repro_title = "torch.compile ({compiler})"
    repro_of_localized_piece = True  # its localization's repro is of the diverging piece of dynamo's graph

    def __init__(self, compiler: str | None = None, mode: str | None = None) -> None:
        self.compiler = compiler or os.environ.get(COMPILER_ENV) or DEFAULT_COMPILER
        self.mode = mode or os.environ.get(MODE_ENV) or None

    def availability(self) -> Availability:
        try:
            from torch._dynamo import is_dynamo_supported, list_backends

            if not is_dynamo_supported():
                return Availability(False, f"torch.compile is not supported here (torch {torch.__version__})")
            known = list_backends(exclude_tags=())
        except Exception as exc:
            return Availability(False, f"torch._dynamo failed to import: {type(exc).__name__}: {one_line(exc)}")
        if self.compiler not in known:
            return Availability(False, f"no dynamo backend named {self.compiler!r} ({COMPILER_ENV}); "
                                f"registered: {', '.join(sorted(known))}")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        return Availability(True, f"torch {torch.__version__}, compiler {self.compiler}"
                            + (f", mode {self.mode}" if self.mode else ""), devices)

    def default_device(self) -> str:
        return "cpu"

    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> CompileProgram:
        availability = self.availability()
        if not availability.usable:
            raise AuditError(availability.reason)
        torch_device = local_device(device or self.default_device(), self.name)
        return CompileProgram(case, torch_device, dtype, self.compiler, self.mode)
