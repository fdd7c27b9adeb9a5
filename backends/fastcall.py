"""The case's call at leaf values without the per-call set-up that costs more than a tiny case's forward.

``PreparedCase.call`` rebuilds (args, kwargs) through pytree and swaps parameters in with
``torch.func.functional_call``, which resolves names, looks for tied weights and builds accessors on every call:
0.05-0.25 ms per evaluation, where a tiny case's forward takes 0.03-0.1 ms and an audit evaluates it 50-150
times. :class:`DirectCall` does that resolution once, when the program is placed, and then does exactly what
functional_call does per call: write each value into the ``_parameters`` (or ``_buffers``) slot of every module
that holds that parameter (tied weights included), call the module, and put the originals back. The outputs'
differentiable leaves are read the same way, without pytree's key paths.

Unlike functional_call, it can also leave the values in place until a backward pass is done
(:meth:`DirectCall.holding`): torchdiffeq's ``odeint_adjoint`` and any Function that recomputes its forward in
backward call the module again there and differentiate with respect to the parameters the forward saw. With
the originals back in place, those parameters are unused and every parameter gradient comes out 0.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils import _pytree as pytree

from gradaudit.case import InputSlots, PreparedCase, is_differentiable

__all__ = ["DirectCall", "differentiable_leaves"]

Slot = tuple[dict, str]  # (a module's _parameters or _buffers dict, the attribute name in it)


def differentiable_leaves(output: Any) -> list[torch.Tensor]:
    """``case.flatten_outputs(output)[0]`` (the same tensors in the same order), without the key paths: plain
    tuples, lists and dicts are walked here, anything else (namedtuples, registered types) by pytree."""
    leaves: list = []
    _collect(output, leaves)
    return [t.resolve_conj().resolve_neg() for t in leaves if is_differentiable(t)]


def _collect(node: Any, leaves: list) -> None:
    kind = type(node)
    if kind is torch.Tensor:
        leaves.append(node)
    elif kind is tuple or kind is list:
        for item in node:
            _collect(item, leaves)
    elif kind is dict:  # (pytree flattens a dict in insertion order, as here)
        for item in node.values():
            _collect(item, leaves)
    else:
        leaves.extend(pytree.tree_leaves(node))


class DirectCall:
    """``prepared.call(values)``, the resolution of names done once (see the module docstring)."""

    def __init__(self, prepared: PreparedCase) -> None:
        self.prepared = prepared
        self.count = len(prepared.param_names)
        self.rebuild = flat_rebuild(prepared.inputs) or prepared.inputs.rebuild
        self.slots = [] if prepared.module is None else parameter_slots(prepared.module, prepared.param_names)
        self._held: list | None = None  # while holding: the originals every call replaced, to put back at the end

    @classmethod
    def of(cls, prepared: PreparedCase) -> Callable[[list], Any]:
        """The fast call where it does what ``prepared.call`` does, else ``prepared.call`` itself: a subclass
        with a call of its own (a compiled case), a scripted module, or a parameter held outside the
        ``_parameters``/``_buffers`` dicts."""
        if type(prepared).call is not PreparedCase.call or isinstance(prepared.module, torch.jit.ScriptModule):
            return prepared.call
        direct = cls(prepared)
        return prepared.call if any(not slots for slots in direct.slots) else direct

    def __call__(self, values: list) -> Any:
        args, kwargs = self.rebuild(list(values[self.count:]))
        if self.prepared.module is None:
            return self.prepared.fn(*args, **kwargs)
        saved = [] if self._held is None else self._held
        try:
            for slots, value in zip(self.slots, values[:self.count]):
                for table, name in slots:
                    saved.append((table, name, table[name]))
                    table[name] = value
            return self.prepared.module(*args, **kwargs)
        finally:
            if self._held is None:
                _put_back(saved)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Leave each call's values in the module until the block ends (see the module docstring); nested
        blocks hold until the outermost ends."""
        if self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            _put_back(held)


def _put_back(saved: list[tuple[dict, str, Any]]) -> None:
    for table, name, original in reversed(saved):  # (reversed: a slot written twice ends with its first original)
        table[name] = original


def parameter_slots(module: nn.Module, names: list[str]) -> list[list[Slot]]:
    """Per parameter name, every slot that holds that parameter (tied weights: each name the same tensor has, as
    functional_call's tie_weights finds them); [] where one of them is not a ``_parameters``/``_buffers``
    entry. (The module's names are listed once: listed per parameter, a 144-tensor encoder spent 0.33 s here.)"""
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    aliases: dict[int, list[str]] = {}
    for alias, tensor in named:
        aliases.setdefault(id(tensor), []).append(alias)
    return [_slots(module, aliases.get(id(module.get_parameter(name)), [])) for name in names]


def _slots(module: nn.Module, aliases: list[str]) -> list[Slot]:
    slots: list[Slot] = []
    for alias in aliases:
        owner_path, _, attr = alias.rpartition(".")
        owner = module.get_submodule(owner_path)
        table = owner._parameters if attr in owner._parameters else owner._buffers if attr in owner._buffers else None
        if table is None:
            return []
        if not any(t is table and a == attr for t, a in slots):
            slots.append((table, attr))
    return slots


def flat_rebuild(inputs: InputSlots) -> Callable[[list], tuple[tuple, dict]] | None:
    """``inputs.rebuild`` for the common case of flat arguments (tensors and scalars, no nesting), without
    pytree; None otherwise. Told apart by rebuilding the positions themselves."""
    positions = list(range(len(inputs.values)))
    args, kwargs = pytree.tree_unflatten(positions, inputs.spec)
    if list(args) + list(kwargs.values()) != positions or type(args) is not tuple or type(kwargs) is not dict:
        return None
    count, keys = len(args), list(kwargs)
    template, slots = list(inputs.values), list(inputs.slots)

    def rebuild(differentiable: list) -> tuple[tuple, dict]:
        flat = list(template)
        for position, value in zip(slots, differentiable):
            flat[position] = value
        return tuple(flat[:count]), dict(zip(keys, flat[count:]))
    return rebuild
