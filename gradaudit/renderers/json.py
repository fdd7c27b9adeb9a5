"""Suite records as one JSON document, and back (a single audit's JSON is ``Report.to_json()``)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from gradaudit.renderers import now, write_text
from gradaudit.suite.records import SuiteRecord


def jsonable(value: Any) -> Any:
    """Plain JSON values: non-finite floats and unknown objects as strings, keys as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_json(records: Iterable[SuiteRecord | dict], path: str | os.PathLike, **meta: Any) -> Path:
    """``{"gradaudit": version, "created": ISO time, **meta, "summary": summary_counts, "records": [...]}``
    (records as given: dicts keep exactly their keys); ``path`` ``-`` writes to stdout."""
    from gradaudit._version import __version__
    from gradaudit.suite.summary import summary_counts

    records = [r.to_dict() if isinstance(r, SuiteRecord) else r for r in records]
    document = {"gradaudit": __version__, "created": now(), **jsonable(meta),
                "summary": summary_counts(records), "records": jsonable(records)}
    text = json.dumps(document, indent=2)
    if str(path) == "-":
        print(text)
        return Path("-")
    return write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> list[dict]:
    """The records of a file written by :func:`write_json` (or a bare list of records)."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return document if isinstance(document, list) else list(document.get("records") or [])
