"""One line of text out of a message: the one place the report, the suites and the command line cut messages
down (every error the user sees is one line). Imports nothing of gradaudit: everything may use it."""
from __future__ import annotations

from typing import Any


def shorten(text: str, limit: int | None, mark: str = "…") -> str:
    """``text`` cut to ``limit`` characters, ending in ``mark`` where it was cut."""
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - len(mark), 0)] + mark


def first_line(text: Any, limit: int | None = None, mark: str = "…") -> str:
    """The first non-blank line of a text or an exception's message, stripped ("" when it has none; None is
    ""), shortened to ``limit``."""
    lines = [line.strip() for line in str(text if text is not None else "").strip().splitlines() if line.strip()]
    return shorten(lines[0] if lines else "", limit, mark)


def one_line(exc: BaseException, limit: int | None = None, mark: str = "...") -> str:
    """The first line of an exception's message, or its type's name when it has none, shortened to ``limit``."""
    return shorten(first_line(exc) or type(exc).__name__, limit, mark)


def flattened(text: Any, limit: int | None = None) -> str:
    """All of a text on one line, whitespace collapsed (None is ""), shortened to ``limit``."""
    return shorten(" ".join(str(text if text is not None else "").split()), limit)
