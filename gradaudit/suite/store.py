"""The result store: each record on disk under a key of everything it depends on, so that a re-run reuses the
records whose key still matches (the zoo's source and the case, backend, order, seed and dtype, whether the suite
compared against eager float64, and the versions of gradaudit, torch and the backend's packages)."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path

from gradaudit.errors import AuditError
from gradaudit.suite.records import SuiteRecord

# The packages whose versions decide a backend's results (besides torch and gradaudit).
BACKEND_PACKAGES = {"eager": ("torch",), "xla": ("torch-xla",), "onnx": ("onnxruntime", "onnx", "onnxscript")}


def package_version(name: str) -> str | None:
    """The installed version of a distribution, None where it is not installed."""
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return None


def backend_versions(backend: str) -> dict[str, str | None]:
    """The versions of the packages a backend's results depend on (for a plugin: its distribution's)."""
    packages = BACKEND_PACKAGES.get(backend)
    if packages is None:
        from gradaudit.registry import _registered

        for ep in _registered():
            if ep.name == backend and ep.dist is not None:
                return {ep.dist.name: ep.dist.version}
        return {}
    return {package: package_version(package) for package in packages}


def zoo_digest(spec: str) -> str | None:
    """The sha256 of the zoo's source file (a ``file.py:NAME`` zoo's file, a module's or a registered zoo's
    module file): editing the zoo changes every key. None where the source cannot be found."""
    from gradaudit.suite.zoos import zoo_source

    path = zoo_source(spec)
    try:
        return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def record_key(zoo: str, case: str, backend: str, order: int, seed: int, dtype: str | None,
               versions: dict | None = None, zoo_sha256: str | None = None, compare: bool = False) -> dict:
    """Everything a record depends on. A compare run's key says so (a checked record is never resumed as a
    compared one, nor the reverse); a check run's key has no ``compare`` entry, so results stored before it
    existed still resume."""
    from gradaudit import __version__

    key = {"zoo": zoo, "zoo_sha256": zoo_sha256, "case": case, "backend": backend, "order": order, "seed": seed,
           "dtype": dtype, "gradaudit": __version__, "torch": package_version("torch"),
           "backend_versions": versions if versions is not None else backend_versions(backend)}
    if compare:
        key["compare"] = True
    return key


def key_digest(key: dict) -> str:
    """A short hash of a key (part of the record's file name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class ResultStore:
    """Records on disk, one JSON file per key: ``{"key": ..., "record": ...}``."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create results directory {directory}: {exc.strerror}") from exc
        self._lock = threading.Lock()

    def path(self, key: dict) -> Path:
        """The file of a key: readable names, then the key's hash."""
        mode = "-compare" if key.get("compare") else ""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{key['case']}-{key['backend']}{mode}")
        return self.directory / f"{safe[:80]}-o{key['order']}-{key_digest(key)}.json"

    def load(self, key: dict) -> SuiteRecord | None:
        """The stored record of this exact key, or None."""
        try:
            stored = json.loads(self.path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("record"), dict):
            return None
        return SuiteRecord.from_dict(stored["record"])

    def save(self, key: dict, record: SuiteRecord) -> None:
        """Store a record atomically (a crash never leaves half a file)."""
        path = self.path(key)
        temporary = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        with self._lock:
            temporary.write_text(json.dumps({"key": key, "record": record.to_dict()}, default=str))
            os.replace(temporary, path)
