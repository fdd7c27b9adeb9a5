"""The ``gradaudit`` command: one click group with the commands run, compare, graph, suite and backends.

``main`` is loaded on first use, so that ``python -m gradaudit.cli.worker`` (the audit process every ``run``
starts) does not build the commands it never parses."""
from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from gradaudit.cli.main import main

        globals()["main"] = main  # (importing the submodule ``main`` just bound that name to the module)
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
