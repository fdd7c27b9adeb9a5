"""Errors that mean "the audit could not run" (CLI exit code 2), as opposed to gradient problems."""


class AuditError(ValueError):
    """Bad input or a missing dependency: reported as one line, never as a traceback."""


class Unsupported(RuntimeError):
    """A capability (forward-mode AD, double backward, ...) that the function or backend lacks."""
