"""Errors that mean "the audit could not run" (CLI exit code 2), as opposed to gradient problems."""


class AuditError(ValueError):
    """Bad input or a missing dependency: reported as one line, never as a traceback."""


class Unsupported(AuditError, RuntimeError):
    """What this backend or function cannot do (forward-mode AD, double backward, sparse gradients on XLA,
    complex tensors in ONNX, a backend not installed here): a suite skips the case there instead of calling it an
    error. An AuditError too, so an audit that needs the capability stops with its one-line message (exit 2)."""
