"""The product's boundaries, checked on its source: the core and the backends never load the command line's
libraries (click, rich), and no module of ``gradaudit/``, ``backends/`` or ``analyzers/`` takes part in an import
cycle. Cycles are found on the AST (no import runs), with the installed package names of pyproject.toml's
``package-dir`` (``backends/`` is ``gradaudit.backends``)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the module map
def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Installed package name -> folder, as setuptools maps them (``gradaudit.backends`` -> ``backends/``)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config.get("package-dir", {})
    return {package: root / mapping.get(package, package.replace(".", "/")) for package in config["packages"]}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the product by its installed name (a package by its ``__init__.py``)."""
    modules = {}
    for package, folder in package_dirs(root).items():
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


# ------------------------------------------------------------------------------------------ imports
def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], deferred: bool) -> list[ast.stmt]:
    """The import statements that run on importing the module (``deferred``: those in functions too); an
    ``if TYPE_CHECKING:`` block never runs."""
    found = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _type_checking(node.test):
            found += _statements(node.orelse, deferred)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not deferred:
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                found += _statements(getattr(node, field, []) or [], deferred)
    return found


def imported(name: str, path: Path, modules: dict[str, Path], deferred: bool = False) -> set[str]:
    """The product's modules that ``name`` imports: the module an ``import`` names, and for ``from X import y``
    the submodule ``X.y`` where there is one, else ``X`` (a parent package is not counted for ``import a.b``:
    Python imports it first, whatever the child does)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in _statements(ast.parse(path.read_text(), str(path)).body, deferred):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {target for target in targets if target in modules and target != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def import_graph(deferred: bool, root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imported(name, path, modules, deferred) for name, path in modules.items()}


def explain(graph: dict[str, set[str]], found: list[list[str]]) -> str:
    return "; ".join(" ".join(f"{a} -> {sorted(graph[a] & set(c))}" for a in c) for c in found)


# ------------------------------------------------------------------------------------------ the tests
def test_the_module_map_covers_the_three_folders() -> None:
    modules = module_files()
    assert modules["gradaudit.backends.eager"] == ROOT / "backends" / "eager.py"
    assert modules["gradaudit.analyzers.localize"] == ROOT / "analyzers" / "localize.py"
    assert modules["gradaudit.core.checks"] == ROOT / "gradaudit" / "core" / "checks.py"


def test_no_import_cycle_at_module_level() -> None:
    graph = import_graph(deferred=False)
    found = cycles(graph)
    assert not found, f"import cycles: {explain(graph, found)}"


def test_no_dependency_cycle_even_through_imports_inside_functions() -> None:
    """A cycle hidden in a function-level import still ties two modules together (neither can move or be
    understood alone); none is left."""
    graph = import_graph(deferred=True)
    found = cycles(graph)
    assert not found, f"dependency cycles: {explain(graph, found)}"


def test_the_layers_import_only_downwards() -> None:
    """What the Layout promises, counting imports inside functions: outside ``backends/`` only the base
    interface of the backends is imported (a backend is loaded by name, through the registry), and the core
    imports no analyzer, command line, renderer or suite."""
    above_core = ("gradaudit.analyzers", "gradaudit.cli", "gradaudit.renderers", "gradaudit.suite", "gradaudit.api")
    wrong = {}
    for name, targets in import_graph(deferred=True).items():
        if name.startswith("gradaudit.backends"):
            continue
        bad = [t for t in targets if t.startswith("gradaudit.backends.") and t != "gradaudit.backends.base"]
        bad += [t for t in targets if name.startswith("gradaudit.core") and t.startswith(above_core)]
        if bad:
            wrong[name] = sorted(bad)
    assert not wrong, f"imports across the layers: {wrong}"


def test_the_cycle_finder_sees_a_planted_cycle(tmp_path: Path) -> None:
    """The checks above can fail: a module-level cycle planted in a copy of the layout is found, one hidden in a
    function only by the deferred graph, and a relative import is resolved."""
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackages = ["pkg", "pkg.plugins"]\n'
                                             '[tool.setuptools.package-dir]\n"pkg.plugins" = "plugins"\n')
    (tmp_path / "pkg").mkdir()
    (tmp_path / "plugins").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "plugins" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.plugins import b\n")
    (tmp_path / "plugins" / "b.py").write_text("from . import c\n")
    (tmp_path / "plugins" / "c.py").write_text("import sys\nif sys:\n    from pkg.a import thing\n")
    (tmp_path / "pkg" / "d.py").write_text("def late():\n    from pkg import e\n")
    (tmp_path / "pkg" / "e.py").write_text("from typing import TYPE_CHECKING\nfrom pkg.d import late\n"
                                          "if TYPE_CHECKING:\n    from pkg.a import x\n")
    assert cycles(import_graph(False, tmp_path)) == [["pkg.a", "pkg.plugins.b", "pkg.plugins.c"]]
    assert sorted(cycles(import_graph(True, tmp_path))) == [["pkg.a", "pkg.plugins.b", "pkg.plugins.c"],
                                                            ["pkg.d", "pkg.e"]]


CORE_AND_BACKENDS = """
import importlib, json, pkgutil, sys
import gradaudit.core, gradaudit.backends
loaded = []
for package in (gradaudit.core, gradaudit.backends):
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
        loaded.append(info.name)
print(json.dumps({"loaded": loaded, "cli": sorted({m.split(".")[0] for m in sys.modules} & {"click", "rich"})}))
"""


@pytest.mark.slow
def test_the_core_and_every_backend_load_without_the_command_line_libraries() -> None:
    """Import ``gradaudit.core`` with all its modules and every backend module in a fresh interpreter: neither
    click nor rich is loaded (the core must not depend on the command line)."""
    done = subprocess.run([sys.executable, "-c", CORE_AND_BACKENDS], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert {"checks", "probe", "kinds", "eager", "xla", "onnx", "compile", "base"} <= set(seen["loaded"])
    assert seen["cli"] == [], f"loaded with the core and the backends: {seen['cli']}"


# ------------------------------------------------------------------------------------------ backend knowledge
BUILT_IN = ("eager", "xla", "onnx", "compile")


def backend_name_tests(source: str, names: tuple[str, ...] = BUILT_IN) -> list[int]:
    """Lines of ``source`` that compare something with a backend's name (``== "xla"``, ``in ("xla", "onnx")``):
    a decision made by name outside the backend, where a declared capability belongs."""
    def named(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(named(item) for item in node.elts)

    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
            and any(named(part) for part in [node.left, *node.comparators])]


def test_the_name_finder_sees_a_planted_name_test() -> None:
    assert backend_name_tests('if backend == "xla":\n    pass\nx = b not in ("onnx", "tpu")\ny = "eager"\n') == [1, 3]


def test_no_backend_name_is_tested_outside_backends() -> None:
    """The rest of the code asks a backend what it can do (capabilities, declared packages and settings); the
    registry's REFERENCE names the reference backend, and defaults may name a backend, but no code decides by
    comparing a backend's name."""
    found = {}
    for name, path in module_files().items():
        if name.startswith("gradaudit.backends"):
            continue
        lines = backend_name_tests(path.read_text())
        if lines:
            found[str(path.relative_to(ROOT))] = lines
    assert not found, f"backend names tested outside backends/: {found}"


def test_each_built_in_backend_declares_its_packages_readably_without_importing_it() -> None:
    from gradaudit import registry

    for name in BUILT_IN:
        packages = registry.backend_packages(name)
        assert packages and all(isinstance(p, str) for p in packages), (name, packages)
        assert registry.get_backend(name).packages == packages  # the literal is the class's own attribute
    assert registry.backend_packages("xla") == ("torch-xla",)


def test_backends_declare_their_repro_scripts_and_the_registry_reads_named_templates(tmp_path: Path) -> None:
    """The torch.ops repro of a backend is its own declaration (a template kept in a module-level literal that
    the class names), read without importing the backend, and the same text the class holds."""
    from gradaudit import registry

    for name in ("xla", "onnx", "compile"):
        declared = registry.declaration(name)
        assert "def " in declared["repro_run"] and declared["repro_run"] == registry.get_backend(name).repro_run
    assert "repro_run" not in registry.declaration("eager")
    source = tmp_path / "plugin.py"
    source.write_text('TEMPLATE = """run({dtype})"""\nOTHER = len("x")\n\nclass B:\n    repro_run = TEMPLATE\n'
                      '    computed = OTHER\n    title = "b"\n')
    assert registry.declared(str(source), "B") == {"repro_run": "run({dtype})", "title": "b"}


def test_the_compile_backend_declares_the_settings_it_takes_from_the_environment(monkeypatch) -> None:
    """A suite keys compile records on the compiler and mode in force (an aot_eager record is no inductor one);
    the store reads them from the backend's declaration, and they are the ones the backend uses."""
    from gradaudit import registry
    from gradaudit.suite.store import backend_versions

    monkeypatch.delenv("GRADAUDIT_COMPILE_MODE", raising=False)
    monkeypatch.delenv("GRADAUDIT_COMPILE_BACKEND", raising=False)
    assert registry.backend_environment("compile") == {"compiler": "inductor", "mode": None}
    monkeypatch.setenv("GRADAUDIT_COMPILE_BACKEND", "aot_eager")
    assert registry.backend_environment("compile") == {"compiler": "aot_eager", "mode": None}
    assert registry.get_backend("compile").compiler == "aot_eager"
    assert list(backend_versions("compile")) == ["torch", "compiler", "mode"]
    assert backend_versions("compile")["compiler"] == "aot_eager"
    assert registry.backend_environment("eager") == {}


# ------------------------------------------------------------------------------------------ typed results
def test_findings_and_checks_carry_the_exported_enums_and_json_keeps_the_strings() -> None:
    """``finding.kind == gradaudit.FindingKind.FAULTY_BACKWARD`` on a real audit of a planted fault; the JSON
    report holds the same plain strings as before, and reading it back gives the enums again."""
    import torch

    import gradaudit

    class Doubled(torch.autograd.Function):  # the backward is twice the right one
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 2 * grad * x.cos()

    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    report = gradaudit.check(Doubled.apply, (x,), localize=False)
    errors = [f for f in report.findings if f.severity == gradaudit.Severity.ERROR]
    assert not report.ok and errors[0].kind == gradaudit.FindingKind.FAULTY_BACKWARD
    assert isinstance(errors[0].kind, gradaudit.FindingKind) and errors[0].kind == "faulty_backward"
    assert any(c.status is gradaudit.CheckStatus.FAIL and c.method in set(gradaudit.Method) for c in report.checks)
    data = json.loads(report.to_json())
    assert data["findings"][0]["kind"] == "faulty_backward" and type(report.to_dict()["findings"][0]["kind"]) is str
    again = gradaudit.Report.from_dict(data)
    assert again.findings[0].kind is gradaudit.FindingKind.FAULTY_BACKWARD and not again.ok
    assert gradaudit.Finding.from_dict({"kind": "a_kind_from_the_future", "message": ""}).kind == "a_kind_from_the_future"
    # Notes: what was left out (Doubled has no forward-mode formula), the JSON object itself
    assert gradaudit.Note.__required_keys__ == {"what", "reason"}
    assert [n["what"] for n in report.skipped] == ["forward-mode AD (order 1)"]
    assert data["skipped"] == report.skipped and again.skipped == report.skipped
