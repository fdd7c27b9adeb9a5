"""Text from the user's code or from stored records, made safe for a terminal: control characters (escape
sequences, carriage returns, newlines that would fake output lines) and bidirectional overrides are shown as
their escapes (``\\x1b``, ``\\n``), so that what is printed is what the text is. Rich markup needs no help
here: the renderers pass such text as ``rich.text.Text`` (or with ``markup=False``), never as markup."""
from __future__ import annotations

import re
from typing import Any

# C0 controls but tab, DEL, C1 controls, and the bidirectional embeddings, overrides and isolates.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any) -> str:
    """``text`` (anything, as ``str``) with every control character shown as its escape."""
    return _UNPRINTABLE.sub(_escape, str(text))


def printable_tree(value: Any) -> Any:
    """Every string in a JSON-like value (dicts, lists, strings; keys included) made :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_tree(key): printable_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_tree(item) for item in value]
    return value
