"""Gradient audits inside your own test suite.

``gradaudit.assert_gradients(fn, args, **options)`` runs :func:`gradaudit.check` and raises ``AssertionError``
with the findings (kind, wrt, worst element, analytical vs numerical, node/module/source) when a gradient is
wrong; it returns the :class:`gradaudit.Report` when they are right.

The pytest plugin (entry point ``pytest11``, loaded automatically once gradaudit is installed) adds:

* a ``gradaudit`` fixture: ``gradaudit(fn, args=(), kwargs=None, **options)``, the same as ``assert_gradients``
  with defaults from the marker;
* a marker ``@pytest.mark.gradaudit(order=2, backend="eager", ...)``: its keyword arguments are the defaults of
  the fixture in the marked test (class and module marks apply too, the closest one wins);
* ``--gradaudit-backend NAME``: the backend of every fixture call that does not name one itself, over the
  marker's; the ini option ``gradaudit_backend`` is a project-wide default below the marker;
* tolerances for approximate gradients (adjoint methods, estimators): ``@pytest.mark.gradaudit(rtol=1e-5)`` or
  a call's ``rtol=``/``atol=`` (see :func:`gradaudit.check`); the ini options ``gradaudit_rtol`` and
  ``gradaudit_atol`` are project-wide defaults below the marker.

Precedence: arguments of the call > ``--gradaudit-backend`` > the marker > ini ``gradaudit_backend``,
``gradaudit_rtol``, ``gradaudit_atol`` > ``gradaudit.check``'s defaults.
pytest is imported only by pytest itself: ``import gradaudit`` works without it.
"""
from __future__ import annotations

from typing import Any, Callable

MARKER = "gradaudit"
MARKER_HELP = ("gradaudit(**options): default options (order=2, backend='eager', dtype=..., mode=..., seed=..., "
               "rtol=..., atol=...) of the gradaudit fixture in this test")
TOLERANCE_INIS = ("rtol", "atol")  # ini gradaudit_rtol / gradaudit_atol: project-wide defaults of the fixture


class GradientAssertionError(AssertionError):
    """The gradients are wrong; ``.report`` is the :class:`gradaudit.Report`."""

    def __init__(self, message: str, report: Any = None):
        super().__init__(message)
        self.report = report


def failure_message(report: Any) -> str:
    """The readable text of a failing :class:`gradaudit.Report` (or its ``to_dict()``): which check failed,
    with respect to what, how badly and where; no Jacobian dump."""
    from gradaudit.report import Report

    data = report if isinstance(report, dict) else report.to_dict()
    return f"wrong gradients{first_finding_summary(data)}\n" + Report.from_dict(data).text()


def first_finding_summary(report: dict) -> str:
    """``: faulty_backward wrt fc1.bias at BadGeluBackward (module act, bad_gelu.py:35)``: the first error
    finding in the words of pytest's one-line summary; "" where there is none."""
    errors = [f for f in report.get("findings") or [] if f.get("severity", "error") == "error"]
    if not errors:
        return ""
    first = errors[0]
    where = ", ".join(str(first[key]) for key in ("module", "source") if first.get(key))
    return (f": {first.get('kind')}" + (f" wrt {first['wrt']}" if first.get("wrt") else "")
            + (f" at {first['node']}" if first.get("node") else "") + (f" ({where})" if where else ""))


def assert_gradients(fn: Any, args: Any = (), kwargs: dict | None = None, **check_options: Any):
    """Audit ``fn`` at ``args``/``kwargs`` with :func:`gradaudit.check` (``check_options``: ``order``,
    ``backend``, ``dtype``, ``mode``, ``seed``, ``probes``, ``fail_on_hazard``, ...). Returns the Report when
    every check passed; raises :class:`GradientAssertionError` (an ``AssertionError``) whose message lists the
    findings otherwise. An audit that cannot run raises :class:`gradaudit.AuditError`, also when ``fn`` raises,
    calls ``sys.exit`` or ``os._exit`` on any call (the test fails, the session goes on); ``KeyboardInterrupt``
    stops the session as pytest's own Ctrl-C does."""
    __tracebackhide__ = True
    from gradaudit import api

    report = api.check(fn, args, kwargs, **check_options)
    if not report.ok:
        raise GradientAssertionError(failure_message(report), report)
    return report


# ----------------------------------------------------------------------------------------------- pytest hooks
def pytest_addoption(parser) -> None:
    group = parser.getgroup("gradaudit", "gradient audits (gradaudit)")
    group.addoption("--gradaudit-backend", dest="gradaudit_backend", default=None, metavar="NAME",
                    help="backend of every gradaudit fixture call that names none (eager, xla, onnx, ...); "
                         "overrides @pytest.mark.gradaudit(backend=...)")
    parser.addini("gradaudit_backend", "default backend of the gradaudit fixture (a marker's backend and "
                  "--gradaudit-backend win)",
                  default="")
    for name in TOLERANCE_INIS:
        parser.addini(f"gradaudit_{name}", f"default {name} of the gradaudit fixture: also accept gradients within "
                      f"atol + rtol * |numerical| (a marker's {name} wins)", default="")


def pytest_configure(config) -> None:
    import pytest

    config.addinivalue_line("markers", MARKER_HELP)
    if not config.pluginmanager.has_plugin("gradaudit-fixtures"):
        config.pluginmanager.register(_fixtures_plugin(pytest), "gradaudit-fixtures")


def marker_options(node) -> dict:
    """The options of the ``gradaudit`` marks on a test item (module, class, function: the closest wins)."""
    options: dict = {}
    for mark in reversed(list(node.iter_markers(MARKER))):
        if mark.args:
            import pytest

            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only, got {mark.args!r} "
                                    f"on {node.nodeid}")
        options.update(mark.kwargs)
    return options


def ini_tolerances(config) -> dict[str, float]:
    """``{"rtol": ..., "atol": ...}`` from the ini options that are set; a value that is not a number is a usage
    error naming the option (its range is checked by gradaudit.check, as a call's own rtol is)."""
    found = {}
    for name in TOLERANCE_INIS:
        text = str(config.getini(f"gradaudit_{name}") or "").strip()
        if not text:
            continue
        try:
            found[name] = float(text)
        except ValueError:
            import pytest

            raise pytest.UsageError(f"ini option gradaudit_{name} must be a number, got {text!r}") from None
    return found


def _fixture(request) -> Callable[..., Any]:
    defaults = marker_options(request.node)
    ini_backend = request.config.getini("gradaudit_backend")
    if ini_backend and "backend" not in defaults:
        defaults["backend"] = ini_backend
    for name, value in ini_tolerances(request.config).items():
        defaults.setdefault(name, value)
    cli_backend = request.config.getoption("gradaudit_backend", default=None)
    if cli_backend:
        defaults["backend"] = cli_backend

    def audit(fn: Any, args: Any = (), kwargs: dict | None = None, **options: Any):
        __tracebackhide__ = True
        return assert_gradients(fn, args, kwargs, **{**defaults, **options})

    audit.defaults = dict(defaults)  # type: ignore[attr-defined]
    return audit


def _fixtures_plugin(pytest) -> object:
    """The plugin object holding the ``gradaudit`` fixture, built in pytest_configure so that this module never
    imports pytest at import time (``import gradaudit`` works without it)."""

    class GradauditFixtures:
        @pytest.fixture(name="gradaudit")
        def gradaudit_fixture(self, request):
            """``gradaudit(fn, args=(), kwargs=None, **options)``: audit the gradients of ``fn``; fail the test
            with the findings when they are wrong, return the Report otherwise. Defaults come from
            ``@pytest.mark.gradaudit(...)`` and ``--gradaudit-backend``."""
            return _fixture(request)

    return GradauditFixtures()
