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
