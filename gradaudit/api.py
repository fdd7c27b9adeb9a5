"""The Python API: ``gradaudit.check(...) -> Report``."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable

import torch

from . import __version__
from .case import as_case
from .checker import Auditor, Settings
from .errors import AuditError
from .parity import parity_checks
from .registry import usable_backend
from .report import Report

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
          "float64": torch.float64}
MODES = ("auto", "fast", "full")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise AuditError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextmanager
def same_rng_for_each_program():
    """Every program loaded inside starts from the caller's RNG state (same dropout masks in the float64
    shadow as in the audited dtype); the caller gets that state back at the end."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def rewind() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    try:
        yield rewind
    finally:
        rewind()


def check(target: Any, args: Any = (), kwargs: dict | None = None, *, backend: str = "eager",
          device: str | None = None, order: int = 1, dtype: str | torch.dtype | None = None, mode: str = "auto",
          seed: int = 0, probes: int = 3, shadow: bool = True, localize: bool = True,
          progress: Callable[[str, int, int], None] | None = None, name: str | None = None) -> Report:
    """Audit the gradients of a function or module at ``args``/``kwargs``.

    ``target`` is a callable (function or ``nn.Module``), a ``gradaudit.Case``, or a factory's
    ``(fn, args[, kwargs])`` tuple. ``order=2`` checks first and second order. Low-precision cases are checked
    numerically on a float64 shadow copy, and their own gradients are compared with it (``shadow=False``
    checks them directly in their dtype). Raises :class:`gradaudit.AuditError` when the audit cannot run.
    """
    if order not in (1, 2):
        raise AuditError(f"order must be 1 or 2, got {order}")
    if mode not in MODES:
        raise AuditError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if probes < 1:
        raise AuditError(f"probes must be at least 1, got {probes}")
    case = as_case(target, args, kwargs, name)
    chosen = usable_backend(backend)
    settings = Settings(order=order, mode=mode, probes=probes, seed=seed)
    started = time.perf_counter()
    skipped: list[dict] = []
    with same_rng_for_each_program() as rewind:
        with chosen.load(case, device, parse_dtype(dtype)) as program:
            reference = None
            if not program.supports_autograd:
                rewind()
                reference = usable_backend("eager").load(case, "cpu", torch.float64)
            elif shadow and program.dtype != torch.float64:
                rewind()
                try:
                    reference = chosen.load(case, device, torch.float64)
                except Exception as exc:
                    skipped.append({"what": "float64 shadow", "reason": f"{type(exc).__name__}: {exc}; "
                                    f"checked in {program.dtype} with its own error bars"})
            try:
                if program.supports_autograd:
                    checks, findings, more = Auditor(reference or program, settings, progress).run()
                else:
                    checks, findings, more = Auditor(reference, settings, progress, numeric=program).run()
                skipped += more
                if reference is not None and program.supports_autograd:
                    extra_checks, extra_findings = parity_checks(program, reference, settings)
                    checks += extra_checks
                    findings += extra_findings
            finally:
                if reference is not None:
                    reference.close()
            stats = program.stats.to_dict()
            if reference is not None:
                stats = {k: v + reference.stats.to_dict()[k] for k, v in stats.items()}
    stats["seconds"] = round(time.perf_counter() - started, 4)
    settings_dict = settings.to_dict() | {"shadow": "float64" if reference is not None else None,
                                          "localize": localize}
    return Report(target=case.label, backend=chosen.name, device=program.device,
                  dtype=str(program.dtype).replace("torch.", ""), seed=seed, checks=checks, findings=findings,
                  skipped=skipped, stats=stats, settings=settings_dict, version=__version__)
