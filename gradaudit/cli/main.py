"""The ``gradaudit`` command line: ``run``, ``compare``, ``graph``, ``suite`` and ``backends``.

Exit codes: 0 every check passed, 1 a gradient problem was found, 2 the audit could not run (one line on stderr),
130 interrupted. What the audited code does (exits, exceptions, Ctrl-C) is mapped in ``gradaudit.outcome``.
"""
from __future__ import annotations

import sys

import click

from gradaudit.cli.output import finish, progress_bar
from gradaudit.outcome import InterruptibleGroup, check_output_path, command_outcome

# torch.Generator.manual_seed takes any 64-bit seed; beyond that click says so instead of torch overflowing.
SEED = click.IntRange(0, 2**64 - 1)


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gradaudit")
def main() -> None:
    """Check that the gradients of PyTorch code are right, on every backend."""



@main.command()
@click.argument("target")
@click.option("--backend", default="eager", show_default=True, help="Backend to audit on (see `gradaudit backends`).")
@click.option("--device", default=None, help="Device, e.g. cpu or cuda (default: the backend's).")
@click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2 checks first and second order.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]), default=None,
              help="Cast floating inputs and parameters (default: keep).")
@click.option("--mode", type=click.Choice(["auto", "fast", "full"]), default="auto", show_default=True,
              help="auto: probes and follow-ups; fast: probes only; full: full Jacobians (small cases).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random probes.")
@click.option("--probes", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Random directions per tensor (and cotangents per order).")
@click.option("--json", "json_path", default=None, help="Write the JSON report to PATH ('-' for stdout).")
@click.option("--wrt", default=None, metavar="NAMES",
              help="Differentiate only these (comma-separated; args[0], kwargs[x], parameter names; globs).")
@click.option("--no-localize", is_flag=True, help="Skip localizing failures to an op.")
@click.option("--no-shadow", is_flag=True, help="Check low-precision cases in their own dtype, without float64.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show Python tracebacks of unexpected errors.")
@click.option("-v", "--verbose", is_flag=True, help="List every check, not only those that did not pass.")
@click.option("--static-only", is_flag=True, help="Only walk the autograd graph for hazards; no numerics.")
@click.option("--fail-on-hazard", is_flag=True, help="Static hazards fail the audit (exit 1).")
@click.option("--allow-skip", is_flag=True,
              help="Accept a pass in which a requested order could not run at all (otherwise exit 2).")
def run(target, backend, device, order, dtype, mode, seed, probes, json_path, wrt, no_localize, no_shadow,
        show_traceback, verbose, static_only, fail_on_hazard, allow_skip) -> None:
    """Audit the gradients of TARGET (path/to/file.py:NAME or dotted.module:NAME)."""
    from gradaudit import api
    from gradaudit.case import load_target

    with command_outcome(show_traceback):
        check_output_path(json_path, "--json")
        case = load_target(target)
        with progress_bar(sys.stderr.isatty()) as progress:
            report = api.check(case, backend=backend, device=device, order=order, dtype=dtype, mode=mode,
                               seed=seed, probes=probes, shadow=not no_shadow, localize=not no_localize, wrt=wrt,
                               static_only=static_only, fail_on_hazard=fail_on_hazard, progress=progress)
    finish(report, target, json_path, verbose, allow_skip)



@main.command()
@click.argument("target")
@click.option("--backends", "backend_list", default="eager,xla", show_default=True,
              help="Comma-separated backends to compare with eager float64 on CPU.")
@click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]), default=None,
              help="Cast floating inputs and parameters on the compared backends (default: keep).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--json", "json_path", default=None, help="Write the JSON report to PATH ('-' for stdout).")
@click.option("--no-localize", is_flag=True, help="Skip localizing divergences to an op.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show Python tracebacks of unexpected errors.")
@click.option("-v", "--verbose", is_flag=True, help="List every check, not only those that did not pass.")
@click.option("--allow-skip", is_flag=True,
              help="Accept a pass in which a requested order could not run at all (otherwise exit 2).")
def compare(target, backend_list, order, dtype, seed, json_path, no_localize, show_traceback, verbose,
            allow_skip) -> None:
    """Run TARGET on several backends and compare outputs and gradients with eager float64 on CPU."""
    from gradaudit.compare import compare as compare_backends
    from gradaudit.case import load_target

    names = [b.strip() for b in backend_list.split(",") if b.strip()]
    with command_outcome(show_traceback):
        check_output_path(json_path, "--json")
        case = load_target(target)
        with progress_bar(sys.stderr.isatty()) as progress:
            report = compare_backends(case, backends=names, order=order, dtype=dtype, seed=seed,
                                            localize=not no_localize, progress=progress)
    finish(report, target, json_path, verbose, allow_skip)




@main.command()
def backends() -> None:
    """List registered backends and whether they are usable here."""
    from rich.console import Console
    from rich.table import Table

    from gradaudit.registry import describe_backends

    table = Table(show_edge=False, pad_edge=False)
    for column in ("backend", "usable", "devices", "details"):
        table.add_column(column)
    for name, availability, description in describe_backends():
        usable = "[green]yes[/green]" if availability.usable else "[red]no[/red]"
        details = availability.reason if not availability.usable else f"{description}; {availability.reason}"
        table.add_row(name, usable, ", ".join(availability.devices), details)
    Console(highlight=False).print(table)


def _register_commands() -> None:
    from gradaudit.cli.graph import graph_command
    from gradaudit.cli.suite import suite_command

    main.add_command(graph_command)
    main.add_command(suite_command)


_register_commands()

if __name__ == "__main__":
    main()
