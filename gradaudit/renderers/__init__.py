"""Renderers of reports: plain text (``str(report)``, pipes, suite records), rich (terminals), JSON, JUnit XML and
an HTML page (a jinja2 template). Each takes the data model of :mod:`gradaudit.report` or suite records and
returns or writes text; none of them decides a verdict."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a report file (creating its folder); returns its path."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def now() -> str:
    """The local time, to the second, in ISO form (when a report was made)."""
    return _dt.datetime.now().replace(microsecond=0).isoformat()
