"""Module zoos: named collections of small, fast audit cases (``gradaudit suite torch.nn``).

A zoo is a zero-argument function returning a list of :class:`ZooCase`. Each case's ``factory`` builds a fresh
``(module, args[, kwargs])`` in float64 with small sizes, deterministically (it seeds its own generator), so a
case built in a worker process is the same case everywhere. ``orders`` lists the orders torch supports for it
(``(1,)`` where torch has no double backward).

Zoos are found by name through the ``gradaudit.zoos`` entry point group (built in: ``torch.nn`` in
:mod:`~gradaudit.suite.zoos.torch_nn`, ``torch.ops`` and ``torch.modules`` in :mod:`~gradaudit.suite.zoos.torch_ops`)
or loaded from a file, ``path/to/file.py:NAME``, whose NAME returns a list of ZooCase or of ``(name, factory)``
pairs.
"""
from __future__ import annotations

import importlib.util
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gradaudit import registry
from gradaudit.errors import AuditError
from gradaudit.lines import one_line

GROUP = "gradaudit.zoos"
D = torch.float64


@dataclass(frozen=True)
class ZooCase:
    name: str
    factory: Callable[[], tuple]
    orders: tuple[int, ...] = (1, 2)
    tags: tuple = ()

    def build(self) -> tuple:
        return self.factory()

    @property
    def module_type(self) -> str | None:
        """The torch.nn class this case audits (tag ``module:NAME``, else the name before ``[``)."""
        for tag in self.tags:
            if isinstance(tag, str) and tag.startswith("module:"):
                return tag[len("module:"):]
        return self.name.split("[", 1)[0] or None


# ---------------------------------------------------------------------------------------------- loading
def _registered():
    return registry.registered(GROUP)


def zoo_names() -> list[str]:
    return registry.zoo_names()


def load_zoo(spec: str) -> list[ZooCase]:
    """The cases of a registered zoo (``torch.nn``) or of ``path/to/file.py:NAME`` / ``dotted.module:NAME``."""
    if not isinstance(spec, str) or not spec.strip():
        raise AuditError("empty zoo name")
    function = registry.load_zoo_entry_point(spec)  # checked: a broken entry point is one AuditError naming it
    if function is not None:
        return _normalize(_call(function, spec), spec)
    if spec == "torch.nn":  # an uninstalled checkout: the built-in zoo still works (loaded by name, as its
        # entry point would be: the zoo imports this module)
        return _normalize(pkgutil.resolve_name("gradaudit.suite.zoos.torch_nn:torch_nn_zoo")(), spec)
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        known = ", ".join(zoo_names()) or "torch.nn"
        raise AuditError(f"unknown zoo {spec!r}; registered zoos: {known} (or use path/to/file.py:NAME)")
    from gradaudit.case import _import_target_module

    namespace = _import_target_module(module_part)
    if not hasattr(namespace, attr):
        raise AuditError(f"{module_part} has no attribute {attr!r}")
    return _normalize(_call(getattr(namespace, attr), spec), spec)


def _call(function: Any, spec: str) -> Any:
    if isinstance(function, (list, tuple)):
        return function
    if not callable(function):
        raise AuditError(f"zoo {spec} is a {type(function).__name__}, not a function returning cases")
    try:
        return function()
    except AuditError:  # (the zoo's own one line: an optional library missing)
        raise
    except Exception as exc:
        raise AuditError(f"zoo {spec} raised {type(exc).__name__}: {one_line(exc)}") from exc


def _normalize(value: Any, spec: str) -> list[ZooCase]:
    looks_like_a_case = isinstance(value, tuple) and value and not isinstance(value[0], (ZooCase, tuple))
    if not isinstance(value, (list, tuple)) or looks_like_a_case:
        raise AuditError(f"zoo {spec} returned a {type(value).__name__}; expected a list of ZooCase or "
                         "(name, factory) pairs")
    cases, seen = [], set()
    for item in value:
        if isinstance(item, ZooCase):
            case = item
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and callable(item[1]):
            case = ZooCase(item[0], item[1])
        else:
            raise AuditError(f"zoo {spec} contains a {type(item).__name__}; expected ZooCase or (name, factory)")
        if case.name in seen:
            raise AuditError(f"zoo {spec} has two cases named {case.name!r}")
        if not set(case.orders) <= {1, 2} or not case.orders:
            raise AuditError(f"zoo case {case.name!r} has orders {case.orders}; allowed: 1, 2")
        seen.add(case.name)
        cases.append(case)
    return cases


def find_case(spec: str, name: str) -> ZooCase:
    for case in load_zoo(spec):
        if case.name == name:
            return case
    raise AuditError(f"zoo {spec} has no case {name!r}")


# ---------------------------------------------------------------------------------------------- helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=D)


def rand(*shape: int, seed: int = 0, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=_gen(seed), dtype=D)


def randint(high: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(high, shape, generator=_gen(seed))


def away_from_zero(*shape: int, seed: int = 0, margin: float = 0.1) -> torch.Tensor:
    """Normal values pushed at least ``margin`` away from 0 (the kink of relu-like functions)."""
    x = randn(*shape, seed=seed)
    return x + margin * torch.sign(x) + (x == 0) * margin


def build(cls_or_fn: Callable[[], nn.Module], train: bool | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = cls_or_fn().to(D)
    if train is not None:
        module.train(train)
    return module


def module_types(cases: list[ZooCase]) -> set[str]:
    """The distinct module types a zoo covers."""
    return {c.module_type for c in cases if c.module_type}




def zoo_source(spec: str) -> Path | None:
    """The source file a zoo's cases come from: a ``file.py:NAME`` zoo's file, a ``dotted.module:NAME`` zoo's
    module file, a registered zoo's module file; None where there is none to be found."""
    matches = [ep for ep in _registered() if ep.name == spec]
    module_name = matches[0].module if matches else ("gradaudit.suite.zoos.torch_nn" if spec == "torch.nn" else None)
    if module_name is None:
        module_part, sep, _ = spec.rpartition(":")
        if not sep or not module_part:
            return None
        if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
            return Path(module_part)
        module_name = module_part
    module = sys.modules.get(module_name)
    if module is not None and getattr(module, "__file__", None):
        return Path(module.__file__)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin not in (None, "built-in", "frozen") else None


__all__ = ["ZooCase", "load_zoo", "find_case", "zoo_names", "zoo_source", "module_types", "randn", "rand",
           "randint", "away_from_zero", "build"]
