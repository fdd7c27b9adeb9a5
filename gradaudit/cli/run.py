"""``gradaudit run TARGET``: audit the gradients of one case on one backend."""
from __future__ import annotations

import click

from gradaudit.cli.common import (allow_skip_option, dtype_option, json_option, logger, no_localize_option,
                                  order_option, seed_option, target_argument, timeout_options, tolerance_options,
                                  traceback_option, verbosity_options)
from gradaudit.cli.output import audit_in_worker
from gradaudit.cli.supervisor import Limits
from gradaudit.registry import REFERENCE


@click.command("run")
@target_argument
@click.option("--backend", default=REFERENCE, show_default=True, help="Backend to audit on (see `gradaudit backends`).")
@click.option("--device", default=None, help="Device, e.g. cpu or cuda (default: the backend's).")
@order_option
@dtype_option()
@click.option("--mode", type=click.Choice(["auto", "fast", "full"]), default="auto", show_default=True,
              help="auto: probes and follow-ups; fast: probes only; full: full Jacobians (small cases).")
@seed_option
@tolerance_options
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
@timeout_options
def run(target: str, backend: str, device: str | None, order: int, dtype: str | None, mode: str, seed: int,
        probes: int, json_path: str | None, wrt: str | None, no_localize: bool, no_shadow: bool,
        show_traceback: bool, quiet: bool, verbose: int, static_only: bool, fail_on_hazard: bool,
        batch: bool, allow_skip: bool, timeout: float, phase_timeout: float | None, rtol: float = 0.0,
        atol: float = 0.0) -> None:
    """Audit the gradients of TARGET (path/to/file.py:NAME or dotted.module:NAME)."""
    logger.info("auditing %s on %s (order %d, mode %s, seed %d)", target, backend, order, mode, seed)
    options = dict(backend=backend, device=device, order=order, dtype=dtype, mode=mode, seed=seed, probes=probes,
                   shadow=not no_shadow, localize=not no_localize, wrt=wrt, static_only=static_only,
                   fail_on_hazard=fail_on_hazard, batch=batch, rtol=rtol, atol=atol)
    audit_in_worker("run", target, options, Limits(timeout, phase_timeout), json_path=json_path,
                    verbose=verbose, quiet=quiet, show_traceback=show_traceback, allow_skip=allow_skip)
