"""gradaudit: are the gradients of your PyTorch code right, on every backend, and if not, which op is wrong?"""
__version__ = "0.1.0"

from gradaudit.case import Case, load_target  # noqa: E402
from gradaudit.errors import AuditError  # noqa: E402
from gradaudit.report import Check, Finding, Report  # noqa: E402
from gradaudit.api import check  # noqa: E402
from gradaudit.api import compare  # noqa: E402
from gradaudit.testing import assert_gradients  # noqa: E402

__all__ = ["AuditError", "Case", "assert_gradients", "Check", "Finding", "Report", "check", "compare", "load_target", "__version__"]
