"""Backend plugins, discovered through ``importlib.metadata`` entry points (group ``gradaudit.backends``)."""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from gradaudit.backends.base import Availability, Backend
from gradaudit.errors import AuditError

GROUP = "gradaudit.backends"


@lru_cache(maxsize=1)
def _registered() -> tuple[EntryPoint, ...]:
    """Scanning installed distributions costs milliseconds: once per process is enough."""
    return tuple(entry_points(group=GROUP))


def backend_names() -> list[str]:
    return sorted({ep.name for ep in _registered()})


def get_backend(name: str) -> Backend:
    """Instantiate the backend registered as ``name``; AuditError if unknown or broken."""
    matches = [ep for ep in _registered() if ep.name == name]
    if not matches:
        known = ", ".join(backend_names()) or "none (is gradaudit installed? try: pip install -e .)"
        raise AuditError(f"unknown backend {name!r}; installed backends: {known}")
    try:
        backend_class = matches[0].load()
    except Exception as exc:
        raise AuditError(f"backend {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    return backend_class()


def usable_backend(name: str) -> Backend:
    backend = get_backend(name)
    availability = backend.availability()
    if not availability.usable:
        raise AuditError(f"backend {name!r} is not usable here: {availability.reason}")
    return backend


def describe_backends() -> list[tuple[str, Availability, str]]:
    """(name, availability, description) for every registered backend, broken ones included."""
    rows = []
    for name in backend_names():
        try:
            backend = get_backend(name)
            rows.append((name, backend.availability(), backend.description))
        except AuditError as exc:
            rows.append((name, Availability(False, str(exc)), ""))
    return rows
