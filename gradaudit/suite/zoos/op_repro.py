"""Standalone repros of cross-backend divergences of ``torch.ops`` cases: a few lines of Python a backend engineer
can paste into a bug report. The script rebuilds the sample from torch's own op database (seeded exactly as the
zoo draws it), runs the op on eager float64 and on the backend, and prints, per phase (forward, gradient, second
derivative), how far the backend's results are from eager's, ending in one ``verdict:`` line.

:func:`confirm` runs a repro the way a user would (its own process) and reads that verdict back.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from gradaudit.suite.zoos.torch_ops import SEED

# The comparison the repros share, kept in the script itself so that it runs without gradaudit. Relative to
# each result's largest finite magnitude; another shape or dtype, or NaN on one side only, always diverges.
_COMPARE = '''
def gap(got, expected, what):
    """Largest |got - expected| relative to expected's scale; inf for another form or NaN on one side."""
    if len(got) != len(expected):
        print(f"{what}: {len(got)} results, eager has {len(expected)}")
        return float("inf")
    worst = 0.0
    for a, b in zip(got, expected):
        # Complex results come back as their real view: torch-xla 2.9 drops imaginary parts copying to the host.
        a, b = [torch.view_as_real(t.detach().resolve_conj()).cpu() if t.is_complex() else t.detach().cpu()
                for t in (a, b)]
        if a.shape != b.shape or (a.dtype != b.dtype and b.dtype != torch.float64):
            print(f"{what}: {tuple(a.shape)} {a.dtype} on the backend, {tuple(b.shape)} {b.dtype} on eager")
            return float("inf")
        a, b = a.double(), b.double()
        both = (a.isnan() & b.isnan()) | (a.isinf() & (a == b))
        diff = torch.where(both, torch.zeros_like(a), (a - b).abs()).nan_to_num(nan=float("inf"), posinf=float("inf"))
        scale = b.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs().max().item() if b.numel() else 0.0
        worst = max(worst, (diff.max().item() if diff.numel() else 0.0) / (scale or 1.0))
    print(f"{what}: largest gap {worst:.3g} of the result's scale")
    return worst
'''

_SAMPLE = '''
op = next(o for o in op_db if (o.name, o.variant_test_name) == ({name!r}, {variant!r}))
random.seed({seed}); numpy.random.seed({seed}); torch.manual_seed({seed})
sample = next(itertools.islice(op.sample_inputs("cpu", torch.float64, requires_grad=True), {index}, None))


def prepared(device, dtype):
    """The sample's arguments on ``device``, floating tensors in ``dtype``, and the ones torch differentiates."""
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        moved = t.detach().to(device, dtype if t.is_floating_point() else t.dtype)
        return moved.requires_grad_(t.requires_grad)
    args, kwargs = tree_map(move, ([sample.input, *sample.args], sample.kwargs))
    return args, kwargs, [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.requires_grad]


def outputs(args, kwargs):
    out = sample.output_process_fn_grad(op.gradcheck_wrapper(op.get_op(), *args, **kwargs))
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
'''

_VERDICT = '''
tolerance = 64 * torch.finfo({dtype}).eps
forward = gap(got[0], expected[0], "forward")
gradient = gap(got[1], expected[1], "gradient") if expected[1] else 0.0
second = gap(got[2], expected[2], "second derivative") if expected[2] else 0.0
drift = max(forward, torch.finfo({dtype}).eps)
phases = [name for name, value, limit in (("forward", forward, tolerance), ("gradient", gradient, {gradient_limit}),
                                           ("second derivative", second, {gradient_limit})) if not value <= limit]
print("verdict:", "diverges in " + ", ".join(phases) if phases else "agrees")
'''


def op_repro(case_name: str, backend: str, dtype: str | None, order: int, seed: int = SEED) -> str | None:
    """The repro script of a ``torch.ops`` case (``NAME[.VARIANT][sample K]``) on ``backend``, from the parts the
    backend declares (``Backend.repro_run``, ``repro_imports``, ``repro_title``, ``repro_gradient_limit``: xla,
    onnx, compile with the compiler its environment names), or None for a backend that declares none or another
    case name."""
    from gradaudit import registry

    full_name, _, rest = case_name.partition("[sample ")
    declared = registry.declaration(backend)
    if not rest.endswith("]") or not isinstance(declared.get("repro_run"), str):
        return None
    from gradaudit.suite.zoos.torch_ops import find_op

    op = find_op(full_name)
    fields = {"name": op.name, "variant": op.variant_test_name, "seed": seed, "index": int(rest[:-1]),
              "order": order, "dtype": f"torch.{dtype or 'float64'}"} | registry.backend_environment(backend)
    # Gradients inherit the forward's drift, like gradaudit's own parity tolerance (a backend that takes finite
    # differences in its own precision declares a wider limit).
    fields["gradient_limit"] = declared.get("repro_gradient_limit", "64 * drift").format(**fields)
    imports = ["import itertools", "import random", "", "import numpy", "import torch"]
    imports += list(declared.get("repro_imports", ()))
    imports += ["from torch.testing._internal.common_methods_invocations import op_db  # pip install expecttest "
                "hypothesis", "from torch.utils._pytree import tree_leaves, tree_map"]
    shown = declared.get("repro_title", backend).format(**fields)
    header = (f"# gradaudit repro: {case_name} on {shown} ({dtype or 'float64'}) against eager float64 on the CPU, "
              f"order {order}")
    return "\n".join([header] + imports) + "\n" + _COMPARE + _SAMPLE.format(**fields) + \
        declared["repro_run"].format(**fields) + _VERDICT.format(**fields)


def confirm(code: str, timeout: float = 300.0) -> tuple[bool | None, str]:
    """Run a repro in a fresh Python process: (True if its verdict says it diverges, False if it agrees, None
    if it did not run to a verdict; and its output's last lines, or how it ended: the exception's last line,
    the signal that killed it)."""
    from gradaudit.outcome import signal_name

    env = dict(os.environ)
    env.setdefault("PJRT_DEVICE", "CPU")
    try:
        # -P: the working directory is not put on sys.path (a bisect.py or random.py there shadowed the
        # standard library, and every repro failed to import torch)
        done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    verdicts = [line for line in lines if line.startswith("verdict:")]
    if verdicts:
        return verdicts[-1].startswith("verdict: diverges"), "\n".join(lines[-4:])
    if done.returncode < 0:
        return None, f"killed by signal {-done.returncode} ({signal_name(-done.returncode)})"
    return None, exception_line(done.stderr) or f"exit code {done.returncode}"


def exception_line(stderr: str) -> str | None:
    """The line of a traceback that names the exception (``RuntimeError: ...``): the last one, since C++
    backends append their own frames after it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*", line)]
    return (named[-1] if named else (lines[-1] if lines else ""))[:400] or None


def confirms_failure(output: str, exception: str) -> bool:
    """Whether a repro that stopped without a verdict failed the way the audit saw the backend fail."""
    message = exception.split(": ", 1)[-1][:80]
    return bool(message) and message in output


REPRO_KINDS = ("forward_divergence", "backward_divergence", "backend_error")


def attach_repros(case_name: str, report, backend: str, dtype: str | None, order: int, seed: int = SEED,
                  run: bool = True) -> None:
    """Put the repro of a ``torch.ops`` case on each error divergence of a compare report
    (``details.repro``), and, with ``run``, whether running it in a fresh process showed the divergence
    (``details.repro_confirmed``: True, False, or why it did not run; ``details.repro_output``)."""
    # (a compile divergence already carries the repro of the piece its localization found)
    targets = [f for f in report.findings if f.severity == "error" and f.kind in REPRO_KINDS
               and not f.details.get("repro")]
    if not targets:
        return
    code = op_repro(case_name, backend, dtype, order, seed)
    if code is None:
        return
    ran = confirm(code) if run else (None, "not run")
    for finding in targets:
        finding.details["repro"] = code
        finding.details["repro_confirmed"] = confirmation(ran, finding.details.get("exception"))
        finding.details["repro_output"] = ran[1]


def confirmation(ran: tuple[bool | None, str], exception: str | None) -> bool | str:
    """What a repro's run (:func:`confirm`'s answer) says of the finding: for a backend that raised
    (``exception``), whether the repro failed the same way; for a divergence, its verdict, or why it gave none."""
    verdict, output = ran
    if exception is not None:
        return verdict is None and confirms_failure(output, exception)
    return verdict if verdict is not None else output
