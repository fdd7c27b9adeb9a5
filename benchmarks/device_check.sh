#!/usr/bin/env bash
# The checks that need a CUDA machine (run on a lent GPU box with its own torch, no torch-xla).
# Usage: OUT=/some/dir bash benchmarks/device_check.sh   (each step is bounded; the log goes to $OUT/device.log)
set -u
OUT=${OUT:-/tmp/gradaudit-device}; mkdir -p "$OUT"; exec > >(tee "$OUT/device.log") 2>&1
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
step() { echo "== $*"; local t0=$SECONDS; timeout 240 "$@"; echo "== rc=$? in $((SECONDS - t0)) s"; }
step gradaudit backends
step gradaudit run examples/bad_gelu.py:case --device cuda --order 2 --json "$OUT/bad_gelu_cuda.json"
step gradaudit run examples/bad_gelu.py:fixed --device cuda --order 2
step gradaudit run examples/fused_kernels.py:rmsnorm --device cuda --dtype bfloat16
step gradaudit run examples/fused_kernels.py:swiglu_gate_scaled --device cuda --dtype bfloat16
step python3 -m pytest -q -p no:cacheprovider -x tests/test_core.py -k "cuda"
step python3 -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_low_precision.py tests/test_startup.py
step python3 -m pytest -q -p no:cacheprovider tests/test_core.py tests/test_verdicts.py tests/test_calibration.py
