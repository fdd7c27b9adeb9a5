"""Cases (what gets audited), loading them from TARGET strings, and naming their differentiable leaves."""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import importlib.util
import inspect
import os
import pkgutil
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils import _pytree as pytree

from gradaudit.errors import AuditError, Unsupported
from gradaudit.core.kinds import Note
from gradaudit.outcome import first_line, one_line as _one_line
from gradaudit.rng import preserved_rng


@dataclass
class Case:
    """A function or module and the arguments to audit it at.

    What is differentiated follows torch's convention: the module's trainable parameters, plus the tensor
    inputs that have ``requires_grad=True``; when no input has it, every floating-point and complex tensor in
    ``args``/``kwargs``. ``wrt`` (names such as ``args[0]``, ``kwargs[target]``, ``fc1.weight``; ``*`` and
    ``?`` globs; a list or a comma-separated string) overrides both. Everything else is passed through unchanged.
    """

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    name: str | None = None
    wrt: str | list[str] | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise AuditError(f"case function is not callable: {type(self.fn).__name__}")
        if not isinstance(self.args, (tuple, list)):
            self.args = (self.args,)
        self.args = tuple(self.args)
        if self.kwargs is None:
            self.kwargs = {}
        if not isinstance(self.kwargs, dict):
            raise AuditError(f"case kwargs must be a dict, got {type(self.kwargs).__name__}")
        self.wrt = parse_wrt(self.wrt)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        owner = getattr(self.fn, "__self__", None)
        if isinstance(owner, type):  # MyFunction.apply
            return f"{owner.__name__}.{self.fn.__name__}"
        if isinstance(self.fn, torch.nn.Module):
            return type(self.fn).__name__
        return getattr(self.fn, "__name__", None) or type(self.fn).__name__


def as_case(target: Any, args: Any = (), kwargs: dict | None = None, name: str | None = None,
            wrt: str | list[str] | None = None) -> Case:
    """Normalize what a user hands over (a Case, a factory's tuple, or fn + args) into a Case; ``wrt``, when
    given, replaces the case's own."""
    if isinstance(target, Case):
        case = target
    elif isinstance(target, tuple):
        case = case_from_tuple(target, name or "case")
    else:
        case = Case(target, args, kwargs or {}, name)
    if wrt is not None:
        case = Case(case.fn, case.args, case.kwargs, case.name, wrt)
    return case


def parse_wrt(wrt: Any) -> tuple[str, ...] | None:
    """``"fc1.*, args[0]"`` or a list of names -> a tuple of patterns (None: torch's default choice)."""
    if wrt is None:
        return None
    if isinstance(wrt, str):
        wrt = wrt.split(",")
    if not isinstance(wrt, (list, tuple)) or not all(isinstance(w, str) for w in wrt):
        raise AuditError(f"wrt must be a name, a comma-separated string or a list of names, got {wrt!r}")
    patterns = tuple(w.strip() for w in wrt if w.strip())
    if not patterns:
        raise AuditError("wrt names nothing to differentiate")
    return patterns


def case_from_tuple(value: Any, where: str) -> Case:
    if isinstance(value, Case):
        return value
    if not isinstance(value, tuple) or len(value) not in (2, 3):
        raise AuditError(
            f"{where} returned {_describe(value)}; expected (fn_or_module, args), "
            "(fn_or_module, args, kwargs) or a gradaudit.Case"
        )
    fn, args = value[0], value[1]
    kwargs = value[2] if len(value) == 3 else {}
    if not callable(fn):
        raise AuditError(f"{where} returned a non-callable first element ({type(fn).__name__})")
    if isinstance(args, torch.Tensor):
        args = (args,)
    if not isinstance(args, (tuple, list)):
        raise AuditError(f"{where} returned args of type {type(args).__name__}; expected a tuple or list")
    if not isinstance(kwargs, dict):
        raise AuditError(f"{where} returned kwargs of type {type(kwargs).__name__}; expected a dict")
    return Case(fn, tuple(args), dict(kwargs), where)


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} elements"
    return f"a {type(value).__name__}"


def load_target(target: str) -> Case:
    """Load ``path/to/file.py:NAME`` or ``dotted.module:NAME`` and call NAME to get the case (NAME may be dotted,
    ``Class.factory``, as in ``pkgutil.resolve_name``). A file runs once per process, as an imported module
    does (again only once edited): its ``torch.library`` ops stay registered once."""
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise AuditError(f"target {target!r} is not of the form path/to/file.py:NAME or dotted.module:NAME")
    factory = _import_target_module(module_part, attr)
    if isinstance(factory, Case):
        return factory
    if not callable(factory):
        raise AuditError(f"{target} is a {type(factory).__name__}, not a callable returning a case")
    try:
        value = factory()
    except Exception as exc:  # the user's code failed: say how, in one line
        raise AuditError(f"{target} raised {type(exc).__name__}: {_one_line(exc)}") from exc
    case = case_from_tuple(value, target)
    if case.name is None or case.name == target:
        case.name = target
    return case


def _import_target_module(module_part: str, attr: str = "") -> Any:
    """Import the target's module, a file or a dotted module (``pkgutil.resolve_name``), and return what
    ``attr`` names in it (the module itself when ``attr`` is empty). Any failure is one :class:`AuditError`
    line."""
    try:
        if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
            module = _exec_file(module_part)
            return _attribute(module, attr, module_part) if attr else module
        # A console script's sys.path lacks the working directory (python -m has it): add it for this import only.
        with _on_sys_path(os.getcwd()):
            return pkgutil.resolve_name(f"{module_part}:{attr}")
    except AuditError:
        raise
    except AttributeError as exc:
        if module_part in sys.modules:  # the module imported fine: NAME is not in it
            raise AuditError(f"{module_part} has no attribute {attr!r}") from None
        raise AuditError(f"cannot import {module_part}: AttributeError: {_one_line(exc)}") from exc
    except ModuleNotFoundError as exc:
        raise AuditError(f"cannot import {module_part}: {_one_line(exc)}") from exc
    except SyntaxError as exc:
        raise AuditError(f"cannot import {module_part}: SyntaxError at line {exc.lineno}: {exc.msg}") from exc
    except Exception as exc:
        raise AuditError(f"cannot import {module_part}: {type(exc).__name__}: {_one_line(exc)}") from exc


# Target files already run in this process: resolved path -> (module name, the file's stamp when it ran).
_ran_files: dict[Path, tuple[str, tuple[int, int]]] = {}
_loading = threading.RLock()  # a target file may load its neighbours while it runs


def _exec_file(module_part: str) -> Any:
    """The module of a target file, run once per process as ``import`` runs a module once: loading the file
    again, or a file already imported under a name of its own (``import fixtures``), gives that module back.
    Running a file again re-registers what it registers: a ``torch.library`` op defined anew destroys its
    earlier definition, and whatever still holds that one (the imported module, a case loaded before) then
    calls a freed operator, a segfault. A file edited since it ran is run again."""
    path = Path(module_part)
    if not path.is_file():
        raise AuditError(f"no such file: {module_part}")
    path = path.resolve()
    with _loading:
        module = _module_already_run(path)
        return module if module is not None else _run_file(path)


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


def _module_already_run(path: Path) -> Any:
    """The module this process made of ``path`` and may reuse: ours if unedited since, else one imported under
    its own name (not ``__main__``, which may still be running); None when the file must run."""
    if path in _ran_files:
        name, stamp = _ran_files[path]
        module = sys.modules.get(name)
        return module if module is not None and stamp == _stamp(path) else None
    for name, module in list(sys.modules.items()):  # a copy: other threads may import meanwhile
        file = getattr(module, "__file__", None)
        if (name != "__main__" and isinstance(file, str) and os.path.basename(file) == path.name
                and Path(file).resolve() == path):
            return module
    return None


def _run_file(path: Path) -> Any:
    """Run a target file as a module of its own (registered in ``sys.modules``: dataclasses and pickling look
    modules up there), its folder importable while it runs so that it can import its neighbours. A file that
    fails is forgotten, as a failed import is: the next load runs it again."""
    module_name = f"gradaudit_target_{abs(hash(str(path)))}"
    stamp = _stamp(path)  # before running: an edit made while it runs makes the next load run it again
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _ran_files.pop(path, None)
    try:
        with _on_sys_path(str(path.parent)):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    _ran_files[path] = (module_name, stamp)
    return module


def _attribute(namespace: Any, attr: str, module_part: str) -> Any:
    """``namespace.attr``, ``attr`` dotted or not."""
    value = namespace
    for part in attr.split("."):
        if not hasattr(value, part):
            raise AuditError(f"{module_part} has no attribute {attr!r}")
        value = getattr(value, part)
    return value


@contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """``folder`` importable while inside, unless sys.path has it already; sys.path as it was on leaving."""
    if folder in (os.path.abspath(entry) for entry in sys.path):
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def is_differentiable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def leaf_name(root: str, path: tuple) -> str:
    """``args[0][1]`` / ``kwargs[mask]`` from a pytree key path."""
    parts = [root]
    for key in path:
        if isinstance(key, pytree.SequenceKey):
            parts.append(f"[{key.idx}]")
        elif isinstance(key, pytree.MappingKey):
            parts.append(f"[{key.key}]")
        else:
            parts.append(str(key))
    return "".join(parts)


@dataclass
class InputSlots:
    """The flattened (args, kwargs) of a case and which of its leaves are differentiated."""

    spec: pytree.TreeSpec
    values: list
    slots: list[int]
    names: list[str]

    @classmethod
    def of(cls, args: tuple, kwargs: dict, chosen: set[str] | None = None) -> "InputSlots":
        """Every floating/complex tensor is a slot, or only those named in ``chosen``."""
        flat, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        slots, names = [], []
        for position, (name, _) in enumerate(_named_inputs(args, kwargs)):
            if name is not None and (chosen is None or name in chosen):
                slots.append(position)
                names.append(name)
        return cls(spec, flat, slots, names)

    def rebuild(self, differentiable: list) -> tuple[tuple, dict]:
        flat = list(self.values)
        for position, value in zip(self.slots, differentiable):
            flat[position] = value
        args, kwargs = pytree.tree_unflatten(flat, self.spec)
        return args, kwargs


def _named_inputs(args: tuple, kwargs: dict) -> list[tuple[str | None, Any]]:
    """(name or None, value) for every pytree leaf of (args, kwargs); named when it can be differentiated."""
    keyed, _ = pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))
    named = []
    for path, value in keyed:
        root = "args" if path[0].idx == 0 else "kwargs"
        named.append((leaf_name(root, path[1:]) if is_differentiable(value) else None, value))
    return named


@dataclass
class LeafChoice:
    """Which parameters and inputs of a case are differentiated (decided once, on the user's own tensors,
    before a backend copies them and loses their ``requires_grad`` flags)."""

    parameters: list[str]
    inputs: list[str]


def choose_leaves(case: Case) -> LeafChoice:
    """Torch's convention (trainable parameters; inputs with ``requires_grad``, or all floating ones when none
    has it), or the case's ``wrt`` patterns. Sparse tensors are refused: finite differences move dense values."""
    inputs = [(name, value) for name, value in _named_inputs(case.args, case.kwargs) if name is not None]
    module = case.fn if isinstance(case.fn, torch.nn.Module) else None
    parameters = [] if module is None else list(module.named_parameters())
    if case.wrt is None:
        chosen_parameters = [name for name, p in parameters if p.requires_grad]
        flagged = [name for name, value in inputs if value.requires_grad]
        chosen_inputs = flagged or [name for name, _ in inputs]
    else:
        candidates = [name for name, _ in parameters] + [name for name, _ in inputs]
        selected = set(select_names(case.wrt, candidates))
        chosen_parameters = [name for name, _ in parameters if name in selected]
        chosen_inputs = [name for name, _ in inputs if name in selected]
    for name, value in inputs:
        if name in chosen_inputs and value.layout != torch.strided:
            raise Unsupported(f"{name} is a {str(value.layout).replace('torch.', '')} tensor; gradaudit "
                             "differentiates dense tensors only (pass it dense, or leave it out with wrt=)")
    return LeafChoice(chosen_parameters, chosen_inputs)


def select_names(patterns: tuple[str, ...], candidates: list[str]) -> list[str]:
    """Candidates matched by any pattern; ``[`` and ``]`` are literal (``args[0]``), ``*``/``?`` are globs."""
    chosen = []
    for pattern in patterns:
        literal = "".join({"[": "[[]", "]": "[]]"}.get(char, char) for char in pattern)
        hits = [c for c in candidates if c == pattern or fnmatch.fnmatchcase(c, literal)]
        if not hits:
            raise AuditError(f"wrt {pattern!r} matches nothing; differentiable names are: "
                             f"{', '.join(candidates) or 'none'}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def flatten_outputs(output: Any) -> tuple[list[torch.Tensor], list[str]]:
    """Differentiable tensors of a pytree output (tuples, dicts, LSTM's ``(out, (h, c))``) and their names.
    Conjugate and negative views (``fft.ifft`` of a real input) are resolved: they are values like any other."""
    keyed, _ = pytree.tree_flatten_with_path(output)
    tensors, names = [], []
    for path, value in keyed:
        if is_differentiable(value):
            tensors.append(value.resolve_conj().resolve_neg())
            names.append(leaf_name("out", path))
    return tensors, names


def differentiated_outputs(tensors: list[torch.Tensor], names: list[str],
                           label: str) -> tuple[list[str], list[bool], list[Note]]:
    """(names kept, keep mask, report notes) for outputs computed with the leaves requiring grad: those that do
    not require grad are torch's non-differentiable outputs (or detached) and are not differentiated."""
    keep = [t.requires_grad for t in tensors]
    if not tensors:
        raise AuditError(f"{label} returned no floating-point or complex tensor to differentiate")
    if not any(keep):
        raise AuditError(f"no output of {label} requires grad ({', '.join(names)}): nothing depends "
                         "differentiably on the differentiated inputs")
    left_out = [name for name, k in zip(names, keep) if not k]
    notes = [Note(what=f"output{'s' * (len(left_out) > 1)} {', '.join(left_out)}",
                  reason="not differentiated: they do not require grad (non-differentiable outputs, or "
                         "detached from the inputs)")] if left_out else []
    return [name for name, k in zip(names, keep) if k], keep, notes


# ------------------------------------------------------------------------------------------ the shared loader
@dataclass
class Leaf:
    """A differentiated tensor: a positional/keyword input or a named parameter."""

    name: str  # 'args[0]', 'kwargs[mask]', 'fc1.weight'
    value: torch.Tensor
    kind: str  # 'input' | 'parameter'
    # Elements whose gradient torch defines as something other than the derivative (an embedding's padding row,
    # a max_norm embedding's renormalized rows): finite differences never move them, and the report says so
    # (see declared_unchecked).
    frozen: torch.Tensor | None = None  # a bool mask of the value's shape, on the CPU
    frozen_reason: str = ""


def declared_unchecked(module: nn.Module | None) -> dict[int, tuple[torch.Tensor, str]]:
    """Per parameter (by identity), the elements whose gradient the module declares to be other than the
    derivative of its forward, with why:

    * nn.Embedding's and nn.EmbeddingBag's ``padding_idx`` row ("the entries at padding_idx do not contribute to
      the gradient"). BERT-style models put their pad token there; where a batch holds it, the row's derivative
      is not zero.
    * their whole weight where ``max_norm`` is set: the forward renormalizes the rows it looks up, in place and
      without differentiating that, so torch's gradient is the renormalized rows' (documented), and the first
      forward leaves those rows on the renormalization's edge, where finite differences see its kink."""
    declared: dict[int, tuple[torch.Tensor, str]] = {}
    for path, sub in ([] if module is None else module.named_modules()):
        row = getattr(sub, "padding_idx", None)
        if isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) and sub.max_norm is not None:
            where = f"{path}.max_norm" if path else "max_norm"
            declared[id(sub.weight)] = (torch.ones(sub.weight.shape, dtype=torch.bool),
                                        f"{where} is set: the forward renormalizes the rows it looks up in place "
                                        "and torch's gradient is that of the renormalized rows, not the "
                                        "derivative, so the weight is not checked")
        elif isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) and row is not None:
            mask = torch.zeros(sub.weight.shape, dtype=torch.bool)
            mask[row] = True
            where = f"{path}.padding_idx" if path else "padding_idx"
            declared[id(sub.weight)] = (mask, f"row {row} is {where}: torch defines its "
                                              f"gradient as zero, not the derivative, so it is not checked")
    return declared


def cast_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast a floating tensor to ``dtype`` and a complex one to the complex type of the same precision."""
    if dtype is None:
        return tensor
    if tensor.is_complex():
        return tensor.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    if tensor.is_floating_point():
        return tensor.to(dtype)
    return tensor


def _cast_any(value: Any, dtype: torch.dtype | None) -> Any:
    return cast_tensor(value, dtype) if isinstance(value, torch.Tensor) else value


def complex_precision_notes(leaves: list[Leaf], dtype: torch.dtype | None) -> list[Note]:
    """torch has no complex half or bfloat16: complex leaves run in complex64 then, and the report says so."""
    complex_leaves = [leaf.name for leaf in leaves if leaf.value.is_complex()]
    if dtype not in (torch.float16, torch.bfloat16) or not complex_leaves:
        return []
    return [Note(what=f"{str(dtype)[6:]} for complex tensors",
                 reason=f"torch has no complex {str(dtype)[6:]}: {', '.join(complex_leaves)} ran in complex64 "
                        "(float32 precision)")]


def is_lazy(module: nn.Module) -> bool:
    """Whether a module still has uninitialized (lazy) parameters or buffers."""
    return any(isinstance(t, nn.parameter.UninitializedTensorMixin)
               for t in list(module.parameters()) + list(module.buffers()))


def private_module(fn: Any, device: torch.device, dtype: torch.dtype | None, args: tuple, kwargs: dict,
                   lazy_init_device: torch.device | None = None) -> nn.Module | None:
    """A copy of the user's module on ``device`` and ``dtype``, lazy parameters initialized (on
    ``lazy_init_device`` when given, from its generator, which is given back afterwards): the user's own
    module, parameters and buffers are never touched. None for a plain function."""
    if not isinstance(fn, nn.Module):
        return None
    try:
        module = copy.deepcopy(fn)
    except Exception as exc:
        raise AuditError(f"cannot copy module {type(fn).__name__} for auditing: {exc}") from exc
    if is_lazy(module):
        init_device = lazy_init_device or device
        module.to(init_device)
        move = lambda t: t.to(init_device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        with preserved_rng(cuda=init_device.type == "cuda"), torch.no_grad():
            module(*pytree.tree_map(move, args), **pytree.tree_map(move, kwargs))  # shapes from the first call
    module.to(device)
    if dtype is not None:
        module._apply(lambda t: cast_tensor(t, dtype))
    return module


def call_failed(exc: BaseException) -> AuditError:
    """The error for a case whose very first call raised: the case itself is broken, not its gradients."""
    return AuditError(f"calling the case raised {type(exc).__name__}: {first_line(exc)}")


@dataclass
class FirstOutputs:
    """What one evaluation with the leaves requiring grad tells about a case's outputs."""

    names: list[str]  # of the differentiated outputs
    keep: list[bool]  # over every floating output: is it differentiated?
    values: list[torch.Tensor]  # the differentiated outputs, detached
    notes: list[Note]  # the outputs left out, for the report


@dataclass
class PreparedCase:
    """A case ready for any backend, made by :func:`prepare_case`: a private copy of the module, the inputs,
    the differentiated leaves (parameters first, then inputs), and ``call(values)``, the case with the leaves
    replaced by ``values``."""

    label: str
    fn: Callable[..., Any]
    module: nn.Module | None
    inputs: InputSlots
    param_names: list[str]
    leaves: list[Leaf]
    notes: list[Note] = field(default_factory=list)

    def call(self, values: list) -> Any:
        """The case's raw output with the leaves replaced by ``values``."""
        n = len(self.param_names)
        args, kwargs = self.inputs.rebuild(list(values[n:]))
        if self.module is None:
            return self.fn(*args, **kwargs)
        return torch.func.functional_call(self.module, dict(zip(self.param_names, values[:n])), args, kwargs)

    def private_copy(self, dtype: torch.dtype | None = None) -> "PreparedCase":
        """Another copy whose module can be called, exported or mutated without touching this one's, with its
        module and inputs cast to ``dtype`` when given."""
        module = None if self.module is None else copy.deepcopy(self.module)
        if module is not None and dtype is not None:
            module._apply(lambda t: cast_tensor(t, dtype))
        inputs = dataclasses.replace(self.inputs, values=[_cast_any(v, dtype) for v in self.inputs.values])
        return dataclasses.replace(self, module=module, inputs=inputs)

    def first_outputs(self, call: Callable[[list], Any] | None = None) -> FirstOutputs:
        """Evaluate once (with ``call``, default :meth:`call`) with the leaves requiring grad, to learn the
        outputs' names and which of them are differentiable: outputs that do not require grad (torch's
        non-differentiable outputs such as native_layer_norm's mean, or detached ones) are left out, as
        gradcheck does, and the notes say so."""
        try:
            with torch.enable_grad():
                values = [leaf.value.detach().requires_grad_() for leaf in self.leaves]
                versions = [value._version for value in values]
                tensors, names = flatten_outputs((call or self.call)(values))
        except AuditError:
            raise
        except Exception as exc:
            raise call_failed(exc) from exc
        kept, keep, notes = differentiated_outputs(tensors, names, self.label)
        notes += [Note(what=leaf.name, reason=WRITTEN_BY_FORWARD) for leaf, value, version
                  in zip(self.leaves, values, versions) if value._version != version and leaf.frozen is None]
        return FirstOutputs(kept, keep, [t.detach() for t, k in zip(tensors, keep) if k], notes)


WRITTEN_BY_FORWARD = ("the forward writes into it in place (a clamp or renormalization of a weight under no_grad): "
                      "torch's gradient is then that of the written values, and where the write changes them, "
                      "finite differences see what it does; a failure there may be the write, not the backward")


def prepare_case(case: Case, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                 lazy_init_device: torch.device | None = None) -> PreparedCase:
    """The one loader every backend uses: choose the leaves (on the user's tensors, whose ``requires_grad``
    flags the copies lose), copy the module and the inputs onto ``device`` (lazy modules initialized in the
    module's own dtype), cast floating and complex tensors to ``dtype``, and refuse what cannot be audited."""
    choice = choose_leaves(case)
    device = torch.device(device)
    place = lambda t: t.detach().to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    args, kwargs = tuple(pytree.tree_map(place, case.args)), pytree.tree_map(place, case.kwargs)
    # Lazy modules infer their shapes from the inputs in the module's own dtype, before both are cast.
    module = private_module(case.fn, device, dtype, args, kwargs, lazy_init_device)
    cast = lambda t: _cast_any(t, dtype)  # noqa: E731
    inputs = InputSlots.of(tuple(pytree.tree_map(cast, args)), pytree.tree_map(cast, kwargs), set(choice.inputs))
    params = [] if module is None else [
        (name, p) for name, p in module.named_parameters() if name in choice.parameters]
    declared = declared_unchecked(module)
    leaves = [Leaf(name, p.detach().clone(), "parameter", *declared.get(id(p), (None, "")))
              for name, p in params]
    leaves += [Leaf(name, inputs.values[slot].detach().clone(), "input")
               for name, slot in zip(inputs.names, inputs.slots)]
    if not leaves:
        raise Unsupported("nothing to differentiate: no floating-point or complex tensor in args/kwargs "
                         "and no trainable parameter")
    for leaf in leaves:
        if torch.isnan(leaf.value.detach().cpu()).any():  # (on the CPU: on XLA a check is a graph per shape)
            raise AuditError(f"{leaf.name} contains NaN; gradients cannot be checked there")
    return PreparedCase(case.label, case.fn, module, inputs, [name for name, _ in params], leaves,
                        complex_precision_notes(leaves, dtype))


def source_of(fn: Callable) -> str | None:
    """``file.py:LINE`` where a function or a module's forward is defined."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        target = inspect.unwrap(target)
        file = inspect.getsourcefile(target)
        _, line = inspect.getsourcelines(target)
    except (TypeError, OSError):
        return None
    return f"{Path(file).name}:{line}" if file else None
