"""``gradaudit backends``: the registered backends, whether they are usable here, and why not."""
from __future__ import annotations

import click

from gradaudit.cli.common import verbosity_options


@click.command("backends")
@verbosity_options
def backends(quiet: bool, verbose: int) -> None:
    """List registered backends and whether they are usable here (-q: only the usable names, one a line)."""
    from rich.console import Console
    from rich.table import Table

    from gradaudit.registry import describe_backends

    rows = describe_backends()
    if quiet:
        for name, availability, _ in rows:
            if availability.usable:
                click.echo(name)
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("backend", "usable", "devices", "details"):
        table.add_column(column)
    for name, availability, description in rows:
        usable = "[green]yes[/green]" if availability.usable else "[red]no[/red]"
        details = availability.reason if not availability.usable else f"{description}; {availability.reason}"
        table.add_row(name, usable, ", ".join(availability.devices), details)
    Console(highlight=False).print(table)
