"""The ``gradaudit`` command: one click group with the commands run, compare, graph, suite and backends."""
from gradaudit.cli.main import main

__all__ = ["main"]
