"""The ONNX backend: the case exported with ``torch.onnx.export(..., dynamo=True)`` and run in onnxruntime.

An exported graph has no autograd, so its Program only evaluates (``capabilities.autograd`` is False): the audit
takes finite differences through onnxruntime and judges them against eager float64 gradients. Every
differentiable leaf (trainable parameters by ``named_parameters()`` name, then the floating tensors of
args/kwargs, in the eager backend's order) is a graph input, so parameters can be perturbed too.

onnxruntime's CPU provider lacks float64 kernels for many ops (Conv, Erf, ...): a float64 case is tried in
float64 first and falls back to float32 for the whole graph; ``program.precision`` and ``program.notes`` say
which ran and why.

``program.evaluate_batch(points)`` evaluates many perturbations in one session run: the exported graph is
wrapped as the body of an ONNX ``Scan`` over a leading batch axis (same kernels, same results as one run per
point). onnx, onnxruntime and onnxscript are imported lazily, inside the functions that need them.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import time
import warnings
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from gradaudit.case import Case, PreparedCase, flatten_outputs, prepare_case
from gradaudit.core.kinds import Note
from gradaudit.errors import AuditError, BackendFailure, Unsupported
from gradaudit.outcome import one_line
from gradaudit.rng import preserved_rng
from gradaudit.backends.base import Availability, Backend, Capabilities, Program, Stats

RANDOM_OPS = {"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
              "Multinomial"}
BATCH_PREFIX = "gradaudit_batched__"
MAX_BATCH_ELEMENTS = 1 << 25  # elements of stacked inputs + outputs per session run before splitting a batch


def _root_reason(exc: BaseException) -> str:
    """The innermost cause of an exporter error, in one line: the exporter wraps the real reason in a long
    explanation of its strategies."""
    seen, inner = set(), exc
    while inner.__cause__ is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__
    reason = f"{type(inner).__name__}: {one_line(inner)}"
    return reason if len(reason) <= 300 else reason[:297] + "..."


@contextlib.contextmanager
def _quiet_export():
    """The exporter logs (torchvision ops it skips), warns and prints; none of it is the audit's business,
    unless gradaudit logs at debug level (``-vv``): then all of it goes to stderr (stdout may carry a report)."""
    import sys

    from gradaudit.log import quiet_loggers

    with quiet_loggers("torch.onnx", "torch.export", "torch._export", "onnxscript") as quiet:
        if not quiet:
            with contextlib.redirect_stdout(sys.stderr):
                yield
            return
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield


class _LeafFunction(nn.Module):
    """``forward(*leaves) -> flat differentiable outputs``: the case with every leaf as an argument."""

    def __init__(self, prepared: PreparedCase, keep: list[bool]) -> None:
        super().__init__()
        self.inner = prepared.module  # registered: its buffers become initializers of the graph
        self.prepared = prepared
        self.keep = keep  # which outputs are differentiated
        self.record = _Record()  # not a pytree: export forbids changing a module's attributes in forward

    def forward(self, *leaves):
        tensors, names = flatten_outputs(self.prepared.call(list(leaves)))
        self.record.output_names = [name for name, k in zip(names, self.keep) if k]
        return tuple(t for t, k in zip(tensors, self.keep) if k)


class _Record:
    output_names: list[str] = []


@dataclass
class _Exported:
    model: object  # onnx.ModelProto
    session: object  # onnxruntime.InferenceSession
    input_names: list[str]
    output_names: list[str]  # graph output names (not the case's out[...] names)
    case_output_names: list[str]


def _numpy_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype


class OnnxProgram(Program):
    """The case exported to ONNX and run in onnxruntime (see the module docstring): it only evaluates."""

    capabilities = Capabilities(autograd=False, forward_ad=False, double_backward=False, batch_evaluation=True,
                                module_outputs=True, node_modules=True)

    def __init__(self, case: Case, device: str, dtype: torch.dtype | None, providers: list[str]) -> None:
        super().__init__(device)
        self.session_runs = 0
        self.points_evaluated = 0
        self.stats.batching = "onnx Scan"
        self.precision: torch.dtype | None = None  # what the exported graph runs in
        self._providers = providers
        self._batched = None
        self._shapes: list[tuple] | None = None
        with preserved_rng(cuda=False):  # tracing must not move the caller's RNG
            self._load(case, dtype)

    # -- loading -----------------------------------------------------------------------------------------
    def _prepare(self, case: Case, dtype: torch.dtype | None) -> PreparedCase:
        return prepare_case(case, dtype, "cpu")  # onnxruntime is fed from CPU arrays, whatever its provider

    def _place(self, prepared: PreparedCase) -> None:
        refuse_unexportable(prepared)
        self.module, self._label = prepared.module, prepared.label
        # Which outputs require grad when the leaves do (one eager call, on a copy: train-mode batch norm would
        # update the running stats): the others are not differentiated and not exported.
        with preserved_rng(cuda=False):
            first = prepared.private_copy().first_outputs()
        self.notes += first.notes
        self._keep = first.keep
        self.precision, self._exported, outputs = self._export_in_lowest_precision(prepared)
        self.leaves = [dataclasses.replace(leaf, value=leaf.value.to(self.precision)) for leaf in prepared.leaves]
        self.output_names = self._exported.case_output_names
        if not outputs:
            raise AuditError(f"{self._label} returned no floating-point or complex tensor to differentiate")
        # NaN or Inf where eager's outputs are finite (eager refuses those at load) is left to forward parity:
        # a divergence of the exported graph, named by element.
        refuse_random_graph(self, outputs)
        self.session_runs = self.stats.forward_evals = 0  # the load's own runs are not the audit's
        self.points_evaluated = 0

    def _export_in_lowest_precision(self, prepared: PreparedCase) -> tuple[torch.dtype, _Exported, list]:
        """Export and run in the leaves' lowest precision; where onnxruntime lacks a kernel in it (float64 Conv,
        Erf...), the whole graph in float32, and a note says so."""
        values = [leaf.value for leaf in prepared.leaves]
        lowest = min((v.dtype for v in values), key=lambda d: torch.finfo(d).bits)
        failures = []
        for precision in [lowest] + ([torch.float32] if lowest != torch.float32 else []):
            cast = [v.to(precision) for v in values]
            try:
                exported = export_graph(prepared, self._keep, cast, precision, self._providers, self.stats)
                outputs = self._run(exported, [v.numpy() for v in cast])
            except _RuntimeGap as exc:  # onnxruntime lacks a kernel in this precision: try the next one
                if not exc.missing_kernel:  # a graph it cannot run at all: the runtime fails, not a gap
                    raise BackendFailure(self.device, f"onnxruntime in {str(precision)[6:]}", exc) from None
                failures.append((precision, str(exc)))
                continue
            if failures:
                failed, why = str(failures[0][0])[6:], failures[0][1]
                self.notes.append(Note(what=f"onnx {failed}",
                                       reason=f"onnxruntime could not run the graph in {failed} ({why}); the whole "
                                              f"graph ran in {str(precision)[6:]}, judged against eager float64 "
                                              "gradients"))
            return precision, exported, outputs
        precision, reason = failures[-1]
        raise Unsupported(f"onnxruntime cannot run the exported graph in {str(precision)[6:]}: {reason}")

    # -- running -----------------------------------------------------------------------------------------
    def _run(self, exported: _Exported, arrays: list, session=None, input_names=None, output_names=None):
        session = session or exported.session
        feed = dict(zip(input_names or exported.input_names, arrays))
        try:
            results = session.run(output_names or exported.output_names, feed)
        except Exception as exc:
            raise _RuntimeGap(one_line(exc).replace("[ONNXRuntimeError] : ", "")) from None
        self.session_runs += 1
        self.stats.forward_evals += 1
        return [torch.from_numpy(r.copy() if not r.flags.writeable else r) for r in results]

    def _arrays(self, values: list[torch.Tensor]) -> list:
        dtype = _numpy_dtype(self.precision)
        return [v.detach().cpu().to(self.precision).numpy().astype(dtype, copy=False) for v in values]

    def _evaluate(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(values) != len(self.leaves):
            raise AuditError(f"expected {len(self.leaves)} leaf values, got {len(values)}")
        self.points_evaluated += 1
        try:
            return self._run(self._exported, self._arrays(values))
        except _RuntimeGap as exc:
            raise BackendFailure(self.device, "onnxruntime", exc) from None

    def display_name(self) -> str:
        return "the ONNX export run in onnxruntime"

    def node_modules(self) -> list[tuple[str, str, str, str | None]]:
        """See :func:`node_modules`."""
        return node_modules(self)

    def module_outputs(self, values: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """See :func:`module_outputs`."""
        return module_outputs(self, values)

    def evaluate_batch(self, points: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Outputs at many points (each a list of leaf values), in as few session runs as possible: the points
        are stacked along a new leading axis and run through a Scan over the exported graph."""
        if len(points) <= 1:
            return [self(point) for point in points]
        per_point = sum(v.numel() for v in points[0]) + sum(math.prod(s) for s in self._output_shapes())
        chunk = max(1, MAX_BATCH_ELEMENTS // max(per_point, 1))
        results: list[list[torch.Tensor]] = []
        for start in range(0, len(points), chunk):
            part = points[start:start + chunk]
            stacked = [torch.stack([p[i].detach().cpu().to(self.precision) for p in part]).numpy()
                       for i in range(len(self.leaves))]
            try:
                outputs = self._run(self._exported, stacked, session=self._batched_session(),
                                    input_names=[BATCH_PREFIX + n for n in self._exported.input_names],
                                    output_names=[BATCH_PREFIX + str(k) for k in range(len(self.output_names))])
            except _RuntimeGap as exc:
                raise BackendFailure(self.device, f"onnxruntime on a batch of {len(part)} points", exc) from None
            self.points_evaluated += len(part)
            self.stats.batched_evals += len(part)
            results += [[out[b] for out in outputs] for b in range(len(part))]
        return results

    def _output_shapes(self) -> list[tuple]:
        if self._shapes is None:
            self._shapes = [tuple(out.shape) for out in self([leaf.value for leaf in self.leaves])]
            self.session_runs -= 1
            self.stats.forward_evals -= 1
            self.points_evaluated -= 1
        return self._shapes

    def _batched_session(self):
        if self._batched is None:
            self._batched = _session(scan_model(self._exported.model, self._exported.output_names),
                                     self._providers)
        return self._batched


def export_graph(prepared: PreparedCase, keep: list[bool], values: list[torch.Tensor], precision: torch.dtype,
                 providers: list[str], stats: Stats) -> _Exported:
    """The case exported with every leaf as a graph input (in ``precision``; counted in ``stats``), and its
    onnxruntime session."""
    started = time.perf_counter()
    wrapper = _LeafFunction(prepared.private_copy(precision), keep)  # the exporter may touch the module
    with preserved_rng(cuda=False):
        try:
            with _quiet_export():
                onnx_program = torch.onnx.export(wrapper, tuple(values), dynamo=True, verbose=False, optimize=True)
        except AuditError:
            raise
        except Exception as exc:
            raise Unsupported(f"torch.onnx.export failed for {prepared.label}: {_root_reason(exc)}") from None
    stats.compilations += 1
    model = onnx_program.model_proto
    graph_inputs = [i.name for i in model.graph.input]
    if len(graph_inputs) != len(values):
        raise AuditError(f"the exported graph has {len(graph_inputs)} inputs for {len(values)} leaves")
    graph_outputs = [o.name for o in model.graph.output]
    case_names = list(wrapper.record.output_names)
    if len(graph_outputs) != len(case_names):  # mutated buffers come first, user outputs last
        graph_outputs = graph_outputs[len(graph_outputs) - len(case_names):]
    frozen = constant_parameters(model, prepared.param_names, graph_outputs)
    if frozen:
        raise Unsupported(f"the exported graph of {prepared.label} reads {', '.join(frozen)} as constants, not as "
                          "the graph inputs the audit perturbs (torch.export did not route "
                          "torch.func.functional_call to them); the onnx backend cannot check this module")
    session = _session(model, providers)
    stats.compile_seconds += time.perf_counter() - started
    return _Exported(model, session, graph_inputs, graph_outputs, case_names)


def _session(model, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    except Exception as exc:
        raise _RuntimeGap(one_line(exc).replace("[ONNXRuntimeError] : ", "")) from None


def refuse_random_graph(program: OnnxProgram, first: list[torch.Tensor]) -> None:
    """A graph that draws random numbers (train-mode dropout) is not the function eager audits: torch's masks
    cannot be reproduced in onnxruntime, and its own masks may change on every run."""
    random = _random_nodes(program._exported.model)
    if not random:
        return
    second = program._run(program._exported, program._arrays([leaf.value for leaf in program.leaves]))
    changes = not all(torch.equal(a, b) for a, b in zip(first, second))
    where = sorted({_node_info(node)[0] or node.name for node in random})
    ops = ", ".join(sorted({node.op_type for node in random}))
    how = "draws new numbers on every onnxruntime run" if changes else "onnxruntime draws its own masks"
    raise Unsupported(f"the exported graph of {program._label} is random: {ops} in training mode at "
                      f"{', '.join(where)} ({how}; torch's masks cannot be reproduced), so finite differences "
                      "through it do not measure the eager function: audit the module in eval() mode")


def refuse_unexportable(prepared: PreparedCase) -> None:
    """What the onnx backend cannot audit: complex or infinite leaves, and train-mode batch norm (the exporter
    writes it in inference form, so the exported graph is another function: refused like train-mode dropout,
    since a divergence the export itself causes is no finding)."""
    for leaf in prepared.leaves:
        if leaf.value.is_complex():
            raise Unsupported(f"{leaf.name} is complex; the onnx backend exports real tensors only")
        if not torch.isfinite(leaf.value).all():
            raise Unsupported(f"{leaf.name} contains NaN or Inf; finite differences cannot move it (the onnx "
                              "backend perturbs every element)")
    if prepared.module is None:
        return
    norms = [name for name, m in prepared.module.named_modules()
             if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if norms:
        raise Unsupported(f"{', '.join(norms)} of {prepared.label} in training mode: the exporter writes batch norm "
                          "in inference form (running statistics, not the batch statistics eager uses), so the "
                          "exported graph is another function; audit the module in eval() mode")


def constant_parameters(model, param_names: list[str], graph_outputs: list[str]) -> list[str]:
    """Parameters the exported graph reads as constant initializers instead of from its inputs."""
    constant = {init.name for init in model.graph.initializer}
    used = {name for node in _all_nodes(model) for name in node.input} | set(graph_outputs)
    return [n for n in param_names if f"inner.{n}" in constant and f"inner.{n}" in used]


def _random_nodes(model) -> list:
    """Nodes that draw random numbers: random generators, and Dropout unless its training_mode input is a
    constant False or its ratio a constant 0."""
    import onnx

    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    found = []
    for node in _all_nodes(model):
        if node.op_type not in RANDOM_OPS:
            continue
        if node.op_type == "Dropout":
            ratio = node.input[1] if len(node.input) > 1 and node.input[1] else None
            training = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if training is None or (training in constants and not bool(constants[training])):
                continue
            if ratio is not None and ratio in constants and float(constants[ratio]) == 0.0:
                continue
        found.append(node)
    return found


class _RuntimeGap(Exception):
    """onnxruntime could not create or run the session (often: no kernel for an op in this precision)."""

    @property
    def missing_kernel(self) -> bool:
        """onnxruntime has no kernel for an op in this precision (rather than failing on the graph)."""
        text = str(self)
        return "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text


def _all_nodes(model):
    yield from model.graph.node
    for function in model.functions:
        yield from function.node


def _node_info(node) -> tuple[str, str | None]:
    """(module path, source ``file:line``) of an exported node, from the exporter's metadata."""
    import ast

    props = {p.key: p.value for p in node.metadata_props}
    module = ""
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = []
        # scopes: ['', 'inner', 'inner.0', 'conv1d']: the wrapper, module paths, then the op's own name
        paths = [p for p in parts[:-1] if p]
        if paths:
            module = paths[-1]
            if module == "inner" or module.startswith("inner."):
                module = module[len("inner."):] if module != "inner" else ""
    source = None
    trace = props.get("pkg.torch.onnx.stack_trace")
    if trace:
        frames = [line.strip() for line in trace.splitlines() if line.strip().startswith("File ")]
        torch_dir = os.path.dirname(torch.__file__) + os.sep
        user = [f for f in frames if torch_dir not in f and __file__ not in f]
        if user:
            frame = user[-1]
            try:
                file = frame.split('"')[1].rsplit("/", 1)[-1]
                line = frame.split("line ")[1].split(",")[0]
                source = f"{file}:{line}"
            except IndexError:
                source = None
    return module, source


def scan_model(model, output_names: list[str]):
    """A model whose inputs are the original inputs stacked along a new leading axis, and whose outputs are
    ``BATCH_PREFIX + k`` for the k-th of ``output_names``, stacked likewise: a Scan with the original graph as
    its body. Initializers stay in the outer graph, which the body reads from its enclosing scope."""
    from onnx import helper

    graph = model.graph
    body = helper.make_graph(
        list(graph.node) + [helper.make_node("Identity", [name], [f"{BATCH_PREFIX}body_{k}"])
                            for k, name in enumerate(output_names)],
        "gradaudit_scan_body",
        list(graph.input),
        [_value_info(f"{BATCH_PREFIX}body_{k}", _find_value(graph, name), batch=False)
         for k, name in enumerate(output_names)],
        value_info=list(graph.value_info))
    outer_inputs = [_value_info(BATCH_PREFIX + i.name, i, batch=True) for i in graph.input]
    outer_outputs = [_value_info(BATCH_PREFIX + str(k), _find_value(graph, name), batch=True)
                     for k, name in enumerate(output_names)]
    scan = helper.make_node("Scan", [i.name for i in outer_inputs], [o.name for o in outer_outputs],
                            name="gradaudit_scan", body=body, num_scan_inputs=len(outer_inputs))
    outer = helper.make_graph([scan], "gradaudit_batched", outer_inputs, outer_outputs,
                              initializer=list(graph.initializer))
    batched = helper.make_model(outer, opset_imports=list(model.opset_import), functions=list(model.functions))
    batched.ir_version = model.ir_version
    return batched


def _find_value(graph, name: str):
    for value in list(graph.output) + list(graph.value_info) + list(graph.input):
        if value.name == name:
            return value
    raise AuditError(f"the exported graph has no type for output {name}")


def _value_info(name: str, like, batch: bool):
    from onnx import helper

    tensor = like.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return helper.make_tensor_value_info(name, tensor.elem_type, (["batch"] if batch else []) + dims)


# -- localization ------------------------------------------------------------------------
def node_modules(program: OnnxProgram) -> list[tuple[str, str, str, str | None]]:
    """(onnx node name, op type, module path, source ``file:line``) for each node of the exported graph; the
    module path is the user's (``""`` for the top level), as ``named_modules()`` names it."""
    rows = []
    for node in program._exported.model.graph.node:
        module, source = _node_info(node)
        rows.append((node.name, node.op_type, module, source))
    return rows


def intermediate_values(program: OnnxProgram, values: list[torch.Tensor] | None = None,
                        names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Values of intermediate graph tensors (all node outputs, or ``names``) at ``values`` (default: the
    program's leaves), by exposing them as extra graph outputs of a copy of the model."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(program._exported.model)
    graph = model.graph
    existing = {o.name for o in graph.output}
    produced = [out for node in graph.node for out in node.output if out]
    wanted = [n for n in (names if names is not None else produced) if n and n not in existing]
    typed = {v.name: v for v in list(graph.value_info)}
    for name in wanted:
        if name in typed:
            graph.output.append(typed[name])
        else:
            graph.output.append(onnx.ValueInfoProto(name=name))
    session = _session(model, program._providers)
    values = [leaf.value for leaf in program.leaves] if values is None else values
    requested = list(wanted) + [n for n in (names or []) if n in existing]
    outputs = program._run(program._exported, program._arrays(values), session=session,
                           output_names=requested)
    return dict(zip(requested, outputs))


def module_outputs(program: OnnxProgram, values: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The exported value each module path ends with (the output of its last node), at ``values``: compare with
    eager forward-hook outputs to see where an exported graph starts to diverge."""
    last: dict[str, str] = {}
    for node in program._exported.model.graph.node:
        module, _ = _node_info(node)
        if module and node.output and node.output[0]:
            last[module] = node.output[0]
    values_by_name = intermediate_values(program, values, list(dict.fromkeys(last.values())))
    return {module: values_by_name[name] for module, name in last.items() if name in values_by_name}


# The repro of a torch.ops case on this backend (gradaudit.suite.zoos.op_repro): a script that runs the op here and
# on eager float64 ({dtype}, {order}... are filled in), read as a literal like the class's other declarations.
REPRO_RUN = '''
class Op(torch.nn.Module):
    """The op with the differentiated tensors as inputs, the way gradaudit exports it."""

    def forward(self, *values):
        args, kwargs, leaves = prepared("cpu", {dtype})
        swap = dict(zip(map(id, leaves), values))
        args, kwargs = tree_map(lambda t: swap.get(id(t), t), (args, kwargs))
        return tuple(outputs(args, kwargs))


def onnx_outputs(values):
    feed = {{i.name: v.detach().numpy() for i, v in zip(session.get_inputs(), values)}}
    return [torch.from_numpy(r) for r in session.run(None, feed)]


_, _, leaves = prepared("cpu", {dtype})
exported = torch.onnx.export(Op(), tuple(v.detach() for v in leaves), dynamo=True)
session = onnxruntime.InferenceSession(exported.model_proto.SerializeToString())
args, kwargs, eager_leaves = prepared("cpu", torch.float64)
eager_outs = outputs(args, kwargs)
got_outs = onnx_outputs([v.detach() for v in leaves])
# The gradient along one seeded direction: onnxruntime by central differences, eager by autograd.
generator = torch.Generator().manual_seed(1)
direction = [torch.randn(v.shape, generator=generator, dtype=torch.float64) for v in eager_leaves]
cotangent = [torch.randn(o.shape, generator=generator, dtype=torch.float64) for o in eager_outs]
step = torch.finfo({dtype}).eps ** (1 / 3)
shifted = lambda sign: onnx_outputs([(v.detach().double() + sign * step * u).to({dtype}) for v, u in zip(leaves, direction)])
numerical = sum(((p.double() - m.double()) / (2 * step) * c).sum() for p, m, c in zip(shifted(1), shifted(-1), cotangent))
grads = torch.autograd.grad(eager_outs, eager_leaves, cotangent, allow_unused=True, materialize_grads=True)
analytical = sum((g * u).sum() for g, u in zip(grads, direction))
expected = (eager_outs, [analytical.reshape(1)], [])
got = (got_outs, [numerical.reshape(1)], [])
'''


class OnnxBackend(Backend):
    """Exports the case with ``torch.onnx.export(..., dynamo=True)`` and runs it in onnxruntime (CPU, or CUDA
    where its provider is installed)."""

    name = "onnx"
    description = "torch.onnx.export (dynamo) graph run in onnxruntime; finite differences judged against eager"
    required_modules = ("torch", "onnx", "onnxruntime", "onnxscript")  # the quick check (Backend.required_modules)
    packages = ("onnxruntime", "onnx", "onnxscript")  # whose versions decide its results (Backend.packages)
    repro_imports = ("import onnxruntime",)  # (Backend.repro_run)
    repro_run = REPRO_RUN
    # finite differences in onnxruntime's precision carry an error of about eps^(2/3) on top of the drift
    repro_gradient_limit = "64 * max(drift, torch.finfo({dtype}).eps) + 64 * torch.finfo({dtype}).eps ** (2 / 3)"

    def availability(self) -> Availability:
        missing = []
        for package in ("onnx", "onnxruntime", "onnxscript"):
            try:
                __import__(package)
            except Exception as exc:
                missing.append(f"{package} ({type(exc).__name__})")
        if missing:
            return Availability(False, f"missing {', '.join(missing)}; pip install 'gradaudit[onnx]'")
        import onnxruntime as ort

        providers = ort.get_available_providers()
        devices = ["cpu"] + (["cuda"] if "CUDAExecutionProvider" in providers else [])
        return Availability(True, f"onnxruntime {ort.__version__} ({', '.join(providers)})", devices)

    def default_device(self) -> str:
        return "cpu"

    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> OnnxProgram:
        import onnxruntime as ort

        device = device or self.default_device()
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device in ("cuda", "cuda:0") and "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise AuditError(f"device {device!r} is not available to onnxruntime here "
                             f"(providers: {', '.join(available)})")
        return OnnxProgram(case, device, dtype, providers)
