"""What the commands share: option decorators defined once, the output-path type, loading the target.

Each decorator adds one option (or a pair) with the same name, type, default and help on every command that has
it, so that ``--seed`` or ``--json`` mean the same thing everywhere and configuration defaults
(``gradaudit.config``) apply to every command with that option.
"""
from __future__ import annotations

import re

import functools
import logging
import math
from typing import Any, Callable, TypeVar

import click

from gradaudit import log
from gradaudit.errors import AuditError
from gradaudit.cli.exits import EXIT_ERROR, check_output_path, fail

F = TypeVar("F", bound=Callable[..., Any])
DTYPES = ("float16", "bfloat16", "float32", "float64")
# torch.Generator.manual_seed takes any 64-bit seed; beyond that click says so instead of torch overflowing.
SEED = click.IntRange(0, 2**64 - 1)

logger = logging.getLogger("gradaudit.cli")


class OutputPathError(click.ClickException):
    """An output file the command could not write. Not a usage error: one line and exit 2, like every error
    that stops an audit before it starts."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        """The one line of ``gradaudit.cli.exits.fail`` (which exits 2 at once, as click would next)."""
        fail(self.format_message())


class OutputPath(click.Path):
    """A file the command writes (``-`` is stdout where ``allow_dash``). Refused before any work
    (``gradaudit.cli.exits.check_output_path``, its messages): a missing directory, a directory, no permission."""

    def __init__(self, allow_dash: bool = False) -> None:
        super().__init__(dir_okay=False, writable=True, allow_dash=allow_dash)
        self.name = "path"  # the metavar in --help: PATH

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The path as given, once ``check_output_path`` accepts it."""
        option = param.opts[0] if param is not None and param.opts else "output"
        try:
            check_output_path(str(value), option)
        except AuditError as exc:
            raise OutputPathError(str(exc)) from None
        return super().convert(value, param, ctx)


class BadValueError(OutputPathError):
    """An option value the command refuses: one line and exit 2, as every error that stops an audit before it
    starts (click's usage errors print the usage too)."""


class Tolerance(click.ParamType):
    """A finite number >= 0 (``--rtol``, ``--atol``)."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        option = param.opts[0] if param is not None and param.opts else "the tolerance"
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 0 <= number < math.inf:  # (NaN fails every comparison)
            raise BadValueError(f"{option} must be a finite number >= 0, got {value!r}")
        return number


def tolerance_options(command: F) -> F:
    """``--rtol R`` and ``--atol A``: a check also passes within ``atol + rtol * |numerical|`` per Jacobian
    entry (as torch.allclose; carried onto the probes), for approximate gradients; 0 and 0: the error bar alone."""
    command = click.option("--atol", type=Tolerance(), default=0.0, show_default=True,
                           help="Also accept an absolute error up to this per Jacobian entry (approximate "
                                "gradients).")(command)
    return click.option("--rtol", type=Tolerance(), default=0.0, show_default=True,
                        help="Also accept a relative error up to this per Jacobian entry, as torch.allclose "
                             "(approximate gradients: adjoint methods, estimators).")(command)


def target_argument(command: F) -> F:
    """TARGET: ``path/to/file.py:NAME`` or ``dotted.module:NAME``."""
    return click.argument("target")(command)


def seed_option(command: F) -> F:
    """``--seed N``: the seed of the random probes."""
    return click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random probes.")(
        command)


def order_option(command: F) -> F:
    """``--order {1,2}``."""
    return click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
                        help="2 checks first and second order.")(command)


BUILT_IN_DEFAULT = re.compile(r"\s*\(default: [^)]*\)")


class ConfiguredDefault(click.Option):
    """An option whose help names its built-in default in words (``(default: keep)``): where configuration
    (``[tool.gradaudit]``, ``GRADAUDIT_*``) sets another, ``--help`` says that one instead."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        record = super().get_help_record(ctx)
        configured = ctx.lookup_default(self.name, call=False) if self.name else None
        if record is None or configured is None:
            return record
        names, text = record
        return names, f"{BUILT_IN_DEFAULT.sub('', text)} [default: {configured}, from configuration]"


def dtype_option(help: str = "Cast floating inputs and parameters (default: keep).") -> Callable[[F], F]:
    """``--dtype {float16,bfloat16,float32,float64}``, default None (keep the case's dtypes)."""
    return click.option("--dtype", type=click.Choice(DTYPES), default=None, help=help, cls=ConfiguredDefault)


def json_option(what: str = "the JSON report") -> Callable[[F], F]:
    """``--json PATH``: write ``what`` as JSON to PATH, ``-`` for stdout."""
    return click.option("--json", "json_path", type=OutputPath(allow_dash=True), default=None,
                        help=f"Write {what} to PATH ('-' for stdout).")


def no_localize_option(command: F) -> F:
    """``--no-localize``."""
    return click.option("--no-localize", is_flag=True, help="Skip localizing failures to an op.")(command)


def traceback_option(command: F) -> F:
    """``--traceback``: unexpected errors show their Python traceback (the exit code stays 2)."""
    return click.option("--traceback", "show_traceback", is_flag=True,
                        help="Show Python tracebacks of unexpected errors.")(command)


def allow_skip_option(command: F) -> F:
    """``--allow-skip``: a pass in which a requested order could not run at all is a pass (exit 0)."""
    return click.option("--allow-skip", is_flag=True,
                        help="Accept a pass in which a requested order could not run at all (otherwise exit 2).")(
        command)


def timeout_options(command: F) -> F:
    """``--timeout S`` (everything up to the verdict) and ``--phase-timeout S`` (each optional phase after it:
    localization, the hazard scan); 0 is no limit."""
    from gradaudit.cli.supervisor import DEFAULT_TIMEOUT, MIN_PHASE_TIMEOUT

    seconds = click.FloatRange(min=0)
    command = click.option("--phase-timeout", type=seconds, default=None, metavar="SECONDS",
                           help=f"Time limit of each optional phase after the verdict (localization, the hazard "
                                f"scan); past it the phase is a note and the verdict stands. [default: the larger "
                                f"of {MIN_PHASE_TIMEOUT:g} s and twice the time to the verdict]")(command)
    return click.option("--timeout", type=seconds, default=DEFAULT_TIMEOUT, show_default=True, metavar="SECONDS",
                        help="Time limit of the audit up to its verdict (loading the target, the checks); past it "
                             "exit 2. 0: no limit.")(command)


def verbosity_options(command: F) -> F:
    """``-q/--quiet`` and ``-v/--verbose`` (counted); the ``gradaudit`` logger is set up from them before the
    command runs (``-q`` errors only, ``-v`` info, ``-vv`` debug and other libraries' messages too)."""
    @functools.wraps(command)
    def configured(*args: Any, **kwargs: Any) -> Any:
        """The command, the ``gradaudit`` logger set up first."""
        log.configure(-1 if kwargs["quiet"] else kwargs["verbose"])
        return command(*args, **kwargs)

    configured = click.option("-v", "--verbose", count=True,
                              help="More output: -v lists every check and logs progress, -vv adds debug logs "
                                   "(other libraries' too).")(configured)
    return click.option("-q", "--quiet", is_flag=True, help="Print only the verdict line and errors.")(configured)


def load_case(target: str) -> Any:
    """The case TARGET names (``gradaudit.case.load_target``), with a log line on each side."""
    from gradaudit.case import load_target

    logger.info("loading %s", target)
    case = load_target(target)
    logger.info("loaded %s: %d positional and %d keyword inputs", case.label, len(case.args), len(case.kwargs))
    return case


def log_verdict(report: Any) -> None:
    """Log what an audit found (info) and each finding (debug)."""
    checks, findings = len(report.checks), len(report.findings)
    logger.info("audit done in %.2f s: %s, %d check%s, %d finding%s", report.stats.get("seconds", 0.0),
                "pass" if report.ok else "FAIL", checks, "" if checks == 1 else "s", findings,
                "" if findings == 1 else "s")
    for finding in report.findings:
        where = ", ".join(f"{name} {getattr(finding, name)}" for name in ("node", "module", "source")
                          if getattr(finding, name))
        logger.debug("finding %s wrt %s%s", finding.kind, finding.wrt, f": {where}" if where else "")
