"""Between backends, a gradient gap at a kink of the float64 reference is a convention (relu6 at 6), not a bug; at
any other point it stays a divergence. The kink scan must see rounding as rounding where the cotangent's sum
cancels far below its terms, as it does on op_db's avg_pool3d sample (a linear op, once called kinked at 47 of
its 180 elements, which excused inductor's wrong ceil_mode gradient as a convention)."""
import torch

from gradaudit.backends.eager import EagerBackend
from gradaudit.case import as_case
from gradaudit.core.checks import Settings
from gradaudit.crossbackend import explain_kinks, reference_kinks
from gradaudit.report import Finding

D = torch.float64
SETTINGS = Settings(order=1, mode="auto", probes=3, seed=0)


def op_db_avg_pool3d_sample():
    """op_db's avg_pool3d sample 6 (ceil_mode, padding 2), drawn as the torch.ops zoo draws it."""
    import itertools
    import random

    import numpy
    from torch.testing._internal.common_methods_invocations import op_db

    op = next(o for o in op_db if (o.name, o.variant_test_name) == ("nn.functional.avg_pool3d", ""))
    with torch.random.fork_rng(devices=[]):
        random.seed(0), numpy.random.seed(0), torch.manual_seed(0)
        sample = next(itertools.islice(op.sample_inputs("cpu", D, requires_grad=True), 6, None))
    return lambda x: op.get_op()(x, *sample.args, **sample.kwargs), sample.input.detach()


def reference(fn, x):
    return EagerBackend().load(as_case((fn, (x.requires_grad_(),)), (), None, None, None))


def test_a_linear_op_has_no_kink_where_its_cotangent_sum_cancels():
    with reference(*op_db_avg_pool3d_sample()) as program:
        assert reference_kinks(program, "args[0]", SETTINGS)[0] == []


def test_relu6_at_six_is_a_kink_convention_and_elsewhere_a_divergence():
    x = torch.linspace(-2.0, 8.0, 8, dtype=D)
    x[3] = 6.0
    with reference(torch.nn.functional.relu6, x) as program:
        assert reference_kinks(program, "args[0]", SETTINGS)[0] == [[3]]
        for index, kind in ((3, "nondifferentiable_point"), (1, "backward_divergence")):
            gap = Finding("backward_divergence", "gap", order=1, wrt="args[0]",
                          details={"worst_index": [index], "analytical": 0.0, "numerical": 1.0})
            assert explain_kinks(gap, program, SETTINGS).kind == kind
