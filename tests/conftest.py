import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests import fixtures.py as a plain module

# torch.onnx.export starts autograd's device threads; a device registered after that (torch-xla's) cannot run
# backward in the same process. Register XLA first, as `gradaudit compare` does by checking every backend's
# availability before running any.
try:
    from gradaudit.registry import get_backend

    get_backend("xla").availability()
except Exception:  # no xla backend here: nothing to register
    pass

# The planted-fault fixtures, imported once under the name the tests use, before any test loads
# tests/fixtures.py by path: the loader then finds this module instead of running the file again (which would
# define the custom op gradaudit_tests::softsign anew and free the definition this module's softsign calls).
import fixtures  # noqa: E402,F401
