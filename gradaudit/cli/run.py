"""``gradaudit run TARGET``: audit the gradients of one case on one backend."""
from __future__ import annotations

import sys

import click

from gradaudit.cli.common import (allow_skip_option, dtype_option, json_option, load_case, log_verdict, logger,
                                  no_localize_option, order_option, seed_option, target_argument,
                                  traceback_option, verbosity_options)
from gradaudit.cli.output import finish, progress_bar
from gradaudit.outcome import command_outcome


@click.command("run")
@target_argument
@click.option("--backend", default="eager", show_default=True, help="Backend to audit on (see `gradaudit backends`).")
@click.option("--device", default=None, help="Device, e.g. cpu or cuda (default: the backend's).")
@order_option
@dtype_option()
@click.option("--mode", type=click.Choice(["auto", "fast", "full"]), default="auto", show_default=True,
              help="auto: probes and follow-ups; fast: probes only; full: full Jacobians (small cases).")
@seed_option
@click.option("--probes", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Random directions per tensor (and cotangents per order).")
@json_option()
@click.option("--wrt", default=None, metavar="NAMES",
              help="Differentiate only these (comma-separated; args[0], kwargs[x], parameter names; globs).")
@no_localize_option
@click.option("--no-shadow", is_flag=True, help="Check low-precision cases in their own dtype, without float64.")
@traceback_option
@verbosity_options
@click.option("--static-only", is_flag=True, help="Only walk the autograd graph for hazards; no numerics.")
@click.option("--fail-on-hazard", is_flag=True, help="Static hazards fail the audit (exit 1).")
@click.option("--batch", is_flag=True,
              help="Evaluate each probe's points in one torch.func.vmap call (eager; one call per point where "
                   "vmap cannot run the case).")
@allow_skip_option
def run(target: str, backend: str, device: str | None, order: int, dtype: str | None, mode: str, seed: int,
        probes: int, json_path: str | None, wrt: str | None, no_localize: bool, no_shadow: bool,
        show_traceback: bool, quiet: bool, verbose: int, static_only: bool, fail_on_hazard: bool,
        batch: bool, allow_skip: bool) -> None:
    """Audit the gradients of TARGET (path/to/file.py:NAME or dotted.module:NAME)."""
    from gradaudit import api

    with command_outcome(show_traceback):
        case = load_case(target)
        logger.info("auditing on %s (order %d, mode %s, seed %d)", backend, order, mode, seed)
        with progress_bar(sys.stderr.isatty() and not quiet) as progress:
            report = api.check(case, backend=backend, device=device, order=order, dtype=dtype, mode=mode,
                               seed=seed, probes=probes, shadow=not no_shadow, localize=not no_localize, wrt=wrt,
                               static_only=static_only, fail_on_hazard=fail_on_hazard, progress=progress,
                               batch=batch)
    log_verdict(report)
    finish(report, target, json_path, verbose > 0, allow_skip, quiet=quiet)
