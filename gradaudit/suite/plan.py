"""What a suite will run: the zoo's cases that match (or one shard of them), on each backend, grouped into jobs
(one case on one backend, its orders in one worker process); with ``compare``, each backend's jobs compare it
against eager float64 on CPU instead of checking it on its own."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from gradaudit.errors import AuditError
from gradaudit.registry import REFERENCE


def make_job(zoo: str, case: str, backend: str, orders: Iterable[int], seed: int = 0, dtype: str | None = None,
             **extra) -> dict:
    """A job as the worker reads it (JSON on its stdin)."""
    return {"zoo": zoo, "case": case, "backend": backend, "orders": list(orders), "seed": seed, "dtype": dtype,
            **extra}


def orders_of(job: dict) -> list[int]:
    """The orders a job asks for (``orders``, or the single ``order`` of an older job)."""
    return list(job.get("orders") or [job.get("order", 1)])


def unsupported_order(case, order: int) -> str:
    """The reason of a skip for an order the case does not support."""
    return f"order {order} is not supported by this case (orders {list(case.orders)})"


@dataclass
class Plan:
    """A suite's zoo (as workers get it), its selected cases and its jobs, one per (case, backend)."""

    spec: str
    cases: list
    jobs: list[dict]

    @property
    def by_name(self) -> dict:
        """The selected cases by name."""
        return {case.name: case for case in self.cases}

    @property
    def total(self) -> int:
        """How many records the suite gives: one per job and order."""
        return sum(len(orders_of(job)) for job in self.jobs)


def matches(name: str, only: str | Iterable[str] | Callable[[str], bool] | None) -> bool:
    """Whether a case is selected: ``only`` is None (every case), substrings (comma-separated or a list: any of
    them) or a predicate on the name."""
    if not only:
        return True
    if callable(only):
        return bool(only(name))
    patterns = [p.strip() for p in (only.split(",") if isinstance(only, str) else only) if p and p.strip()]
    return not patterns or any(p in name for p in patterns)


def zoo_spec_for_workers(spec: str) -> str:
    """File zoos are passed to workers (and stored in keys) with an absolute path: they may run elsewhere."""
    module_part, sep, attr = spec.rpartition(":")
    if sep and (module_part.endswith(".py") or "/" in module_part) and Path(module_part).is_file():
        return f"{Path(module_part).resolve()}:{attr}"
    return spec


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (or ``(K, N)``) as ``(K, N)`` with 1 <= K <= N; None for no sharding. Anything else is a
    one-line AuditError."""
    if shard is None or shard == "":
        return None
    try:
        index, count = (int(part) for part in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError):
        raise AuditError(f"shard must be K/N with integers 1 <= K <= N, got {shard!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise AuditError(f"shard must be K/N with 1 <= K <= N, got {index}/{count}")
    return index, count


def in_shard(cases: list, shard: tuple[int, int] | None) -> list:
    """The K-th of N deterministic slices of the cases: those at positions i with i % N == K - 1."""
    if shard is None:
        return cases
    index, count = shard
    return [case for position, case in enumerate(cases) if position % count == index - 1]


def planned_backends(backends: list[str], compare: bool) -> list[str]:
    """The backends that get jobs: with ``compare``, eager is the reference, audited on its own only when it
    is the one backend listed (eager in the suite's dtype against eager float64)."""
    if compare and len(set(backends)) > 1:
        return [b for b in backends if b != REFERENCE]
    return backends


def plan(zoo_spec: str, backends: Iterable[str], orders: Iterable[int] = (1, 2), only=None,
         seed: int = 0, dtype: str | None = None, compare: bool = False,
         shard: str | tuple[int, int] | None = None, rtol: float = 0.0, atol: float = 0.0) -> Plan:
    """The jobs of a suite; refuses bad orders, no backends, an unknown backend, a bad shard and a selection
    of no case before anything runs. ``rtol``/``atol`` (the user's tolerance, see ``gradaudit.check``) go into
    the jobs that have one."""
    from gradaudit.registry import get_backend
    from gradaudit.suite.zoos import load_zoo

    orders = sorted(set(int(o) for o in orders))
    if not orders or not set(orders) <= {1, 2}:
        raise AuditError(f"orders must be among 1, 2; got {orders}")
    backends = [b for b in backends if b]
    if not backends:
        raise AuditError("no backends given")
    for name in backends:  # an unknown name is a typo, not a backend to skip: refuse before the first job
        get_backend(name)
    shard = parse_shard(shard)
    spec = zoo_spec_for_workers(zoo_spec)
    selected = [c for c in load_zoo(spec) if matches(c.name, only)]
    if not selected:
        raise AuditError(f"no case of zoo {zoo_spec} matches {only!r}" if only else f"zoo {zoo_spec} is empty")
    cases = in_shard(selected, shard)
    if not cases:
        raise AuditError(f"shard {shard[0]}/{shard[1]} holds no case (only {len(selected)} selected)")
    extra = {"compare": True} if compare else {}
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not 0 <= value < math.inf:  # (NaN fails every comparison)
            raise AuditError(f"{name} must be a finite number >= 0, got {value!r}")
        if value:
            extra[name] = float(value)
    jobs = [make_job(spec, case.name, backend, orders, seed, dtype, **extra)
            for case in cases for backend in planned_backends(backends, compare)]
    return Plan(spec, cases, jobs)
