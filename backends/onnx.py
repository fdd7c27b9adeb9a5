"""The ONNX backend: the case exported with ``torch.onnx.export(..., dynamo=True)`` and run in onnxruntime.

An exported graph has no autograd, so its Program only evaluates (``supports_autograd = False``): the audit
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
import copy
import io
import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from gradaudit.case import Case, InputSlots, choose_leaves, differentiated_outputs, flatten_outputs
from gradaudit.errors import AuditError
from gradaudit.backends.base import Availability, Backend, Leaf, Program, Stats
from gradaudit.backends.eager import RngState, cast_tensor

RANDOM_OPS = {"Dropout", "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
              "Multinomial"}
BATCH_PREFIX = "gradaudit_batched__"
MAX_BATCH_ELEMENTS = 1 << 25  # elements of stacked inputs + outputs per session run before splitting a batch


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _root_reason(exc: BaseException) -> str:
    """The innermost cause of an exporter error, in one line: the exporter wraps the real reason in a long
    explanation of its strategies."""
    seen, inner = set(), exc
    while inner.__cause__ is not None and id(inner) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__
    reason = f"{type(inner).__name__}: {_one_line(inner)}"
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

    def __init__(self, module: nn.Module | None, fn, param_names: list[str], inputs: InputSlots,
                 keep: list[bool] | None = None) -> None:
        super().__init__()
        self.inner = module  # registered: its buffers become initializers of the graph
        self.fn = fn
        self.param_names = param_names
        self.inputs = inputs
        self.keep = keep  # which outputs are differentiated (None: all)
        self.record = _Record()  # not a pytree: export forbids changing a module's attributes in forward

    def forward(self, *leaves):
        n = len(self.param_names)
        args, kwargs = self.inputs.rebuild(list(leaves[n:]))
        if self.inner is None:
            output = self.fn(*args, **kwargs)
        else:
            output = torch.func.functional_call(self.inner, dict(zip(self.param_names, leaves[:n])), args, kwargs)
        tensors, names = flatten_outputs(output)
        keep = self.keep or [True] * len(tensors)
        self.record.output_names = [name for name, k in zip(names, keep) if k]
        return tuple(t for t, k in zip(tensors, keep) if k)


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
    supports_autograd = False
    supports_forward_ad = False
    supports_double_backward = False

    def __init__(self, case: Case, device: str, dtype: torch.dtype | None, providers: list[str]) -> None:
        self.device = device
        self.stats = Stats()
        self.notes: list[dict] = []  # {"what", "reason"}, ready for a report's ``skipped``
        self.session_runs = 0
        self.points_evaluated = 0
        self._providers = providers
        self._batched = None
        self._user_rng = RngState(cuda=False)
        try:
            self._setup(case, dtype)
        finally:
            self._user_rng.restore()  # tracing must not move the caller's RNG

    # -- loading -----------------------------------------------------------------------------------------
    def _setup(self, case: Case, dtype: torch.dtype | None) -> None:
        def move(t):
            return cast_tensor(t.detach().cpu(), dtype) if isinstance(t, torch.Tensor) else t
        args = tuple(torch.utils._pytree.tree_map(move, case.args))
        kwargs = torch.utils._pytree.tree_map(move, case.kwargs)
        module = None
        if isinstance(case.fn, nn.Module):
            try:
                module = copy.deepcopy(case.fn).cpu()
            except Exception as exc:
                raise AuditError(f"cannot copy module {type(case.fn).__name__} for auditing: {exc}") from exc
            if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
                rng = RngState(cuda=False)
                original = torch.utils._pytree.tree_map(
                    lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t, (case.args, case.kwargs))
                with torch.no_grad():
                    module(*original[0], **original[1])  # lazy modules infer their shapes on the first call
                rng.restore()
            if dtype is not None:
                module._apply(lambda t: cast_tensor(t, dtype))
        choice = choose_leaves(case)
        inputs = InputSlots.of(args, kwargs, set(choice.inputs))
        params = [] if module is None else [(n, p) for n, p in module.named_parameters() if n in choice.parameters]
        values = [p.detach().clone() for _, p in params] + [inputs.values[s].detach().clone() for s in inputs.slots]
        names = [n for n, _ in params] + list(inputs.names)
        kinds = ["parameter"] * len(params) + ["input"] * len(inputs.slots)
        if not values:
            raise AuditError("nothing to differentiate: no floating-point or complex tensor in args/kwargs "
                             "and no trainable parameter")
        for name, value in zip(names, values):
            if value.is_complex():
                raise AuditError(f"{name} is complex; the onnx backend exports real tensors only")
            if not torch.isfinite(value).all():
                raise AuditError(f"{name} contains NaN or Inf; gradients cannot be checked there")
        self._case_label = case.label
        self._param_names = [n for n, _ in params]
        self.module, self._fn, self._inputs = module, case.fn, inputs
        self._refuse_train_mode_batch_norm(module)
        self._keep = self._differentiated_outputs(values)

        lowest = min((v.dtype for v in values), key=lambda d: torch.finfo(d).bits)
        tries = [lowest] + ([torch.float32] if lowest != torch.float32 else [])
        failures = []
        for precision in tries:
            cast = [v.to(precision) for v in values]
            try:
                exported = self._export(cast, precision)
                outputs = self._run(exported, [v.numpy() for v in cast])
            except _RuntimeGap as exc:  # onnxruntime lacks a kernel in this precision: try the next one
                failures.append((precision, str(exc)))
                continue
            break
        else:
            precision, reason = failures[-1]
            raise AuditError(f"onnxruntime cannot run the exported graph in {str(precision)[6:]}: {reason}")
        if failures:
            self.notes.append({"what": f"onnx {str(failures[0][0])[6:]}",
                               "reason": f"onnxruntime could not run the graph in {str(failures[0][0])[6:]} "
                                         f"({failures[0][1]}); the whole graph ran in {str(precision)[6:]}, "
                                         "judged against eager float64 gradients"})
        self.precision = precision
        self._exported = exported
        self.leaves = [Leaf(n, v.to(precision), k) for n, v, k in zip(names, values, kinds)]
        self.output_names = exported.case_output_names
        if not outputs:
            raise AuditError(f"{case.label} returned no floating-point or complex tensor to differentiate")
        for name, out in zip(self.output_names, outputs):
            if not torch.isfinite(out).all():
                raise AuditError(f"the exported graph of {case.label} produced NaN or Inf in {name}")
        self._check_deterministic(outputs)
        self.session_runs = self.stats.forward_evals = 0  # the load's own runs are not the audit's
        self.points_evaluated = 0

    def _differentiated_outputs(self, values: list[torch.Tensor]) -> list[bool]:
        """Which outputs require grad when the leaves do (one eager call): the others are not differentiated
        and not exported."""
        module = copy.deepcopy(self.module)  # train-mode batch norm would update the running stats
        wrapper = _LeafFunction(module, self._fn, self._param_names, self._inputs)
        rng = RngState(cuda=False)
        try:
            with torch.enable_grad():
                tensors = wrapper(*[v.detach().requires_grad_() for v in values])
        except Exception as exc:
            raise AuditError(f"calling the case raised {type(exc).__name__}: {_one_line(exc)}") from exc
        finally:
            rng.restore()
        _, keep, notes = differentiated_outputs(list(tensors), wrapper.record.output_names, self._case_label)
        self.notes += notes
        return keep

    def _refuse_train_mode_batch_norm(self, module: nn.Module | None) -> None:
        if module is None:
            return
        norms = [name for name, m in module.named_modules()
                 if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if norms:  # refused like train-mode dropout: a divergence the export itself causes is no finding
            raise AuditError(f"{', '.join(norms)} of {self._case_label} in training mode: the exporter writes "
                             "batch norm in inference form (running statistics, not the batch statistics eager "
                             "uses), so the exported graph is another function; audit the module in eval() mode")

    def _export(self, values: list[torch.Tensor], precision: torch.dtype) -> _Exported:
        module = copy.deepcopy(self.module) if self.module is not None else None  # the exporter may touch it
        if module is not None:
            module._apply(lambda t: cast_tensor(t, precision))
        inputs = copy.copy(self._inputs)
        inputs.values = [cast_tensor(v, precision) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                         for v in inputs.values]
        wrapper = _LeafFunction(module, self._fn, self._param_names, inputs, self._keep)
        rng = RngState(cuda=False)
        try:
            with _quiet_export():
                onnx_program = torch.onnx.export(wrapper, tuple(values), dynamo=True, verbose=False,
                                                 optimize=True)
        except AuditError:
            raise
        except Exception as exc:
            raise AuditError(f"torch.onnx.export failed for {self._case_label}: {_root_reason(exc)}") from None
        finally:
            rng.restore()
        self.stats.compilations += 1
        model = onnx_program.model_proto
        graph_inputs = [i.name for i in model.graph.input]
        if len(graph_inputs) != len(values):
            raise AuditError(f"the exported graph has {len(graph_inputs)} inputs for {len(values)} leaves")
        graph_outputs = [o.name for o in model.graph.output]
        case_names = list(wrapper.record.output_names)
        if len(graph_outputs) != len(case_names):  # mutated buffers come first, user outputs last
            graph_outputs = graph_outputs[len(graph_outputs) - len(case_names):]
        constant = {init.name for init in model.graph.initializer}
        used = {name for node in _all_nodes(model) for name in node.input} | set(graph_outputs)
        frozen = [n for n in self._param_names if f"inner.{n}" in constant and f"inner.{n}" in used]
        if frozen:
            raise AuditError(f"the exported graph of {self._case_label} reads {', '.join(frozen)} as constants, "
                             "not as the graph inputs the audit perturbs (torch.export did not route "
                             "torch.func.functional_call to them); the onnx backend cannot check this module")
        session = self._session(model)
        return _Exported(model, session, graph_inputs, graph_outputs, case_names)

    def _session(self, model):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(model.SerializeToString(), options, providers=self._providers)
        except Exception as exc:
            raise _RuntimeGap(_one_line(exc).replace("[ONNXRuntimeError] : ", "")) from None

    # -- running -----------------------------------------------------------------------------------------
    def _run(self, exported: _Exported, arrays: list, session=None, input_names=None, output_names=None):
        session = session or exported.session
        feed = dict(zip(input_names or exported.input_names, arrays))
        try:
            results = session.run(output_names or exported.output_names, feed)
        except Exception as exc:
            raise _RuntimeGap(_one_line(exc).replace("[ONNXRuntimeError] : ", "")) from None
        self.session_runs += 1
        self.stats.forward_evals += 1
        return [torch.from_numpy(r.copy() if not r.flags.writeable else r) for r in results]

    def _arrays(self, values: list[torch.Tensor]) -> list:
        dtype = _numpy_dtype(self.precision)
        return [v.detach().cpu().to(self.precision).numpy().astype(dtype, copy=False) for v in values]

    def __call__(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(values) != len(self.leaves):
            raise AuditError(f"expected {len(self.leaves)} leaf values, got {len(values)}")
        self.points_evaluated += 1
        try:
            return self._run(self._exported, self._arrays(values))
        except _RuntimeGap as exc:
            raise AuditError(f"onnxruntime failed: {exc}") from None

    def node_modules(self) -> list[tuple[str, str, str, str | None]]:
        return node_modules(self)

    def module_outputs(self, values: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        return module_outputs(self, values)

    def evaluate_batch(self, points: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Outputs at many points (each a list of leaf values), in as few session runs as possible: the points
        are stacked along a new leading axis and run through a Scan over the exported graph."""
        if not points:
            return []
        if len(points) == 1:
            return [self(points[0])]
        batched = self._batched_session()
        per_point = sum(v.numel() for v in points[0]) + sum(math.prod(s) for s in self._output_shapes())
        chunk = max(1, MAX_BATCH_ELEMENTS // max(per_point, 1))
        results: list[list[torch.Tensor]] = []
        for start in range(0, len(points), chunk):
            part = points[start:start + chunk]
            stacked = [torch.stack([p[i].detach().cpu().to(self.precision) for p in part]).numpy()
                       for i in range(len(self.leaves))]
            try:
                outputs = self._run(self._exported, stacked, session=batched,
                                    input_names=[BATCH_PREFIX + n for n in self._exported.input_names],
                                    output_names=[BATCH_PREFIX + str(k) for k in range(len(self.output_names))])
            except _RuntimeGap as exc:
                raise AuditError(f"onnxruntime failed on a batch of {len(part)} points: {exc}") from None
            self.points_evaluated += len(part)
            results += [[out[b] for out in outputs] for b in range(len(part))]
        return results

    def _output_shapes(self) -> list[tuple]:
        if not hasattr(self, "_shapes"):
            self._shapes = [tuple(out.shape) for out in self([leaf.value for leaf in self.leaves])]
            self.session_runs -= 1
            self.stats.forward_evals -= 1
            self.points_evaluated -= 1
        return self._shapes

    def _batched_session(self):
        if self._batched is None:
            self._batched = self._session(scan_model(self._exported.model, self._exported.output_names))
        return self._batched

    def _check_deterministic(self, first: list[torch.Tensor]) -> None:
        """A graph that draws random numbers (train-mode dropout) is not the function eager audits: torch's
        masks cannot be reproduced in onnxruntime, and its own masks may change on every run."""
        random = _random_nodes(self._exported.model)
        if not random:
            return
        second = self._run(self._exported, self._arrays([leaf.value for leaf in self.leaves]))
        changes = not all(torch.equal(a, b) for a, b in zip(first, second))
        where = sorted({_node_info(node)[0] or node.name for node in random})
        ops = ", ".join(sorted({node.op_type for node in random}))
        raise AuditError(f"the exported graph of {self._case_label} is random: {ops} in training mode at "
                         f"{', '.join(where)} ({'draws new numbers on every onnxruntime run' if changes else 'onnxruntime draws its own masks'}"
                         "; torch's masks cannot be reproduced), so finite differences through it do not "
                         "measure the eager function: audit the module in eval() mode")


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
    session = program._session(model)
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


class OnnxBackend(Backend):
    name = "onnx"
    description = "torch.onnx.export (dynamo) graph run in onnxruntime; finite differences judged against eager"

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
