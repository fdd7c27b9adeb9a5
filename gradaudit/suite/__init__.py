"""Suites: many cases (a zoo) on many backends, each job in its own worker process, with a result store.

Layout: ``plan`` (which jobs), ``executors`` (serial, local, ray), ``worker`` (one job, isolated), ``store``
(records reused across runs), ``records`` (the typed records), ``summary`` (the matrix and the counts; the
reports are :mod:`gradaudit.renderers`, which take the records as data), ``zoos`` (``torch.nn``,
``torch.ops``/``torch.modules`` and ``file.py:NAME`` zoos), ``runner`` (``run_suite``)."""
from gradaudit.suite.zoos import ZooCase

__all__ = ["ZooCase"]
