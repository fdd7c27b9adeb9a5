"""Plugins, discovered through ``importlib.metadata`` entry points and checked when loaded: backends (group
``gradaudit.backends``: a :class:`~gradaudit.backends.base.Backend` subclass) and zoos (group ``gradaudit.zoos``:
a function returning cases, or a list of them).

An entry point that fails to import, or that gives something else than its group asks for, is one AuditError
naming the entry point and the distribution that registered it; ``gradaudit backends`` lists such a backend as
broken, with that reason, instead of crashing.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable

from gradaudit.backends.base import Availability, Backend
from gradaudit.errors import AuditError, Unsupported
from gradaudit.outcome import one_line

BACKENDS = "gradaudit.backends"
ZOOS = "gradaudit.zoos"
GROUP = BACKENDS  # the backends' group, under its older name


@lru_cache(maxsize=None)
def registered(group: str = BACKENDS) -> tuple[EntryPoint, ...]:
    """The entry points of ``group`` (scanning installed distributions costs milliseconds: once per process)."""
    return tuple(entry_points(group=group))


def _registered() -> tuple[EntryPoint, ...]:
    """The backends' entry points (older name of ``registered(BACKENDS)``)."""
    return registered(BACKENDS)


def names(group: str) -> list[str]:
    """The names registered in ``group``, sorted."""
    return sorted({ep.name for ep in registered(group)})


def find(group: str, name: str) -> EntryPoint | None:
    """The entry point registered as ``name`` in ``group`` (the first one, if several distributions do)."""
    return next((ep for ep in registered(group) if ep.name == name), None)


def origin(entry_point: EntryPoint) -> str:
    """``entry point NAME = module:attr, from distribution DIST VERSION``: where a plugin comes from."""
    dist = entry_point.dist
    source = f"distribution {dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point {entry_point.name} = {entry_point.value}, from {source}"


def load_checked(entry_point: EntryPoint, what: str, expected: str, fits: Callable[[Any], bool]) -> Any:
    """Import what ``entry_point`` names and check that it ``fits`` its group (``expected`` says what fits); one
    AuditError naming the entry point and its distribution otherwise."""
    try:
        loaded = entry_point.load()
    except Exception as exc:  # a plugin's import error, whatever it is, must not crash gradaudit
        raise AuditError(f"{what} {entry_point.name!r} failed to load: {type(exc).__name__}: {one_line(exc)} "
                         f"({origin(entry_point)})") from exc
    if not fits(loaded):
        raise AuditError(f"{what} {entry_point.name!r} is broken: {entry_point.value} is a "
                         f"{type(loaded).__name__}, not {expected} ({origin(entry_point)})")
    return loaded


# ------------------------------------------------------------------------------------------ backends
def backend_names() -> list[str]:
    """The names of the registered backends, broken ones included."""
    return names(BACKENDS)


def _is_backend_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, Backend)


def get_backend(name: str) -> Backend:
    """Instantiate the backend registered as ``name``; AuditError if unknown or broken."""
    entry_point = find(BACKENDS, name)
    if entry_point is None:
        known = ", ".join(backend_names()) or "none (is gradaudit installed? try: pip install -e .)"
        raise AuditError(f"unknown backend {name!r}; installed backends: {known}")
    backend_class = load_checked(entry_point, "backend", "a subclass of gradaudit.backends.base.Backend",
                                 _is_backend_class)
    try:
        return backend_class()
    except Exception as exc:  # abstract methods left out, a constructor that raises
        raise AuditError(f"backend {name!r} failed to load: {type(exc).__name__}: {one_line(exc)} "
                         f"({origin(entry_point)})") from exc


def usable_backend(name: str) -> Backend:
    """The backend registered as ``name``; Unsupported where it cannot run here (with the reason why)."""
    backend = get_backend(name)
    availability = backend.availability()
    if not availability.usable:
        raise Unsupported(f"backend {name!r} is not usable here: {availability.reason}")
    return backend


def describe_backends() -> list[tuple[str, Availability, str]]:
    """(name, availability, description) for every registered backend; a broken one is unusable, with the
    reason why."""
    rows = []
    for name in backend_names():
        try:
            backend = get_backend(name)
            rows.append((name, _availability(backend), backend.description))
        except AuditError as exc:
            rows.append((name, Availability(False, str(exc)), ""))
    return rows


def _availability(backend: Backend) -> Availability:
    try:
        availability = backend.availability()
    except Exception as exc:  # a plugin's bug must not crash the listing
        return Availability(False, f"availability() raised {type(exc).__name__}: {one_line(exc)}")
    if not isinstance(availability, Availability):
        return Availability(False, f"availability() returned a {type(availability).__name__}, not an Availability")
    return availability


# ------------------------------------------------------------------------------------------ zoos
def zoo_names() -> list[str]:
    """The names of the registered zoos."""
    return names(ZOOS)


def _is_zoo(value: Any) -> bool:
    return callable(value) or isinstance(value, (list, tuple))


def load_zoo_entry_point(name: str) -> Any | None:
    """What the zoo registered as ``name`` gives (a function returning cases, or a list of them); None when no
    zoo has that name; AuditError when its entry point is broken."""
    entry_point = find(ZOOS, name)
    if entry_point is None:
        return None
    return load_checked(entry_point, "zoo", "a function returning cases", _is_zoo)


__all__ = ["BACKENDS", "ZOOS", "registered", "names", "find", "origin", "load_checked", "backend_names",
           "get_backend", "usable_backend", "describe_backends", "zoo_names", "load_zoo_entry_point"]
