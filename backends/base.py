"""The small interface every backend implements: a Backend loads a Case into a Program that evaluates it.

The checker only needs a Program to map leaf values to output tensors (on which torch autograd works); the
backend owns device placement, dtype casting, compilation, and restoring whatever it touched.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from gradaudit.case import Case


@dataclass
class Leaf:
    """A differentiated tensor: a positional/keyword input or a named parameter."""

    name: str  # 'args[0]', 'kwargs[mask]', 'fc1.weight'
    value: torch.Tensor
    kind: str  # 'input' | 'parameter'


@dataclass
class Stats:
    forward_evals: int = 0
    backward_evals: int = 0
    compilations: int = 0

    def to_dict(self) -> dict:
        return {"forward_evals": self.forward_evals, "backward_evals": self.backward_evals,
                "compilations": self.compilations}


@dataclass
class Availability:
    usable: bool
    reason: str = ""
    devices: list[str] = field(default_factory=list)


class Program(ABC):
    """A case loaded on a backend: ``program(values) -> outputs`` with every evaluation identical
    (RNG frozen, mutable state restored), so finite differences see one deterministic function."""

    leaves: list[Leaf]
    output_names: list[str]
    device: str
    stats: Stats
    supports_forward_ad: bool = True
    supports_double_backward: bool = True
    # False for backends that only evaluate (an exported graph in a runtime): their outputs carry no torch
    # autograd graph, so the audit judges their finite differences against eager float64 gradients.
    supports_autograd: bool = True

    @abstractmethod
    def __call__(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Evaluate the case with the leaves replaced by ``values``; returns its differentiable outputs."""

    def close(self) -> None:
        """Restore global state (RNG, precision flags) the program changed."""

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
    """A plugin: registered under the ``gradaudit.backends`` entry point group."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here, and why not."""

    @abstractmethod
    def default_device(self) -> str: ...

    @abstractmethod
    def load(self, case: Case, device: str | None = None, dtype: torch.dtype | None = None) -> Program:
        """Place the case on the device, cast floating tensors to ``dtype`` when given, return a Program."""
