"""Suites: many cases (a zoo) on many backends, each job in its own worker process, with a result store.

Layout: ``plan`` (which jobs), ``executors`` (serial, local, ray), ``worker`` (one job, isolated), ``store``
(records reused across runs), ``records`` (the typed records), ``reports`` (JSON, JUnit, HTML, tables),
``zoos`` (``torch.nn``, ``torch.ops``/``torch.modules`` and ``file.py:NAME`` zoos), ``runner`` (``run_suite``)."""
from gradaudit.suite.zoos import ZooCase

__all__ = ["ZooCase"]
