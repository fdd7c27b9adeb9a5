"""Plugins, discovered through ``importlib.metadata`` entry points and checked when loaded: backends (group
``gradaudit.backends``: a :class:`~gradaudit.backends.base.Backend` subclass) and zoos (group ``gradaudit.zoos``:
a function returning cases, or a list of them).

An entry point that fails to import, or that gives something else than its group asks for, is one AuditError
naming the entry point and the distribution that registered it; ``gradaudit backends`` lists such a backend as
broken, with that reason, instead of crashing.

Listing the backends has two depths. :func:`survey_backends` (``gradaudit backends``) loads no entry point: it
reads each backend class's literal ``description`` and ``required_modules`` from its source file and looks the
modules up with ``importlib.util.find_spec``, so it imports neither torch nor the backends' runtimes and takes
milliseconds. :func:`describe_backends` (``gradaudit backends --check``) loads each backend and runs its
``availability()``: the whole truth, at the price of importing torch-xla, onnxruntime and inductor.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import PathFinder
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from gradaudit.errors import AuditError, Unsupported
from gradaudit.outcome import one_line

if TYPE_CHECKING:  # the backends' base module imports torch: imported where a backend is really loaded
    from gradaudit.backends.base import Availability, Backend

BACKENDS = "gradaudit.backends"
ZOOS = "gradaudit.zoos"
GROUP = BACKENDS  # the backends' group, under its older name
# The reference every other backend is held against: PyTorch's own eager kernels (float64 on the CPU). The one
# backend name the code outside backends/ knows, beside the entry-point table (pyproject.toml).
REFERENCE = "eager"


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
    from gradaudit.backends.base import Backend

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


def reference_backend() -> Backend:
    """The reference backend (:data:`REFERENCE`), usable here."""
    return usable_backend(REFERENCE)


@lru_cache(maxsize=None)
def declaration(name: str) -> dict[str, Any]:
    """The literal attributes a registered backend's class declares (``packages``, ``environment``,
    ``required_modules``...), read from its source without importing it; {} where they cannot be read (a
    backend defined elsewhere than its entry point's module)."""
    entry_point = find(BACKENDS, name)
    path = module_file(entry_point.module) if entry_point is not None else None
    return (declared(path, entry_point.attr) or {}) if path is not None else {}


def backend_packages(name: str) -> tuple[str, ...] | None:
    """The distributions whose versions decide a backend's results (``Backend.packages``); None where it
    declares none."""
    packages = declaration(name).get("packages")
    return tuple(packages) if isinstance(packages, (tuple, list)) else None


def backend_environment(name: str) -> dict[str, str | None]:
    """The settings a backend takes from environment variables (``Backend.environment``: setting ->
    (variable, default)), with the values in force here: ``{"compiler": "inductor", "mode": None}``."""
    import os

    declared_settings = declaration(name).get("environment")
    if not isinstance(declared_settings, dict):
        return {}
    return {setting: os.environ.get(variable) or default for setting, (variable, default) in declared_settings.items()}


def describe_backends() -> list[tuple[str, Availability, str]]:
    """(name, availability, description) for every registered backend; a broken one is unusable, with the
    reason why. Loads every backend (torch, torch-xla, onnxruntime, inductor): the deep check."""
    from gradaudit.backends.base import Availability

    rows = []
    for name in backend_names():
        try:
            backend = get_backend(name)
            rows.append((name, _availability(backend), backend.description))
        except AuditError as exc:
            rows.append((name, Availability(False, str(exc)), ""))
    return rows


def _availability(backend: Backend) -> Availability:
    from gradaudit.backends.base import Availability

    try:
        availability = backend.availability()
    except Exception as exc:  # a plugin's bug must not crash the listing
        return Availability(False, f"availability() raised {type(exc).__name__}: {one_line(exc)}")
    if not isinstance(availability, Availability):
        return Availability(False, f"availability() returned a {type(availability).__name__}, not an Availability")
    return availability


# ------------------------------------------------------------------------------------------ the quick listing
@dataclass(frozen=True)
class Listing:
    """A backend as the quick listing sees it, nothing loaded. ``installed``: True when the modules it declares
    (``Backend.required_modules``) are all found, False when one of them or its own module is missing, None when
    it declares none (then only ``--check`` can tell)."""

    name: str
    installed: bool | None
    reason: str
    description: str = ""


def survey_backends() -> list[Listing]:
    """Every registered backend, as far as its source file and the installed packages tell: imports no backend,
    no torch, no runtime (milliseconds). Whether one really runs here is :func:`describe_backends`' to say."""
    return [_survey(find(BACKENDS, name)) for name in backend_names()]


def _survey(entry_point: EntryPoint) -> Listing:
    path = module_file(entry_point.module)
    if path is None:
        return Listing(entry_point.name, False, f"module {entry_point.module} not found ({origin(entry_point)})")
    attributes = declared(path, entry_point.attr)
    if attributes is None:  # defined elsewhere (imported into the module) or not a class: only loading tells
        return Listing(entry_point.name, None,
                       f"no class {entry_point.attr} in {path} to read; {origin(entry_point)}")
    description = attributes.get("description")
    description = description if isinstance(description, str) else ""
    modules = attributes.get("required_modules")
    if not (isinstance(modules, (tuple, list)) and all(isinstance(module, str) for module in modules)):
        return Listing(entry_point.name, None, f"{entry_point.value} declares no literal required_modules",
                       description)
    missing = [module for module in modules if not module_found(module)]
    if missing:
        return Listing(entry_point.name, False, f"not found: {', '.join(missing)}", description)
    return Listing(entry_point.name, True, "found: " + ", ".join(map(with_version, modules)), description)


def module_file(module: str) -> str | None:
    """The file ``module`` would be imported from, found without importing it or the package that holds it (a
    package's ``__init__``, like ``gradaudit.backends``', may import torch); only the packages above that one are
    imported. None when it cannot be found."""
    package, _, _ = module.rpartition(".")
    try:
        if not package:
            spec = importlib.util.find_spec(module)
        else:
            package_spec = importlib.util.find_spec(package)
            locations = package_spec.submodule_search_locations if package_spec is not None else None
            spec = PathFinder.find_spec(module, locations) if locations is not None else None
    except Exception:  # a package above it that fails to import: the module cannot be found either
        return None
    return spec.origin if spec is not None and spec.origin else None


def declared(path: str, class_name: str) -> dict[str, Any] | None:
    """The literal attributes (``name = <literal>``, or ``name = NAME`` of a module-level literal: a long
    template kept out of the class body) in the body of class ``class_name`` of the source file ``path``, read
    without running it (as setuptools reads ``attr:`` versions); None when the file defines no such class (or
    is no readable Python source)."""
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):  # a compiled module, a broken file
        return None
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    return dict(_literal_assignments(classes[-1].body, dict(_literal_assignments(tree.body)))) if classes else None


def _literal_assignments(body: list[ast.stmt], names: dict[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """``(name, value)`` of each ``name = <literal>`` or ``name: type = <literal>`` statement of ``body`` (and,
    given ``names``, of each ``name = NAME`` whose NAME is one of them)."""
    for statement in body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        if isinstance(value, ast.Name) and names is not None and value.id in names:
            yield target.id, names[value.id]
            continue
        try:
            yield target.id, ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):  # not a literal: computed when the class is built
            continue


def module_found(module: str) -> bool:
    """Whether the top-level package of ``module`` can be imported from here, without importing it."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def with_version(module: str) -> str:
    """``torch 2.9.1``: the module and the version of the distribution of the same name, when there is one."""
    try:
        return f"{module} {version(module.partition('.')[0])}"
    except PackageNotFoundError:
        return module


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
           "get_backend", "usable_backend", "describe_backends", "Listing", "survey_backends", "module_file",
           "declared", "module_found", "zoo_names", "load_zoo_entry_point"]
