"""Localization: turn a failed gradient check into the autograd node that creates the error.

Order 1 (``faulty_backward``), reverse mode. With a random signed cotangent v and L = <v, f(x)>:

* analytical: one traced forward and one backward; a pre-hook on every autograd node keeps the gradient
  flowing into it (dL/d its outputs), ``torch.autograd.grad`` gives dL/d leaves;
* numerical, for one node N: the forward is run again with N's output tensors perturbed along a random signed
  direction U (the dispatch mode adds s·U to the op's result at the same op index), and dL/ds comes from
  central differences with Richardson extrapolation and its error bar (``numerics.directional_derivative``).

The gradient *into* N agrees with the reference exactly when the backward from the outputs down to N is right.
The failing leaf's dominators (nodes that every gradient path from the outputs to the leaf passes through: the
residual adds of a residual network, every node of a chain) are bisected: the gradient into the outputs' nodes
agrees, the leaf's does not, so O(log n) node tests find two consecutive dominators, the last agreeing and the
first disagreeing one. Between them (one block of a network) the walk goes up from the disagreeing node to its
consumers: a disagreeing node all of whose consumers agree is where the error appears, and its consumers are
the candidates (their incoming gradient is right, what they pass on is not). Several candidates (a tensor used
twice) are told apart by a local probe test of each node in isolation (below). A custom Function is one node,
so it is the culprit itself; a parameter whose gradient alone is wrong blames the node that feeds its
``AccumulateGrad``.

Order 2 (``faulty_double_backward``): every node is a local function of its recorded forward inputs (an aten
op called again on fresh leaves; a custom Function's ``.apply`` with the arguments read off the stack during
the trace). If every node's backward B_N(a, g) = J_N(a)^T g has correct derivatives in a and g, the chain rule
makes the whole double backward right; so the culprit is a node whose B_N fails a probe test (reverse mode over
B_N against finite differences of B_N). Custom Functions and ``torch.library`` ops are tried first, then the
remaining nodes on the failing leaf's paths, closest to the output first.

Forward mode (``faulty_forward_ad``): one traced forward in forward-mode AD along a random direction U of the
failing leaf keeps the tangent of every intermediate; four more forwards at x ± hU, x ± hU/2 capture every
intermediate's value, whose Richardson differences are the numerical tangents. The culprit is the earliest
node whose output tangent disagrees while the tangents of all its inputs agree.

Local probe tests re-check a point nearby before blaming a node: a built-in op probed exactly on its kink
(relu at 0) passes there, a wrong formula does not.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.autograd.forward_ad as fwAD
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradaudit.analyzers.graph import NodeInfo
from gradaudit.analyzers.local_probe import LocalResult, at_points, local_function, local_probe
from gradaudit.analyzers.trace import Trace, trace_program
from gradaudit.core.kinds import FAULTS, FaultKind
from gradaudit.core.probe import leaf_scale
from gradaudit.core.numerics import (directional_derivative, elementwise_tolerance, eps_of, inner, probe_tolerance,
                                     rademacher_like, real, step_size)
from gradaudit.report import Finding
from gradaudit.rng import preserved_rng

ROOT = "__root__"
LOCALIZED_KINDS = FAULTS


# ------------------------------------------------------------------------------------------ perturbed runs
# Ops that compute nothing (an alias of their input). torch issues some of them or not depending on who holds a
# reference: a factory (``arange``, ``zeros``, ``empty_like``) whose output the trace's recorder still holds
# detaches it once more, a re-run's does not. Either side may have them where the other has not.
PASSIVE_OPS = frozenset({"aten.detach", "aten.alias", "aten.lift_fresh"})


class _Diverged(RuntimeError):
    """A re-run did not follow the traced op sequence (data-dependent control flow)."""


class OpAligner:
    """Maps each op a re-run dispatches onto the trace's op index, skipping passive ops that only one side has;
    any other difference is a divergence."""

    def __init__(self, ops) -> None:
        self.ops = ops
        self.cursor = 0  # the next traced op to match
        self.count = 0  # ops dispatched by the re-run

    def index_of(self, name: str) -> int | None:
        """The trace's index of the op just dispatched; None for a passive op the trace does not have here."""
        self.count += 1
        while self.cursor < len(self.ops) and self.ops[self.cursor].name != name:
            if name in PASSIVE_OPS:
                return None
            if self.ops[self.cursor].name not in PASSIVE_OPS:
                raise _Diverged(f"op {self.count - 1} of the re-run is {name}, the trace had "
                                f"{self._where(self.cursor)}")
            self.cursor += 1
        if self.cursor == len(self.ops):
            if name in PASSIVE_OPS:
                return None
            raise _Diverged(f"the re-run dispatched {name} after the trace's last op ({len(self.ops)} ops)")
        self.cursor += 1
        return self.cursor - 1

    def finish(self) -> None:
        """The re-run has ended: the trace must have no computing op left."""
        rest = [k for k in range(self.cursor, len(self.ops)) if self.ops[k].name not in PASSIVE_OPS]
        if rest:
            raise _Diverged(f"the re-run stopped after {self.count} ops; the trace went on with "
                            f"{len(rest)} more, from {self._where(rest[0])}")

    def _where(self, index: int) -> str:
        op = self.ops[index]
        place = ", ".join(x for x in (f"module {op.module}" if op.module else "", op.source or "") if x)
        return f"{op.name} (op {index}{', ' + place if place else ''})"


class _Intervene(TorchDispatchMode):
    """Follows the trace's op sequence (:class:`OpAligner`); adds a delta to chosen outputs and/or captures
    chosen outputs, by the trace's op index."""

    def __init__(self, ops, plan: dict[int, list] | None = None, capture: set | None = None) -> None:
        super().__init__()
        self.aligner = OpAligner(ops)
        self.plan, self.capture = plan or {}, capture or set()
        self.capture_ops = {index for index, _ in self.capture}
        self.captured, self.reached = {}, set()

    def finish(self) -> None:
        """The re-run has ended: it followed the trace, and reached every op it was to perturb or capture."""
        self.aligner.finish()
        missed = sorted(k for k in set(self.plan) | self.capture_ops if k not in self.reached)
        if missed:
            raise _Diverged(f"the re-run never dispatched {self.aligner._where(missed[0])}, whose output "
                            f"was to be perturbed or captured")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        index = self.aligner.index_of(_name(func))
        out = func(*args, **(kwargs or {}))
        if index in self.plan or index in self.capture_ops:
            self.reached.add(index)
            flat, spec = tree_flatten(out)
            for pos, delta in self.plan.get(index, ()):
                if getattr(func, "_schema", None) is not None and func._schema.is_mutable:
                    flat[pos].add_(delta.to(flat[pos].dtype))
                else:
                    flat[pos] = flat[pos] + delta.to(flat[pos].dtype)
            for pos, value in enumerate(flat):
                if (index, pos) in self.capture:
                    self.captured[(index, pos)] = real(value.detach()).double().clone()
            out = tree_unflatten(flat, spec)
        return out


def _name(func) -> str:
    from gradaudit.analyzers.trace import _op_name
    return _op_name(func)


# ------------------------------------------------------------------------------------------ the localizer
@dataclass
class Localization:
    """What ``localize`` found: the trace (with its graph), the culprit's graph id and the path to it."""

    trace: Trace | None
    culprit: str | None
    path: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def graph(self) -> nx.DiGraph | None:
        return None if self.trace is None else self.trace.graph


class Localizer:
    """What every localization shares: re-runs of the program like the trace's (perturbed or captured),
    local probes of single nodes, and the choice among candidates."""

    def __init__(self, program, seed: int = 0) -> None:
        self.program = program
        self.generator = torch.Generator().manual_seed(seed)
        self.leaf_values = [leaf.value for leaf in program.leaves]
        self.names = [leaf.name for leaf in program.leaves]
        self.dtype = program.dtype
        self.eps, self.h = eps_of(self.dtype), step_size(self.dtype)
        self.checked: list[dict] = []
        self.local_evals = 0
        self.status: dict[str, bool | None] = {}

    def fresh(self, values=None) -> list[torch.Tensor]:
        return [v.detach().clone().requires_grad_() for v in (values or self.leaf_values)]

    def random(self, like: torch.Tensor, scaled: bool = True) -> torch.Tensor:
        signs = rademacher_like(like.detach(), self.generator)
        if not scaled:
            return signs
        return signs * leaf_scale(like)

    def objective(self, outputs, v) -> torch.Tensor:
        total = sum((real(a).double() * real(b.detach()).double()).sum() for a, b in zip(v, outputs))
        return torch.as_tensor(total, dtype=torch.float64).reshape(1)

    def run(self, trace: Trace, plan=None, capture=None, values=None, tangent=None):
        """One forward like the trace's (grad on, requires_grad leaves, dual leaf when ``tangent``)."""
        values = self.fresh(values)
        mode = _Intervene(trace.ops, plan, capture)
        with torch.enable_grad():
            if tangent is not None:
                index, direction = tangent
                with fwAD.dual_level():
                    values[index] = fwAD.make_dual(values[index], direction)
                    with mode:
                        outputs = self.program(values)
                    outputs = [fwAD.unpack_dual(o).primal.detach() for o in outputs]
            else:
                with mode:
                    outputs = self.program(values)
        mode.finish()
        return outputs, mode.captured

    def testable(self, trace: Trace, node_id: str) -> bool:
        info = trace.infos[node_id]
        return info.kind == "leaf" or (info.kind == "node" and bool(info.producers))

    def choose(self, trace: Trace, candidates: list[str], test: str, details: dict) -> Localization:
        """One candidate: it (confirmed by a local probe where one can run). Several: those failing a local probe;
        if none can tell, custom Functions and ops before built-in ones."""
        probes = {}
        for node_id in candidates:
            result = self.probe_node(trace.infos[node_id], test)
            if result is not None:
                probes[node_id] = result
        failing = [n for n in candidates if n in probes and probes[n].failed]
        if failing:
            culprit = failing[0]
        elif candidates:
            culprit = sorted(candidates, key=lambda n: (not trace.infos[n].custom,
                                                        trace.infos[n].category == "op"))[0]
        else:
            culprit = None
        details = dict(details, candidates=[trace.infos[n].name for n in candidates],
                       local_probes={trace.infos[n].name: r.to_dict() for n, r in probes.items()},
                       confirmed=bool(culprit in probes and probes[culprit].failed))
        return Localization(trace, culprit, details=details)

    def probe_node(self, info: NodeInfo, test: str) -> LocalResult | None:
        local = local_function(info)
        if local is None:
            return None
        fn, xs = local
        try:
            return local_probe(fn, xs, test, self.generator)
        except Exception:  # an op that cannot run alone, or has no formula for this test
            return None
        finally:
            self.local_evals += 1

    def by_local_probes(self, trace: Trace, test: str, leaf: str | None, limit: int = 400) -> Localization:
        """Probe nodes one by one in isolation: custom Functions and ops first, then the rest, closest to the
        output first; the first that fails is the culprit."""
        graph = trace.graph
        rooted = graph.copy()
        rooted.add_edges_from((ROOT, n) for n, d in graph.nodes(data=True) if d["kind"] == "output")
        distance = nx.single_source_shortest_path_length(rooted, ROOT)
        nodes = [n for n, d in graph.nodes(data=True) if d["kind"] == "node" and n in distance]
        if leaf is not None and leaf in graph:
            upstream = nx.ancestors(graph, leaf)
            nodes = [n for n in nodes if n in upstream]
        nodes.sort(key=lambda n: (not trace.infos[n].custom, distance[n], n))
        probed = {}
        for node_id in nodes[:limit]:
            result = self.probe_node(trace.infos[node_id], test)
            if result is None:
                continue
            probed[trace.infos[node_id].name] = result.to_dict()
            if result.failed:
                return Localization(trace, node_id, details={"method": "local_probe", "probed": len(probed),
                                                             "local_probes": {trace.infos[node_id].name:
                                                                              result.to_dict()},
                                                             "confirmed": True})
        return Localization(trace, None, details={"method": "local_probe", "probed": len(probed),
                                                  "note": f"none of the {len(probed)} nodes that can run alone "
                                                          f"failed its local probe test"})

    def after_divergence(self, trace: Trace, test: str, leaf: str | None, exc: _Diverged) -> Localization:
        """Re-runs of the forward took another path than the trace (control flow that depends on values or on
        state): perturbed re-runs cannot be compared, so probe nodes one by one."""
        result = self.by_local_probes(trace, test, leaf)
        result.details["rerun"] = f"re-runs of the forward took another path than the traced one ({exc})"
        return result

    def localize_double(self, finding: Finding, test: str = "double") -> Localization:
        """Order 2: the first node whose own backward B(a, g) fails a probe test (``double``: reverse mode over
        it; ``double_forward``: forward mode over it, for an order-2 ``faulty_forward_ad``)."""
        trace = trace_program(self.program, self.fresh())
        leaf = trace.leaf_id(finding.wrt) if finding.wrt and finding.wrt != "total" else None
        return self.by_local_probes(trace, test, leaf)

    def localize_double_forward(self, finding: Finding) -> Localization:
        return self.localize_double(finding, "double_forward")


class ReverseLocalizer(Localizer):
    """Order 1, reverse mode: the gradient flowing into nodes and leaves against finite differences of
    perturbed re-runs; bisection along the failing leaf's dominators, then a walk up to the first
    disagreement."""

    def reverse_pass(self):
        values = self.fresh()
        trace = trace_program(self.program, values)
        v = [self.random(o, scaled=False) for o in trace.outputs]
        incoming: dict[str, tuple] = {}
        handles = []
        for node_id, info in trace.infos.items():
            if info.kind == "node" and info.node is not None:
                def hook(grad_outputs, node_id=node_id):
                    incoming[node_id] = tuple(None if g is None else g.detach() for g in grad_outputs)
                handles.append(info.node.register_prehook(hook))
        try:
            pairs = [(o, w) for o, w in zip(trace.outputs, v) if o.requires_grad]
            grads = torch.autograd.grad([o for o, _ in pairs], values, [w for _, w in pairs], allow_unused=True,
                                        retain_graph=True)
            self.program.stats.backward_evals += 1
        finally:
            for handle in handles:
                handle.remove()
        grads = [torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, values)]
        return trace, v, grads, incoming

    def test_node(self, trace: Trace, node_id: str, v, grads, incoming) -> bool | None:
        """Does the gradient flowing into this node (or leaf) agree with finite differences? None: untestable."""
        if node_id in self.status:
            return self.status[node_id]
        info = trace.infos[node_id]
        if info.kind == "output" or node_id == ROOT:
            return True
        if not self.testable(trace, node_id):
            self.status[node_id] = None
            return None
        if info.kind == "leaf":
            i = info.leaf_index
            direction = self.random(self.leaf_values[i])
            analytical_parts, direction_parts = [grads[i]], [direction]

            def scalar(z):
                values = [x + float(z[0]) * direction if k == i else x for k, x in enumerate(self.leaf_values)]
                outputs, _ = self.run(trace, values=values)
                return [self.objective(outputs, v)]
        else:
            got = incoming.get(node_id, ())
            deltas, analytical_parts, direction_parts = {}, [], []
            for index, pos, output_nr in info.producers:
                reference = trace.ops[index].outputs[pos]
                direction = self.random(reference)
                deltas.setdefault(index, []).append((pos, direction))
                gradient = got[output_nr] if output_nr < len(got) and got[output_nr] is not None else None
                analytical_parts.append(torch.zeros_like(direction) if gradient is None else gradient)
                direction_parts.append(direction)

            def scalar(z):
                s = float(z[0])
                plan = {index: [(pos, s * d) for pos, d in items] for index, items in deltas.items()}
                outputs, _ = self.run(trace, plan=plan)
                return [self.objective(outputs, v)]
        one = torch.ones(1, dtype=torch.float64)
        numerical = directional_derivative(at_points(scalar), [torch.zeros(1, dtype=torch.float64)], [one],
                                           self.h, self.eps)
        analytical = inner(analytical_parts, direction_parts)
        tolerance = probe_tolerance(numerical, [one], analytical_parts, direction_parts, self.eps)
        value = float(numerical.value[0].sum())
        agrees = abs(analytical - value) < tolerance
        self.checked.append({"id": node_id, "node": info.name, "module": info.module, "analytical": analytical,
                             "numerical": value, "error_bar": tolerance, "agrees": agrees})
        self.status[node_id] = agrees
        return agrees

    def localize_reverse(self, finding: Finding) -> Localization:
        wanted = [w for w in (finding.details.get("wrt_all") or [finding.wrt]) if w and w != "total"]
        wanted += [n for n in self.names if n not in wanted]
        for attempt in range(3):
            self.status = {}
            trace, v, grads, incoming = self.reverse_pass()
            try:
                for name in wanted:
                    leaf = trace.leaf_id(name)
                    if leaf is not None and self.test_node(trace, leaf, v, grads, incoming) is False:
                        return self.bisect(trace, leaf, v, grads, incoming)
            except _Diverged as exc:
                return self.after_divergence(trace, "reverse", trace.leaf_id(wanted[0]) if wanted else None, exc)
        return self.by_local_probes(trace, "reverse", None)

    def bisect(self, trace: Trace, leaf: str, v, grads, incoming) -> Localization:
        graph = trace.graph
        rooted = graph.copy()
        rooted.add_edges_from((ROOT, n) for n, d in graph.nodes(data=True) if d["kind"] == "output")
        idom = nx.immediate_dominators(rooted, ROOT)
        chain = [leaf]
        while chain[-1] != ROOT:
            chain.append(idom[chain[-1]])
        chain.reverse()
        test = lambda n: self.test_node(trace, n, v, grads, incoming)
        exact = lambda n: all(graph.nodes[p]["kind"] == "output" for p in graph.predecessors(n))
        seq = [ROOT] + [n for n in chain[1:-1] if graph.nodes[n]["kind"] == "node" and self.testable(trace, n)]
        seq.append(leaf)
        lo, hi = 0, len(seq) - 1
        while lo + 1 < hi and exact(seq[lo + 1]):
            lo += 1
            self.status.setdefault(seq[lo], True)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if test(seq[mid]):
                lo = mid
            else:
                hi = mid
        first, candidates = self.walk_up(rooted, trace, seq[hi], seq[lo], test)
        return self.choose(trace, candidates, "reverse", {"method": "bisection", "dominators": len(seq) - 2,
                                                          "first_disagreement": trace.infos[first].name})

    def walk_up(self, rooted: nx.DiGraph, trace: Trace, start: str, stop: str, test):
        """From a node whose incoming gradient disagrees, up through disagreeing consumers, to the first node
        where the error appears; returns it and its consumers (the candidates), looking through untestable
        nodes."""
        current, seen = start, {start}
        while True:
            agree, unknown, frontier = [], [], list(rooted.predecessors(current))
            moved = None
            while frontier:
                consumer = frontier.pop(0)
                if consumer in seen or consumer == ROOT:
                    continue
                seen.add(consumer)
                kind = rooted.nodes[consumer].get("kind")
                if kind == "output":
                    continue
                status = test(consumer) if consumer != stop else True
                if status is False:
                    moved = consumer
                    break
                if status is None:
                    unknown.append(consumer)
                    frontier.extend(rooted.predecessors(consumer))
                else:
                    agree.append(consumer)
            if moved is None:
                return current, unknown + agree
            current = moved


class ForwardLocalizer(Localizer):
    """Forward mode: every intermediate's tangent against Richardson differences of captured re-runs; the
    earliest node whose output tangent disagrees while its inputs' agree."""

    def localize_forward(self, finding: Finding) -> Localization:
        wanted = [w for w in (finding.details.get("wrt_all") or [finding.wrt]) if w and w != "total"]
        index = self.names.index(wanted[0]) if wanted and wanted[0] in self.names else 0
        direction = self.random(self.leaf_values[index])
        tangents = [direction if k == index else None for k in range(len(self.names))]
        trace = trace_program(self.program, self.fresh(), tangents=tangents)
        keys = sorted({(i, pos) for info in trace.infos.values() for i, pos, _ in info.producers
                       if (i, pos) in trace.tangents})
        try:
            def captured(z):
                _, got = self.run(trace, capture=set(keys), values=z, tangent=(index, direction))
                return [got[key] for key in keys]
            u = [direction if k == index else None for k in range(len(self.names))]
            numerical = directional_derivative(at_points(captured), self.leaf_values, u, self.h, self.eps)
        except _Diverged as exc:
            return self.after_divergence(trace, "forward", trace.leaf_id(self.names[index]), exc)
        value = dict(zip(keys, numerical.value))
        tolerance = dict(zip(keys, elementwise_tolerance(numerical, self.eps)))
        status: dict[str, bool | None] = {}
        for node_id, info in trace.infos.items():
            if info.kind == "leaf":
                status[node_id] = True
            elif info.kind == "node":
                mine = [(i, pos) for i, pos, _ in info.producers if (i, pos) in value]
                if not mine:
                    status[node_id] = None
                    continue
                worst = max(float(((real(trace.tangents[k]).double() - value[k]).abs() / tolerance[k]).max())
                            if value[k].numel() else 0.0 for k in mine)
                status[node_id] = worst < 1.0
                self.checked.append({"id": node_id, "node": info.name, "module": info.module,
                                     "excess": worst, "agrees": worst < 1.0})
        graph = trace.graph

        def inputs_agree(node_id: str, seen: set) -> bool:
            for child in graph.successors(node_id):
                if child in seen:
                    continue
                seen.add(child)
                if status.get(child) is False:
                    return False
                if status.get(child) is None and not inputs_agree(child, seen):
                    return False
            return True

        first = [n for n, s in status.items() if s is False and inputs_agree(n, set())]
        first.sort(key=lambda n: min((i for i, _, _ in trace.infos[n].producers), default=0))
        if not first:
            return self.by_local_probes(trace, "forward", trace.leaf_id(self.names[index]))
        return self.choose(trace, first[:1], "forward", {"method": "forward_tangents",
                                                         "compared": len(keys)})


# ------------------------------------------------------------------------------------------ public API
def locate(program, finding: Finding, seed: int = 0) -> Localization:
    """Find the culprit of a failed check; returns the trace (with its graph) and the culprit's graph id."""
    stats = program.stats
    before = (stats.forward_evals, stats.backward_evals)
    started = time.perf_counter()
    if finding.kind == FaultKind.FAULTY_DOUBLE_BACKWARD:
        localizer, how = Localizer(program, seed), Localizer.localize_double
    elif finding.kind == FaultKind.FAULTY_FORWARD_AD and finding.order == 2:  # the JVP of the gradient
        localizer, how = Localizer(program, seed), Localizer.localize_double_forward
    elif finding.kind == FaultKind.FAULTY_FORWARD_AD:
        localizer, how = ForwardLocalizer(program, seed), ForwardLocalizer.localize_forward
    else:
        localizer, how = ReverseLocalizer(program, seed), ReverseLocalizer.localize_reverse
    with preserved_rng():
        result = how(localizer, finding)
    if result.culprit is not None:
        from gradaudit.analyzers.graph import mark_culprit
        result.path = mark_culprit(result.trace.graph, result.culprit)
    result.details.update({
        "checked": localizer.checked,
        "forward_evals": stats.forward_evals - before[0],
        "backward_evals": stats.backward_evals - before[1],
        "local_probes_run": localizer.local_evals,
        "seconds": round(time.perf_counter() - started, 4),
    })
    return result


def localize(program, finding: Finding, seed: int = 0) -> None:
    """Fill ``finding.node/op/module/source`` with the autograd node that creates the error of a failed check
    (``faulty_backward``, ``faulty_double_backward`` or ``faulty_forward_ad``; other kinds are left alone),
    and put the path from the output to it and the checked tensors in ``finding.details['localization']``.

    ``program`` must be an eager Program that is still open (inside its ``with`` block): localization runs
    more forwards and backwards of it. Its leaves and the global RNG state are left as they were."""
    if finding.kind not in LOCALIZED_KINDS:
        return
    try:
        result = locate(program, finding, seed)
    except Exception as exc:  # localization is best effort: a finding without a place is still a finding
        error = f"{type(exc).__name__}: {exc}"
        finding.details["localization"] = {"error": error, "not_localized": f"localization failed ({error})"}
        return
    apply(finding, result)


def not_localized_reason(details: dict) -> str:
    """Why no node was named, in one line: what was tried and what it found."""
    why = details.get("note") or "no node was found"
    return f"{why}; {details['rerun']}" if details.get("rerun") else why


def apply(finding: Finding, result: Localization) -> None:
    details = dict(result.details)
    if result.culprit is None:
        details["not_localized"] = not_localized_reason(details)
    if result.culprit is not None:
        info = result.trace.infos[result.culprit]
        finding.node, finding.op = info.name, info.op
        finding.module = info.module or None
        finding.source = info.source
        names = [result.trace.infos[n].name for n in result.path if n in result.trace.infos]
        details.update({"node_id": result.culprit, "path": names, "category": info.category,
                        "file": info.file, "line": info.line})
    finding.details["localization"] = details
