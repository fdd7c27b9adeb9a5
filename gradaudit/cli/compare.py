"""``gradaudit compare TARGET``: the same case on several backends, each judged against eager float64 on CPU."""
from __future__ import annotations

import sys

import click

from gradaudit.cli.common import (allow_skip_option, dtype_option, json_option, load_case, log_verdict, logger,
                                  no_localize_option, order_option, seed_option, target_argument,
                                  traceback_option, verbosity_options)
from gradaudit.cli.output import finish, progress_bar
from gradaudit.outcome import command_outcome


def usable_backends() -> list[str]:
    """The registered backends that are installed and usable here (``gradaudit backends``), eager first."""
    from gradaudit.registry import describe_backends

    usable = [name for name, availability, _ in describe_backends() if availability.usable]
    return sorted(usable, key=lambda name: name != "eager")


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
@json_option()
@no_localize_option
@traceback_option
@verbosity_options
@allow_skip_option
def compare(target: str, backend_list: str | None, order: int, dtype: str | None, seed: int,
            json_path: str | None, no_localize: bool, show_traceback: bool, quiet: bool, verbose: int,
            allow_skip: bool) -> None:
    """Run TARGET on several backends and compare outputs and gradients with eager float64 on CPU."""
    from gradaudit.api import compare as compare_backends

    with command_outcome(show_traceback):
        names = chosen_backends(backend_list, quiet)
        case = load_case(target)
        logger.info("comparing on %s (order %d, seed %d)", ", ".join(names), order, seed)
        with progress_bar(sys.stderr.isatty() and not quiet) as progress:
            report = compare_backends(case, backends=names, order=order, dtype=dtype, seed=seed,
                                      localize=not no_localize, progress=progress)
    log_verdict(report)
    finish(report, target, json_path, verbose > 0, allow_skip, quiet=quiet)
