"""Zoos built from PyTorch's own test databases: ``gradaudit suite torch.ops`` and ``gradaudit suite torch.modules``.

``torch.ops``: every op of ``torch.testing._internal.common_methods_invocations.op_db`` that supports autograd
in float64 on the CPU, its first N sample inputs (``op.sample_inputs("cpu", torch.float64,
requires_grad=True)``) as cases named ``NAME[.VARIANT][sample K]`` (``nn.functional.conv2d[sample 0]``,
``max.reduction_with_dim[sample 1]``). A case's factory returns ``(fn, (sample.input, *sample.args),
sample.kwargs)`` where ``fn`` runs the op as torch's own gradient tests do (``op.gradcheck_wrapper`` around
``op.get_op()``, then ``sample.output_process_fn_grad``); the sample's tensors keep their ``requires_grad``
flags (torch marks the ones it differentiates). Orders: (1, 2) where the op supports double backward, else (1,).

``torch.modules``: every module of ``torch.testing._internal.common_modules.module_db`` that supports float64,
its first N module inputs in train mode and, where ``train_and_eval_differ``, in eval mode too (torch's own
rule), named ``nn.Linear[train][sample 0]``. The factory returns ``(module, args, kwargs)``.

N is ``GRADAUDIT_OPINFO_SAMPLES`` (default 2). Every case records, as tags, what torch itself already knows
about it on the CPU in float64: its known-failure decorators and skips of the gradient tests
(``torch-xfail:TEST`` / ``torch-skip:TEST:REASON``, TEST one of ``test_fn_grad``, ``test_forward_mode_AD``,
``test_fn_gradgrad``, ``test_fn_fwgrad_bwgrad``; ``test_grad``/``test_gradgrad`` for modules) and the
capabilities torch declares it lacks (``no-forward-ad``, ``no-fwgrad-bwgrad``). :func:`torch_known` says
which of them concern a given order.

Samples are deterministic: each op's (or module's) samples are drawn from the seeded generators (torch,
``random``, numpy) inside a forked RNG state, so a worker process that rebuilds a case by name gets the same
tensors and the caller's RNG state is left alone. ``torch.testing._internal`` needs ``expecttest`` and
``hypothesis`` (``pip install 'gradaudit[opinfo]'``); without them loading a zoo raises a one-line
:class:`~gradaudit.AuditError`. The databases are built once per process, lazily (a few seconds).
"""
from __future__ import annotations

import itertools
import os
import random
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator

import torch

from gradaudit.errors import AuditError
from gradaudit.suite.zoos import ZooCase

SAMPLES_ENV = "GRADAUDIT_OPINFO_SAMPLES"
DEFAULT_SAMPLES = 2
SEED = 0
DEVICE = "cpu"
DTYPE = torch.float64
INSTALL_HINT = "pip install 'gradaudit[opinfo]'"

# torch's gradient tests (class, test) and the gradaudit order and method each corresponds to.
OP_TESTS = {
    "test_fn_grad": ("TestBwdGradients", 1, "reverse"),
    "test_forward_mode_AD": ("TestFwdGradients", 1, "forward"),
    "test_fn_gradgrad": ("TestBwdGradients", 2, "reverse"),
    "test_fn_fwgrad_bwgrad": ("TestFwdGradients", 2, "forward"),
}
MODULE_TESTS = {
    "test_grad": ("TestModule", 1, "reverse"),
    "test_gradgrad": ("TestModule", 2, "reverse"),
}
TEST_ORDER = {name: order for name, (_, order, _) in (OP_TESTS | MODULE_TESTS).items()}


# ---------------------------------------------------------------------------------------------- importing
@contextmanager
def _quiet_import() -> Iterator[None]:
    """``torch.testing._internal.common_utils`` parses ``sys.argv`` (it may exit on ``--help`` or a bad
    ``--seed``), seeds torch's generator and freezes ``torch.backends`` flags when imported: hide the
    arguments, and give the RNG state and the flags back."""
    argv = sys.argv
    rng = torch.get_rng_state()
    frozen = torch.backends.flags_frozen()
    sys.argv = argv[:1] if argv else ["gradaudit"]
    try:
        yield
    finally:
        sys.argv = argv
        torch.set_rng_state(rng)
        if not frozen and torch.backends.flags_frozen():
            # disable_global_flags() has no inverse: set the module global it flips back
            torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True


def _import(module: str, what: str):
    import importlib

    try:
        with _quiet_import():
            return importlib.import_module(module)
    except ImportError as exc:  # ModuleNotFoundError included
        missing = getattr(exc, "name", None)
        needs = f" (missing module {missing!r})" if missing else ""
        raise AuditError(f"{what} needs PyTorch's test database {module}, which needs expecttest and hypothesis"
                         f"{needs}: {INSTALL_HINT}") from exc
    except AuditError:
        raise
    except SystemExit as exc:
        raise AuditError(f"importing {module} exited ({exc.code}); {what} cannot be built") from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise AuditError(f"importing {module} failed: {type(exc).__name__}: {first}") from exc


@lru_cache(maxsize=1)
def op_db() -> tuple:
    """torch's OpInfo database (imported once; raises AuditError without the ``opinfo`` extra)."""
    return tuple(_import("torch.testing._internal.common_methods_invocations", "the torch.ops zoo").op_db)


@lru_cache(maxsize=1)
def module_db() -> tuple:
    """torch's ModuleInfo database (imported once; raises AuditError without the ``opinfo`` extra)."""
    return tuple(_import("torch.testing._internal.common_modules", "the torch.modules zoo").module_db)


def samples_per_case(samples: int | None = None) -> int:
    if samples is not None:
        value = samples
    else:
        text = os.environ.get(SAMPLES_ENV, "").strip()
        try:
            value = int(text) if text else DEFAULT_SAMPLES
        except ValueError:
            raise AuditError(f"{SAMPLES_ENV} must be a positive integer, got {text!r}") from None
    if value < 1:
        raise AuditError(f"samples per op must be at least 1, got {value}")
    return value


def _no_test_lookup() -> None:
    return None


@contextmanager
def _outside_a_test() -> Iterator[None]:
    """torch's sample iterators look for the running unittest by walking the stack with ``inspect.stack()``
    (tens of milliseconds per sample once many modules are loaded); there is none here."""
    patched = []
    for name in ("torch.testing._internal.common_utils", "torch.testing._internal.opinfo.core"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "extract_test_fn"):
            patched.append((module, module.extract_test_fn))
            module.extract_test_fn = _no_test_lookup
    try:
        yield
    finally:
        for module, original in patched:
            module.extract_test_fn = original


@contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Draw from torch, ``random`` and numpy seeded with ``seed``; the caller's RNG states come back."""
    python_state = random.getstate()
    try:
        import numpy
    except ImportError:
        numpy = None
    numpy_state = numpy.random.get_state() if numpy is not None else None
    with torch.random.fork_rng(devices=[]), _outside_a_test():
        torch.manual_seed(seed)
        random.seed(seed)
        if numpy is not None:
            numpy.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            if numpy is not None:
                numpy.random.set_state(numpy_state)


# ---------------------------------------------------------------------------------------------- ops
def op_full_name(op) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def op_case_name(op, index: int) -> str:
    return f"{op_full_name(op)}[sample {index}]"


def audited_ops() -> list:
    """Ops of op_db that torch differentiates in float64 on the CPU."""
    return [op for op in op_db() if op.supports_autograd and DTYPE in op.supported_backward_dtypes(DEVICE)]


@lru_cache(maxsize=1)
def _ops_by_name() -> dict:
    return {op_full_name(op): op for op in audited_ops()}


def find_op(full_name: str):
    op = _ops_by_name().get(full_name)
    if op is None:
        raise AuditError(f"op_db has no op {full_name!r} with float64 autograd on the CPU")
    return op


def op_samples(op, count: int, seed: int = SEED) -> list:
    """The first ``count`` sample inputs of ``op`` (float64, CPU, requires_grad=True), deterministically."""
    with seeded(seed):
        return list(itertools.islice(op.sample_inputs(DEVICE, DTYPE, requires_grad=True), count))


def op_sample(op, index: int, seed: int = SEED):
    samples = op_samples(op, index + 1, seed)
    if len(samples) <= index:
        raise AuditError(f"{op_full_name(op)} has {len(samples)} samples; no sample {index}")
    return samples[index]


def op_function(op, sample) -> Callable:
    """What torch's gradient tests differentiate: the op through its gradcheck wrapper, the output through the
    sample's ``output_process_fn_grad``."""
    variant = op.get_op()
    wrapper = op.gradcheck_wrapper
    process = sample.output_process_fn_grad

    def fn(*args, **kwargs):
        output = wrapper(variant, *args, **kwargs)
        return process(output) if process is not None else output

    fn.__name__ = fn.__qualname__ = op_full_name(op)
    return fn


def op_case(op, index: int, seed: int = SEED) -> tuple:
    """``(fn, (sample.input, *sample.args), sample.kwargs)`` of sample ``index`` of ``op``."""
    sample = op_sample(op, index, seed)
    return op_function(op, sample), (sample.input, *sample.args), dict(sample.kwargs)


def _closure_text(decorator) -> str | None:
    for cell in getattr(decorator, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, str):
            return value
    return None


def _known_kind(decorator) -> str | None:
    """``xfail``/``skip``/``slow`` for decorators that say torch knows the test fails or skips it on the CPU;
    None for environment guards (no LAPACK, CUDA-only variants of the guard) and tolerance overrides, which
    gradcheck does not read."""
    import unittest

    if decorator is unittest.expectedFailure:
        return "xfail"
    qualname = getattr(decorator, "__qualname__", "") or ""
    module = getattr(decorator, "__module__", "") or ""
    if module == "unittest.case" and qualname.startswith("skip"):
        return "skip"
    if qualname == "onlyCUDA":  # not run on the CPU at all
        return "skip"
    if qualname == "slowTest":
        return "slow"
    return None


def known_tags(info, tests: dict, param_kwargs: dict | None = None) -> tuple[str, ...]:
    """Tags for the known-failure decorators and skips of ``info`` (an OpInfo or ModuleInfo) that torch's
    gradient tests apply on the CPU in float64."""
    tags: list[str] = []
    for test, (cls, _, _) in tests.items():
        try:
            decorators = info.get_decorators(cls, test, DEVICE, DTYPE, param_kwargs or {})
        except Exception:  # an active_if that wants other parameters: not ours to judge
            continue
        for decorator in decorators:
            kind = _known_kind(decorator)
            if kind is None:
                continue
            tag = f"torch-{kind}:{test}"
            if kind == "skip":
                reason = " ".join((_closure_text(decorator) or getattr(decorator, "__qualname__", "")).split())
                tag += f":{reason[:80]}" if reason else ""
            if tag not in tags:
                tags.append(tag)
    return tuple(tags)


def op_tags(op) -> tuple[str, ...]:
    tags = [f"module:{op_full_name(op)}", f"opinfo:{op_full_name(op)}"]
    if not op.supports_forward_ad:
        tags.append("no-forward-ad")
    if not op.supports_fwgrad_bwgrad:
        tags.append("no-fwgrad-bwgrad")
    if not op.supports_gradgrad:
        tags.append("no-gradgrad")
    return tuple(tags) + known_tags(op, OP_TESTS)


def torch_known(tags, order: int) -> list[str]:
    """The tags of a case (or the case itself) that say torch already knows of trouble at ``order``: a
    known-failure decorator or skip of the matching gradient test, or a missing capability."""
    tags = getattr(tags, "tags", tags)
    known = []
    for tag in tags:
        if not isinstance(tag, str):
            continue
        if tag.startswith(("torch-xfail:", "torch-skip:", "torch-slow:")):
            test = tag.split(":", 2)[1]
            if TEST_ORDER.get(test) == order:
                known.append(tag)
        elif tag == "no-forward-ad" and order == 1 or tag in ("no-fwgrad-bwgrad", "no-gradgrad") and order == 2:
            known.append(tag)
    return known


def _op_factory(full_name: str, index: int) -> Callable[[], tuple]:
    def factory():
        return op_case(find_op(full_name), index)
    return factory


def _failing_factory(message: str) -> Callable[[], tuple]:
    def factory():
        raise AuditError(message)
    return factory


def opinfo_zoo(samples: int | None = None, only: Callable[[str], bool] | None = None) -> list[ZooCase]:
    """The cases of op_db: the first ``samples`` sample inputs of every op with float64 autograd on the CPU
    (``only(full_op_name)`` filters ops before their samples are drawn)."""
    count = samples_per_case(samples)
    cases = []
    for op in audited_ops():
        full = op_full_name(op)
        if only is not None and not only(full):
            continue
        orders = (1, 2) if op.supports_gradgrad else (1,)
        tags = op_tags(op)
        try:
            drawn = len(op_samples(op, count))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            message = f"the sample inputs of {full} raised {type(exc).__name__}: {first}"
            cases.append(ZooCase(f"{full}[samples]", _failing_factory(message), orders, tags))
            continue
        for index in range(drawn):
            cases.append(ZooCase(op_case_name(op, index), _op_factory(full, index), orders,
                                 tags + (f"sample:{index}",)))
    return cases


def torch_ops_zoo() -> list[ZooCase]:
    """``gradaudit suite torch.ops``: op_db's ops, ``GRADAUDIT_OPINFO_SAMPLES`` (2) samples each."""
    return opinfo_zoo()


# ---------------------------------------------------------------------------------------------- modules
def module_full_name(info) -> str:
    return info.name


def module_modes(info, both: bool = False) -> tuple[bool, ...]:
    """Training flags torch tests a module in: train, and eval where ``train_and_eval_differ`` (or ``both``)."""
    return (True, False) if both or info.train_and_eval_differ else (True,)


def module_case_name(info, training: bool, index: int) -> str:
    return f"{module_full_name(info)}[{'train' if training else 'eval'}][sample {index}]"


def audited_modules() -> list:
    return [info for info in module_db() if DTYPE in info.supported_dtypes(DEVICE)]


@lru_cache(maxsize=1)
def _modules_by_name() -> dict:
    return {module_full_name(info): info for info in audited_modules()}


def find_module(full_name: str):
    info = _modules_by_name().get(full_name)
    if info is None:
        raise AuditError(f"module_db has no module {full_name!r} with float64 on the CPU")
    return info


def module_inputs(info, training: bool, seed: int = SEED) -> list:
    """The module inputs of ``info`` that have a forward input (float64, CPU, requires_grad=True)."""
    with seeded(seed):
        inputs = info.module_inputs_func(info, device=DEVICE, dtype=DTYPE, requires_grad=True, training=training)
        return [mi for mi in inputs if mi.forward_input is not None]


def build_module(info, module_input, training: bool, seed: int = SEED) -> torch.nn.Module:
    with seeded(seed):
        constructor = module_input.constructor_input
        module = info.module_cls(*constructor.args, **constructor.kwargs)
        module = module.to(DEVICE).to(DTYPE)
    module.train(training)
    return module


def module_case(info, training: bool, index: int, seed: int = SEED) -> tuple:
    """``(module, args, kwargs)`` of module input ``index`` of ``info`` in train or eval mode."""
    inputs = module_inputs(info, training, seed)
    if len(inputs) <= index:
        raise AuditError(f"{module_full_name(info)} has {len(inputs)} module inputs; no sample {index}")
    module_input = inputs[index]
    module = build_module(info, module_input, training, seed)
    forward = module_input.forward_input
    return module, tuple(forward.args), dict(forward.kwargs)


def module_tags(info, training: bool) -> tuple[str, ...]:
    tags = [f"module:{module_full_name(info)}", "train" if training else "eval"]
    if not info.supports_gradgrad:
        tags.append("no-gradgrad")
    return tuple(tags) + known_tags(info, MODULE_TESTS, {"training": training})


def _module_factory(full_name: str, training: bool, index: int) -> Callable[[], tuple]:
    def factory():
        return module_case(find_module(full_name), training, index)
    return factory


def module_zoo(samples: int | None = None, only: Callable[[str], bool] | None = None,
               both_modes: bool = False) -> list[ZooCase]:
    """The cases of module_db: the first ``samples`` module inputs of every float64 module, in train mode and,
    where torch says the modes differ (or ``both_modes``), in eval mode."""
    count = samples_per_case(samples)
    cases = []
    for info in audited_modules():
        full = module_full_name(info)
        if only is not None and not only(full):
            continue
        orders = (1, 2) if info.supports_gradgrad else (1,)
        for training in module_modes(info, both_modes):
            tags = module_tags(info, training)
            mode = "train" if training else "eval"
            try:
                drawn = min(count, len(module_inputs(info, training)))
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [""])[0]
                message = f"the module inputs of {full} ({mode}) raised {type(exc).__name__}: {first}"
                cases.append(ZooCase(f"{full}[{mode}][samples]", _failing_factory(message), orders, tags))
                continue
            for index in range(drawn):
                cases.append(ZooCase(module_case_name(info, training, index), _module_factory(full, training, index),
                                     orders, tags + (f"sample:{index}",)))
    return cases


def torch_modules_zoo() -> list[ZooCase]:
    """``gradaudit suite torch.modules``: module_db's modules, ``GRADAUDIT_OPINFO_SAMPLES`` (2) inputs each."""
    return module_zoo()


__all__ = ["opinfo_zoo", "torch_ops_zoo", "module_zoo", "torch_modules_zoo", "torch_known", "op_case",
           "module_case", "op_db", "module_db", "find_op", "find_module", "op_samples", "op_function"]
