"""The result store: each record on disk under a key of everything it depends on, so that a re-run reuses the
records whose key still matches (the zoo's source and the case, backend, order, seed and dtype, whether the suite
compared against eager float64, and the versions of gradaudit, torch and the backend's packages)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from contextlib import suppress
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path

from gradaudit.errors import AuditError
from gradaudit.suite.records import SuiteRecord

logger = logging.getLogger(__name__)

def package_version(name: str) -> str | None:
    """The installed version of a distribution, None where it is not installed."""
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return None


def backend_versions(backend: str) -> dict[str, str | None]:
    """The versions of the packages a backend's results depend on, as the backend declares them
    (``Backend.packages``, for a plugin that declares none: its distribution's), and the settings it takes from
    the environment (``Backend.environment``: the compile backend's compiler and mode)."""
    from gradaudit import registry

    packages = registry.backend_packages(backend)
    if packages is None:
        for ep in registry.registered():
            if ep.name == backend and ep.dist is not None:
                return {ep.dist.name: ep.dist.version}
        return {}
    return {package: package_version(package) for package in packages} | registry.backend_environment(backend)


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
               versions: dict | None = None, zoo_sha256: str | None = None, compare: bool = False,
               tolerances: dict | None = None) -> dict:
    """Everything a record depends on. A compare run's key says so (a checked record is never resumed as a
    compared one, nor the reverse); a check run's key has no ``compare`` entry, so results stored before it
    existed still resume. ``tolerances``: the user's ``rtol``/``atol`` where given (likewise absent without)."""
    from gradaudit._version import __version__

    key = {"zoo": zoo, "zoo_sha256": zoo_sha256, "case": case, "backend": backend, "order": order, "seed": seed,
           "dtype": dtype, "gradaudit": __version__, "torch": package_version("torch"),
           "backend_versions": versions if versions is not None else backend_versions(backend)}
    if compare:
        key["compare"] = True
    key |= {name: value for name, value in (tolerances or {}).items() if value}
    return key


def key_digest(key: dict) -> str:
    """A short hash of a key (part of the record's file name)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class ResultStore:
    """Records on disk, one JSON file per key: ``{"key": ..., "record": ...}``. Any I/O problem of the directory
    (missing permission, a full disk, a directory where a record goes) is one :class:`AuditError` line; a damaged
    or tampered record is never trusted: it is ignored with a warning, and its job runs again."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create results directory {directory}: {exc.strerror or exc}") from exc
        self._lock = threading.Lock()
        self._check_writable()

    def _check_writable(self) -> None:
        """Write and remove a small file now, so that a read-only or full directory stops the suite before any
        job runs (rather than after the first one)."""
        probe = self.directory / f".gradaudit-probe.{os.getpid()}.tmp"
        try:
            probe.write_text("{}\n")
        except OSError as exc:
            raise AuditError(f"cannot write to results directory {self.directory}: {exc.strerror or exc}") from exc
        finally:
            with suppress(OSError):
                probe.unlink(missing_ok=True)

    def path(self, key: dict) -> Path:
        """The file of a key: readable names, then the key's hash."""
        mode = "-compare" if key.get("compare") else ""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{key['case']}-{key['backend']}{mode}")
        return self.directory / f"{safe[:80]}-o{key['order']}-{key_digest(key)}.json"

    def load(self, key: dict) -> SuiteRecord | None:
        """The stored record of this exact key, or None (none stored, or one that cannot be trusted: then a
        warning says why, and the job runs again)."""
        path = self.path(key)
        try:
            stored = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValueError: json's decode errors
            return self._distrust(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})")
        if not isinstance(stored, dict) or not isinstance(stored.get("record"), dict):
            return self._distrust(path, "is not a stored record")
        if stored.get("key") != key:
            return self._distrust(path, "was stored under another key")
        record = SuiteRecord.from_dict(stored["record"])
        if record.cell != (key["case"], key["backend"], key["order"]):
            return self._distrust(path, f"holds the record of {record.cell}, not of "
                                        f"{(key['case'], key['backend'], key['order'])}")
        return record

    @staticmethod
    def _distrust(path: Path, why: str) -> None:
        logger.warning("ignoring stored record %s: it %s; the job runs again", path.name, why)
        return None

    def save(self, key: dict, record: SuiteRecord) -> None:
        """Store a record atomically (a crash never leaves half a file, a failed write no temporary file); an
        I/O error is one :class:`AuditError` line naming the file."""
        path = self.path(key)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        text = json.dumps({"key": key, "record": record.to_dict()}, default=str)
        with self._lock:
            try:
                temporary.write_text(text, encoding="utf-8")
                os.replace(temporary, path)
            except OSError as exc:
                with suppress(OSError):
                    temporary.unlink(missing_ok=True)
                raise AuditError(f"cannot store a record in {path}: {exc.strerror or exc}") from exc
