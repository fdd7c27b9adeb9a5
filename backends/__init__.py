"""Backend adapters. Built-in ones register through the ``gradaudit.backends`` entry point group, like any
third-party backend; import them lazily through :func:`gradaudit.registry.get_backend`."""
from gradaudit.backends.base import Availability, Backend, Leaf, Program, Stats

__all__ = ["Availability", "Backend", "Leaf", "Program", "Stats"]
