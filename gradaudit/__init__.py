"""gradaudit: are the gradients of your PyTorch code right, on every backend, and if not, which op is wrong?"""
__version__ = "0.1.0"

from .case import Case, load_target  # noqa: E402
from .errors import AuditError  # noqa: E402
from .report import Check, Finding, Report  # noqa: E402
from .api import check  # noqa: E402
from .compare import compare  # noqa: E402
from .pytest_plugin import assert_gradients  # noqa: E402

__all__ = ["AuditError", "Case", "assert_gradients", "Check", "Finding", "Report", "check", "compare", "load_target", "__version__"]
