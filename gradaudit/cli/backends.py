"""``gradaudit backends``: the registered backends, whether they are installed (quick, nothing imported) or usable
(``--check``: each one loaded and probed), and why not."""
from __future__ import annotations

import click

from gradaudit.cli.common import verbosity_options

QUICK_NOTE = ("installed: the modules each backend needs are found; nothing was imported, so a broken install "
              "shows only under --check (which loads and probes each backend: seconds to a minute)")


@click.command("backends")
@click.option("--check", "deep", is_flag=True,
              help="Load each backend and probe it (imports torch-xla, onnxruntime, inductor: slow); without it "
                   "the listing only looks for the installed packages.")
@verbosity_options
def backends(deep: bool, quiet: bool, verbose: int) -> None:
    """List registered backends: installed or not (quick), or usable here and why not (--check).

    -q prints only the names, one a line: of the installed backends, or with --check of the usable ones."""
    if deep:
        _print_checked(quiet)
    else:
        _print_installed(quiet)


def _print_installed(quiet: bool) -> None:
    """The quick listing: from package metadata and the backends' source files, importing neither."""
    from gradaudit.registry import survey_backends

    listings = survey_backends()
    if quiet:
        for listing in listings:
            if listing.installed:
                click.echo(listing.name)
        return
    shown = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]unknown[/yellow]"}
    rows = [(listing.name, shown[listing.installed], "; ".join(filter(None, (listing.description, listing.reason))))
            for listing in listings]
    _print_table(("backend", "installed", "details"), rows, note=QUICK_NOTE)


def _print_checked(quiet: bool) -> None:
    """The deep listing: every backend loaded and its ``availability()`` run."""
    from gradaudit.registry import describe_backends

    rows = describe_backends()
    if quiet:
        for name, availability, _ in rows:
            if availability.usable:
                click.echo(name)
        return
    table_rows = []
    for name, availability, description in rows:
        usable = "[green]yes[/green]" if availability.usable else "[red]no[/red]"
        details = availability.reason if not availability.usable else f"{description}; {availability.reason}"
        table_rows.append((name, usable, ", ".join(availability.devices), details))
    _print_table(("backend", "usable", "devices", "details"), table_rows)


def _print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], note: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, caption=note or None, caption_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(highlight=False).print(table)
