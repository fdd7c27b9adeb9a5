"""``gradaudit compare TARGET``: the same case on several backends, each judged against eager float64 on CPU."""
from __future__ import annotations

import click

from gradaudit.cli.common import (allow_skip_option, dtype_option, json_option, logger, no_localize_option,
                                  order_option, seed_option, target_argument, timeout_options, tolerance_options,
                                  traceback_option, verbosity_options)
from gradaudit.cli.output import audit_in_worker
from gradaudit.cli.supervisor import Limits
from gradaudit.cli.exits import command_outcome


def usable_backends() -> list[str]:
    """The registered backends that are installed and usable here (``gradaudit backends``), eager first."""
    from gradaudit.registry import REFERENCE, describe_backends

    usable = [name for name, availability, _ in describe_backends() if availability.usable]
    return sorted(usable, key=lambda name: name != REFERENCE)


def chosen_backends(backend_list: str | None, quiet: bool) -> list[str]:
    """The backends ``--backends`` names, or, without it, the usable ones (said on stderr unless quiet)."""
    if backend_list is not None:
        return [name.strip() for name in backend_list.split(",") if name.strip()]
    names = usable_backends()
    if not quiet:
        click.echo(f"gradaudit: comparing {', '.join(names)} (the usable backends here; --backends chooses)",
                   err=True)
    return names


@click.command("compare")
@target_argument
@click.option("--backends", "backend_list", default=None, metavar="NAMES",
              help="Comma-separated backends to compare with eager float64 on CPU (default: every usable one).")
@order_option
@dtype_option("Cast floating inputs and parameters on the compared backends (default: keep).")
@seed_option
@tolerance_options
@json_option()
@no_localize_option
@traceback_option
@verbosity_options
@allow_skip_option
@timeout_options
def compare(target: str, backend_list: str | None, order: int, dtype: str | None, seed: int,
            json_path: str | None, no_localize: bool, show_traceback: bool, quiet: bool, verbose: int,
            allow_skip: bool, timeout: float, phase_timeout: float | None, rtol: float = 0.0,
            atol: float = 0.0) -> None:
    """Run TARGET on several backends and compare outputs and gradients with eager float64 on CPU."""
    with command_outcome(show_traceback):
        names = chosen_backends(backend_list, quiet)
    logger.info("comparing %s on %s (order %d, seed %d)", target, ", ".join(names), order, seed)
    options = dict(backends=names, order=order, dtype=dtype, seed=seed, localize=not no_localize, rtol=rtol,
                   atol=atol)
    audit_in_worker("compare", target, options, Limits(timeout, phase_timeout), json_path=json_path,
                    verbose=verbose, quiet=quiet, show_traceback=show_traceback, allow_skip=allow_skip)
