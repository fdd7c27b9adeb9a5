"""Renderers of reports: plain text (``str(report)``, pipes, suite records), rich (terminals), JSON, JUnit XML and
an HTML page (a jinja2 template). Each takes the data model of :mod:`gradaudit.report` or suite records and
returns or writes text; none of them decides a verdict."""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a report file atomically (creating its folder): a reader sees the old file or the new one, and a
    failed write leaves the old one and no temporary file. An OSError names ``path`` (``exc.filename``)."""
    path = Path(path)
    try:
        _write_atomically(path.resolve() if path.is_symlink() else path, text)
    except OSError as exc:
        exc.filename = str(path)
        raise
    return path


def _write_atomically(path: Path, text: str) -> None:
    if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: write into it, never replace it
        path.write_text(text, encoding="utf-8")
        return
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def now() -> str:
    """The local time, to the second, in ISO form (when a report was made)."""
    return _dt.datetime.now().replace(microsecond=0).isoformat()
