"""Which source files are gradaudit's own: the core package plus the ``backends/`` and ``analyzers/`` folders that
install as ``gradaudit.backends`` and ``gradaudit.analyzers``. Source attribution (the user's line of a failing op)
and error descriptions skip these frames."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def _package_dirs(name: str) -> list[str]:
    spec = importlib.util.find_spec(name)
    return list(spec.submodule_search_locations or []) if spec else []


OWN_DIRS: tuple[str, ...] = tuple(sorted({str(Path(d).resolve()) + os.sep for d in (
    [str(Path(__file__).resolve().parent)] + _package_dirs("gradaudit.backends") + _package_dirs("gradaudit.analyzers"))}))


def is_own_file(file: str) -> bool:
    """True for a file of gradaudit's own code (``file`` as in a code object's ``co_filename``)."""
    return file.startswith(OWN_DIRS) or (not file.startswith("<") and str(Path(file).resolve()).startswith(OWN_DIRS))
