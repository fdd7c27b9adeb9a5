"""Where does an exported graph start to compute something else? The first module (in the order modules
finish their forward) whose exported output differs from its eager float64 output."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gradaudit.case import is_differentiable
from gradaudit.core.differentiate import ForwardFunction, evaluate
from gradaudit.core.numerics import ROUNDING_FACTOR, eps_of, real
from gradaudit.core.parity import elementwise_gaps, finite_abs
from gradaudit.report import Finding


@dataclass
class Divergence:
    module: str
    node: str | None
    op: str | None
    source: str | None
    max_abs_err: float
    tolerance: float
    details: dict = field(default_factory=dict)  # merged into the finding's details (a repro, how it was found)


def eager_module_outputs(reference) -> dict[str, torch.Tensor]:
    """Each submodule's first floating output, in the order the modules finish their forward."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in reference.module.named_modules():
        def hook(_module, _inputs, output, name=name):
            tensors = output if isinstance(output, (tuple, list)) else (output,)
            first = next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
            if first is not None:
                captured.setdefault(name, first.detach())
        handles.append(module.register_forward_hook(hook))
    try:
        evaluate(ForwardFunction(reference), [leaf.value for leaf in reference.leaves])
    finally:
        for handle in handles:
            handle.remove()
    return captured


def first_divergence(program, reference) -> Divergence | None:
    """Compare module outputs of a program that can tell them (``capabilities.module_outputs``, an exported
    ONNX graph) with eager ones within the program's precision; None when no module output differs (or the case
    has no modules, or the program cannot tell its module outputs)."""
    capabilities = program.capabilities
    if reference.module is None or not (capabilities.module_outputs and capabilities.node_modules):
        return None
    exported = program.module_outputs()
    eps = eps_of(program.dtype)
    nodes = {module: (node, op, source) for node, op, module, source in program.node_modules()}
    for name, expected in eager_module_outputs(reference).items():
        got = exported.get(name)
        if got is None or tuple(got.shape) != tuple(expected.shape):
            continue
        a, b = real(got).double().cpu().reshape(-1), real(expected).double().cpu().reshape(-1)
        if not b.numel():
            continue
        tolerance = ROUNDING_FACTOR * eps * (b.abs() + b.abs().max())
        if bool(((a - b).abs() > tolerance).any()):
            node, op, source = nodes.get(name, (None, None, None))
            worst = int(torch.argmax((a - b).abs() / tolerance))
            return Divergence(name, node, op, source, float((a - b).abs()[worst]), float(tolerance[worst]))
    return None


def locate_divergence(program, reference, findings: list[Finding]) -> None:
    """Name the first diverging module (and its last exported node) on every divergence finding."""
    targets = [f for f in findings if f.kind in ("forward_divergence", "backward_divergence")]
    if not targets:
        return
    try:
        divergence = first_divergence(program, reference)
    except Exception as exc:  # best effort, like localization of faults
        for finding in targets:
            finding.details["localization"] = {"error": f"{type(exc).__name__}: {exc}"}
        return
    if divergence is None:  # no module to blame (a function, or the top module): name what the graph runs
        if program.capabilities.node_modules:
            exported = list(dict.fromkeys(op for _, op, _, _ in program.node_modules()))
            for finding in targets:
                finding.details["exported_ops"] = exported
        divergence = _only_op_or_none(reference, targets)
        if divergence is None:
            return
    for finding in targets:
        finding.module, finding.node, finding.op = divergence.module, divergence.node, divergence.op
        finding.source = divergence.source
        finding.details["localization"] = divergence.details.get("localization") or {
            "method": "module outputs vs eager float64", "max_abs_err": divergence.max_abs_err,
            "tolerance": divergence.tolerance}


def _only_op_or_none(reference, targets: list[Finding]) -> Divergence | None:
    """:func:`only_op`, a failure noted on the findings (best effort, like every localization)."""
    try:
        return only_op(reference)
    except Exception as exc:
        for finding in targets:
            finding.details["localization"] = {"error": f"{type(exc).__name__}: {exc}"}
        return None


def only_op(reference) -> Divergence | None:
    """The op a single-op case runs (a bare function, a loss module without submodules), with its autograd
    node, from one traced forward of the reference; None when the case runs more than one op. A divergence
    of such a case has nothing finer to blame: the whole backend program (an exported graph, its
    decomposition included) stands for that one op."""
    from gradaudit.analyzers.trace import trace_program

    trace = trace_program(reference)
    computing = [op for op in trace.ops if _base_op(op.name) not in PASSIVE_OPS]
    if len(computing) != 1:
        return None
    op = computing[0]
    node = next((info.name for info in trace.infos.values() if info.record is op), None)
    return Divergence(op.module or None, node, op.name, op.source, math.nan, math.nan,
                      details={"localization": {"method": "the case's only op"}})


def _floating_tensors(values) -> list[torch.Tensor]:
    flat, _ = torch.utils._pytree.tree_flatten(values)
    return [real(t).detach().to("cpu", torch.float64) for t in flat if is_differentiable(t)]


def _relative_gap(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """The largest difference relative to each tensor's scale; another number or shape of tensors, or NaN or
    an infinity on one side only, is an infinite gap (a shape-changing op diverges as surely as a wrong one)."""
    if len(got) != len(expected):
        return math.inf
    gap = 0.0
    for a, b in zip(got, expected):
        if a.shape != b.shape:
            return math.inf
        if b.numel():
            scale = float(finite_abs(b).max()) or 1.0
            gap = max(gap, float(elementwise_gaps(a, b).max()) / scale)
    return gap


PASSIVE_OPS = ("detach", "alias", "lift_fresh")  # ops that compute nothing, which one side may run more often


def _base_op(name: str) -> str:
    """``aten.t_copy.default`` -> ``aten.t``: functionalizing backends (XLA) run the copy variants of views."""
    parts = name.split(".")
    base = parts[1] if len(parts) > 1 else parts[0]
    return base[:-len("_copy")] if base.endswith("_copy") else base


def first_diverging_op(program, reference) -> Divergence | None:
    """The first recorded op (same Python code runs on both backends, so ops align one to one) whose output
    differs from the float64 reference beyond the program's precision while its inputs still agree: the op
    that creates a forward divergence, not one that passes it on."""
    from gradaudit.analyzers.trace import trace_program

    if program.capabilities.localizes_divergence:  # its traced forward would not run what it compiled
        return program.locate_divergence(reference, "forward")

    ours, theirs = trace_program(program), trace_program(reference)
    eps = eps_of(program.dtype)
    computing = lambda ops: [op for op in ops if _base_op(op.name) not in PASSIVE_OPS]  # noqa: E731
    mine_ops, their_ops = computing(ours.ops), computing(theirs.ops)
    for mine, ref in zip(mine_ops, their_ops):
        if _base_op(mine.name) != _base_op(ref.name):
            # The backend ran other code from here on (a device-dependent branch): this op is where it parts.
            return Divergence(mine.module, mine.name, mine.name, mine.source, math.inf, ROUNDING_FACTOR * eps)
        input_gap = _relative_gap(_floating_tensors((mine.args, mine.kwargs)), _floating_tensors((ref.args, ref.kwargs)))
        output_gap = _relative_gap(_floating_tensors(mine.outputs), _floating_tensors(ref.outputs))
        if output_gap > ROUNDING_FACTOR * eps and output_gap > 100 * input_gap:
            return Divergence(ref.module, mine.name, mine.name, ref.source, output_gap, ROUNDING_FACTOR * eps)
    if len(mine_ops) != len(their_ops):  # one side ran an op more (or fewer) after the common part: it parts there
        extra = (mine_ops if len(mine_ops) > len(their_ops) else their_ops)[min(len(mine_ops), len(their_ops))]
        return Divergence(extra.module, extra.name, extra.name, extra.source, math.inf, ROUNDING_FACTOR * eps)
    return None


def _walk(outputs: list[torch.Tensor]) -> list:
    """Autograd nodes reachable from the outputs, breadth first in ``next_functions`` order: the same code on
    two backends gives the same sequence, so nodes align one to one."""
    order, seen = [], set()
    queue = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while queue:
        node = queue.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        queue.extend(child for child, _ in node.next_functions)
    return order


def _node_gradients(trace, cotangent: list[torch.Tensor]) -> tuple[list, dict]:
    """Walk a traced forward's graph and run one backward, recording each node's incoming gradients (from
    the output side) and outgoing ones (towards the leaves)."""
    nodes = _walk(trace.outputs)
    record, handles = {}, []
    for node in nodes:
        def hook(grad_inputs, grad_outputs, node=node):
            record[id(node)] = (_floating_tensors(list(grad_outputs)), _floating_tensors(list(grad_inputs)))
        handles.append(node.register_hook(hook))
    pairs = [(y, v.to(device=y.device, dtype=y.dtype)) for y, v in zip(trace.outputs, cotangent) if y.requires_grad]
    try:
        torch.autograd.backward([y for y, _ in pairs], [v for _, v in pairs])
    finally:
        for handle in handles:
            handle.remove()
    return nodes, record


def first_backward_divergence(program, reference, seed: int = 0) -> Divergence | None:
    """The node whose incoming gradient agrees with the float64 reference's but whose outgoing gradient does
    not, for the same seeded cotangent on both backends (named from the reference's trace)."""
    from gradaudit.core.numerics import rademacher_like
    from gradaudit.analyzers.trace import trace_program

    if program.capabilities.localizes_divergence:  # its traced forward would not run what it compiled
        return program.locate_divergence(reference, "backward", seed)

    ours, theirs = trace_program(program), trace_program(reference)
    generator = torch.Generator().manual_seed(seed)
    cotangent = [rademacher_like(y.detach(), generator) for y in theirs.outputs]
    our_nodes, our_grads = _node_gradients(ours, cotangent)
    their_nodes, their_grads = _node_gradients(theirs, cotangent)
    eps = eps_of(program.dtype)
    for mine, ref in zip(our_nodes, their_nodes):
        if mine.name() != ref.name():
            return None
        if id(mine) not in our_grads or id(ref) not in their_grads:
            continue
        incoming = _relative_gap(our_grads[id(mine)][0], their_grads[id(ref)][0])
        outgoing = _relative_gap(our_grads[id(mine)][1], their_grads[id(ref)][1])
        if outgoing > ROUNDING_FACTOR * eps and outgoing > 100 * incoming:
            info = theirs.infos.get(theirs.id_of.get(ref), None)
            return Divergence(info.module if info else None, ref.name(), info.op if info else None,
                              info.source if info else None, outgoing, ROUNDING_FACTOR * eps)
    return None


RANDOM_OPS = ("dropout", "bernoulli", "rand", "normal", "uniform", "multinomial", "randperm", "exponential")


def random_op(program) -> str | None:
    """The first op of one traced forward that draws random numbers (with its module), or None."""
    from gradaudit.analyzers.trace import trace_program

    for op in trace_program(program).ops:
        if any(word in op.name for word in RANDOM_OPS):
            return f"{op.name} in module {op.module}" if op.module else op.name
    return None
