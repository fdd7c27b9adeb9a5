"""Errors that mean "the audit could not run" (CLI exit code 2), as opposed to gradient problems."""
import re

from gradaudit.lines import first_line


class AuditError(ValueError):
    """Bad input or a missing dependency: reported as one line, never as a traceback."""


class Unsupported(AuditError, RuntimeError):
    """What this backend or function cannot do (forward-mode AD, double backward, sparse gradients on XLA,
    complex tensors in ONNX, a backend not installed here): a suite skips the case there instead of calling it an
    error. An AuditError too, so an audit that needs the capability stops with its one-line message (exit 2)."""


class BackendFailure(AuditError):
    """A backend raised where eager float64 ran the same case (an XLA compilation error, an onnxruntime kernel
    failing): in a comparison of backends that is a finding about the backend (``backend_error``), not an
    audit that could not run."""

    def __init__(self, device: str, what: str, cause: BaseException) -> None:
        self.device, self.what = device, what
        kind = type(cause).__name__
        text = first_line(cause) or kind
        # (a private wrapper's name, onnx's _RuntimeGap, says nothing to the reader)
        self.cause = (text if kind.startswith("_") else f"{kind}: {text}")[:400]
        super().__init__(f"{what} on {device} raised {self.cause}")


# How torch and its backends say an op or dtype is missing (rather than failing on it).
MISSING_ON_BACKEND = re.compile(r"Could not run '.*' with arguments from the|Type not supported|"
                                r"derivative for .* is not implemented|is not implemented for|not supported on")


def backend_failure(device: str, what: str, exc: Exception) -> AuditError:
    """The error for ``exc`` raised by a backend: :class:`Unsupported` where it says an op or dtype is missing
    there (a skip with its reason), else a :class:`BackendFailure`."""
    failure = BackendFailure(device, what, exc)
    if isinstance(exc, NotImplementedError) or MISSING_ON_BACKEND.search(failure.cause):
        return Unsupported(f"{what} on {device}: {failure.cause}")
    return failure
