"""The version of gradaudit, in a module of its own: reports, stores and ``--version`` read it without importing
the package's public names (or anything that imports torch)."""
__version__ = "0.1.0"
