"""The ``gradaudit`` command line: one click group with the commands ``run``, ``compare``, ``graph``, ``suite``
and ``backends`` (one module each in ``gradaudit.cli``; the options they share in ``gradaudit.cli.common``).

Exit codes (``gradaudit.cli.exits``): 0 every check passed, 1 a gradient problem was found, 2 the audit could not run
(one line on stderr), 130 interrupted. Option defaults come from ``[tool.gradaudit]`` in the nearest
``pyproject.toml`` and ``GRADAUDIT_*`` environment variables (``gradaudit.config``); the command line wins.
"""
from __future__ import annotations

import click

from gradaudit import config
from gradaudit.cli.backends import backends
from gradaudit.cli.compare import compare
from gradaudit.cli.graph import graph_command
from gradaudit.cli.run import run
from gradaudit.cli.suite import suite_command
from gradaudit._version import __version__
from gradaudit.errors import AuditError
from gradaudit.cli.exits import InterruptibleGroup, fail


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, package_name="gradaudit")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Check that the gradients of PyTorch code are right, on every backend.

    Option defaults come from [tool.gradaudit] in pyproject.toml and GRADAUDIT_* environment variables
    (GRADAUDIT_BACKEND=xla); the command line wins."""
    name = ctx.invoked_subcommand
    if name is None:
        return
    try:
        configured = config.default_map(ctx.command, name)
    except AuditError as exc:
        fail(str(exc))
    given = ctx.default_map or {}  # a caller's own default_map (main(default_map=...)) wins over configuration
    ctx.default_map = {**given, name: {**configured, **given.get(name, {})}}


for _command in (run, compare, graph_command, suite_command, backends):
    main.add_command(_command)

if __name__ == "__main__":
    main(prog_name="gradaudit")
